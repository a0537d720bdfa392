package proxy

import (
	"net"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// accept decides, in the accept loop of sk, what becomes of a new
// connection: closed at once when the listener is full, otherwise counted
// in and served. The
// limits are those of the generation in force now, so a reload changes
// them for the next connection.
func (s *Server) accept(sk *socket, nc net.Conn) func() {
	st := sk.state.Load()
	now := time.Now()
	c := &conn{
		sock:     sk,
		listener: st.l.Name,
		source:   addrPort(nc.RemoteAddr()),
		closed:   make(chan struct{}),
	}
	if !sk.gate.admit(c, st.l.Limits, now) {
		s.refused.WithLabelValues(c.listener, reasonListenerFull).Inc()
		// A flood is when this happens: through the refusal limit.
		if ok, held := s.refusals.allow(now); ok {
			s.logger.Warn("connection refused: listener full", "listener", c.listener, "source", c.source.String(),
				"limit", st.l.Limits.MaxConns, "similar_lines_suppressed", held)
		}
		return nil
	}
	c.raw = relay.NewCountingConn(nc, c, func() { s.forget(c) })
	s.connMu.Lock()
	s.conns[c] = struct{}{}
	s.connMu.Unlock()
	return func() { s.handle(c, st) }
}

func (s *Server) acceptFailed(sk *socket, err error, backoff time.Duration) {
	s.logger.Warn("accept failed, backing off", "addr", sk.addr, "err", err, "backoff", backoff)
}

// rearm gives the open tcp and terminal sessions of every listener the
// idle timeout and maximum length of the new generation (per tenant).
// Other limits apply to open connections as they are read (per-tenant
// caps at the next admission, HTTP settings per httpServer).
func (s *Server) rearm(states map[string]*listenerState) {
	for _, st := range states {
		if st.telnet != nil {
			s.sessions.Rearm(st.l.Name, telnetLimits(st.l))
		}
	}
	type tcpTimer struct {
		t   *relay.Timer
		lim policy.StreamLimits
	}
	var timers []tcpTimer
	s.connMu.Lock()
	for c := range s.conns {
		if c.timer != nil {
			st := c.sock.state.Load()
			timers = append(timers, tcpTimer{c.timer, st.l.ForTenant(c.identity().Tenant).TCP})
		}
	}
	s.connMu.Unlock()
	for _, t := range timers {
		t.t.Set(t.lim.IdleTimeout, t.lim.MaxSession)
	}
}

// telnetLimits returns the terminal session limits of l's tenants.
func telnetLimits(l policy.Listener) func(tenant string) policy.TelnetLimits {
	return func(tenant string) policy.TelnetLimits { return l.ForTenant(tenant).Telnet }
}
