package proxy

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Why the proxy closed a connection before serving it: the values of the
// reason label of gatehouse_proxy_connections_refused_total.
const (
	// A new connection, while the listener holds limits.connections
	// connections that all finished their handshake.
	reasonListenerFull = "listener_full"
	// A new connection, while the process is within the descriptor
	// reserve.
	reasonDescriptors = "descriptors"
	// The oldest unfinished handshake of the listener, closed to make room
	// for a new connection (limits.pre_handshake, or limits.connections
	// while unfinished handshakes hold some of them).
	reasonPreHandshake = "pre_handshake"
	// The oldest unfinished handshake of the same source, closed to make
	// room for its new one (limits.pre_handshake_per_source).
	reasonPreHandshakeSource = "pre_handshake_source"
	// An identified connection of a tenant at limits.connections_per_tenant.
	reasonTenantLimit = "tenant_limit"
)

var refusalReasons = []string{reasonListenerFull, reasonDescriptors, reasonPreHandshake, reasonPreHandshakeSource, reasonTenantLimit}

// gate admits the connections of one socket. It counts every connection
// the listener holds, and keeps the ones that have not finished their TLS
// handshake in the order they came, per listener and per source.
//
// When a budget is full, the OLDEST unfinished handshake is closed to make
// room, never the new connection refused. A flood that merely holds
// connections open without a handshake (the cheap attack: one SYN and
// nothing more, for handshake_timeout) would otherwise keep every newcomer
// out, a tenant's included, for as long as it cares to. With eviction a
// tenant's fresh connection gets a slot at once and needs it only for the
// milliseconds of its handshake; to push it out again a flood must open a
// whole budget of new connections within those milliseconds, which the
// per-source budget and the kernel's new_conn_rate make a matter of
// hundreds of sources rather than one machine. Identified connections are
// never evicted: once the listener holds limits.connections of them, a new
// connection is refused.
type gate struct {
	mu       sync.Mutex
	total    int       // connections held, identified or not
	pending  list.List // of *conn, unfinished handshakes, oldest first
	bySource map[netip.Prefix]*list.List
}

// admission is a connection's place at the gate. gate.mu guards it.
type admission struct {
	counted bool          // in gate.total
	evicted bool          // closed by the gate to make room
	src     netip.Prefix  // its source, as per-source limits count it
	all     *list.Element // in gate.pending
	same    *list.Element // in gate.bySource[src]
	since   time.Time
}

// eviction is an unfinished handshake the gate closed, and why.
type eviction struct {
	c      *conn
	reason string
}

// admit counts c in, making room by evicting as described on gate; it
// reports false (and evicts nothing) when the listener is full of
// identified connections. The caller closes the evicted connections.
func (g *gate) admit(c *conn, lim policy.Limits, now time.Time) ([]eviction, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.total-g.pending.Len() >= lim.MaxConns {
		return nil, false
	}
	var out []eviction
	if same := g.bySource[c.adm.src]; same != nil {
		for same.Len() >= lim.MaxPreHandshakePerSource {
			out = append(out, eviction{g.evict(same.Front().Value.(*conn)), reasonPreHandshakeSource})
		}
	}
	for g.pending.Len() > 0 && (g.pending.Len() >= lim.MaxPreHandshake || g.total >= lim.MaxConns) {
		out = append(out, eviction{g.evict(g.pending.Front().Value.(*conn)), reasonPreHandshake})
	}
	g.total++
	c.adm.counted = true
	c.adm.since = now
	c.adm.all = g.pending.PushBack(c)
	same := g.bySource[c.adm.src]
	if same == nil {
		if g.bySource == nil {
			g.bySource = map[netip.Prefix]*list.List{}
		}
		same = list.New()
		g.bySource[c.adm.src] = same
	}
	c.adm.same = same.PushBack(c)
	return out, true
}

// evict takes c out of the gate, its slot included, as if it had closed:
// its goroutine may take a moment to notice. gate.mu is held.
func (g *gate) evict(c *conn) *conn {
	c.adm.evicted = true
	g.drop(c)
	return c
}

// drop takes c out of the gate. gate.mu is held.
func (g *gate) drop(c *conn) {
	g.unpend(c)
	if c.adm.counted {
		c.adm.counted = false
		g.total--
	}
}

// unpend takes c off the unfinished handshakes. gate.mu is held.
func (g *gate) unpend(c *conn) {
	if c.adm.all == nil {
		return
	}
	g.pending.Remove(c.adm.all)
	same := g.bySource[c.adm.src]
	same.Remove(c.adm.same)
	if same.Len() == 0 {
		delete(g.bySource, c.adm.src)
	}
	c.adm.all, c.adm.same = nil, nil
}

// handshaken moves c from the unfinished handshakes to the connections
// that proved who they are (or failed to, and are closing). It reports
// false when the gate evicted c meanwhile.
func (g *gate) handshaken(c *conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.unpend(c)
	return !c.adm.evicted
}

// release lets c go; it may run more than once.
func (g *gate) release(c *conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.drop(c)
}

// counts returns the connections held and the unfinished handshakes.
func (g *gate) counts() (total, pending int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.total, g.pending.Len()
}
