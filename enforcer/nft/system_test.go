package nft

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
			// synproxy answers with the window scale of the namespace's
			// sockets: the listing is that of a host with Linux's default
			// tcp_rmem, whose window scale is 7 (net.core.rmem_max is the
			// machine's, so a larger one there is written back to 7).
			g.ns.Sysctl(t, "net.ipv4.tcp_rmem", "4096 131072 6291456")
			if err := g.e.Apply(tc.p); err != nil {
				t.Fatal(err)
			}
			got := g.list(t)
			if o := g.e.cur.syn; o.wscale != defaultWScale {
				t.Logf("window scale %d on this machine (net.core.rmem_max), listed as %d", o.wscale, defaultWScale)
				got = strings.ReplaceAll(got, fmt.Sprintf("wscale %d ", o.wscale), fmt.Sprintf("wscale %d ", defaultWScale))
			}
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

// dial connects from src to the gate's port, and proves with one echo
// that the connection reached the server: on a listener port synproxy
// answers the handshake itself, so a completed handshake alone proves
// nothing. A dropped SYN, or a proven connection the limits refuse, shows
// as a timeout. The bound on the handshake stays below TCP's first SYN
// retransmission (1 s), so one attempt is one SYN; the echo, which on a
// listener port waits for synproxy to open the real connection, gets a
// little longer.
func (tp *topo) dial(src, dst string, port int) (net.Conn, error) {
	return dialEcho(tp.client, src, dst, port)
}

func dialEcho(ns *netns.NS, src, dst string, port int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond) // under the 1 s SYN retransmission
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, fmt.Sprint(port)))
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	msg := []byte("gatehouse")
	_, err = c.Write(msg)
	if err == nil {
		_, err = io.ReadFull(c, make([]byte, len(msg)))
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
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
	bad, err := newSpec(testPolicy(policy.ModeListeners), defaultSynOptions())
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
