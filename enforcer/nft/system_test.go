package nft

import (
	"bytes"
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
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
	g := newGate(t, Config{})
	if err := g.e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	got := g.list(t)
	path := filepath.Join("testdata", "golden.nft")
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
	// What the listing shows, nft must read back: the golden file is a
	// rule set an admin could load by hand.
	ns2 := netns.New(t, "reload")
	ns2.Exec(t, "nft", "-c", "-f", filepath.Join(mustAbs(t, "testdata"), "golden.nft"))
}

func mustAbs(t testing.TB, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

var _ = context.Background
var _ = strings.Contains
