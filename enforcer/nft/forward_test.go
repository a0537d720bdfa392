package nft

import (
	"strings"
	"sync"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Addresses of the routed topology cloud — router — internal. The cloud
// side reuses the two-namespace addresses (admitted: 192.0.2.0/25 and
// 2001:db8::/120); the internal host sits behind the router.
const (
	routerIntV4 = "203.0.113.1"
	routerIntV6 = "2001:db8:1::1"
	internalV4  = "203.0.113.10"
	internalV6  = "2001:db8:1::10"
)

// routed is a router namespace with an Enforcer, a cloud namespace on its
// outside interface and an internal host behind it.
type routed struct {
	*gate
	cloud, internal *netns.NS
	outside         string // the router's interface towards the cloud
}

func newRouted(t *testing.T) *routed {
	t.Helper()
	cloud := netns.New(t, "cloud")
	router := netns.New(t, "router")
	internal := netns.New(t, "internal")
	out := netns.Connect(t, cloud, []string{admittedV4 + "/24", outsideV4 + "/24", admittedV6 + "/64", outsideV6 + "/64"},
		router, []string{gateV4 + "/24", gateV6 + "/64"})
	netns.Connect(t, router, []string{routerIntV4 + "/24", routerIntV6 + "/64"},
		internal, []string{internalV4 + "/24", internalV6 + "/64"})
	router.Sysctl(t, "net.ipv4.ip_forward", "1")
	router.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	cloud.AddRoute(t, "default", gateV4)
	cloud.AddRoute(t, "default", gateV6)
	internal.AddRoute(t, "default", routerIntV4)
	internal.AddRoute(t, "default", routerIntV6)
	for _, port := range []int{listenPort, otherPort} {
		serveOn(t, internal, port)
	}
	serveOn(t, cloud, otherPort)
	return &routed{gate: newGateIn(t, router, Config{}), cloud: cloud, internal: internal, outside: out.B}
}

func (r *routed) policy(mode policy.Mode, forward bool) *policy.Policy {
	p := testPolicy(mode)
	p.Interface = r.outside
	p.Enforcement.Forward = forward
	return p
}

type flow struct {
	from     *netns.NS
	src, dst string
	port     int
	want     bool
}

// check tries every flow at once (a dropped SYN costs the dial timeout, so
// in parallel the whole table costs one) and reports the wrong outcomes.
func check(t *testing.T, step string, flows []flow) {
	t.Helper()
	got := make([]bool, len(flows))
	var wg sync.WaitGroup
	for i, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialEcho(f.from, f.src, f.dst, f.port)
			if err == nil {
				c.Close()
				got[i] = true
			}
		}()
	}
	wg.Wait()
	for i, f := range flows {
		// A wanted flow that timed out gets a second, patient try: on a
		// loaded machine the short dial can run out. A dropped SYN is
		// dropped again.
		if !got[i] && f.want && patientEcho(f.from, f.src, f.dst, f.port) == nil {
			t.Logf("%s: %s -> %s:%d reached on a second try", step, f.src, f.dst, f.port)
			got[i] = true
		}
		if got[i] != f.want {
			t.Errorf("%s: %s -> %s:%d: reached %v, want %v", step, f.src, f.dst, f.port, got[i], f.want)
		}
	}
}

