package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

// Apply makes p's listeners the running ones. It refuses a policy whose
// listeners or routes fail policy.CheckListeners, then builds every
// listener's state and binds every new address; if anything fails nothing
// changes. Then it swaps all states at once and lets listeners p no longer
// has drain in the background.
func (s *Server) Apply(p *policy.Policy) error {
	if p == nil {
		return fmt.Errorf("%w: nil policy", ErrConfig)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	states := make(map[string]*listenerState, len(p.Listeners))
	fail := func(err error) error {
		for _, st := range states {
			st.close()
		}
		return err
	}
	// The one validation of listeners and routes; the protocol handlers
	// built below trust what it passed.
	if errs := p.CheckListeners(); len(errs) > 0 {
		all := make([]error, len(errs))
		for i, e := range errs {
			all[i] = e
		}
		return fmt.Errorf("%w: %w", ErrConfig, errors.Join(all...))
	}
	for _, l := range p.Listeners {
		addr := l.ListenAddress()
		if err := checkLimits(l); err != nil {
			return fail(err)
		}
		st, err := s.buildState(l)
		if err != nil {
			return fail(err)
		}
		st.source = p.Enforcement.SourcePrefix
		states[addr] = st
	}
	var opened []*socket
	for addr := range states {
		if _, ok := s.sockets[addr]; ok {
			continue
		}
		ln, err := s.bind(addr)
		if err != nil {
			for _, sk := range opened {
				sk.ln.Close()
			}
			return fail(fmt.Errorf("listen %s for %q: %w", addr, states[addr].l.Name, err))
		}
		opened = append(opened, s.newSocket(addr, ln))
	}
	// Commit: nothing below can fail.
	for _, sk := range opened {
		s.sockets[sk.addr] = sk
	}
	for addr, st := range states {
		sk := s.sockets[addr]
		if old := sk.state.Swap(st); old != nil {
			old.close()
		}
		// After the old generation stopped, so one listener's backends
		// are checked and counted once.
		st.start()
		var set *httpSettings
		if st.http != nil {
			hs := httpSettingsOf(st.l.Limits)
			set = &hs
		}
		s.useHTTP(sk, set)
	}
	for _, sk := range opened {
		s.start(sk)
	}
	s.rearm(states)
	// A tcp or telnet session, or an upgraded HTTP connection, lives on the
	// route it was admitted on: end those whose route this generation
	// removed or changed.
	ended := s.closeConns(func(c *conn) bool {
		return c.route != "" && !c.sock.state.Load().hasRoute(c.identity().Env(), c.route)
	})
	for _, c := range ended {
		s.logger.Info("session closed: its route was removed or changed by a reload", "listener", c.listener,
			"tenant", c.identity().Tenant, "environment", c.identity().Environment, "source", c.source.String(), "generation", p.Generation)
	}
	for addr, sk := range s.sockets {
		if _, keep := states[addr]; keep {
			continue
		}
		delete(s.sockets, addr)
		sk.ln.Close() // stop accepting now; the drain below may take a while
		// The drain time of the listener's last generation: the one its
		// connections were admitted under.
		grace := sk.state.Load().l.Limits.DrainTimeout
		s.drains.Add(1)
		go func() {
			defer s.drains.Done()
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			s.drain(ctx, sk)
		}()
	}
	s.series(p)
	s.checkDescriptorBudget(p)
	s.httpMetrics.Prune() // SOAP series of tenants no longer routed
	s.logger.Info("listeners applied", "generation", p.Generation, "listeners", len(states), "new", len(opened),
		"sessions_ended", len(ended))
	return nil
}

func (s *Server) buildState(l policy.Listener) (*listenerState, error) {
	st := &listenerState{l: l}
	var alpn []string
	switch {
	case l.Tunnel:
		// A gateway's: the connector serves the protocol, over HTTP/1.1
		// only (net/http serves HTTP/2 on its own *tls.Conn alone).
		if s.handoff == nil {
			return nil, fmt.Errorf("listener %q: %w: a tunnel listener without a gateway", l.Name, ErrConfig)
		}
		if l.Protocol.HTTP() {
			alpn = []string{"http/1.1"}
		}
	case l.Protocol == policy.ProtoHTTPS, l.Protocol == policy.ProtoSOAP:
		var prev *httpproxy.Handler
		if sk, ok := s.sockets[l.ListenAddress()]; ok {
			if old := sk.state.Load(); old != nil && old.l.Name == l.Name {
				prev = old.http
			}
		}
		h, err := httpproxy.New(httpproxy.Config{
			Previous:    prev,
			Listener:    l,
			InFlight:    s.inFlite,
			Metrics:     s.httpMetrics,
			AccessLog:   s.access,
			Logger:      s.logger,
			Descriptors: s.fds,
		})
		if err != nil {
			return nil, err
		}
		st.http = h
		alpn = []string{"h2", "http/1.1"}
	case l.Protocol == policy.ProtoTCP:
		routes, err := buildTCPRoutes(l)
		if err != nil {
			return nil, err
		}
		st.tcp = routes
	case l.Protocol.Telnet():
		h, err := telnet.New(telnet.Config{
			Listener:         l.Name,
			Protocol:         l.Protocol,
			Routes:           l.Routes,
			HandshakeTimeout: l.Limits.HandshakeTimeout,
			Limits:           telnetLimits(l),
			Sessions:         s.sessions,
			Descriptors:      s.fds,
			Logger:           s.logger,
			// Session start and end lines are the terminal access log.
			SessionLog: s.access,
		})
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		st.telnet = h
	default:
		return nil, fmt.Errorf("listener %q: %w: %q", l.Name, ErrUnsupported, l.Protocol)
	}
	tc, err := s.tlsSrc.TLSConfig(l.Name)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("listener %q: tls config: %w", l.Name, err)
	}
	if tc == nil || (tc.GetConfigForClient == nil && !demandsClientCert(tc)) {
		st.close()
		return nil, fmt.Errorf("listener %q: %w", l.Name, ErrTLSConfig)
	}
	st.tls = withALPN(tc, alpn)
	if st.http == nil {
		st.routes = map[policy.TenantEnv]string{}
		for _, r := range l.Routes {
			st.routes[r.Env()] = r.Key(l.Name, l.Protocol)
		}
	}
	return st, nil
}

