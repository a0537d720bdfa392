package xdp

import (
	"cmp"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// compile turns a policy into the generation the program enforces, with
// eph the local port range. The differential test runs the same function.
func compile(p *policy.Policy, eph [2]uint16) (*bpf.Generation, error) {
	f, err := p.Filter()
	if err != nil {
		return nil, err
	}
	g := &bpf.Generation{
		Strict:      f.Strict,
		EphemeralLo: eph[0],
		EphemeralHi: eph[1],
		V4:          p.Admitted.V4,
		V6:          p.Admitted.V6,
		SourceBits4: f.SourceBits4,
		SourceBits6: f.SourceBits6,
		Scan: bpf.Scan{
			DistinctPorts: f.Scan.DistinctPorts,
			Window:        f.Scan.Window,
			Gap:           f.Refill.Gap(),
			BlockFor:      f.Scan.BlockFor,
		},
	}
	for _, port := range f.Ports {
		g.Ports = append(g.Ports, bpf.Port{Proto: "tcp", Num: port})
	}
	for _, m := range f.Management {
		g.Management = append(g.Management, bpf.Management{Prefix: m.Prefix, Ports: m.Ports})
	}
	return g, nil
}

// blockState is what the Enforcer knows of one source in its blocklists.
type blockState struct {
	deadline uint64 // monotonic ns
	// mirrored: OnBlock took the block, or it came in through Block, or
	// the other layer can take no more; it is not handed over again.
	mirrored bool
}

// sourceBits are the prefix lengths of one source of each family; zero
// (before the first Apply) means policy.DefaultSourcePrefix's.
type sourceBits struct{ v4, v6 int }

func (b sourceBits) of(a netip.Addr) int {
	if a.Is4() {
		return cmp.Or(b.v4, policy.DefaultSourcePrefix.V4)
	}
	return cmp.Or(b.v6, policy.DefaultSourcePrefix.V6)
}

// source masks addr to the source it counts as.
func (b sourceBits) source(addr netip.Addr) netip.Addr {
	p, err := addr.Prefix(b.of(addr))
	if err != nil {
		return addr
	}
	return p.Addr()
}

// Block blocks the source of addr (addr masked to the source prefix of the
// generation in force) for d: its bare SYNs and echo requests are dropped,
// except to the listener ports when it is admitted and to the management
// ports of its range (the nftables layer's scan detection calls it). Every
// source is taken, one that holds a management range too: the program
// decides management ports before it reads the blocklist, as nftables does.
func (e *Enforcer) Block(addr netip.Addr, d time.Duration) error {
	if !addr.IsValid() || d <= 0 {
		return fmt.Errorf("%w: %s for %s", ErrBadAddr, addr, d)
	}
	addr = addr.Unmap()
	now := monotonic()
	deadline := now + uint64(d.Nanoseconds())
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	src := e.bits.source(addr)
	if err := e.putBlock(src, deadline); err != nil {
		return fmt.Errorf("block %s: %w", src, err)
	}
	// Came from nftables: never handed back.
	e.known[src] = blockState{deadline: deadline, mirrored: true}
	if err := bpf.SetBlockActive(e.coll.Maps[bpf.MapState], true); err != nil {
		return fmt.Errorf("activate blocklist: %w", err)
	}
	if time.Since(e.lastGC) > time.Minute {
		e.lastGC = time.Now()
		e.sweepLocked(now)
	}
	return nil
}

// blockMap returns the blocklist of a family.
func (e *Enforcer) blockMap(v6 bool) *ebpf.Map {
	if v6 {
		return e.coll.Maps[bpf.MapBlock6]
	}
	return e.coll.Maps[bpf.MapBlock4]
}

func (e *Enforcer) putBlock(src netip.Addr, deadline uint64) error {
	if src.Is4() {
		return e.blockMap(false).Put(src.As4(), deadline)
	}
	return e.blockMap(true).Put(src.As16(), deadline)
}

// blockedEntry is one live entry of a blocklist.
type blockedEntry struct {
	src      netip.Addr
	deadline uint64
}

// sweepLocked deletes expired blocklist entries and returns the live ones.
// When none is left it tells the program to skip the blocklist lookups,
// and then looks again: the program sets the flag after every entry it
// adds, so an entry added meanwhile either is seen here or set the flag
// itself afterwards.
func (e *Enforcer) sweepLocked(now uint64) []blockedEntry {
	live, unsure := e.scanBlocklists(now)
	if len(live) > 0 || unsure {
		return live
	}
	if err := bpf.SetBlockActive(e.coll.Maps[bpf.MapState], false); err != nil {
		e.log.Warn("blocklist state", "error", err)
		return live
	}
	if live, unsure = e.scanBlocklists(now); len(live) > 0 || unsure {
		if err := bpf.SetBlockActive(e.coll.Maps[bpf.MapState], true); err != nil {
			e.log.Warn("blocklist state", "error", err)
		}
	}
	return live
}

// scanBlocklists deletes expired entries and returns the live ones; unsure
// reports a failed iteration.
func (e *Enforcer) scanBlocklists(now uint64) (live []blockedEntry, unsure bool) {
	for _, v6 := range []bool{false, true} {
		m := e.blockMap(v6)
		var key []byte
		var deadline uint64
		var expired [][]byte
		it := m.Iterate()
		for it.Next(&key, &deadline) {
			if deadline <= now {
				expired = append(expired, append([]byte(nil), key...))
				continue
			}
			if a, ok := netip.AddrFromSlice(key); ok {
				live = append(live, blockedEntry{a, deadline})
			}
		}
		if it.Err() != nil {
			unsure = true // keep the lookups on
		}
		for _, k := range expired {
			_ = m.Delete(k) // gone already is fine
		}
	}
	return live, unsure
}

// rekeyLocked keys every live entry by the source it is under bits: when
// the source prefix changed (by a reload, or between runs), an entry keyed
// under the old one would never match again. A coarser prefix widens a
// block to its new source (the latest deadline wins); a finer one keeps
// the block of the source's first address, as the nftables layer carries
// its set over. New keys are put before the old ones go, and the caller
// publishes the generation with the new masks in between, so no packet
// finds neither.
func (e *Enforcer) rekeyLocked(bits sourceBits) (drop func()) {
	live, _ := e.scanBlocklists(monotonic())
	var old []netip.Addr
	want := map[netip.Addr]blockState{}
	for _, b := range live {
		to := bits.source(b.src)
		if to != b.src {
			old = append(old, b.src)
		}
		st, seen := want[to]
		if !seen {
			st.mirrored = true
		}
		// The target is as mirrored as every block it takes in.
		st.deadline = max(st.deadline, b.deadline)
		st.mirrored = st.mirrored && e.known[b.src].mirrored
		want[to] = st
	}
	if len(old) == 0 {
		return func() {}
	}
	for to, st := range want {
		if err := e.putBlock(to, st.deadline); err != nil {
			e.log.Warn("blocked source not carried over to the new source prefix", "source", to, "error", err)
			continue
		}
		e.known[to] = st
	}
	e.log.Info("blocked sources keyed by the new source prefix", "moved", len(old), "sources", len(want))
	return func() {
		for _, a := range old {
			key := any(a.As16())
			if a.Is4() {
				key = a.As4()
			}
			_ = e.blockMap(a.Is6()).Delete(key) // gone already is fine
			delete(e.known, a)
		}
	}
}

// seedLocked takes the live entries of adopted blocklists as known: they
// were reported by the run that made them. They are handed to OnBlock once
// more (nftables may have lost them, or never had them while no daemon
// ran), without a log line each.
func (e *Enforcer) seedLocked() {
	live, _ := e.scanBlocklists(monotonic())
	for _, b := range live {
		e.known[b.src] = blockState{deadline: b.deadline}
	}
	if len(live) > 0 {
		e.log.Info("sources still blocked from before the restart", "count", len(live))
	}
}