func TestForwardRouted(t *testing.T) {
	netns.RequirePriv(t)
	r := newRouted(t)
	if err := r.e.Apply(r.policy(policy.ModeListeners, true)); err != nil {
		t.Fatal(err)
	}
	check(t, "listeners", []flow{
		{r.cloud, admittedV4, internalV4, listenPort, true},
		{r.cloud, outsideV4, internalV4, listenPort, false},
		{r.cloud, admittedV6, internalV6, listenPort, true},
		{r.cloud, outsideV6, internalV6, listenPort, false},
		// listeners mode polices the listener ports only
		{r.cloud, outsideV4, internalV4, otherPort, true},
	})
	c := r.counters(t)
	if c["fwd_not_admitted"] < 2 || c["fwd_admitted"] < 2 {
		t.Errorf("counters %v: want fwd_not_admitted and fwd_admitted at least 2 each", c)
	}
	// Routed flows never pass the router's input chain.
	if c[ruleNotAdmitted]+c[ruleAdmitted] != 0 {
		t.Errorf("counters %v: input rules counted routed flows", c)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r.e)
	if got := gathered(t, reg, "gatehouse_nft_packets_total", "fwd_not_admitted"); got < 2 {
		t.Errorf("gatehouse_nft_packets_total{rule=fwd_not_admitted} = %v", got)
	}
	if n, err := testutil.GatherAndCount(reg, "gatehouse_nft_packets_total"); err != nil || n != len(r.e.curRS.counters) {
		t.Errorf("%d rule series (%v), want one per counter (%d)", n, err, len(r.e.curRS.counters))
	}

	// Strict: the outside gets the listeners only; internal hosts still
	// open flows outwards.
	if err := r.e.Apply(r.policy(policy.ModeStrict, true)); err != nil {
		t.Fatal(err)
	}
	check(t, "strict", []flow{
		{r.cloud, admittedV4, internalV4, listenPort, true},
		{r.cloud, outsideV4, internalV4, otherPort, false},
		{r.cloud, admittedV6, internalV6, otherPort, false},
		{r.internal, internalV4, admittedV4, otherPort, true},
		{r.internal, internalV6, admittedV6, otherPort, true},
	})
	c = r.counters(t)
	if c["fwd_strict_drop"] < 2 || c[ruleFwdInternal] < 2 || c["fwd_established"] == 0 {
		t.Errorf("counters %v: want fwd_strict_drop and fwd_internal at least 2, fwd_established counted", c)
	}

	// An emptied forward chain is drift, repaired like the input chain.
	want := withoutCounts(r.list(t))
	r.ns.Exec(t, "nft", "flush", "chain", "inet", TableName, "forward")
	if err := r.e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if got := withoutCounts(r.list(t)); got != want {
		t.Errorf("flushed forward chain not repaired:\n%s", got)
	}
	r.ns.Exec(t, "nft", "flush", "chain", "inet", TableName, "forward")
	r.ns.Exec(t, "nft", "delete", "chain", "inet", TableName, "forward")
	if err := r.e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if got := withoutCounts(r.list(t)); got != want {
		t.Errorf("deleted forward chain not repaired:\n%s", got)
	}
	if d := testutil.ToFloat64(r.e.metrics.drift); d != 2 {
		t.Errorf("drift %v, want 2", d)
	}

	// One connection cap per source for the appliance's own listeners and
	// the routed ones together: both chains add to the same conns_* set.
	serveOn(t, r.ns, listenPort)
	capped := r.policy(policy.ModeListeners, true)
	capped.Enforcement.MaxConnsPerSource = 2
	if err := r.e.Apply(capped); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{gateV4, internalV4} {
		c, err := dialEcho(r.cloud, admittedV4, dst, listenPort)
		if err != nil {
			t.Fatalf("capped: connection to %s: %v", dst, err)
		}
		defer c.Close()
	}
	check(t, "capped", []flow{
		{r.cloud, admittedV4, internalV4, listenPort, false},
		{r.cloud, admittedV6, internalV6, listenPort, true},
	})
	if c := r.counters(t); c["fwd_conn_limited"] == 0 {
		t.Errorf("counters %v: fwd_conn_limited is 0", c)
	}

	// Forward off: the chain goes in the same batch, routed flows are no
	// longer policed.
	if err := r.e.Apply(r.policy(policy.ModeListeners, false)); err != nil {
		t.Fatal(err)
	}
	if out := r.list(t); strings.Contains(out, "chain forward") || strings.Contains(out, fwdPrefix) {
		t.Errorf("forward off left the chain or its counters:\n%s", out)
	}
	check(t, "forward off", []flow{
		{r.cloud, outsideV4, internalV4, listenPort, true},
	})
	// With forward off a chain someone adds is drift as well.
	r.ns.Exec(t, "nft", "add", "chain", "inet", TableName, "forward", "{ type filter hook forward priority filter - 10; policy drop; }")
	if err := r.e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if out := r.list(t); strings.Contains(out, "chain forward") {
		t.Errorf("forward chain added by hand survived reconcile:\n%s", out)
	}
}

// withoutCounts drops the packet and byte counts of the named counters,
// which a repair (a table replace) starts afresh.
func withoutCounts(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "packets ") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}
