package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Shutdown stops accepting on every listener, lets open connections finish
// until ctx ends, then closes what is left. It returns ctx's error when it
// had to close connections that were still busy.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	socks := s.sockets
	s.sockets = map[string]*socket{}
	s.mu.Unlock()
	var wg sync.WaitGroup
	var forced atomic.Bool
	for _, sk := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !s.drain(ctx, sk) {
				forced.Store(true)
			}
		}()
	}
	wg.Wait()
	// Listeners an earlier Apply removed are draining on their own clock;
	// end them now too.
	done := make(chan struct{})
	go func() { s.drains.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.closeConns(func(*conn) bool { return true })
		<-done
		forced.Store(true)
	}
	s.fds.Close()
	if forced.Load() {
		return fmt.Errorf("shutdown: connections closed while busy: %w", ctx.Err())
	}
	return nil
}

// Close closes every listener and connection at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Shutdown(ctx)
	return nil
}

// drain stops sk and waits for its connections until ctx ends, then closes
// them. It reports whether they all ended by themselves.
func (s *Server) drain(ctx context.Context, sk *socket) bool {
	sk.ln.Close()
	servers := sk.http.all()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		var wg sync.WaitGroup
		for _, h := range servers {
			wg.Go(func() { h.shutdown(ctx) }) // closes idle keep-alive connections as they go idle
		}
		wg.Wait()
	}()
	// The accept loop and its connections, and those ServeConn handed in.
	// sk left Server.sockets before drain, so no ServeConn adds to handed.
	ended := make(chan struct{})
	go func() {
		<-sk.done
		sk.handed.Wait()
		close(ended)
	}()
	clean := true
	select {
	case <-ended:
	case <-ctx.Done():
		clean = false
		// Connections first, then their requests' context: cancelled
		// first, a request could still answer (a 502) before its
		// connection closed, and look finished to its client.
		s.closeConns(func(c *conn) bool { return c.sock == sk })
		sk.cancel()
		<-ended
	}
	sk.cancel()
	for _, h := range servers {
		h.hs.Close()
	}
	<-shut
	sk.http.wg.Wait()
	if st := sk.state.Load(); st != nil {
		st.close()
		s.httpMetrics.Prune()
	}
	return clean
}

// Revalidate identifies every connection's certificate again against the
// TLS source's current state, and closes those it refuses or now maps to
// another tenant, for example after a CRL update or a tenant's CA changed.
// Connections still being admitted check again themselves (see admit). The
// checks run outside connMu. It returns how many it closed.
func (s *Server) Revalidate() int {
	s.revalidations.Add(1)
	s.connMu.Lock()
	var live []*conn
	for c := range s.conns {
		if c.identified.Load() {
			live = append(live, c)
		}
	}
	s.connMu.Unlock()
	closed := 0
	for _, c := range live {
		if err := s.stillValid(c, c.identity().Env()); err != nil {
			s.logger.Info("connection closed: identity no longer valid", "listener", c.listener,
				"tenant", c.identity().Tenant, "environment", c.identity().Environment, "source", c.source.String(), "err", err)
			c.raw.Close()
			closed++
		}
	}
	return closed
}

// identify maps a verified connection state to its tenant; an identity
// without one is refused, never admitted anonymously.
func (s *Server) identify(cs tls.ConnectionState) (certs.Peer, error) {
	id, err := s.tlsSrc.Identify(cs)
	if err == nil && id.Tenant == "" {
		err = fmt.Errorf("%w: no tenant", ErrConfig)
	}
	return id, err
}

// stillValid identifies c's certificate again and checks it still maps to
// the same (tenant, environment): a reload that moves the certificate to
// another environment ends the connection, as one to another tenant does.
func (s *Server) stillValid(c *conn, want policy.TenantEnv) error {
	id, err := s.identify(c.state())
	if err != nil {
		return err
	}
	if got := id.Env(); got != want {
		return fmt.Errorf("certificate now maps to %s, not %s", got, want)
	}
	return nil
}

// closeConns closes the connections pick chooses (pick runs under connMu)
// and returns them.
func (s *Server) closeConns(pick func(*conn) bool) []*conn {
	s.connMu.Lock()
	var victims []*conn
	for c := range s.conns {
		if pick(c) {
			victims = append(victims, c)
		}
	}
	s.connMu.Unlock()
	for _, c := range victims {
		if c.abort != nil && !c.identified.Load() {
			// A START_TLS negotiation: not the client's failure.
			c.abort(errClosedByProxy)
		}
		// The raw socket, not the TLS layer: a close_notify could block on
		// a peer that does not read.
		c.raw.Close()
	}
	return victims
}
