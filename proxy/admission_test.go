package proxy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// pendingConn is a connection from source src (as per-source limits count
// it) that has sent its first bytes, or nothing yet.
func pendingConn(src string, sent bool) *conn {
	c := &conn{adm: admission{src: netip.MustParsePrefix(src)}}
	if sent {
		c.preIn.Store(1)
	}
	return c
}

// admitAll admits cs in turn and reports whether victim was evicted.
func admitAll(t *testing.T, g *gate, lim policy.Limits, victim *conn, cs ...*conn) bool {
	t.Helper()
	hit := false
	for _, c := range cs {
		ev, ok := g.admit(c, lim, time.Now())
		if !ok {
			t.Fatalf("connection from %s refused", c.adm.src)
		}
		for _, e := range ev {
			if e.c == c {
				t.Fatalf("a newcomer from %s evicted itself", c.adm.src)
			}
			hit = hit || e.c == victim
		}
	}
	return hit
}

// TestGateFloodFromOneNetwork: a flood spread over many sources of one
// network, each within its per-source budget, fills the listener's
// budget many times over; a tenant's handshake in progress, from another
// network or from another source of the same one, is never the one
// evicted.
func TestGateFloodFromOneNetwork(t *testing.T) {
	lim := policy.Limits{MaxConns: 1000, MaxPreHandshake: 100, MaxPreHandshakePerSource: 4}
	for _, tc := range []struct {
		name, tenant string
		flood        func(i int) string
	}{
		{"64 /64s of the tenant's /48", "2001:db8:0:2::/64", func(i int) string { return fmt.Sprintf("2001:db8:0:%x::/64", 0x100+i) }},
		{"64 /64s of another /48", "2001:db8:0:2::/64", func(i int) string { return fmt.Sprintf("2001:db8:7:%x::/64", i) }},
		{"64 addresses of the tenant's /24", "203.0.113.7/32", func(i int) string { return fmt.Sprintf("203.0.113.%d/32", 100+i) }},
		{"64 addresses of another /24", "203.0.113.7/32", func(i int) string { return fmt.Sprintf("198.51.100.%d/32", 100+i) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g gate
			tenant := pendingConn(tc.tenant, true)
			admitAll(t, &g, lim, nil, tenant)
			var flood []*conn
			for i := range 2000 {
				flood = append(flood, pendingConn(tc.flood(i%64), false))
			}
			if admitAll(t, &g, lim, tenant, flood...) {
				t.Fatal("the tenant's handshake was evicted by a flood of one network")
			}
			if total, pending := g.counts(); pending != lim.MaxPreHandshake || total != pending {
				t.Errorf("held %d, unfinished %d: want the budget of %d", total, pending, lim.MaxPreHandshake)
			}
			if !g.handshaken(tenant) {
				t.Error("the tenant's handshake cannot finish")
			}
		})
	}
}

// TestGateNearFull: when identified connections leave little room for
// handshakes, a source within its per-source budget pays for its own
// newcomers, and does not evict another source's handshake.
func TestGateNearFull(t *testing.T) {
	lim := policy.Limits{MaxConns: 100, MaxPreHandshake: 50, MaxPreHandshakePerSource: 4}
	var g gate
	for range 97 {
		c := pendingConn("198.51.100.1/32", true)
		admitAll(t, &g, lim, nil, c)
		g.handshaken(c)
	}
	tenant := pendingConn("203.0.113.7/32", true)
	admitAll(t, &g, lim, nil, tenant)
	for range 3 {
		if admitAll(t, &g, lim, tenant, pendingConn("192.0.2.66/32", false)) {
			t.Fatal("a source holding 3 of its 4 evicted another source's handshake")
		}
	}
	if _, pending := g.counts(); pending != 3 {
		t.Errorf("%d unfinished handshakes, want 3: the tenant's and two of the other source", pending)
	}
}

