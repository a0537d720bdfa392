package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/certs"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// conn is one client connection from accept to close.
type conn struct {
	sock     *socket
	listener string
	source   netip.AddrPort
	raw      *relay.CountingConn
	tls      *tls.Conn
	httpConn net.Conn // what http.Server serves: tls, or a guard over it
	closed   chan struct{}

	identified atomic.Bool
	idMu       sync.Mutex
	peer       certs.Peer
	// cs is the TLS state of a START_TLS session, whose TLS connection
	// lives inside the telnet handler (tls is nil then).
	cs *tls.ConnectionState

	// Bytes seen before the tenant is known; moved to the tenant's series
	// when it is, to "unknown" otherwise.
	preIn, preOut atomic.Int64

	// route is the tenant's route a tcp or telnet session was admitted on
	// (routeKey), or an HTTP connection became a tunnel on (upgraded); ""
	// for HTTP otherwise, whose requests are routed one by one. Set and
	// read under Server.connMu.
	route string
	// timer bounds a tcp session or an upgraded connection (limits.tcp);
	// Apply gives it the limits of each new generation. Set and read
	// under Server.connMu (see setTimerLocked).
	timer *relay.Timer

	// adm is the connection's place at its socket's gate.
	adm admission

	// ctx and abort, on a START_TLS listener only, tell the telnet
	// handler negotiating the handshake that the gate evicted the
	// connection (or the listener shut down), so that it counts no
	// failure of the client. Set in accept, in the accept loop, where the
	// gate's evictions run too.
	ctx   context.Context
	abort context.CancelCauseFunc
}

// state returns the connection's TLS state for revalidation.
func (c *conn) state() tls.ConnectionState {
	c.idMu.Lock()
	cs := c.cs
	c.idMu.Unlock()
	if cs != nil {
		return *cs
	}
	return c.tls.ConnectionState()
}

// identity returns the connection's Peer once it is identified, the zero
// Peer before.
func (c *conn) identity() certs.Peer {
	c.idMu.Lock()
	defer c.idMu.Unlock()
	return c.peer
}

// Count implements relay.Counter for the handshake phase.
func (c *conn) Count(in bool, n int) {
	if in {
		c.preIn.Add(int64(n))
	} else {
		c.preOut.Add(int64(n))
	}
}

// tenantBytes counts into one listener's and tenant's series.
type tenantBytes struct{ in, out prometheus.Counter }

func (t tenantBytes) Count(in bool, n int) {
	if in {
		t.in.Add(float64(n))
	} else {
		t.out.Add(float64(n))
	}
}

func (s *Server) tenantBytes(listener, tenant string) tenantBytes {
	return tenantBytes{
		in:  s.bytes.WithLabelValues(listener, tenant, "in"),
		out: s.bytes.WithLabelValues(listener, tenant, "out"),
	}
}

// handle owns one accepted connection until it closes: handshake, identify,
// limit, then the listener's protocol. It returns only when the connection
// is closed, so the accept loop waits for it on shutdown. st is the
// generation the connection was accepted under.
func (s *Server) handle(c *conn, st *listenerState) {
	sk := c.sock
	defer func() { <-c.closed }()

	if st.telnet != nil && st.l.StartTLS {
		// The handshake happens inside the Telnet START_TLS exchange.
		s.serveStartTLS(c, st)
		return
	}
	c.tls = tls.Server(c.raw, st.tls)
	err := relay.Handshake(sk.ctx, c.tls, st.l.Limits.HandshakeTimeout)
	if !sk.gate.handshaken(c) {
		c.raw.Close() // evicted: logged and counted by the gate's caller
		return
	}
	if err != nil {
		s.handshakeFailed(c, c.tls.ConnectionState(), err)
		c.raw.Close()
		return
	}
	cs := c.tls.ConnectionState()
	// The chain may have been verified by crypto/tls (VerifiedChains) or by
	// the TLS layer's own VerifyConnection; Identify below re-checks it
	// either way. No certificate at all should be impossible: fail closed.
	if len(cs.PeerCertificates) == 0 {
		s.logger.Warn("connection without client certificate closed", "listener", c.listener, "source", c.source.String())
		c.raw.Close()
		return
	}
	seen := s.revalidations.Load()
	id, err := s.handshakeDone(c, cs)
	if err != nil {
		s.logRefusal(c, slog.LevelInfo, "client certificate not accepted", err)
		c.raw.Close()
		return
	}
	// Route with the generation in force at admission: a reload during
	// the handshake must not send the session where the new policy does
	// not.
	if st, err = s.admit(c, id, seen); err != nil {
		s.logRefusal(c, slog.LevelWarn, "connection refused", err, "tenant", id.Tenant)
		c.raw.Close()
		return
	}

	switch {
	case st.http != nil:
		// HTTP/2 frames itself; HTTP/1 goes through the framing guard,
		// which refuses what a backend could read differently.
		var hc net.Conn = c.tls
		if c.tls.ConnectionState().NegotiatedProtocol != "h2" {
			hc = httpproxy.NewFramingGuard(c.tls, st.l.Limits.HTTP.MaxHeaderBytes, func(err error) { s.logRefusal(c, slog.LevelInfo, "HTTP request refused", err) })
		}
		s.connMu.Lock()
		if _, open := s.conns[c]; !open {
			s.connMu.Unlock() // closed meanwhile (Revalidate, drain)
			return
		}
		c.httpConn = hc
		s.byTLS.Store(hc, c)
		s.connMu.Unlock()
		if !sk.pushHTTP(hc) {
			c.raw.Close()
		}
	case st.tcp != nil:
		s.relayTCP(c, st)
	case st.telnet != nil:
		st.telnet.Serve(sk.ctx, c.tls, id)
		c.raw.Close()
	default:
		c.raw.Close()
	}
}

