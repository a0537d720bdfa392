package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// floodRig is a proxy in a "gate" namespace and a "cloud" namespace
// holding many source addresses, joined by a veth pair on 2001:db8::/48.
type floodRig struct {
	h     *harness
	gate  *netns.NS
	cloud *netns.NS
	addr  string // the listener, [2001:db8::1]:port
}

var gateAddr = netip.MustParseAddr("2001:db8::1")

// tenantSource is the tenant's address, in a /64 of its own.
const tenantSource = "2001:db8:0:2::1"

func newFloodRig(t *testing.T, sources []string, lim policy.Limits) *floodRig {
	gate, cloud := netns.New(t, "gate"), netns.New(t, "cloud")
	addrs := []string{tenantSource + "/48"}
	for _, s := range sources {
		addrs = append(addrs, s+"/48")
	}
	netns.Connect(t, gate, []string{gateAddr.String() + "/48"}, cloud, addrs)
	echo := lineEcho(t) // on the main namespace's loopback, where the proxy dials
	h := newHarness(t, lim)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	raw.Addr, raw.Limits = gateAddr, lim
	// The listening socket is made in the gate namespace; the proxy's
	// goroutines, and its backend dials, stay in the main one.
	if err := gate.Do(func() error {
		return h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{raw}})
	}); err != nil {
		t.Fatal(err)
	}
	return &floodRig{h: h, gate: gate, cloud: cloud, addr: h.addr("raw")}
}

