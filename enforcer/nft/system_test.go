package nft

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// goldenPolicy is the fixed policy of testdata/golden.nft and the README.
func goldenPolicy() *policy.Policy {
	return &policy.Policy{
		Generation: 1,
		Enforcement: policy.Enforcement{
			NFTables: true,
			Mode:     policy.ModeStrict,
			Management: []policy.Management{
				{Prefix: netip.MustParsePrefix("198.51.100.0/28"), Ports: []uint16{22, 9477}},
				{Prefix: netip.MustParsePrefix("2001:db8:ff::/64"), Ports: []uint16{22}},
			},
			ScanBlock:         policy.ScanBlock{DistinctPorts: 10, Window: 10 * time.Second, BlockFor: 10 * time.Minute},
			NewConnRate:       policy.Rate{PerSecond: 50, Burst: 100},
			MaxConnsPerSource: 20,
			SourcePrefix:      policy.SourcePrefix{V4: 32, V6: 64},
		},
		Admitted: policy.Admitted{
			V4: prefixes("192.0.2.0/24", "203.0.113.0/25", "203.0.113.128/26"),
			V6: prefixes("2001:db8:1::/48", "2001:db8:a::/48"),
		},
		Listeners: []policy.Listener{
			{Name: "web", Port: 443, Protocol: policy.ProtoHTTPS},
			{Name: "services", Port: 8443, Protocol: policy.ProtoSOAP},
			{Name: "mainframe", Port: 992, Protocol: policy.ProtoTN3270},
		},
	}
}

