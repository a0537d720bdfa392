package proxy

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
	"github.com/gatehouse-dmz/gatehouse/proxy/telnet"
)

var errEvicted = errors.New("unfinished handshake evicted for a newer connection")

// accept decides, in the accept loop of sk, what becomes of a new
// connection: closed at once within the descriptor reserve or when the
// listener is full of identified connections; otherwise counted in (which
// may evict unfinished handshakes, see gate) and served. The
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
	if s.descriptorsLow(c, fdOf(nc), now) {
		return nil
	}
	c.adm.src = st.source.Source(c.source.Addr())
	evicted, ok := sk.gate.admit(c, st.l.Limits, now)
	for _, e := range evicted {
		s.evict(e, now)
	}
	if !ok {
		s.listenerFull(c, st, now)
		return nil
	}
	if st.telnet != nil && st.l.StartTLS {
		c.ctx, c.abort = context.WithCancelCause(sk.ctx)
	}
	s.fds.Hold()
	c.raw = relay.NewCountingConn(nc, c, func() { s.forget(c) })
	s.connMu.Lock()
	s.conns[c] = struct{}{}
	s.connMu.Unlock()
	return func() { s.handle(c, st) }
}

// listenerFull counts and logs c, refused because its listener is full of
// identified connections.
func (s *Server) listenerFull(c *conn, st *listenerState, now time.Time) {
	s.refused.WithLabelValues(c.listener, reasonListenerFull).Inc()
	// A flood is when this happens: through the gate's own limit.
	if ok, held := s.gateLog.allow(now); ok {
		s.logger.Warn("connection refused: listener full", "listener", c.listener, "source", c.source.String(),
			"limit", st.l.Limits.MaxConns, "similar_lines_suppressed", held)
	}
}

// evict closes an unfinished handshake the gate pushed out.
func (s *Server) evict(e eviction, now time.Time) {
	if e.c.abort != nil {
		e.c.abort(errEvicted) // before the close its handler will see
	}
	e.c.raw.Close()
	s.refused.WithLabelValues(e.c.listener, e.reason).Inc()
	if ok, held := s.gateLog.allow(now); ok {
		budget := "limits.pre_handshake"
		if e.reason == reasonPreHandshakeSource {
			budget = "limits.pre_handshake_per_source"
		}
		s.logger.Warn("unfinished handshake closed: budget full, it makes room for a new connection",
			"listener", e.c.listener, "source", e.c.source.String(), "counted_as", e.c.adm.src.String(),
			"network", networkOf(e.c.adm.src).String(), "budget", budget,
			"age", now.Sub(e.c.adm.since).Round(time.Millisecond).String(), "sent_bytes", e.c.preIn.Load() > 0,
			"similar_lines_suppressed", held)
	}
}

// acceptFailed logs an accept error of sk, rate-limited: a client can
// cause them at will once descriptors run out.
func (s *Server) acceptFailed(sk *socket, err error, backoff time.Duration) {
	if ok, held := s.acceptLog.allow(time.Now()); ok {
		args := []any{"addr", sk.ln.Addr().String(), "err", err, "backoff", backoff}
		if st := sk.state.Load(); st != nil {
			args = append(args, "listener", st.l.Name)
		}
		if held > 0 {
			args = append(args, "similar_lines_suppressed", held)
		}
		if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
			args = append(args, "hint", "out of file descriptors: raise LimitNOFILE or lower limits.connections")
		}
		s.logger.Warn("accept failed, backing off", args...)
	}
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

// series makes the per-listener and per-tenant series the configuration
// determines exist from the start, and drops those of listeners and
// tenants it no longer has: connections_active per listener and routed
// tenant, telnet_sessions_total per terminal listener, routed tenant and
// result, connections_refused_total per listener and reason.
func (s *Server) series(p *policy.Policy) {
	want := map[[2]string]bool{}
	terminal := map[[2]string]bool{}
	var names []string
	for _, l := range p.Listeners {
		names = append(names, l.Name)
		for _, r := range l.Routes {
			k := [2]string{l.Name, r.Tenant}
			want[k] = true
			if l.Protocol == policy.ProtoTN3270 || l.Protocol == policy.ProtoTN5250 {
				terminal[k] = true
			}
		}
		if l.StartTLS {
			terminal[[2]string{l.Name, telnet.UnknownTenant}] = true
		}
	}
	s.connMu.Lock()
	s.configured = want
	s.connMu.Unlock()
	s.sessions.Series(terminal)
	for _, n := range s.seriesOf {
		if !slices.Contains(names, n) {
			s.refused.DeletePartialMatch(prometheus.Labels{"listener": n})
		}
	}
	for _, n := range names {
		for _, r := range refusalReasons {
			s.refused.WithLabelValues(n, r)
		}
	}
	s.seriesOf = names
	s.byteSeries(want, names)
}

// byteSeries gives every configured listener and routed tenant, and each
// listener's connections that never proved a tenant, their byte series at
// 0, and deletes those of pairs a reload removed once no connection of
// theirs is open (a draining one still counts into its series).
func (s *Server) byteSeries(want map[[2]string]bool, listeners []string) {
	now := maps.Clone(want)
	for _, n := range listeners {
		now[[2]string{n, unknownTenant}] = true
	}
	s.connMu.Lock()
	defer s.connMu.Unlock()
	for k := range s.bytesOf {
		if !now[k] && s.active[k] == 0 {
			s.bytes.DeleteLabelValues(k[0], k[1], "in")
			s.bytes.DeleteLabelValues(k[0], k[1], "out")
			delete(s.bytesOf, k)
		}
	}
	if s.bytesOf == nil {
		s.bytesOf = map[[2]string]bool{}
	}
	for k := range now {
		s.bytes.WithLabelValues(k[0], k[1], "in")
		s.bytes.WithLabelValues(k[0], k[1], "out")
		s.bytesOf[k] = true
	}
}

// collectConns reports the identified connections of every configured
// listener and tenant (zero included) and of any still open beyond them
// (draining after a reload), and the unfinished handshakes per listener.
func (s *Server) collectConns(ch chan<- prometheus.Metric) {
	s.connMu.Lock()
	for k := range s.configured {
		ch <- prometheus.MustNewConstMetric(s.activeDesc, prometheus.GaugeValue, float64(s.active[k]), k[0], k[1])
	}
	for k, n := range s.active {
		if !s.configured[k] {
			ch <- prometheus.MustNewConstMetric(s.activeDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
		}
	}
	s.connMu.Unlock()
	s.mu.Lock()
	for _, sk := range s.sockets {
		if st := sk.state.Load(); st != nil {
			_, pending := sk.gate.counts()
			ch <- prometheus.MustNewConstMetric(s.pendingDesc, prometheus.GaugeValue, float64(pending), st.l.Name)
		}
	}
	s.mu.Unlock()
}