// hold opens n connections from each source and keeps them, sending
// nothing. The flood is bounded: it ends when every connection is open.
func (r *floodRig) hold(t *testing.T, sources []string, n int) []net.Conn {
	var conns []net.Conn
	err := r.cloud.Do(func() error {
		for i := range n {
			for _, s := range sources {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(s)}, Timeout: 10 * time.Second}
				c, err := d.Dial("tcp6", r.addr)
				if err != nil {
					return fmt.Errorf("flood connection %d from %s: %w", i, s, err)
				}
				conns = append(conns, c)
			}
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return conns
}

// tenant opens an mTLS session from the tenant's address and checks that
// it is relayed.
func (r *floodRig) tenant(t *testing.T) (*session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := r.cloud.DialContext(ctx, "tcp6", "["+tenantSource+"]:0", r.addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(nc, r.h.pki.clientTLS(r.h.pki.acme, "localhost"))
	t.Cleanup(func() { c.Close() })
	s := &session{c: c, br: bufio.NewReader(c)}
	return s, s.ping()
}

// addrsIn returns n addresses: base with its last 16 bits counting from 1.
func addrsIn(base string, n int) []string {
	b := netip.MustParseAddr(base).As16()
	var out []string
	for i := 1; i <= n; i++ {
		b[14], b[15] = byte(i>>8), byte(i)
		out = append(out, netip.AddrFrom16(b).String())
	}
	return out
}

// TestPreHandshakeFloodFromOneVM replays the attack at a tenth of its
// size: 40 addresses of one IPv6 /64 (one cloud VM) hold as many
// connections as the listener has slots, each sending nothing. Counted
// as one source, they never hold more than pre_handshake_per_source
// slots, and the tenant's new mTLS connections all succeed.
func TestPreHandshakeFloodFromOneVM(t *testing.T) {
	lim := testLimits()
	lim.MaxConns, lim.MaxPreHandshake, lim.MaxPreHandshakePerSource = 1000, 100, 64
	lim.HandshakeTimeout = 10 * time.Second
	vm := addrsIn("2001:db8:0:1::", 40)
	r := newFloodRig(t, vm, lim)
	r.hold(t, vm, 25) // 1,000 connections: every slot of the listener
	for i := range 20 {
		if _, err := r.tenant(t); err != nil {
			t.Fatalf("tenant connection %d during the flood: %v", i, err)
		}
	}
	if v := r.h.metric("gatehouse_proxy_handshakes_pending", "raw"); v > 64 {
		t.Errorf("%v unfinished handshakes held, want at most the per-source 64", v)
	}
	if v := r.h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake_source"); v < 1000-64 {
		t.Errorf("%v evicted for the per-source budget, want at least %d", v, 1000-64)
	}
}

// TestPreHandshakeFloodFromManySources: a flood spread over 100 /64s,
// each within its per-source budget, stops at pre_handshake; the tenant's
// identified sessions keep their slots and stay served, and new tenant
// connections take the flood's place until the listener holds only
// identified connections.
func TestPreHandshakeFloodFromManySources(t *testing.T) {
	lim := testLimits()
	lim.MaxConns, lim.MaxPreHandshake, lim.MaxPreHandshakePerSource = 200, 50, 4
	lim.HandshakeTimeout = 10 * time.Second
	var sources []string
	for i := range 100 {
		sources = append(sources, fmt.Sprintf("2001:db8:0:%x::1", 0x100+i))
	}
	r := newFloodRig(t, sources, lim)
	var identified []*session
	for i := range 150 {
		s, err := r.tenant(t)
		if err != nil {
			t.Fatalf("tenant session %d before the flood: %v", i, err)
		}
		identified = append(identified, s)
	}
	r.hold(t, sources, 3) // 300 connections, 3 per source
	// The accept loop may trail the dials a little.
	if !waitFor(func() bool {
		return r.h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake") == 250
	}) {
		t.Errorf("%v evicted for the listener's budget, want 250",
			r.h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake"))
	}
	if v := r.h.metric("gatehouse_proxy_handshakes_pending", "raw"); v != 50 {
		t.Errorf("%v unfinished handshakes held, want pre_handshake (50)", v)
	}
	for i, s := range identified {
		if err := s.ping(); err != nil {
			t.Fatalf("identified session %d lost to the flood: %v", i, err)
		}
	}
	// 150 identified + 50 unfinished = 200: each new tenant connection
	// takes an unfinished one's place.
	for i := range 50 {
		if _, err := r.tenant(t); err != nil {
			t.Fatalf("tenant connection %d into a listener holding the flood: %v", i, err)
		}
	}
	if v := r.h.metric("gatehouse_proxy_handshakes_pending", "raw"); v != 0 {
		t.Errorf("%v unfinished handshakes left, want 0", v)
	}
	if _, err := r.tenant(t); err == nil {
		t.Error("a connection beyond 200 identified ones was served")
	}
}

// pausedConn holds every write after the first until release is closed:
// a tenant whose ClientHello has gone out and whose second flight waits
// (a slow network, a busy platform).
type pausedConn struct {
	net.Conn
	writes  atomic.Int32
	release chan struct{}
}

func (c *pausedConn) Write(b []byte) (int, error) {
	if c.writes.Add(1) > 1 {
		<-c.release
	}
	return c.Conn.Write(b)
}

// writesSeen reports whether the first write went out.
func (c *pausedConn) writesSeen() bool { return c.writes.Load() > 0 }

// TestPreHandshakeFloodDuringTenantHandshake replays the attack on a
// handshake in progress: while a tenant's TLS handshake waits for its
// second flight, 64 /64s of the tenant's own /48, each within its
// per-source budget, open five times the listener's pre_handshake budget
// of connections. Evictions fall on the flood's largest sources, never on
// the tenant's handshake, which then completes.
func TestPreHandshakeFloodDuringTenantHandshake(t *testing.T) {
	lim := testLimits()
	lim.MaxConns, lim.MaxPreHandshake, lim.MaxPreHandshakePerSource = 1000, 100, 4
	lim.HandshakeTimeout = 30 * time.Second
	var sources []string
	for i := range 64 {
		sources = append(sources, fmt.Sprintf("2001:db8:0:%x::1", 0x100+i))
	}
	r := newFloodRig(t, sources, lim)

	nc, err := r.cloud.DialContext(ctxTimeout(t, 10*time.Second), "tcp6", "["+tenantSource+"]:0", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	paused := &pausedConn{Conn: nc, release: make(chan struct{})}
	c := tls.Client(paused, r.h.pki.clientTLS(r.h.pki.acme, "localhost"))
	t.Cleanup(func() { c.Close() })
	handshake := make(chan error, 1)
	go func() { handshake <- c.Handshake() }()
	if !waitFor(func() bool { return paused.writesSeen() }) {
		t.Fatal("the tenant's ClientHello never went out")
	}

	const flood = 8 // per source: 512 connections
	r.hold(t, sources, flood)
	evicted := func() float64 {
		return r.h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake") +
			r.h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake_source")
	}
	// 512 + the tenant's, of which the budget keeps 100.
	if !waitFor(func() bool { return evicted() == 64*flood+1-100 }) {
		t.Fatalf("%v evictions, want %d", evicted(), 64*flood+1-100)
	}
	close(paused.release)
	if err := <-handshake; err != nil {
		t.Fatalf("the tenant's handshake, under way during the flood: %v", err)
	}
	s := &session{c: c, br: bufio.NewReader(c)}
	if err := s.ping(); err != nil {
		t.Fatalf("the tenant's session after the flood: %v", err)
	}
}
