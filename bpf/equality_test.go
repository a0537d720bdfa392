package bpf

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"go4.org/netipx"
)

// randomPrefixes returns n random prefixes of the family: half spread over
// the whole space, half packed into a few blocks so that partial /24s,
// shared IPv6 blocks and overlaps occur. Lengths follow roughly what cloud
// feeds publish.
func randomPrefixes(rng *rand.Rand, v6 bool, n int) []netip.Prefix {
	return randomPrefixesFrom(rng, v6, n, 12)
}

// randomPrefixesFrom is randomPrefixes with IPv4 lengths from min4 to 32.
func randomPrefixesFrom(rng *rand.Rand, v6 bool, n, min4 int) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	hot := make([][16]byte, 8)
	for i := range hot {
		fillRandom(rng, hot[i][:])
	}
	for len(out) < n {
		var a [16]byte
		fillRandom(rng, a[:])
		if rng.IntN(2) == 0 {
			h := hot[rng.IntN(len(hot))]
			keep := 2 // a /16 (IPv4) or /16 (IPv6) shared with others
			if v6 {
				keep = 3 // a /24 block
			}
			copy(a[:keep], h[:keep])
		}
		var bits int
		if v6 {
			switch rng.IntN(10) {
			case 0:
				bits = 128
			case 1:
				bits = 16 + rng.IntN(16)
			default:
				bits = 32 + rng.IntN(33)
			}
			out = append(out, netip.PrefixFrom(netip.AddrFrom16(a), bits).Masked())
		} else {
			bits = min4 + rng.IntN(33-min4)
			out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte(a[:4])), bits).Masked())
		}
	}
	return out
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(b[i:], w[:])
	}
}

// probes returns addresses at and around every prefix's edges, inside it,
// and at random.
func probes(rng *rand.Rand, list []netip.Prefix, v6 bool, random int) []netip.Addr {
	var out []netip.Addr
	for _, pr := range list {
		first := pr.Masked().Addr()
		last := lastAddr(pr)
		out = append(out, first, last, randomIn(rng, pr))
		if p := first.Prev(); p.IsValid() {
			out = append(out, p)
		}
		if n := last.Next(); n.IsValid() {
			out = append(out, n)
		}
	}
	for range random {
		var a [16]byte
		fillRandom(rng, a[:])
		if v6 {
			out = append(out, netip.AddrFrom16(a))
		} else {
			out = append(out, netip.AddrFrom4([4]byte(a[:4])))
		}
	}
	return out
}

