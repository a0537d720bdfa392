package xdp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/cilium/ebpf"

	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// mirrorRig is an attached Enforcer whose OnBlock records its calls and
// answers with what refuse says, and whose log lands in log.
type mirrorRig struct {
	tp  *topo
	e   *Enforcer
	log *testkit.LogBuffer

	mu     sync.Mutex
	calls  map[netip.Addr]int
	refuse func(netip.Addr) error
}

func newMirrorRig(t *testing.T, tp *topo) *mirrorRig {
	t.Helper()
	r := &mirrorRig{tp: tp, log: &testkit.LogBuffer{}, calls: map[netip.Addr]int{}}
	logger := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := tp.gate.Do(func() (err error) {
		r.e, err = New(Config{Interface: tp.iface, Mode: policy.XDPAuto, PinDir: tp.pinDir, Logger: logger,
			OnBlock: func(a netip.Addr, d time.Duration) error {
				r.mu.Lock()
				defer r.mu.Unlock()
				r.calls[a]++
				if r.refuse != nil {
					return r.refuse(a)
				}
				return nil
			}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.e.Close() })
	return r
}

func (r *mirrorRig) callsOf(a netip.Addr) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[a]
}

func (r *mirrorRig) totalCalls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		n += c
	}
	return n
}

// programBlocks puts sources into the blocklists as the program's scan
// detection does, for an hour.
func programBlocks(t *testing.T, e *Enforcer, srcs []netip.Addr) {
	t.Helper()
	until := monotonic() + uint64(time.Hour)
	for _, a := range srcs {
		if err := e.putBlock(a, until); err != nil {
			t.Fatal(err)
		}
	}
	if err := bpf.SetBlockActive(e.coll.Maps[bpf.MapState], true); err != nil {
		t.Fatal(err)
	}
}

// forged returns n sources as a forged scan blocks them: IPv6 /64s.
func forged(n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.MustParseAddr(fmt.Sprintf("2001:db8:%x:%x::", 0x4000+i/65536, i%65536))
	}
	return out
}

// TestMirrorFullIsFinal: a block the nftables layer refuses because its
// set is full is not handed over again (a full set refuses it alike at
// every poll, and thousands of forged blocks made that a retry storm); any
// other refusal is tried again at the next poll. Each poll hands over at
// most mirrorBudget blocks, so a forged flood of blocks costs bounded work.
func TestMirrorFullIsFinal(t *testing.T) {
	tp := newTopo(t)
	r := newMirrorRig(t, tp)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface) })
	if err := r.e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	full, flaky := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8")
	r.refuse = func(a netip.Addr) error {
		switch a {
		case full:
			return fmt.Errorf("blocked_v4: %w", policy.ErrBlocklistFull)
		case flaky:
			return errors.New("netlink: try again")
		}
		return nil
	}
	programBlocks(t, r.e, []netip.Addr{full, flaky})
	for range 3 {
		if err := r.e.PollBlocked(); err == nil {
			t.Error("PollBlocked hid the refusal that is tried again")
		}
	}
	if n := r.callsOf(full); n != 1 {
		t.Errorf("a block refused as full was handed over %d times, want once", n)
	}
	if n := r.callsOf(flaky); n != 3 {
		t.Errorf("a block refused for now was handed over %d times in 3 polls, want 3", n)
	}
	got := gather(t, r.e)
	if got["gatehouse_xdp_blocks_mirrored_total,result=full"] != 1 || got["gatehouse_xdp_blocks_mirrored_total,result=error"] != 3 {
		t.Errorf("mirror results %v", got)
	}

	// The refusal ends: handed over once more, then never again.
	r.mu.Lock()
	r.refuse = nil
	r.mu.Unlock()
	for range 2 {
		if err := r.e.PollBlocked(); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.callsOf(flaky); n != 4 {
		t.Errorf("the block refused for now was handed over %d times, want 4", n)
	}

	// A flood of blocks: mirrorBudget a poll, the rest at the next polls.
	n := mirrorBudget + mirrorBudget/2
	before := r.totalCalls()
	programBlocks(t, r.e, forged(n))
	if err := r.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if got := r.totalCalls() - before; got != mirrorBudget {
		t.Errorf("one poll handed over %d blocks, want the budget %d", got, mirrorBudget)
	}
	if err := r.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if got := r.totalCalls() - before; got != n {
		t.Errorf("two polls handed over %d blocks, want all %d", got, n)
	}
}

