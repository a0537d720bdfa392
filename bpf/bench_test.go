package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// benchSet returns about n aggregated random prefixes of a family.
func benchSet(tb testing.TB, rng *rand.Rand, v6 bool, n int) []netip.Prefix {
	var list []netip.Prefix
	for want := n; len(list) < n; want = n + (n-len(list))*2 {
		// IPv4 from /18 down keeps 100k disjoint prefixes a small part
		// of the space, as real feeds are.
		list = aggregate(tb, append(list, randomPrefixesFrom(rng, v6, want-len(list), 18)...))
	}
	return list[:n]
}

// benchPackets returns 16 SYNs from admitted sources and 16 from others.
func benchPackets(rng *rand.Rand, list []netip.Prefix, v6 bool) [][]byte {
	var sb netipSet
	sb.add(list)
	var hit, miss [][]byte
	for len(hit) < 16 {
		hit = append(hit, synFrom(randomIn(rng, list[rng.IntN(len(list))])))
	}
	for len(miss) < 16 {
		a := probes(rng, nil, v6, 1)[0]
		if !sb.contains(a) {
			miss = append(miss, synFrom(a))
		}
	}
	return append(hit, miss...)
}

type netipSet struct{ list []netip.Prefix }

func (s *netipSet) add(l []netip.Prefix) { s.list = append(s.list, l...) }
func (s *netipSet) contains(a netip.Addr) bool {
	for _, p := range s.list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// benchRepeat is how many times BPF_PROG_TEST_RUN runs a packet per call.
// Every call with a repeat above one first adds the program to the kernel's
// XDP dispatcher (a synchronize_rcu, about 17 ms here) and then starts with
// cold caches and TLB. Measured on the development VM, that costs each call
// a fixed 1-12 µs, more the busier the machine, which at 1,000 repeats put
// 1-12 ns on every per-packet figure (the empty program read 29-35 ns at
// 1,000 repeats and 28-32 ns at 100,000 in the same runs). At 20,000 it is
// at most 0.6 ns. Every program here, the empty one
// included, is measured with this one count.
const benchRepeat = 20000

// perPacket runs each packet repeat times in the kernel and returns the mean
// nanoseconds per run over all packets.
func perPacket(b *testing.B, prog *ebpf.Program, pkts [][]byte, repeat int) float64 {
	var total time.Duration
	for _, p := range pkts {
		_, d, err := prog.Benchmark(p, repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		total += d
	}
	return float64(total.Nanoseconds()) / float64(len(pkts))
}

// BenchmarkLookup measures the whole program per packet (parse, verdict,
// counter) at 1k, 10k and 100k admitted prefixes, the fast build, the
// LPM-trie build and an empty XDP program interleaved in the same
// iterations, rotating 32 distinct packets (16 admitted, 16 not).
func BenchmarkLookup(b *testing.B) {
	for _, fam := range []string{"v4", "v6"} {
		for _, n := range []int{1000, 10000, 100000} {
			b.Run(fmt.Sprintf("%s/%dk", fam, n/1000), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(uint64(n), 7))
				v6 := fam == "v6"
				list := benchSet(b, rng, v6, n)
				g := &Generation{Ports: []Port{{"tcp", 443}}}
				if v6 {
					g.V6 = list
				} else {
					g.V4 = list
				}
				fast, lpm, empty := newRig(b, false), newRig(b, true), emptyProgram(b)
				fast.apply(b, g)
				lpm.apply(b, g)
				pkts := benchPackets(rng, list, v6)
				hits, misses := pkts[:16], pkts[16:]
				// Sanity: admitted sources pass and the others drop, in
				// both builds, so each path measured is the one named.
				for i, p := range pkts {
					want := uint32(xdpPass)
					if i >= len(hits) {
						want = xdpDrop
					}
					if f, l := fast.run(b, p), lpm.run(b, p); f != want || l != want {
						b.Fatalf("packet %d: fast %d, lpm %d, want %d", i, f, l, want)
					}
				}
				var fh, fm, ls, es []float64
				b.ResetTimer()
				for b.Loop() {
					fh = append(fh, perPacket(b, fast.prog, hits, benchRepeat))
					fm = append(fm, perPacket(b, fast.prog, misses, benchRepeat))
					ls = append(ls, perPacket(b, lpm.prog, pkts, benchRepeat))
					es = append(es, perPacket(b, empty, pkts, benchRepeat))
				}
				fs := make([]float64, len(fh))
				for i := range fh {
					fs[i] = (fh[i] + fm[i]) / 2
				}
				f, l := median(fs), median(ls)
				b.ReportMetric(f, "ns/pkt")
				b.ReportMetric(median(fh), "hit-ns/pkt")
				b.ReportMetric(median(fm), "miss-ns/pkt")
				b.ReportMetric(l, "lpm-ns/pkt")
				b.ReportMetric(l/f, "lpm/fast")
				b.ReportMetric(median(es), "empty-ns/pkt")
			})
		}
	}
}

