package xdp

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestIncompatiblePinnedMapReplaced pins a map of an older layout where the
// counters belong: New must not fail, and the first Apply replaces it.
func TestIncompatiblePinnedMapReplaced(t *testing.T) {
	tp := newTopo(t)
	dir := filepath.Join(tp.pinDir, tp.iface)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	pinStaleCounters(t, dir)
	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	tp.expect(t, "replaced", listenersProbes)
	checkCountersReplaced(t, dir)
}

// pinStaleCounters pins, where the counters belong in dir, a map of a
// layout this build cannot use (4-byte values), replacing any pin there.
func pinStaleCounters(t *testing.T, dir string) {
	t.Helper()
	path := filepath.Join(dir, bpf.MapCounters)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	stale, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 4, MaxEntries: 6})
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	if err := stale.Pin(path); err != nil {
		t.Fatal(err)
	}
}

// checkCountersReplaced fails unless the counters pinned in dir are of this
// build's layout.
func checkCountersReplaced(t *testing.T, dir string) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.MapCounters), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.ValueSize() != 8 {
		t.Errorf("pinned counters still of the older layout (value size %d)", m.ValueSize())
	}
}

// TestUpgradeReplacesOlderLayout is an upgrade: a filter of an older
// layout stays attached and pinned after its daemon exits, and a daemon of
// this layout starts beside it. It must adopt the link without detaching
// it (the old program keeps enforcing with its own maps until then), and
// its first Apply moves that same link to the new program and maps.
func TestUpgradeReplacesOlderLayout(t *testing.T) {
	tp := newTopo(t)
	old := tp.newEnforcer(t)
	if err := old.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	mode := old.AttachMode()
	linkID := pinnedLinkID(t, tp, mode)
	oldProg := linkProgram(t, tp, mode)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	// What an older layout leaves behind: a pinned map this build cannot
	// use. The attached program keeps its own references to its maps.
	dir := filepath.Join(tp.pinDir, tp.iface)
	pinStaleCounters(t, dir)
	tp.expect(t, "older filter, no daemon", listenersProbes)

	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	if got := pinnedLinkID(t, tp, mode); got != linkID {
		t.Errorf("link %d after start, want the adopted link %d", got, linkID)
	}
	if got := linkProgram(t, tp, mode); got != oldProg {
		t.Errorf("program %d on the link before the first Apply, want the older %d", got, oldProg)
	}
	tp.expect(t, "adopted, before apply", listenersProbes)

	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	if got := pinnedLinkID(t, tp, mode); got != linkID {
		t.Errorf("link %d after Apply, want the same link %d (never detached)", got, linkID)
	}
	if got := linkProgram(t, tp, mode); got == oldProg {
		t.Errorf("link still runs the older program %d after Apply", got)
	}
	checkCountersReplaced(t, dir)
	before := counter(t, e, "drop", "not_admitted")
	tp.expect(t, "after apply", listenersProbes)
	if got := counter(t, e, "drop", "not_admitted"); got <= before {
		t.Errorf("drop/not_admitted %d after probing, was %d: the new maps are not the ones counting", got, before)
	}
}

// TestOtherLayoutInForceReplacesMaps: a generation in force whose header
// has another layout's magic is not adopted with its maps (the new program
// would pass everything on it); the first Apply publishes into fresh maps.
func TestOtherLayoutInForceReplacesMaps(t *testing.T) {
	tp := newTopo(t)
	old := tp.newEnforcer(t)
	if err := old.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tp.pinDir, tp.iface)
	gen, err := ebpf.LoadPinnedMap(filepath.Join(dir, genPin), nil)
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, bpf.PageSize)
	if err := gen.Lookup(uint32(0), &hdr); err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(hdr, bpf.Magic+1)
	if err := gen.Update(uint32(0), hdr, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	gen.Close()
	countersID := func() ebpf.MapID {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.MapCounters), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	before := countersID()

	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	if !e.pending {
		t.Fatal("maps holding another layout's generation were adopted")
	}
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	if countersID() == before {
		t.Error("pinned maps not replaced after the first Apply")
	}
	if ok, err := e.currentLayout(e.coll.Maps[bpf.MapGen]); !ok {
		t.Errorf("layout in force after Apply: %v", err)
	}
	tp.expect(t, "after apply", listenersProbes)
}

// linkProgram returns the ID of the program on the pinned link.
func linkProgram(t *testing.T, tp *topo, mode string) ebpf.ProgramID {
	t.Helper()
	l, err := link.LoadPinnedLink(linkPin(filepath.Join(tp.pinDir, tp.iface), mode), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.Program
}
