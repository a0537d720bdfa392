package xdp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// Addresses: the cloud side has an admitted and a non-admitted address of
// each family; the gate listens on a protected and an unprotected port.
const (
	cloudIn4  = "198.51.100.10"
	cloudOut4 = "198.51.100.20"
	gate4     = "198.51.100.1"
	cloudIn6  = "2001:db8:1::10"
	cloudOut6 = "2001:db8:1::20"
	gate6     = "2001:db8:1::1"
	protected = 8443
	open      = 8080
)

type topo struct {
	cloud, gate *netns.NS
	iface       string // XDP interface, in gate
	peer        string // its other end, in cloud
	pinDir      string
	listeners   []net.Listener
}

// bpffsDir mounts a fresh bpf filesystem in a temporary directory.
func bpffsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	netns.RequirePriv(t)
	tp := &topo{cloud: netns.New(t, "cloud"), gate: netns.New(t, "gate")}
	v := netns.Connect(t,
		tp.cloud, []string{cloudIn4 + "/24", cloudOut4 + "/24", cloudIn6 + "/64", cloudOut6 + "/64"},
		tp.gate, []string{gate4 + "/24", gate6 + "/64"})
	tp.iface, tp.peer = v.B, v.A
	tp.pinDir = bpffsDir(t)
	for _, addr := range []string{"0.0.0.0:8443", "0.0.0.0:8080", "[::]:8443", "[::]:8080"} {
		network := "tcp4"
		if strings.HasPrefix(addr, "[") {
			network = "tcp6"
		}
		tp.listeners = append(tp.listeners, tp.gate.Listen(t, network, addr))
	}
	for _, l := range tp.listeners {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	return tp
}

func testPolicy(mode policy.Mode) *policy.Policy {
	return &policy.Policy{
		Generation:  1,
		Enforcement: policy.Enforcement{XDP: policy.XDPAuto, Mode: mode},
		Admitted: policy.Admitted{
			V4: []netip.Prefix{netip.MustParsePrefix("198.51.100.8/29")},
			V6: []netip.Prefix{netip.MustParsePrefix("2001:db8:1::10/127")},
		},
		Listeners: []policy.Listener{{Name: "web", Port: protected, Protocol: policy.ProtoTCP}},
	}
}

func (tp *topo) newEnforcer(t *testing.T) *Enforcer {
	t.Helper()
	return tp.newEnforcerMode(t, policy.XDPAuto)
}

func (tp *topo) newEnforcerMode(t *testing.T, mode policy.XDPMode) *Enforcer {
	t.Helper()
	var e *Enforcer
	err := tp.gate.Do(func() error {
		var err error
		e, err = New(Config{Interface: tp.iface, Mode: mode, PinDir: tp.pinDir})
		return err
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

// connects reports whether a TCP connection from src to the gate's port
// completes; a timeout means the SYN was dropped.
func (tp *topo) connects(src string, port int) (bool, error) {
	dst := gate4
	if strings.Contains(src, ":") {
		dst = gate6
	}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	c, err := tp.cloud.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, strconv.Itoa(port)))
	if err != nil {
		var ne net.Error
		if !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
			return false, fmt.Errorf("dial %s → %d: unexpected error %w", src, port, err)
		}
		return false, nil
	}
	c.Close()
	return true, nil
}

type probe struct {
	src  string
	port int
	want bool
}

// expect runs the probes at once (a dropped SYN costs a dial timeout each).
func (tp *topo) expect(t *testing.T, stage string, probes []probe) {
	t.Helper()
	got := make([]bool, len(probes))
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = tp.connects(p.src, p.port)
		}()
	}
	wg.Wait()
	for i, p := range probes {
		if errs[i] != nil {
			t.Fatalf("%s: %v", stage, errs[i])
		}
		if got[i] != p.want {
			t.Errorf("%s: %s → %d connected=%v, want %v", stage, p.src, p.port, got[i], p.want)
		}
	}
}

func counter(t *testing.T, e *Enforcer, action, reason string) uint64 {
	t.Helper()
	c, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c[CounterKey{action, reason}]
}

var listenersProbes = []probe{
	{cloudIn4, protected, true},
	{cloudOut4, protected, false},
	{cloudOut4, open, true},
	{cloudIn6, protected, true},
	{cloudOut6, protected, false},
	{cloudOut6, open, true},
}

var strictProbes = []probe{
	{cloudIn4, protected, true},
	{cloudOut4, protected, false},
	{cloudIn4, open, false},
	{cloudOut4, open, false},
	{cloudIn6, protected, true},
	{cloudOut6, protected, false},
	{cloudOut6, open, false},
}

func TestAdmission(t *testing.T) {
	for _, mode := range []policy.XDPMode{policy.XDPAuto, policy.XDPGeneric} {
		t.Run(string(mode), func(t *testing.T) { testAdmission(t, mode) })
	}
}