func lastAddr(pr netip.Prefix) netip.Addr {
	b := pr.Masked().Addr().AsSlice()
	for i := pr.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func randomIn(rng *rand.Rand, pr netip.Prefix) netip.Addr {
	b := pr.Masked().Addr().AsSlice()
	for i := pr.Bits(); i < len(b)*8; i++ {
		if rng.IntN(2) == 1 {
			b[i/8] |= 0x80 >> (i % 8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func synFrom(a netip.Addr) []byte {
	dst := dst4
	if a.Is6() {
		dst = dst6
	}
	return frame{src: a.String(), dst: dst, dport: 443}.bytes()
}

// checkEqual loads the same set into the fast and the LPM build and runs
// every probe through both, comparing with netipx's IPSet.
func checkEqual(t *testing.T, fast, lpm *rig, v4, v6 []netip.Prefix, probeList []netip.Addr) {
	t.Helper()
	g := &Generation{Ports: []Port{{"tcp", 443}}, V4: v4, V6: v6}
	fast.apply(t, g)
	lpm.apply(t, g)
	var sb netipx.IPSetBuilder
	for _, pr := range append(append([]netip.Prefix{}, v4...), v6...) {
		sb.AddPrefix(pr)
	}
	set, err := sb.IPSet()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d IPv4 and %d IPv6 prefixes, %d probes", len(v4), len(v6), len(probeList))
	bad := 0
	for _, a := range probeList {
		want := uint32(xdpDrop)
		if set.Contains(a) {
			want = xdpPass
		}
		pkt := synFrom(a)
		gf, gl := fast.run(t, pkt), lpm.run(t, pkt)
		if gf != want || gl != want {
			bad++
			if bad <= 10 {
				t.Errorf("%s: fast %d, lpm %d, want %d", a, gf, gl, want)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d probes disagree", bad, len(probeList))
	}
}

func TestLookupEqualsLPM(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	rnd4, rnd6 := randomPrefixes(rng, false, 8000), randomPrefixes(rng, true, 8000)
	// Seventy lengths under one IPv6 /24: the encoder must merge lengths.
	var crowded []netip.Prefix
	for l := 25; l <= 128; l += 3 {
		for range 2 {
			var a [16]byte
			fillRandom(rng, a[:])
			copy(a[:3], []byte{0x20, 0x01, 0x0d})
			crowded = append(crowded, netip.PrefixFrom(netip.AddrFrom16(a), l).Masked())
		}
	}
	// Partial /24s packed into directory entries (16 /24s each): every
	// pattern of partial, whole and empty across entry boundaries, and at
	// both ends of the address space, so that each rank is counted right.
	var dense []netip.Prefix
	for i := range 96 {
		third := 112 + i // 203.0.112.0/24 onwards: entries from 203.0.112.0
		switch i % 5 {
		case 0, 3:
			dense = append(dense, netip.PrefixFrom(netip.AddrFrom4([4]byte{203, byte(third >> 8), byte(third), byte(i)}), 32))
		case 1:
			dense = append(dense, netip.PrefixFrom(netip.AddrFrom4([4]byte{203, byte(third >> 8), byte(third), 128}), 25))
		case 2:
			dense = append(dense, netip.PrefixFrom(netip.AddrFrom4([4]byte{203, byte(third >> 8), byte(third), 0}), 24))
		}
	}
	dense = append(dense, netip.MustParsePrefix("0.0.0.7/32"), netip.MustParsePrefix("255.255.255.64/27"))
	const aws = "../../shared/testdata/feeds/aws-ip-ranges.2024-07-04.json"
	fixed := func(v4, v6 []netip.Prefix) func(t *testing.T) ([]netip.Prefix, []netip.Prefix) {
		return func(*testing.T) ([]netip.Prefix, []netip.Prefix) { return v4, v6 }
	}
	for _, c := range []struct {
		name string
		set  func(t *testing.T) (v4, v6 []netip.Prefix)
	}{
		{"aws", func(t *testing.T) ([]netip.Prefix, []netip.Prefix) { return feedPrefixes(t, aws) }},
		{"aws aggregated", func(t *testing.T) ([]netip.Prefix, []netip.Prefix) {
			v4, v6 := feedPrefixes(t, aws)
			return aggregate(t, v4), aggregate(t, v6)
		}},
		{"azure", func(t *testing.T) ([]netip.Prefix, []netip.Prefix) {
			return azurePrefixes(t, "../../shared/testdata/feeds/azure-ServiceTags_Public_20250721.json")
		}},
		{"random", fixed(rnd4, rnd6)},
		{"random aggregated", fixed(aggregate(t, rnd4), aggregate(t, rnd6))},
		{"random 100k", func(t *testing.T) ([]netip.Prefix, []netip.Prefix) {
			return benchSet(t, rng, false, 100000), benchSet(t, rng, true, 50000)
		}},
		{"crowded v6 block", fixed(nil, crowded)},
		{"dense partial IPv4 /24s", fixed(dense, nil)},
		{"everything", fixed([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, []netip.Prefix{netip.MustParsePrefix("::/0")})},
		{"empty", fixed(nil, nil)},
	} {
		t.Run(c.name, func(t *testing.T) {
			v4, v6 := c.set(t)
			fast, lpm := newRig(t, false), newRig(t, true)
			// Probe around at most 8000 prefixes per family.
			pl := probes(rng, sample(rng, v4, 8000), false, 2000)
			pl = append(pl, probes(rng, sample(rng, v6, 8000), true, 2000)...)
			checkEqual(t, fast, lpm, v4, v6, pl)
		})
	}
}

func sample(rng *rand.Rand, list []netip.Prefix, n int) []netip.Prefix {
	if len(list) <= n {
		return list
	}
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = list[rng.IntN(len(list))]
	}
	return out
}

func aggregate(t testing.TB, list []netip.Prefix) []netip.Prefix {
	var sb netipx.IPSetBuilder
	for _, pr := range list {
		sb.AddPrefix(pr)
	}
	set, err := sb.IPSet()
	if err != nil {
		t.Fatal(err)
	}
	return set.Prefixes()
}

// TestSwapUnderFlood floods probes while generations A and B alternate:
// addresses in both must always pass, addresses in neither must always drop.
func TestSwapUnderFlood(t *testing.T) {
	r := newRig(t, false)
	rng := rand.New(rand.NewPCG(3, 4))
	common4 := aggregate(t, randomPrefixes(rng, false, 3000))
	common6 := aggregate(t, randomPrefixes(rng, true, 3000))
	genA := &Generation{Ports: []Port{{"tcp", 443}}, V4: aggregate(t, append(randomPrefixes(rng, false, 3000), common4...)), V6: aggregate(t, append(randomPrefixes(rng, true, 3000), common6...))}
	genB := &Generation{Strict: true, Ports: []Port{{"tcp", 443}}, V4: aggregate(t, append(randomPrefixes(rng, false, 3000), common4...)), V6: aggregate(t, append(randomPrefixes(rng, true, 3000), common6...))}
	setOf := func(g *Generation) *netipx.IPSet {
		var sb netipx.IPSetBuilder
		for _, p := range append(append([]netip.Prefix{}, g.V4...), g.V6...) {
			sb.AddPrefix(p)
		}
		s, _ := sb.IPSet()
		return s
	}
	sa, sb := setOf(genA), setOf(genB)
	var both, neither [][]byte
	for _, a := range append(probes(rng, common4, false, 3000), probes(rng, common6, true, 3000)...) {
		switch {
		case sa.Contains(a) && sb.Contains(a):
			both = append(both, synFrom(a))
		case !sa.Contains(a) && !sb.Contains(a):
			neither = append(neither, synFrom(a))
		}
	}
	if len(both) < 100 || len(neither) < 100 {
		t.Fatalf("probe sets too small: %d both, %d neither", len(both), len(neither))
	}
	pa, err := genA.Encode()
	if err != nil {
		t.Fatal(err)
	}
	pb, err := genB.Encode()
	if err != nil {
		t.Fatal(err)
	}
	r.apply(t, genA)

	var stop atomic.Bool
	var wg sync.WaitGroup
	var swaps atomic.Int64
	swapErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stop.Store(true)
		outer := r.coll.Maps[MapGen]
		for i := range 60 {
			p := pa
			if i%2 == 0 {
				p = pb
			}
			m, err := NewGenerationMap(p)
			if err != nil {
				swapErr <- err
				return
			}
			err = Publish(outer, m)
			m.Close() // the outer map holds its own reference
			if err != nil {
				swapErr <- err
				return
			}
			swaps.Add(1)
		}
	}()
	var sent, bad int
	for i := 0; !stop.Load() || i < 2000; i++ {
		pkt, want := both[i%len(both)], uint32(xdpPass)
		if i%2 == 1 {
			pkt, want = neither[i%len(neither)], xdpDrop
		}
		if got := r.run(t, pkt); got != want {
			bad++
		}
		sent++
	}
	wg.Wait()
	select {
	case err := <-swapErr:
		t.Fatal(err)
	default:
	}
	t.Logf("%d probes during %d swaps", sent, swaps.Load())
	if bad > 0 {
		t.Errorf("%d of %d probes misclassified during swaps", bad, sent)
	}
}
