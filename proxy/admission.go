package proxy

import (
	"container/heap"
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
	// A new connection, or a tcp session's backend connection, while the
	// process is within the descriptor reserve.
	reasonDescriptors = "descriptors"
	// An unfinished handshake closed to make room for a new connection
	// (limits.pre_handshake, or limits.connections while unfinished
	// handshakes hold some of them), taken from the network and source
	// holding the most (see gate).
	reasonPreHandshake = "pre_handshake"
	// An unfinished handshake of the same source, closed to make room for
	// its new one (limits.pre_handshake_per_source).
	reasonPreHandshakeSource = "pre_handshake_source"
	// An identified connection of a tenant at limits.connections_per_tenant.
	reasonTenantLimit = "tenant_limit"
)

var refusalReasons = []string{reasonListenerFull, reasonDescriptors, reasonPreHandshake, reasonPreHandshakeSource, reasonTenantLimit}

// Networks: the unfinished handshakes of a listener are shared out per
// network first, then per source. A network is this many leading bits of
// a source address (never fewer than the source's own): what one
// organisation commonly holds, an IPv4 /24 and an IPv6 /48, so that a
// machine with many /64s, or a site with many machines, counts as one.
const (
	networkBitsV4 = 24
	networkBitsV6 = 48
)

// networkOf returns the network of source src.
func networkOf(src netip.Prefix) netip.Prefix {
	bits := networkBitsV6
	if src.Addr().Is4() {
		bits = networkBitsV4
	}
	if src.Bits() <= bits {
		return src
	}
	p, _ := src.Addr().Prefix(bits)
	return p
}

// gate admits the connections of one socket. It counts every connection
// the listener holds, and keeps the ones that have not finished their TLS
// handshake per network and per source, in the order they came.
//
// When a budget is full, an unfinished handshake is closed to make room:
// the new connection is never refused. A flood that merely holds
// connections open (the cheap attack: a SYN and nothing more, for
// handshake_timeout) would otherwise keep every newcomer out, tenants
// included, for as long as it cares to.
//
// Which one makes room is chosen so that a flood pays for itself:
//   - per source (limits.pre_handshake_per_source): one of the newcomer's
//     own source;
//   - per listener (limits.pre_handshake, and limits.connections while
//     unfinished handshakes hold some of them): one of the network
//     holding the most unfinished handshakes, and there of its source
//     holding the most; on a tie, of the network (source) whose oldest is
//     the oldest. The newcomer counts with its own, so a network or
//     source that holds the most pays for its own newcomers;
//   - within the source, one that has sent no byte yet, else the oldest;
//     never the newcomer.
//
// A tenant's handshake (one of few of its network) is so evicted only
// when no network holds more unfinished handshakes than the tenant's, and
// no source of its network more than the tenant's source: a flood from
// one network, over however many addresses or /64s, evicts only itself,
// and to push a tenant out it must come from about as many networks as
// the budget has handshakes, each holding one open when the tenant's
// begins. Identified connections are never evicted: once the listener
// holds limits.connections of them, a new connection is refused.
type gate struct {
	mu      sync.Mutex
	total   int // connections held, identified or not
	pending int // unfinished handshakes
	seq     uint64
	nets    groups // networks with unfinished handshakes, the next to pay on top
	byNet   map[netip.Prefix]*group
}

// admission is a connection's place at the gate. gate.mu guards it.
type admission struct {
	counted bool         // in gate.total
	evicted bool         // closed by the gate to make room
	src     netip.Prefix // its source, as per-source limits count it
	seq     uint64       // its place in the order of arrival
	since   time.Time
	net     *group // while unfinished: its network
	source  *group // and its source there
	inNet   *list.Element
	inSrc   *list.Element
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
	return g.countIn(c, lim, now, true)
}

// admitVerified is admit for a connection whose handshake its source
// already ran (ServeConn): it counts in the listener's connections but
// not among the unfinished handshakes, and like a newcomer makes room
// among those while the listener is full.
func (g *gate) admitVerified(c *conn, lim policy.Limits, now time.Time) ([]eviction, bool) {
	return g.countIn(c, lim, now, false)
}

