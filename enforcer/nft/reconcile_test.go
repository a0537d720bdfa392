package nft

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

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

const foreignRules = `table inet foreign {
	set keep { type ipv4_addr; elements = { 198.51.100.7 } }
	chain input { type filter hook input priority 0; policy accept; tcp dport 9 drop; }
}
table ip legacy {
	chain output { type filter hook output priority 0; policy accept; }
}
`

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