func testAdmission(t *testing.T, mode policy.XDPMode) {
	tp := newTopo(t)
	e := tp.newEnforcerMode(t, mode)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	// Nothing runs before there is a policy to enforce.
	if m := e.AttachMode(); m != "" {
		t.Errorf("attached in %q mode before the first Apply", m)
	}
	if out := tp.gate.Exec(t, "ip", "link", "show", "dev", tp.iface); strings.Contains(out, "xdp") {
		t.Errorf("XDP attached before the first Apply: %s", out)
	}

	// Applied from this goroutine, in another network namespace than the
	// interface's: the enforcer attaches in the namespace of New.
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	if m := e.AttachMode(); m != ModeNative && m != ModeGeneric || mode == policy.XDPGeneric && m != ModeGeneric {
		t.Fatalf("AttachMode %q with %s", m, mode)
	}
	t.Logf("attached in %s mode", e.AttachMode())
	if out := tp.gate.Exec(t, "ip", "link", "show", "dev", tp.iface); !strings.Contains(out, "prog/xdp") {
		t.Errorf("ip link shows no XDP program: %s", out)
	}
	before := counter(t, e, "drop", "not_admitted")
	tp.expect(t, "listeners", listenersProbes)
	if got := counter(t, e, "drop", "not_admitted") - before; got < 2 {
		t.Errorf("not_admitted counted %d drops, want at least one per refused SYN", got)
	}
	if counter(t, e, "pass", "admitted") == 0 {
		t.Error("admitted counter did not move")
	}
	checkMetrics(t, e)

	p := testPolicy(policy.ModeStrict)
	p.Generation = 2
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "strict", strictProbes)

	// A block (the nftables layer's scan detection) takes every new flow
	// of the source but those to the listener ports, which an admitted
	// source keeps.
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	if err := e.Block(netip.MustParseAddr(cloudIn4), time.Minute); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "blocked", []probe{{cloudIn4, protected, true}, {cloudIn4, open, false}, {cloudOut4, open, true}, {cloudIn6, open, true}})
	if counter(t, e, "drop", "blocked") == 0 {
		t.Error("blocked counter did not move")
	}
	// A block ends at its deadline (the failed dial outlasts it).
	if err := e.Block(netip.MustParseAddr(cloudIn6), 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "short block", []probe{{cloudIn6, open, false}})
	tp.expect(t, "short block over", []probe{{cloudIn6, open, true}})
	if err := e.Block(netip.Addr{}, time.Minute); err == nil {
		t.Error("Block of an invalid address succeeded")
	}
}

// TestFailedFirstApplyAttachesNothing: a first start whose policy cannot be
// applied leaves no filter and no pinned link behind (a filter without a
// policy would pass everything), and the next good Apply attaches.
func TestFailedFirstApplyAttachesNothing(t *testing.T) {
	tp := newTopo(t)
	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	bad := testPolicy(policy.ModeListeners)
	for i := range 40 { // more management pairs than a generation holds
		bad.Enforcement.Management = append(bad.Enforcement.Management, policy.Management{
			Prefix: netip.MustParsePrefix("192.0.2.0/24"), Ports: []uint16{uint16(2000 + i)}})
	}
	if err := e.Apply(bad); !errors.Is(err, bpf.ErrTooManyManagement) {
		t.Fatalf("Apply of 40 management pairs: %v, want ErrTooManyManagement", err)
	}
	if out := tp.gate.Exec(t, "ip", "link", "show", "dev", tp.iface); strings.Contains(out, "xdp") {
		t.Errorf("XDP attached after a failed first Apply: %s", out)
	}
	for _, mode := range []string{ModeNative, ModeGeneric} {
		if _, err := os.Stat(linkPin(filepath.Join(tp.pinDir, tp.iface), mode)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("link pinned after a failed first Apply: %v", err)
		}
	}
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "after the good Apply", listenersProbes)
}

func TestRestartAdoptsAndTeardownRemoves(t *testing.T) {
	tp := newTopo(t)
	e := tp.newEnforcer(t)
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "before", listenersProbes)
	// The pinned generation is the one in force: a restarted daemon with
	// CAP_BPF only checks its layout through this pin.
	if ok, err := e.currentLayout(e.coll.Maps[bpf.MapGen]); !ok {
		t.Errorf("layout of the generation in force: %v", err)
	}
	func() {
		pinned, err := ebpf.LoadPinnedMap(filepath.Join(tp.pinDir, tp.iface, genPin), nil)
		if err != nil {
			t.Fatalf("generation in force not pinned: %v", err)
		}
		defer pinned.Close()
		info, err := pinned.Info()
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := info.ID()
		var inForce uint32
		if err := e.coll.Maps[bpf.MapGen].Lookup(uint32(0), &inForce); err != nil {
			t.Fatal(err)
		}
		if uint32(pid) != inForce {
			t.Errorf("pinned generation %d, in force %d", pid, inForce)
		}
	}()
	linkID := pinnedLinkID(t, tp, e.AttachMode())
	dropped := counter(t, e, "drop", "not_admitted")

	// A killed daemon releases its handles without any teardown.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "during (no daemon)", listenersProbes)

	e2 := tp.newEnforcer(t)
	t.Cleanup(func() { e2.Close() })
	if got := pinnedLinkID(t, tp, e2.AttachMode()); got != linkID {
		t.Errorf("link %d after restart, want the adopted link %d", got, linkID)
	}
	// Adopted maps: the old generation and counters are in force before
	// the first Apply.
	tp.expect(t, "after restart, before apply", listenersProbes)
	if got := counter(t, e2, "drop", "not_admitted"); got < dropped {
		t.Errorf("counters restarted at %d, had %d", got, dropped)
	}
	if err := e2.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "after", listenersProbes)

	if err := Teardown(tp.pinDir, tp.iface); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "after teardown", []probe{{cloudOut4, protected, true}, {cloudOut6, protected, true}})
	// The enforcer still holds its link, now detached: the exported attach
	// mode must say so (what the XDP-not-attached alert watches), and so
	// must AttachMode.
	if n := attachModeSum(t, e2); n != 0 {
		t.Errorf("attach mode series sum to %v after teardown, want 0", n)
	}
	if m := e2.AttachMode(); m != "" {
		t.Errorf("AttachMode %q after teardown, want \"\"", m)
	}
	if _, err := os.Stat(filepath.Join(tp.pinDir, tp.iface)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still there: %v", err)
	}
	if out := tp.gate.Exec(t, "ip", "link", "show", "dev", tp.iface); strings.Contains(out, "xdp") {
		t.Errorf("interface still has XDP after teardown: %s", out)
	}
	if err := Teardown(tp.pinDir, tp.iface); err != nil {
		t.Errorf("second teardown: %v", err)
	}
}