// forwardPolicy is goldenPolicy on a router: the forward chain polices
// flows entering on eth1 (testdata/golden-forward.nft).
func forwardPolicy() *policy.Policy {
	p := goldenPolicy()
	p.Interface = "eth1"
	p.Enforcement.Forward = true
	return p
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// gate is a namespace with an Enforcer working in it.
type gate struct {
	ns *netns.NS
	fd int
	e  *Enforcer
}

func newGate(t testing.TB, cfg Config) *gate {
	t.Helper()
	ns := netns.New(t, "gate")
	return newGateIn(t, ns, cfg)
}

func newGateIn(t testing.TB, ns *netns.NS, cfg Config) *gate {
	t.Helper()
	fd, err := unix.Open(ns.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	cfg.NetNS = fd
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return &gate{ns: ns, fd: fd, e: e}
}

func (g *gate) list(t testing.TB) string {
	t.Helper()
	return g.ns.Exec(t, "nft", "list", "table", "inet", TableName)
}

func TestGolden(t *testing.T) {
	netns.RequirePriv(t)
	for _, tc := range []struct {
		file string
		p    *policy.Policy
	}{
		{"golden.nft", goldenPolicy()},
		{"golden-forward.nft", forwardPolicy()},
	} {
		t.Run(tc.file, func(t *testing.T) {
			g := newGate(t, Config{})
			if err := g.e.Apply(tc.p); err != nil {
				t.Fatal(err)
			}
			got := g.list(t)
			path := filepath.Join("testdata", tc.file)
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal([]byte(got), want) {
				t.Errorf("nft list table differs from %s (-update to accept):\n%s", path, got)
			}
			// What the listing shows, nft must read back: the golden file
			// is a rule set an admin could load by hand.
			netns.New(t, "reload").Exec(t, "nft", "-c", "-f", filepath.Join(mustAbs(t, "testdata"), tc.file))
		})
	}
}

func mustAbs(t testing.TB, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Addresses of the two-namespace topology. The admitted ranges are
// 192.0.2.0/25 and 2001:db8::/120: .10 and .30 are inside, .200 outside.
const (
	gateV4     = "192.0.2.1"
	gateV6     = "2001:db8::1"
	admittedV4 = "192.0.2.10"
	scannerV4  = "192.0.2.30"
	outsideV4  = "192.0.2.200" // not admitted; the management host in strict tests
	admittedV6 = "2001:db8::10"
	outsideV6  = "2001:db8::200"
	listenPort = 443
	mgmtPort   = 2200
	otherPort  = 8080
)

func testPolicy(mode policy.Mode) *policy.Policy {
	return &policy.Policy{
		Generation: 1,
		Enforcement: policy.Enforcement{
			NFTables: true,
			Mode:     mode,
			Management: []policy.Management{
				{Prefix: netip.MustParsePrefix(outsideV4 + "/32"), Ports: []uint16{mgmtPort}},
				{Prefix: netip.MustParsePrefix(outsideV6 + "/128"), Ports: []uint16{mgmtPort}},
			},
		},
		Admitted: policy.Admitted{
			V4: prefixes("192.0.2.0/25"),
			V6: prefixes("2001:db8::/120"),
		},
		Listeners: []policy.Listener{{Name: "web", Port: listenPort, Protocol: policy.ProtoHTTPS}},
	}
}

type topo struct {
	*gate
	client *netns.NS
}

func newTopo(t *testing.T, cfg Config) *topo {
	t.Helper()
	client := netns.New(t, "cloud")
	gns := netns.New(t, "gate")
	netns.Connect(t, client, []string{admittedV4 + "/24", scannerV4 + "/24", outsideV4 + "/24", admittedV6 + "/64", outsideV6 + "/64"},
		gns, []string{gateV4 + "/24", gateV6 + "/64"})
	tp := &topo{gate: newGateIn(t, gns, cfg), client: client}
	for _, port := range []int{listenPort, mgmtPort, otherPort} {
		tp.serve(t, port)
	}
	return tp
}

// serve accepts on port (both families), echoes what it reads, and closes
// each connection when the peer does, so closed connections leave
// conntrack's count.
func (tp *topo) serve(t *testing.T, port int) { serveOn(t, tp.ns, port) }

// serveOn accepts on port in ns, both families, like topo.serve.
func serveOn(t *testing.T, ns *netns.NS, port int) {
	l := ns.Listen(t, "tcp", fmt.Sprintf(":%d", port))
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
}

// dial connects from src to the gate's port; a dropped SYN shows as a
// timeout. The bound stays below TCP's first SYN retransmission (1 s), so
// one attempt is one SYN.
func (tp *topo) dial(src, dst string, port int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	return tp.client.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, fmt.Sprint(port)))
}

func (tp *topo) reach(src, dst string, port int) bool {
	c, err := tp.dial(src, dst, port)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (g *gate) counters(t testing.TB) map[string]uint64 {
	t.Helper()
	c, err := g.e.conn()
	if err != nil {
		t.Fatal(err)
	}
	m, err := readCounters(c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAdmission(t *testing.T) {
	tp := newTopo(t, Config{})
	if err := tp.e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst string
		port     int
		want     bool
	}{
		{admittedV4, gateV4, listenPort, true},
		{outsideV4, gateV4, listenPort, false},
		{admittedV6, gateV6, listenPort, true},
		{outsideV6, gateV6, listenPort, false},
		// listeners mode polices the listener ports only
		{outsideV4, gateV4, otherPort, true},
	} {
		if got := tp.reach(tc.src, tc.dst, tc.port); got != tc.want {
			t.Errorf("%s -> %s:%d: reached %v, want %v", tc.src, tc.dst, tc.port, got, tc.want)
		}
	}
	c := tp.counters(t)
	if c[ruleNotAdmitted] < 2 || c[ruleAdmitted] < 2 {
		t.Errorf("counters %v: want not_admitted and admitted at least 2 each", c)
	}
	// The same numbers through the Prometheus collector.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tp.e)
	if got := gathered(t, reg, "gatehouse_nft_packets_total", ruleNotAdmitted); got < 2 {
		t.Errorf("gatehouse_nft_packets_total{rule=not_admitted} = %v", got)
	}
	n, err := testutil.GatherAndCount(reg, "gatehouse_nft_packets_total",
		"gatehouse_nft_drift_total", "gatehouse_nft_blocked_sources")
	if err != nil {
		t.Fatal(err)
	}
	if want := len(tp.e.curRS.counters) + 2; n != want {
		t.Errorf("%d series gathered, want %d", n, want)
	}
	// A full replace (here: a mode change) resets the kernel's counters;
	// the exported totals must not go backwards.
	before := gathered(t, reg, "gatehouse_nft_packets_total", ruleNotAdmitted)
	if err := tp.e.Apply(testPolicy(policy.ModeStrict)); err != nil {
		t.Fatal(err)
	}
	if c := tp.counters(t); c[ruleNotAdmitted] != 0 {
		t.Fatalf("kernel counter %d after the replace, want a fresh 0", c[ruleNotAdmitted])
	}
	if after := gathered(t, reg, "gatehouse_nft_packets_total", ruleNotAdmitted); after != before {
		t.Errorf("not_admitted went from %v to %v over a table replace", before, after)
	}
	// A replace the kernel refuses (overlapping intervals) leaves the old
	// table and the totals as they were: nothing is folded twice.
	tp.reach(outsideV4, gateV4, listenPort)
	before = gathered(t, reg, "gatehouse_nft_packets_total", ruleNotAdmitted)
	bad, err := newSpec(testPolicy(policy.ModeListeners))
	if err != nil {
		t.Fatal(err)
	}
	r := bad.adm4[0]
	bad.adm4 = append(bad.adm4, addrRange{r.from.Next(), r.to})
	tp.e.mu.Lock()
	err = tp.e.applyFull(bad)
	tp.e.mu.Unlock()
	if err == nil {
		t.Fatal("the kernel accepted overlapping intervals")
	}
	if after := gathered(t, reg, "gatehouse_nft_packets_total", ruleNotAdmitted); after != before {
		t.Errorf("not_admitted went from %v to %v over a refused replace", before, after)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP gatehouse_nft_drift_total Times reconcile found table inet gatehouse deleted or edited and rebuilt it.
# TYPE gatehouse_nft_drift_total counter
gatehouse_nft_drift_total 0
`), "gatehouse_nft_drift_total"); err != nil {
		t.Error(err)
	}
}

// gathered returns the value of the series of name whose first label is
// label (any label for "").
func gathered(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func TestRateLimit(t *testing.T) {
	const rate, burst, attempts = 5, 5, 20
	tp := newTopo(t, Config{})
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.NewConnRate = policy.Rate{PerSecond: rate, Burst: burst}
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	// All attempts at once: the bucket holds burst, refills at rate.
	var ok atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tp.reach(admittedV4, gateV4, listenPort) {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	maxOK := burst + int(elapsed.Seconds()*rate) + 1
	if got := int(ok.Load()); got < burst || got > maxOK {
		t.Errorf("%d of %d connections got through in %s, want %d..%d (burst %d, %d/s)",
			got, attempts, elapsed, burst, maxOK, burst, rate)
	}
	if c := tp.counters(t); c[ruleRateLimited] == 0 {
		t.Errorf("rate_limited counter is 0: %v", c)
	}
	// Another source has its own bucket.
	if !tp.reach(admittedV6, gateV6, listenPort) {
		t.Error("an IPv6 source was limited by the IPv4 source's bucket")
	}
}

func TestConnCap(t *testing.T) {
	const limit = 3
	tp := newTopo(t, Config{})
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.MaxConnsPerSource = limit
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	for i := range limit {
		c, err := tp.dial(admittedV4, gateV4, listenPort)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, limit, err)
		}
		held = append(held, c)
	}
	if tp.reach(admittedV4, gateV4, listenPort) {
		t.Errorf("connection %d got through a cap of %d", limit+1, limit)
	}
	if c := tp.counters(t); c[ruleConnLimited] == 0 {
		t.Errorf("conn_limited counter is 0: %v", c)
	}
	held[0].Close()
	// Once both ends closed, the connection leaves the count.
	if !eventually(3*time.Second, func() bool { return tp.reach(admittedV4, gateV4, listenPort) }) {
		t.Error("no new connection after one of the capped ones closed")
	}
	for _, c := range held[1:] {
		c.Close()
	}
}

// eventually polls cond until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStrictMode(t *testing.T) {
	tp := newTopo(t, Config{})
	if err := tp.e.Apply(testPolicy(policy.ModeStrict)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst string
		port     int
		want     bool
	}{
		{admittedV4, gateV4, listenPort, true},
		{admittedV4, gateV4, otherPort, false},
		{admittedV4, gateV4, mgmtPort, false}, // management is per source range
		{outsideV4, gateV4, mgmtPort, true},
		{outsideV4, gateV4, otherPort, false},
		{outsideV4, gateV4, listenPort, false},
		{admittedV6, gateV6, listenPort, true},
		{outsideV6, gateV6, mgmtPort, true},
		{outsideV6, gateV6, otherPort, false},
	} {
		if got := tp.reach(tc.src, tc.dst, tc.port); got != tc.want {
			t.Errorf("strict: %s -> %s:%d: reached %v, want %v", tc.src, tc.dst, tc.port, got, tc.want)
		}
	}
	if c := tp.counters(t); c[ruleStrictDrop] == 0 || c[ruleManagement] < 2 {
		t.Errorf("counters %v: want strict_drop and management counted", c)
	}
	// From neighbour discovery afresh: management reaches its port over
	// UDP too (as XDP lets it) and nobody else does; echo requests are
	// answered for admitted sources only, as XDP decides them.
	serveUDP(t, tp.ns, mgmtPort)
	tp.client.Exec(t, "ip", "neigh", "flush", "all")
	tp.ns.Exec(t, "ip", "neigh", "flush", "all")
	for _, tc := range []struct {
		udp      bool // else ICMP echo
		src, dst string
		want     bool
	}{
		{false, admittedV6, gateV6, true},
		{false, admittedV4, gateV4, true},
		{false, outsideV4, gateV4, false},
		{false, outsideV6, gateV6, false},
		{true, outsideV4, gateV4, true},
		{true, outsideV6, gateV6, true},
		{true, admittedV4, gateV4, false},
	} {
		var err error
		if tc.udp {
			err = udpEcho(tp.client, tc.src, tc.dst, mgmtPort)
		} else {
			err = echo(tp.client, tc.src, tc.dst)
		}
		if (err == nil) != tc.want {
			t.Errorf("strict: udp=%v %s -> %s: %v, want answered %v", tc.udp, tc.src, tc.dst, err, tc.want)
		}
	}
	if c := tp.counters(t); c[ruleICMP] == 0 {
		t.Errorf("icmp_allowed counter is 0: %v", c)
	}
}

// serveUDP echoes datagrams on port in ns, both families.
func serveUDP(t *testing.T, ns *netns.NS, port int) {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// udpEcho sends one datagram from src in ns and waits for the echo.
func udpEcho(ns *netns.NS, src, dst string, port int) error {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", net.JoinHostPort(src, "0"))
		return err
	}); err != nil {
		return err
	}
	defer pc.Close()
	to, err := net.ResolveUDPAddr("udp", net.JoinHostPort(dst, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	if _, err := pc.WriteTo([]byte("gatehouse"), to); err != nil {
		return err
	}
	pc.SetReadDeadline(time.Now().Add(time.Second))
	_, _, err = pc.ReadFrom(make([]byte, 64))
	return err
}

// echo sends one ICMP or ICMPv6 echo request from src in ns and waits for
// the reply.
func echo(ns *netns.NS, src, dst string) error {
	addr := netip.MustParseAddr(dst)
	network, proto, typ := "ip4:icmp", 1, icmp.Type(ipv4.ICMPTypeEcho)
	if addr.Is6() {
		network, proto, typ = "ip6:ipv6-icmp", 58, ipv6.ICMPTypeEchoRequest
	}
	var pc *icmp.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = icmp.ListenPacket(network, src)
		return err
	}); err != nil {
		return err
	}
	defer pc.Close()
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: 0x4748, Seq: 1, Data: []byte("gatehouse")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := pc.WriteTo(b, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return err
	}
	pc.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		if m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply {
			return nil
		}
	}
}

const foreignRules = `table inet foreign {
	set keep { type ipv4_addr; elements = { 198.51.100.7 } }
	chain input { type filter hook input priority 0; policy accept; tcp dport 9 drop; }
}
table ip legacy {
	chain output { type filter hook output priority 0; policy accept; }
}
`

func TestForeignTablesSurvive(t *testing.T) {
	g := newGate(t, Config{})
	path := filepath.Join(t.TempDir(), "foreign.nft")
	if err := os.WriteFile(path, []byte(foreignRules), 0o644); err != nil {
		t.Fatal(err)
	}
	g.ns.Exec(t, "nft", "-f", path)
	listForeign := func() string {
		return g.ns.Exec(t, "nft", "list", "table", "inet", "foreign") + g.ns.Exec(t, "nft", "list", "table", "ip", "legacy")
	}
	before := listForeign()
	check := func(step string) {
		t.Helper()
		if got := listForeign(); got != before {
			t.Fatalf("after %s the foreign tables changed:\n%s", step, got)
		}
	}
	p := goldenPolicy()
	if err := g.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	check("first apply")
	p2 := goldenPolicy()
	p2.Admitted.V4 = prefixes("192.0.2.0/24")
	if err := g.e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	check("diff apply")
	p3 := goldenPolicy()
	p3.Enforcement.Mode = policy.ModeListeners
	if err := g.e.Apply(p3); err != nil {
		t.Fatal(err)
	}
	check("replace")
	g.ns.Exec(t, "nft", "delete", "table", "inet", TableName)
	if err := g.e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	check("repair")
	if err := g.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if err := g.e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.e.Run(context.Background()); err != nil {
		t.Errorf("Run after Close: %v", err)
	}
	check("close")
	if err := Teardown(g.fd); err != nil {
		t.Fatal(err)
	}
	check("teardown")
	if out := g.ns.Exec(t, "nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("teardown left our table:\n%s", out)
	}
	if err := Teardown(g.fd); err != nil {
		t.Errorf("second teardown: %v", err)
	}
}

func TestCloseKeepsTable(t *testing.T) {
	g := newGate(t, Config{})
	if err := g.e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	before := g.list(t)
	if err := g.e.Close(); err != nil {
		t.Fatal(err)
	}
	if got := g.list(t); got != before {
		t.Errorf("Close changed the table:\n%s", got)
	}
	if err := g.e.Apply(goldenPolicy()); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close: %v, want ErrClosed", err)
	}
	// A new Enforcer (a restarted daemon) adopts the table in one replace.
	e2, err := New(Config{NetNS: g.fd})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	if got := g.list(t); got != before {
		t.Errorf("adoption changed the table:\n%s", got)
	}
}

func TestDriftRepaired(t *testing.T) {
	g := newGate(t, Config{})
	if err := g.e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	want := g.list(t)
	// A clean table is no drift, however often it is checked.
	for range 2 {
		if err := g.e.Reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	if g.e.lastGen == 0 {
		t.Fatal("a clean check did not record the ruleset generation")
	}
	// Changes to other tables move the generation but are not our drift.
	g.ns.Exec(t, "nft", "add", "table", "inet", "neighbour")
	if err := g.e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if d := testutil.ToFloat64(g.e.metrics.drift); d != 0 {
		t.Fatalf("drift %v on an untouched table", d)
	}
	// A blocked source must survive every repair that finds the table
	// (deleting the table, last, deletes the source with it).
	g.ns.Exec(t, "nft", "add", "element", "inet", TableName, "blocked_v4", "{ 203.0.113.9 timeout 5m }")
	edits := []struct {
		name string
		args []string
	}{
		{"rule added", []string{"insert", "rule", "inet", TableName, "input", "accept"}},
		{"chain policy", []string{"add", "chain", "inet", TableName, "input", "{ type filter hook input priority filter - 10; policy accept; }"}},
		{"ports flushed", []string{"flush", "set", "inet", TableName, "listener_ports"}},
		{"management element", []string{"add", "element", "inet", TableName, "management_v4", "{ 192.0.2.0/24 . 22 }"}},
		{"management source element", []string{"add", "element", "inet", TableName, "management_sources_v6", "{ 2001:db8:ee::/48 }"}},
		{"chain added", []string{"add", "chain", "inet", TableName, "sneaky"}},
		{"counter deleted", []string{"delete", "counter", "inet", TableName, ruleStrictDrop}},
		{"admitted flushed", []string{"flush", "set", "inet", TableName, "admitted_v6"}},
		{"admitted gap filled", []string{"add", "element", "inet", TableName, "admitted_v4", "{ 192.0.3.0/24 }"}},
		{"table deleted", []string{"delete", "table", "inet", TableName}},
	}
	for i, ed := range edits {
		// Rules referencing the counter block its deletion; drop the
		// rule first, which is itself drift.
		if ed.name == "counter deleted" {
			handle := lastRuleHandle(t, g)
			g.ns.Exec(t, "nft", "delete", "rule", "inet", TableName, "input", "handle", handle)
		}
		g.ns.Exec(t, "nft", ed.args...)
		if err := g.e.Reconcile(); err != nil {
			t.Fatalf("%s: %v", ed.name, err)
		}
		if ed.name != "table deleted" && !strings.Contains(g.list(t), "203.0.113.9") {
			t.Fatalf("%s: blocked source lost in the repair", ed.name)
		}
		if got := withoutBlocked(g.list(t)); got != withoutBlocked(want) {
			t.Fatalf("%s: not repaired:\n%s", ed.name, got)
		}
		if d := testutil.ToFloat64(g.e.metrics.drift); d != float64(i+1) {
			t.Fatalf("%s: drift counter %v, want %d", ed.name, d, i+1)
		}
	}
}

func lastRuleHandle(t *testing.T, g *gate) string {
	out := g.ns.Exec(t, "nft", "-a", "list", "chain", "inet", TableName, "input")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if _, h, ok := strings.Cut(lines[i], "# handle "); ok && strings.Contains(lines[i], ruleStrictDrop) {
			return strings.TrimSpace(h)
		}
	}
	t.Fatalf("no %s rule in:\n%s", ruleStrictDrop, out)
	return ""
}

// withoutBlocked drops the elements line of the blocked sets (they carry
// expiry times that change by the second).
func withoutBlocked(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "expires") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func TestApplyAfterTableDeleted(t *testing.T) {
	g := newGate(t, Config{})
	if err := g.e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	g.ns.Exec(t, "nft", "delete", "table", "inet", TableName)
	p := goldenPolicy()
	p.Generation = 2
	p.Admitted.V4 = prefixes("198.51.100.0/24")
	if err := g.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if out := g.ns.Exec(t, "nft", "list", "set", "inet", TableName, "admitted_v4"); !strings.Contains(out, "198.51.100.0/24") {
		t.Errorf("generation 2 not installed after the table was deleted:\n%s", out)
	}
	if d := testutil.ToFloat64(g.e.metrics.drift); d != 1 {
		t.Errorf("drift %v, want 1", d)
	}
}

func TestRunRepairsInBackground(t *testing.T) {
	g := newGate(t, Config{ReconcileInterval: 50 * time.Millisecond, BlockPollInterval: 50 * time.Millisecond})
	if err := g.e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.e.Run(ctx) }()
	g.ns.Exec(t, "nft", "delete", "table", "inet", TableName)
	repaired := eventually(5*time.Second, func() bool {
		return strings.Contains(g.ns.Exec(t, "nft", "list", "tables"), TableName)
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if !repaired {
		t.Fatal("Run did not recreate the deleted table")
	}
}

func TestLargeApply(t *testing.T) {
	const n = 100_000
	g := newGate(t, Config{})
	p := bigPolicy(n, 7)
	if err := g.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	has := func(a netip.Addr) bool {
		out, err := g.ns.Command("nft", "get", "element", "inet", TableName, "admitted_v4", "{ "+a.String()+" }").CombinedOutput()
		return err == nil && strings.Contains(string(out), "elements")
	}
	for _, i := range []int{0, n / 2, n - 1} {
		if a := p.Admitted.V4[i].Addr().Next(); !has(a) {
			t.Errorf("%s (in %s) not in admitted_v4", a, p.Admitted.V4[i])
		}
		// every other /24 is admitted, the one after each is not
		if a := policy.LastAddr(p.Admitted.V4[i]).Next(); has(a) {
			t.Errorf("%s admitted though outside every prefix", a)
		}
	}
	// 1 % diff: remove 1000 prefixes.
	p2 := bigPolicy(n, 7)
	removed := p2.Admitted.V4[:1000]
	p2.Admitted.V4 = p2.Admitted.V4[1000:]
	if err := g.e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if a := removed[500].Addr(); has(a) {
		t.Errorf("%s still admitted after its prefix was removed", a)
	}
	if a := p2.Admitted.V4[0].Addr(); !has(a) {
		t.Errorf("%s lost by the diff", a)
	}
}