// TestGateSilentFirst: within a source, a connection that has sent
// nothing makes room before one in the middle of its handshake, even an
// older one.
func TestGateSilentFirst(t *testing.T) {
	lim := policy.Limits{MaxConns: 100, MaxPreHandshake: 50, MaxPreHandshakePerSource: 2}
	var g gate
	tenant := pendingConn("203.0.113.7/32", true)
	silent := pendingConn("203.0.113.7/32", false)
	admitAll(t, &g, lim, nil, tenant, silent)
	ev, _ := g.admit(pendingConn("203.0.113.7/32", false), lim, time.Now())
	if len(ev) != 1 || ev[0].c != silent || ev[0].reason != reasonPreHandshakeSource {
		t.Fatalf("evicted %v, want the silent connection for the per-source budget", ev)
	}
}

// TestGateManyNetworksEvict: the bound the fairness leaves, as the README
// states it: a flood from as many networks as the budget has handshakes,
// each holding one, does evict a tenant's handshake once the tenant's is
// the oldest of the networks holding one.
func TestGateManyNetworksEvict(t *testing.T) {
	lim := policy.Limits{MaxConns: 1000, MaxPreHandshake: 10, MaxPreHandshakePerSource: 4}
	var g gate
	tenant := pendingConn("203.0.113.7/32", true)
	admitAll(t, &g, lim, nil, tenant)
	var flood []*conn
	for i := range 10 {
		flood = append(flood, pendingConn(fmt.Sprintf("198.51.%d.1/32", i), true))
	}
	if !admitAll(t, &g, lim, tenant, flood...) {
		t.Error("ten networks of one handshake each did not evict the oldest, the tenant's")
	}
}

// TestGateBookkeeping: under random admissions, handshakes, releases
// and evictions the counts, the lists and the heaps stay consistent, and
// everything released leaves the gate empty.
func TestGateBookkeeping(t *testing.T) {
	lim := policy.Limits{MaxConns: 40, MaxPreHandshake: 15, MaxPreHandshakePerSource: 3}
	rng := rand.New(rand.NewPCG(1, 2))
	var g gate
	var live []*conn
	for range 20000 {
		switch op := rng.IntN(4); {
		case op < 2 || len(live) == 0:
			c := pendingConn(fmt.Sprintf("192.0.%d.%d/32", rng.IntN(3), rng.IntN(4)), rng.IntN(2) == 0)
			ev, ok := g.admit(c, lim, time.Now())
			for _, e := range ev {
				g.release(e.c) // its goroutine notices and closes
			}
			if ok {
				live = append(live, c)
			}
		case op == 2:
			g.handshaken(live[rng.IntN(len(live))])
		default:
			i := rng.IntN(len(live))
			g.release(live[i])
			live = append(live[:i], live[i+1:]...)
		}
		checkGate(t, &g)
	}
	for _, c := range live {
		g.release(c)
	}
	if total, pending := g.counts(); total != 0 || pending != 0 || len(g.byNet) != 0 || len(g.nets) != 0 {
		t.Errorf("after every release: total %d, pending %d, %d networks, heap %d", total, pending, len(g.byNet), len(g.nets))
	}
}

func checkGate(t *testing.T, g *gate) {
	t.Helper()
	if len(g.nets) != len(g.byNet) {
		t.Fatalf("%d networks in the heap, %d in the map", len(g.nets), len(g.byNet))
	}
	sum := 0
	for i, n := range g.nets {
		if n.idx != i || i > 0 && g.nets.Less(i, (i-1)/2) {
			t.Fatalf("network heap broken at %d", i)
		}
		inSrc := 0
		for j, s := range n.sub {
			if s.idx != j || j > 0 && n.sub.Less(j, (j-1)/2) {
				t.Fatalf("source heap of %s broken at %d", n.key, j)
			}
			inSrc += s.conns.Len()
		}
		if inSrc != n.conns.Len() || len(n.sub) != len(n.bySrc) {
			t.Fatalf("network %s: %d connections, %d in its sources", n.key, n.conns.Len(), inSrc)
		}
		sum += n.conns.Len()
	}
	if sum != g.pending || g.pending > g.total {
		t.Fatalf("pending %d, %d in the networks, total %d", g.pending, sum, g.total)
	}
}
