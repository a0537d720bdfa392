package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// floodGeneration is the policy bench/run.sh floods: listeners mode, a
// listener on 443, the admitted range 203.0.113.0/24, the default scan
// detection.
func floodGeneration() *Generation {
	return &Generation{
		EphemeralLo: 32768,
		EphemeralHi: 60999,
		Ports:       []Port{{"tcp", 443}},
		V4:          []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		SourceBits4: 32,
		SourceBits6: 64,
		Scan:        Scan{DistinctPorts: 10, Window: 10 * time.Second, Gap: time.Second, BlockFor: 10 * time.Minute},
	}
}

// floodPackets are the frames of bench/flood: SYNs to 192.0.2.1:443 from 64
// non-admitted sources, 198.51.100.1 to .64.
func floodPackets() [][]byte {
	var pkts [][]byte
	for i := range 64 {
		src := netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)})
		pkts = append(pkts, frame{src: src.String(), dst: "192.0.2.1", sport: uint16(20000 + i), dport: 443}.bytes())
	}
	return pkts
}

// dropProgram loads an XDP program that only returns XDP_DROP: the floor
// of the flood rows (bench/xdpdrop).
func dropProgram(b *testing.B) *ebpf.Program {
	netns.RequirePriv(b)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpDrop), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// BenchmarkFlood measures the flood path of bench/run.sh's drop rows, a
// bare SYN to a listener port from a source outside the admitted set,
// against a program that drops without looking (the floor), interleaved.
// floor-ns/pkt is BPF_PROG_TEST_RUN's own cost; over-floor-ns/pkt is the
// filter's.
func BenchmarkFlood(b *testing.B) {
	r := newRig(b, false)
	r.apply(b, floodGeneration())
	floor := dropProgram(b)
	pkts := floodPackets()
	before := r.counters(b)
	for i, p := range pkts {
		if got := r.run(b, p); got != xdpDrop {
			b.Fatalf("packet %d: %d, want XDP_DROP", i, got)
		}
	}
	after := r.counters(b)
	key := [2]int{1, 1} // drop, not_admitted
	if d := after[key] - before[key]; d != uint64(len(pkts)) {
		b.Fatalf("%d drops counted as not admitted, want %d", d, len(pkts))
	}
	var gh, fl []float64
	for b.Loop() {
		gh = append(gh, perPacket(b, r.prog, pkts, benchRepeat))
		fl = append(fl, perPacket(b, floor, pkts, benchRepeat))
	}
	b.ReportMetric(median(gh), "ns/pkt")
	b.ReportMetric(median(fl), "floor-ns/pkt")
	b.ReportMetric(median(gh)-median(fl), "over-floor-ns/pkt")
}