// TestBlockLogSummary: a poll that finds many new blocks says so in one
// line (naming a few sources), with a line per source at debug only; and a
// restarted daemon that adopts the blocklists reports none of them as new,
// but hands them to the nftables layer once more (it may have lost them).
func TestBlockLogSummary(t *testing.T) {
	tp := newTopo(t)
	r := newMirrorRig(t, tp)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface) })
	if err := r.e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	srcs := forged(200)
	programBlocks(t, r.e, srcs)
	if err := r.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if n := r.log.Count("scanners blocked"); n != 1 {
		t.Errorf("%d summary lines for 200 blocks, want 1:\n%s", n, r.log)
	}
	if n := strings.Count(r.log.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings for 200 blocks, want 1", n)
	}
	if n := r.log.Count("scanner blocked"); n != 200 {
		t.Errorf("%d lines at debug, want one per source (200)", n)
	}
	if !strings.Contains(r.log.String(), "count=200") || !strings.Contains(r.log.String(), "2001:db8:4000::/64") {
		t.Errorf("the summary names neither the count nor a source:\n%s", r.log)
	}
	r.e.Close()

	// The restart.
	r2 := newMirrorRig(t, tp)
	if err := r2.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if n := r2.log.Count("scanners blocked") + r2.log.Count("scanner blocked"); n != 0 {
		t.Errorf("the restarted daemon reported %d adopted blocks as new:\n%s", n, r2.log)
	}
	if !strings.Contains(r2.log.String(), "sources still blocked from before the restart") {
		t.Errorf("no line about the adopted blocks:\n%s", r2.log)
	}
	if n := r2.totalCalls(); n != len(srcs) {
		t.Errorf("the restarted daemon handed %d adopted blocks over, want each once (%d)", n, len(srcs))
	}
	if err := r2.e.PollBlocked(); err != nil || r2.totalCalls() != len(srcs) {
		t.Errorf("a second poll handed over again (%d, %v)", r2.totalCalls(), err)
	}
}

// runSYN runs a SYN from src to port through the attached program with
// BPF_PROG_TEST_RUN and reports whether it passes.
func runSYN(t *testing.T, e *Enforcer, src string, port uint16) bool {
	t.Helper()
	s := netip.MustParseAddr(src)
	dst := netip.MustParseAddr(gate4)
	if s.Is6() {
		dst = netip.MustParseAddr(gate6)
	}
	frames, err := netns.Packet{Src: s, Dst: dst, Proto: 6, SrcPort: 40000, DstPort: port, TCPFlags: 0x02}.Frames(net.HardwareAddr{2, 0, 0, 0, 0, 1})
	if err != nil {
		t.Fatal(err)
	}
	ret, err := e.coll.Programs[bpf.ProgXDP].Run(&ebpf.RunOptions{Data: frames[0]})
	if err != nil {
		t.Fatal(err)
	}
	return ret == 2 // XDP_PASS
}

// TestBlockTakesManagementSources: Block takes a source that holds a
// management range, as the program's own scan detection would (the
// source is the scanning address's /64, and the management range is only
// part of it); the management range keeps its management port by rule
// order, as in nftables, and loses the rest.
func TestBlockTakesManagementSources(t *testing.T) {
	tp := newTopo(t)
	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
	p.Enforcement.Management = []policy.Management{{Prefix: netip.MustParsePrefix("2001:db8:c::/120"), Ports: []uint16{22}}}
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	// What the program blocks for a scan from 2001:db8:c::1:0.
	if err := e.Block(netip.MustParseAddr("2001:db8:c::"), time.Hour); err != nil {
		t.Fatal(err)
	}
	var until uint64
	if err := e.coll.Maps[bpf.MapBlock6].Lookup(netip.MustParseAddr("2001:db8:c::").As16(), &until); err != nil {
		t.Fatalf("the /64 holding a management range was not blocked: %v", err)
	}
	if !runSYN(t, e, "2001:db8:c::5", 22) {
		t.Error("the management range lost its port")
	}
	if runSYN(t, e, "2001:db8:c::5", open) {
		t.Error("the management range kept another port of its blocked /64")
	}
}

// TestRekeyOnSourcePrefix: a reload that changes the source prefix keys
// the blocklists anew, so no block is stranded under a mask the program no
// longer applies: per address to per /64 widens a block to its /64; back
// to per address keeps the block of the /64's first address.
func TestRekeyOnSourcePrefix(t *testing.T) {
	tp := newTopo(t)
	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 128}
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if err := e.Block(netip.MustParseAddr("2001:db8:9::1"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if runSYN(t, e, "2001:db8:9::1", open) || !runSYN(t, e, "2001:db8:9::2", open) {
		t.Fatal("per address, the block is not of ::1 alone")
	}
	has := func(a string) bool {
		var until uint64
		return e.coll.Maps[bpf.MapBlock6].Lookup(netip.MustParseAddr(a).As16(), &until) == nil
	}
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
	p.Generation++
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if !has("2001:db8:9::") || has("2001:db8:9::1") {
		t.Errorf("per /64: blocklist holds the /64 %v, the old key %v; want the /64 only", has("2001:db8:9::"), has("2001:db8:9::1"))
	}
	if runSYN(t, e, "2001:db8:9::2", open) {
		t.Error("per /64, another address of the blocked /64 passes")
	}
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 128}
	p.Generation++
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if runSYN(t, e, "2001:db8:9::", open) || !runSYN(t, e, "2001:db8:9::2", open) {
		t.Error("back per address: want the block of the /64's first address alone")
	}
}