func median(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkEmpty is the floor: an XDP program that only returns XDP_PASS,
// and this program on an ARP frame (Ethernet parse and one counter).
func BenchmarkEmpty(b *testing.B) {
	empty := emptyProgram(b)
	r := newRig(b, false)
	arp := make([]byte, 42)
	arp[12], arp[13] = 0x08, 0x06
	var ns, arpNS []float64
	for b.Loop() {
		ns = append(ns, perPacket(b, empty, [][]byte{arp}, benchRepeat))
		arpNS = append(arpNS, perPacket(b, r.prog, [][]byte{arp}, benchRepeat))
	}
	b.ReportMetric(median(ns), "ns/pkt")
	b.ReportMetric(median(arpNS), "arp-ns/pkt")
}

// emptyProgram loads an XDP program that only returns XDP_PASS: the floor of
// BPF_PROG_TEST_RUN on this machine.
func emptyProgram(b *testing.B) *ebpf.Program {
	netns.RequirePriv(b)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// BenchmarkApply measures building and publishing a generation of 100k
// IPv4 and 20k IPv6 prefixes: encode, create the map, write it, swap.
func BenchmarkApply(b *testing.B) {
	r := newRig(b, false)
	rng := rand.New(rand.NewPCG(9, 9))
	g := &Generation{
		Ports: []Port{{"tcp", 443}},
		V4:    benchSet(b, rng, false, 100000),
		V6:    benchSet(b, rng, true, 20000),
	}
	outer := r.coll.Maps[MapGen]
	var prev *ebpf.Map
	for b.Loop() {
		p, err := g.Encode()
		if err != nil {
			b.Fatal(err)
		}
		m, err := NewGenerationMap(p)
		if err != nil {
			b.Fatal(err)
		}
		if err := Publish(outer, m); err != nil {
			b.Fatal(err)
		}
		if prev != nil {
			prev.Close()
		}
		prev = m
	}
	if prev != nil {
		prev.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/apply")
}

// BenchmarkConntrackLookup measures the one path that asks conntrack: a UDP
// datagram that strict mode would drop as a new flow. In a namespace of its
// own, where the gate opened 32 flows from port 123: their answers (found:
// passed as established), forged answers from port 124 (not found:
// dropped), and the forged ones through the program without the lookup
// (bpf.WithoutConntrack: the stateless drop, the cost before the lookup),
// interleaved.
func BenchmarkConntrackLookup(b *testing.B) {
	netns.RequirePriv(b)
	netns.RequireTool(b, "nft", "nftables")
	gate, peer := netns.New(b, "gate"), netns.New(b, "peer")
	netns.Connect(b, gate, []string{"192.0.2.1/24"}, peer, []string{"192.0.2.2/24"})
	gate.Exec(b, "nft", "add table inet track { chain out { type filter hook output priority 0; ct state new accept; }; }")
	full, without := newRig(b, false), newRig(b, false)
	spec, err := Spec(false)
	if err != nil {
		b.Fatal(err)
	}
	if err := WithoutConntrack(spec); err != nil {
		b.Fatal(err)
	}
	without.coll.Close()
	if without.coll, err = ebpf.NewCollection(spec); err != nil {
		b.Fatal(err)
	}
	without.prog = without.coll.Programs[ProgXDP]
	g := testGeneration(true)
	full.apply(b, g)
	without.apply(b, g)
	var found, forged [][]byte
	for i := range 32 {
		p := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)})
		if err := gate.Do(func() error { return sendFrom(ctPort, p, ctPort) }); err != nil {
			b.Fatal(err)
		}
		found = append(found, frame{src: p.String(), dst: "192.0.2.1", proto: 17, sport: ctPort, dport: ctPort}.bytes())
		forged = append(forged, frame{src: p.String(), dst: "192.0.2.1", proto: 17, sport: ctPort + 1, dport: ctPort}.bytes())
	}
	in := func(prog *ebpf.Program, pkts [][]byte) (ns float64) {
		if err := gate.Do(func() error { ns = perPacket(b, prog, pkts, benchRepeat); return nil }); err != nil {
			b.Fatal(err)
		}
		return ns
	}
	// Sanity: each path is the one named.
	for i := range found {
		for _, c := range []struct {
			prog  *ebpf.Program
			frame []byte
			want  uint32
		}{{full.prog, found[i], xdpPass}, {full.prog, forged[i], xdpDrop}, {without.prog, found[i], xdpDrop}} {
			var got uint32
			if err := gate.Do(func() (err error) { got, err = c.prog.Run(&ebpf.RunOptions{Data: c.frame}); return err }); err != nil || got != c.want {
				b.Fatalf("packet %d: %d (%v), want %d", i, got, err, c.want)
			}
		}
	}
	var hit, miss, stateless []float64
	for b.Loop() {
		hit = append(hit, in(full.prog, found))
		miss = append(miss, in(full.prog, forged))
		stateless = append(stateless, in(without.prog, forged))
	}
	b.ReportMetric(median(hit), "found-ns/pkt")
	b.ReportMetric(median(miss), "not-found-ns/pkt")
	b.ReportMetric(median(stateless), "stateless-ns/pkt")
}