// handshakeFailed hands a failed handshake and what the client sent in it
// to the TLS layer, which counts and remembers it, and logs the refusal
// with the result, the reason and the client certificate's subject, issuer
// and fingerprint, all bounded and printable (the error itself carries the
// client's names as they came). A client that closed before sending a
// certificate (a health checker, a load generator) was refused nothing:
// that is logged at debug only.
func (s *Server) handshakeFailed(c *conn, cs tls.ConnectionState, err error) {
	r := s.tlsSrc.HandshakeFailed(c.listener, c.source, cs, err)
	if r.Result == certs.ResultClientClosed {
		s.logger.Debug("TLS handshake abandoned by the client before it sent a certificate",
			"listener", c.listener, "source", c.source.String(), "err", err)
		return
	}
	s.logRefusal(c, slog.LevelInfo, "TLS handshake refused", nil, r.LogArgs()...)
}

// handshakeDone tells the TLS layer that c's handshake completed and
// returns the Peer it proves; a Peer without a tenant, or of another
// listener or source, is refused.
func (s *Server) handshakeDone(c *conn, cs tls.ConnectionState) (certs.Peer, error) {
	p, err := s.tlsSrc.HandshakeDone(c.listener, c.source, cs)
	switch {
	case err != nil:
	case p.Tenant == "":
		err = fmt.Errorf("%w: no tenant", ErrConfig)
	case p.Listener != c.listener || p.Source != c.source:
		err = fmt.Errorf("%w: peer of listener %q from %s, not of this connection", ErrConfig, p.Listener, p.Source)
	}
	return p, err
}

// logRefusal logs at level a refusal any client can cause (a failed
// handshake, a certificate no longer accepted or a tenant at its limit
// after the handshake, a request head the framing guard refused) with its
// source, cause (when err is not nil) and the extra key-value pairs, at
// most 10 lines a second after a burst of 50.
func (s *Server) logRefusal(c *conn, level slog.Level, msg string, err error, extra ...any) {
	ok, held := s.refusals.allow(time.Now())
	if !ok {
		return
	}
	args := []any{"listener", c.listener, "source", c.source.String()}
	if err != nil {
		args = append(args, "err", err)
	}
	args = append(args, extra...)
	if id := c.identity(); id.Tenant != "" {
		args = append(args, "tenant", id.Tenant)
	}
	if held > 0 {
		args = append(args, "similar_lines_suppressed", held)
	}
	s.logger.Log(context.Background(), level, msg, args...)
}

// admit records c's identity, counts it against its tenant's share of the
// listener, and returns the generation of the listener in force, which the
// connection is served with; nil when it is refused. A tcp or telnet
// session also records the route of that generation, read under connMu,
// so that Apply's sweep for changed routes sees every session either with
// its route or after it.
//
// seen is the revalidation count read before id was made: when Revalidate
// ran since, its sweep may have missed this connection, so id is checked
// against the certificate state again before it is admitted. The count is
// read once more under connMu, where c becomes identified: a Revalidate
// counted after that read lists c in its sweep, one counted before it is
// caught here (the check runs outside the lock, so the loop goes round).
func (s *Server) admit(c *conn, id certs.Peer, seen uint64) (*listenerState, error) {
	for {
		if cur := s.revalidations.Load(); cur != seen {
			if err := s.stillValid(c, id.Tenant); err != nil {
				return nil, err
			}
			seen = cur
		}
		s.connMu.Lock()
		if s.revalidations.Load() == seen {
			break
		}
		s.connMu.Unlock()
	}
	defer s.connMu.Unlock()
	k := tenantSlot{c.sock, id.Tenant}
	if _, open := s.conns[c]; !open {
		return nil, errClosedMeanwhile
	}
	st := c.sock.state.Load()
	if limit := st.l.ForTenant(id.Tenant).MaxConnsPerTenant; !s.perTen.Acquire(k, limit) {
		s.refused.WithLabelValues(c.listener, reasonTenantLimit).Inc()
		return nil, fmt.Errorf("%w (%d)", ErrConnLimit, limit)
	}
	c.route = st.routeKey(id.Tenant)
	s.active[[2]string{c.listener, id.Tenant}]++
	c.idMu.Lock()
	c.peer = id
	c.idMu.Unlock()
	c.identified.Store(true)
	tb := s.tenantBytes(c.listener, id.Tenant)
	tb.Count(true, int(c.preIn.Swap(0)))
	tb.Count(false, int(c.preOut.Swap(0)))
	c.raw.SetCounter(tb)
	return st, nil
}