func pinnedLinkID(t *testing.T, tp *topo, mode string) uint32 {
	t.Helper()
	out, err := exec.Command("bpftool", "link", "show", "pinned", linkPin(filepath.Join(tp.pinDir, tp.iface), mode)).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool: %v: %s", err, out)
	}
	var id uint32
	for _, c := range string(out) {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint32(c-'0')
	}
	if id == 0 {
		t.Fatalf("no link id in %q", out)
	}
	return id
}

func TestConfigRejects(t *testing.T) {
	// Each refusal must come from validation, not from a missing
	// interface further on.
	for name, tc := range map[string]struct {
		c    Config
		want error
	}{
		"no interface": {Config{Mode: policy.XDPAuto}, ErrNoInterface},
		"off":          {Config{Interface: "eth1", Mode: policy.XDPOff}, ErrOff},
		"bad mode":     {Config{Interface: "eth1", Mode: "turbo"}, ErrBadMode},
		"path":         {Config{Interface: "../eth1", Mode: policy.XDPAuto}, ErrNoInterface},
	} {
		if _, err := New(tc.c); !errors.Is(err, tc.want) {
			t.Errorf("%s: New = %v, want %v", name, err, tc.want)
		}
	}
}

// gather collects e through a registry of its own, keyed
// "name,label=value,…".
func gather(t *testing.T, e *Enforcer) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(e); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return got
}

// checkMetrics checks what e exports after the admission probes.
func checkMetrics(t *testing.T, e *Enforcer) {
	t.Helper()
	got := gather(t, e)
	if got["gatehouse_xdp_packets_total,action=drop,reason=not_admitted"] == 0 {
		t.Errorf("no not_admitted drops exported: %v", got)
	}
	// Every pair is exported, zero or not: the probes to an open port
	// must have moved passthrough.
	if got["gatehouse_xdp_packets_total,action=pass,reason=passthrough"] == 0 {
		t.Errorf("no passthrough exported: %v", got)
	}
	if got["gatehouse_xdp_attach_mode,mode="+e.AttachMode()] != 1 {
		t.Errorf("attach mode %s not exported as 1: %v", e.AttachMode(), got)
	}
	// This kernel has the conntrack kfuncs: the attached program asks.
	if ok, err := e.ConntrackLookup(); !ok || got["gatehouse_xdp_conntrack_lookup"] != 1 {
		t.Errorf("conntrack lookup %v (%v), exported %v", ok, err, got["gatehouse_xdp_conntrack_lookup"])
	}
	if _, ok := got["gatehouse_xdp_packets_total,action=pass,reason=established"]; !ok {
		t.Errorf("no established series exported: %v", got)
	}
}

// TestTeardownRefusesPathNames: an interface name that would leave the pin
// directory ("..", ".") is refused before anything is touched.
func TestTeardownRefusesPathNames(t *testing.T) {
	dir := t.TempDir()
	keep := filepath.Join(dir, "foreign-pin")
	if err := os.WriteFile(keep, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"..", ".", "", "a/b"} {
		if err := Teardown(filepath.Join(dir, "gatehouse"), name); !errors.Is(err, ErrNoInterface) {
			t.Errorf("Teardown(%q) = %v, want ErrNoInterface", name, err)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a file beside the pin directory was removed: %v", err)
	}
}

// attachModeSum adds up the gatehouse_xdp_attach_mode series of e: 1 while
// attached, 0 when not.
func attachModeSum(t *testing.T, e *Enforcer) float64 {
	t.Helper()
	got := gather(t, e)
	return got["gatehouse_xdp_attach_mode,mode="+ModeNative] + got["gatehouse_xdp_attach_mode,mode="+ModeGeneric]
}