// withALPN returns a copy of c offering protos, also on the configs its
// GetConfigForClient picks, and refusing any such config that does not
// demand a verified client certificate.
func withALPN(c *tls.Config, protos []string) *tls.Config {
	c = c.Clone()
	c.NextProtos = protos
	c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
	if get := c.GetConfigForClient; get != nil {
		outerOK := demandsClientCert(c)
		c.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(chi)
			if err != nil {
				return nil, err
			}
			if cc == nil {
				// The outer config applies: only if it demands a certificate.
				if !outerOK {
					return nil, ErrTLSConfig
				}
				return nil, nil
			}
			if !demandsClientCert(cc) {
				return nil, ErrTLSConfig
			}
			cc = cc.Clone()
			cc.NextProtos = protos
			cc.MinVersion = max(cc.MinVersion, tls.VersionTLS12)
			return cc, nil
		}
	}
	return c
}

// demandsClientCert reports whether c fails every handshake without a client
// certificate that checks out: either crypto/tls verifies the chain, or the
// TLS layer verifies it itself in VerifyConnection (which also runs on
// resumed sessions).
func demandsClientCert(c *tls.Config) bool {
	switch c.ClientAuth {
	case tls.RequireAndVerifyClientCert:
		return true
	case tls.RequireAnyClientCert:
		return c.VerifyConnection != nil
	}
	return false
}

// rearm gives the open tcp and terminal sessions and upgraded connections
// of every listener the idle timeout and maximum length of the new
// generation (per tenant). Other limits apply to open connections as they
// are read (per-tenant caps at the next admission, HTTP settings per
// httpServer).
func (s *Server) rearm(states map[string]*listenerState) {
	for _, st := range states {
		if st.telnet != nil {
			s.sessions.Rearm(st.l.Name, telnetLimits(st.l))
		}
	}
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for c := range s.conns {
		if c.timer != nil {
			s.setTimerLocked(c, c.timer)
		}
	}
}

// telnetLimits returns the terminal session limits of l's tenants.
func telnetLimits(l policy.Listener) func(tenant string) policy.TelnetLimits {
	return func(tenant string) policy.TelnetLimits { return l.ForTenant(tenant).Telnet }
}

// bind opens the listening socket of addr (see Config.Listen).
func (s *Server) bind(addr string) (net.Listener, error) {
	if s.listen != nil {
		return s.listen(addr)
	}
	return net.Listen("tcp", addr)
}