// upgraded records that c, an HTTP/1 connection, became a tunnel on the
// route of key, bounded by timer: Apply ends it when a reload removes or
// changes the route, and gives timer each new generation's limits.tcp. It
// refuses when the generation in force has no such route any more: Apply
// may have swept the connections before the switch.
func (s *Server) upgraded(c *conn, key string, timer *relay.Timer) error {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if _, open := s.conns[c]; !open {
		return errClosedMeanwhile
	}
	if !c.sock.state.Load().hasRoute(c.identity().Tenant, key) {
		return fmt.Errorf("%w: the route of the upgrade was removed or changed by a reload", ErrConfig)
	}
	c.route = key
	s.setTimerLocked(c, timer)
	return nil
}

// setTimerLocked makes t the timer of c's session (a tcp session or an
// upgraded connection) and gives it the limits.tcp of the generation in
// force now. rearm sets every timer under connMu too, so whichever of the
// two runs last reads the newest generation: a session set up during a
// reload is never left with the limits of the one before. connMu is held.
func (s *Server) setTimerLocked(c *conn, t *relay.Timer) {
	c.timer = t
	lim := c.sock.state.Load().l.ForTenant(c.identity().Tenant).TCP
	t.Set(lim.IdleTimeout, lim.MaxSession)
}

// forget runs once when c's socket closes.
func (s *Server) forget(c *conn) {
	c.sock.gate.release(c)
	s.fds.Release()
	s.connMu.Lock()
	if c.httpConn != nil {
		s.byTLS.Delete(c.httpConn)
	}
	delete(s.conns, c)
	if c.identified.Load() {
		id := c.identity()
		s.perTen.Release(tenantSlot{c.sock, id.Tenant})
		if k := [2]string{c.listener, id.Tenant}; s.active[k] <= 1 {
			delete(s.active, k)
		} else {
			s.active[k]--
		}
	} else {
		tb := s.tenantBytes(c.listener, unknownTenant)
		tb.Count(true, int(c.preIn.Swap(0)))
		tb.Count(false, int(c.preOut.Swap(0)))
	}
	s.connMu.Unlock()
	close(c.closed)
}

// serveStartTLS hands the plain connection of a START_TLS listener to the
// telnet handler, which runs the handshake and calls back to learn the
// tenant before it connects anywhere. The handler counts the session's
// end; the refusals decided here are logged here, rate-limited.
func (s *Server) serveStartTLS(c *conn, st *listenerState) {
	defer c.abort(nil)
	admit := func(cs tls.ConnectionState) (certs.Peer, error) {
		if !c.sock.gate.handshaken(c) {
			c.abort(errEvicted) // not the client's failure: the handler counts nothing
			return certs.Peer{}, errEvicted
		}
		if len(cs.PeerCertificates) == 0 {
			return certs.Peer{}, ErrTLSConfig
		}
		seen := s.revalidations.Load()
		id, err := s.handshakeDone(c, cs)
		if err != nil {
			s.logRefusal(c, slog.LevelInfo, "client certificate not accepted", err)
			return certs.Peer{}, err
		}
		c.idMu.Lock()
		c.cs = &cs
		c.idMu.Unlock()
		if _, err := s.admit(c, id, seen); err != nil {
			s.logRefusal(c, slog.LevelWarn, "connection refused", err, "tenant", id.Tenant)
			return certs.Peer{}, err
		}
		if c.route != st.routeKey(id.Tenant) {
			// A reload changed this tenant's route during the handshake;
			// the handler below still holds the old one.
			err := fmt.Errorf("%w: route of tenant %q changed by a reload", ErrConfig, id.Tenant)
			s.logRefusal(c, slog.LevelWarn, "connection refused", err)
			return certs.Peer{}, err
		}
		return id, nil
	}
	err := st.telnet.ServeStartTLS(c.ctx, c.raw, st.tls, admit)
	if !c.sock.gate.handshaken(c) {
		c.raw.Close() // evicted: logged and counted by the gate's caller
		return
	}
	var he *telnet.HandshakeError
	switch {
	case errors.As(err, &he):
		s.handshakeFailed(c, he.State, he.Err)
	case errors.Is(err, telnet.ErrStartTLS):
		s.logRefusal(c, slog.LevelInfo, "START_TLS refused", err)
	}
	c.raw.Close()
}
