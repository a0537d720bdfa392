package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Names of the program and maps in both objects.
const (
	ProgXDP     = "gatehouse_xdp"
	MapGen      = "gh_gen"
	MapCounters = "gh_counters"
	MapState    = ".data.state"
	MapBlock4   = "gh_block4"
	MapBlock6   = "gh_block6"
	MapScanSrc  = "gh_scan_src"   // not pinned
	MapScanPair = "gh_scan_pairs" // not pinned
	MapLPM4     = "gh_lpm4"       // LPM build only
	MapLPM6     = "gh_lpm6"       // LPM build only
)

// SetBlockActive sets gh_block_active in the state map of either build.
func SetBlockActive(state *ebpf.Map, active bool) error {
	var v uint32
	if active {
		v = 1
	}
	return state.Update(uint32(0), v, ebpf.UpdateAny)
}

// Counter layout: the counter of (action, reason) is at index
// action*len(reasons slot) + reason.
const reasonSlots = 8

// Actions and Reasons name the counters, in the program's numbering.
var (
	Actions = []string{"pass", "drop"}
	Reasons = []string{"admitted", "not_admitted", "blocked", "malformed", "management", "passthrough", "scan_detected", "established"}
)

// Kfuncs the program calls: the conntrack lookup of ct.h, and the release
// of the entry it found.
const (
	KfuncCTLookup  = "bpf_xdp_ct_lookup"
	KfuncCTRelease = "bpf_ct_release"
)

// ErrNoKfunc is returned by WithoutConntrack for a program that calls no
// conntrack kfunc.
var ErrNoKfunc = errors.New("program calls no conntrack kfunc")

// WithoutConntrack rewrites the program of spec so that it runs where the
// kernel has no conntrack kfuncs (nf_conntrack neither built in nor
// loaded, or a kernel before them): each call of one becomes "r0 = 0", so
// the lookup finds nothing and its datagram is dropped as the new flow the
// stateless verdict took it for. It fails closed: nothing passes that the
// full program would drop. The instruction count stays the same, so no
// jump needs fixing.
func WithoutConntrack(spec *ebpf.CollectionSpec) error {
	p := spec.Programs[ProgXDP]
	if p == nil {
		return fmt.Errorf("no program %s", ProgXDP)
	}
	insns := p.Instructions
	n := 0
	for i := range insns {
		ins := &insns[i]
		if !ins.IsKfuncCall() {
			continue
		}
		switch name := ins.Reference(); name {
		case KfuncCTLookup, KfuncCTRelease:
			*ins = asm.Mov.Imm(asm.R0, 0)
			n++
		default:
			return fmt.Errorf("unknown kfunc %q", name)
		}
	}
	if n == 0 {
		return ErrNoKfunc
	}
	return nil
}

// CounterIndex returns the gh_counters key of an action and reason index.
func CounterIndex(action, reason int) uint32 { return uint32(action*reasonSlots + reason) }

// Spec returns the collection spec of the fast build, or of the plain LPM
// trie build when lpm is true.
//
// The state section gets BPF_F_MMAPABLE in the spec, as the loader gives it
// to every data section it creates, so that a pinned state map compares
// equal to the spec when a restarted daemon adopts it.
func Spec(lpm bool) (*ebpf.CollectionSpec, error) {
	load := loadGatehouse
	if lpm {
		load = loadGatehouseLPM
	}
	spec, err := load()
	if err != nil {
		return nil, err
	}
	if m := spec.Maps[MapState]; m != nil {
		m.Flags |= unix.BPF_F_MMAPABLE
	}
	return spec, nil
}

// NewGenerationMap creates an inner map holding the pages. The map is not
// referenced by any program until Publish puts it into the outer map.
func NewGenerationMap(p *Pages) (*ebpf.Map, error) {
	if p == nil || p.Count == 0 || p.Count > MaxPages {
		return nil, errors.New("generation without pages or too large")
	}
	inner := &ebpf.MapSpec{
		Name:       "gh_generation",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  PageSize,
		MaxEntries: MaxPages,
	}
	m, err := ebpf.NewMap(inner)
	if err != nil {
		return nil, fmt.Errorf("create generation map: %w", err)
	}
	for idx, data := range p.Data {
		if err := m.Update(idx, data, ebpf.UpdateAny); err != nil {
			m.Close()
			return nil, fmt.Errorf("write generation page %d: %w", idx, err)
		}
	}
	return m, nil
}

// Publish makes gen the generation in force with one update of the outer
// map: a packet sees either the old generation or the new one, whole.
func Publish(outer, gen *ebpf.Map) error {
	if err := outer.Update(uint32(0), gen, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("publish generation: %w", err)
	}
	return nil
}

// FillLPM loads prefixes into the LPM build's tries (reference and
// benchmarks only; they are not swapped atomically).
func FillLPM(lpm4, lpm6 *ebpf.Map, v4, v6 []netip.Prefix) error {
	for _, pr := range v4 {
		if !pr.Addr().Is4() {
			return fmt.Errorf("lpm4 %s: %w", pr, ErrBadPrefix)
		}
		key := make([]byte, 8)
		binary.LittleEndian.PutUint32(key, uint32(pr.Bits()))
		a := pr.Masked().Addr().As4()
		copy(key[4:], a[:])
		if err := lpm4.Update(key, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("lpm4 %s: %w", pr, err)
		}
	}
	for _, pr := range v6 {
		if !pr.Addr().Is6() {
			return fmt.Errorf("lpm6 %s: %w", pr, ErrBadPrefix)
		}
		key := make([]byte, 20)
		binary.LittleEndian.PutUint32(key, uint32(pr.Bits()))
		a := pr.Masked().Addr().As16()
		copy(key[4:], a[:])
		if err := lpm6.Update(key, uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("lpm6 %s: %w", pr, err)
		}
	}
	return nil
}