func (g *gate) countIn(c *conn, lim policy.Limits, now time.Time, pending bool) ([]eviction, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.total-g.pending >= lim.MaxConns {
		return nil, false
	}
	g.seq++
	c.adm.seq, c.adm.since = g.seq, now
	var out []eviction
	if pending {
		g.add(c)
		for c.adm.source.conns.Len() > lim.MaxPreHandshakePerSource {
			v := c.adm.source.victim(c)
			if v == nil {
				break // a budget below one: checkLimits refuses it
			}
			out = append(out, eviction{g.evict(v), reasonPreHandshakeSource})
		}
	} else {
		g.total++
		c.adm.counted = true
	}
	for (g.pending > lim.MaxPreHandshake || g.total > lim.MaxConns) && len(g.nets) > 0 {
		v := g.nets[0].sub[0].victim(c)
		if v == nil {
			// Only the newcomer is left to pay: unreachable, since it is
			// the newest of every tie, but it must never evict itself.
			g.drop(c)
			return out, false
		}
		out = append(out, eviction{g.evict(v), reasonPreHandshake})
	}
	return out, true
}

// add counts c in as an unfinished handshake. gate.mu is held.
func (g *gate) add(c *conn) {
	g.total++
	g.pending++
	c.adm.counted = true
	if g.byNet == nil {
		g.byNet = map[netip.Prefix]*group{}
	}
	key := networkOf(c.adm.src)
	n := g.byNet[key]
	newNet := n == nil
	if newNet {
		n = &group{key: key, bySrc: map[netip.Prefix]*group{}}
		g.byNet[key] = n
	}
	s := n.bySrc[c.adm.src]
	newSrc := s == nil
	if newSrc {
		s = &group{key: c.adm.src}
		n.bySrc[c.adm.src] = s
	}
	c.adm.net, c.adm.source = n, s
	c.adm.inNet = n.conns.PushBack(c)
	c.adm.inSrc = s.conns.PushBack(c)
	if newSrc {
		heap.Push(&n.sub, s)
	} else {
		heap.Fix(&n.sub, s.idx)
	}
	if newNet {
		heap.Push(&g.nets, n)
	} else {
		heap.Fix(&g.nets, n.idx)
	}
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
	n, s := c.adm.net, c.adm.source
	if n == nil {
		return
	}
	g.pending--
	n.conns.Remove(c.adm.inNet)
	s.conns.Remove(c.adm.inSrc)
	if s.conns.Len() == 0 {
		heap.Remove(&n.sub, s.idx)
		delete(n.bySrc, s.key)
	} else {
		heap.Fix(&n.sub, s.idx)
	}
	if n.conns.Len() == 0 {
		heap.Remove(&g.nets, n.idx)
		delete(g.byNet, n.key)
	} else {
		heap.Fix(&g.nets, n.idx)
	}
	c.adm.net, c.adm.source, c.adm.inNet, c.adm.inSrc = nil, nil, nil, nil
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
	return g.total, g.pending
}

// group is the unfinished handshakes of one network or of one source,
// oldest first. A network's sub and bySrc are its sources.
type group struct {
	key   netip.Prefix
	conns list.List // of *conn
	idx   int       // in its heap
	sub   groups
	bySrc map[netip.Prefix]*group
}

// victim returns the connection of source s that makes room: one that
// has sent nothing yet, else the oldest; never newcomer.
func (s *group) victim(newcomer *conn) *conn {
	var oldest *conn
	for e := s.conns.Front(); e != nil; e = e.Next() {
		c := e.Value.(*conn)
		if c == newcomer {
			continue
		}
		if c.preIn.Load() == 0 {
			return c
		}
		if oldest == nil {
			oldest = c
		}
	}
	return oldest
}

// groups is a heap of groups: the one holding the most on top, and of
// those the one whose oldest came first.
type groups []*group

func (h groups) Len() int { return len(h) }

func (h groups) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.conns.Len() != b.conns.Len() {
		return a.conns.Len() > b.conns.Len()
	}
	return a.conns.Front().Value.(*conn).adm.seq < b.conns.Front().Value.(*conn).adm.seq
}

func (h groups) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}

func (h *groups) Push(x any) {
	g := x.(*group)
	g.idx = len(*h)
	*h = append(*h, g)
}

func (h *groups) Pop() any {
	old := *h
	g := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	g.idx = -1
	return g
}
