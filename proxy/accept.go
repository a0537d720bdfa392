package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
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

// addrPort is a connection's remote address as an AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
