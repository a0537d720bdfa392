package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// conn is one client connection from accept (or ServeConn) to close: what
// the proxy knows of it and counts for it. serve.go carries it through its
// life.
type conn struct {
	sock     *socket
	listener string
	source   netip.AddrPort
	// raw is the socket (counted, and closed without a TLS close_notify,
	// which could block on a peer that does not read); stream is the
	// verified stream served once the handshake is done (the *tls.Conn
	// over raw, or the connection ServeConn was handed).
	raw    *relay.CountingConn
	stream net.Conn
	closed chan struct{}
	// handed is a connection ServeConn was handed: its raw socket is not
	// under its stream, but beside it.
	handed bool

	identified atomic.Bool
	idMu       sync.Mutex
	peer       certs.Peer
	// cs is the TLS state of a START_TLS session, whose TLS connection
	// lives inside the telnet handler (stream is nil then).
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
	// sess is what an admin's drain marks (sessions.go).
	sess sessionState

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
	return c.stream.(connStater).ConnectionState()
}

// connStater is a connection that reports its TLS handshake: *tls.Conn,
// and what ServeConn takes.
type connStater interface {
	ConnectionState() tls.ConnectionState
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
			if err := s.stillValid(c, id.Env()); err != nil {
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
	c.route = st.routeKey(id.Env())
	s.active[activeKey{c.listener, id.Env()}]++
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
	if !c.sock.state.Load().hasRoute(c.identity().Env(), key) {
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
	delete(s.conns, c)
	if c.identified.Load() {
		id := c.identity()
		s.perTen.Release(tenantSlot{c.sock, id.Tenant})
		if k := (activeKey{c.listener, id.Env()}); s.active[k] <= 1 {
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
