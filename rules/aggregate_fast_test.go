package rules

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"go4.org/netipx"
)

// randomPrefixes draws prefixes from a small corner of each family so that
// they overlap, nest and touch often, including the very first and last
// addresses of the space.
func randomPrefixes(r *rand.Rand, n int) []netip.Prefix {
	var out []netip.Prefix
	for range n {
		switch r.IntN(5) {
		case 0, 1:
			a := netip.AddrFrom4([4]byte{198, 51, byte(r.IntN(4)), byte(r.IntN(256))})
			out = append(out, netip.PrefixFrom(a, 20+r.IntN(13)))
		case 2:
			a := netip.AddrFrom4([4]byte{byte(254 + r.IntN(2)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			out = append(out, netip.PrefixFrom(a, 1+r.IntN(32)))
		case 3:
			var b [16]byte
			b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
			b[4], b[15] = byte(r.IntN(4)), byte(r.IntN(256))
			out = append(out, netip.PrefixFrom(netip.AddrFrom16(b), 30+r.IntN(99)))
		default:
			var b [16]byte
			for i := range b {
				b[i] = 0xff
			}
			b[15], b[14] = byte(r.IntN(256)), byte(r.IntN(4))
			out = append(out, netip.PrefixFrom(netip.AddrFrom16(b), 100+r.IntN(29)))
		}
	}
	return out
}

// TestAggregateAgainstReferences compares Aggregate with a brute-force
// membership check (every boundary address of the input, and its
// neighbours) and with netipx's IPSet, on random overlapping sets.
func TestAggregateAgainstReferences(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 300 {
		in := randomPrefixes(r, 1+r.IntN(60))
		got := Aggregate(in)

		var b netipx.IPSetBuilder
		for _, p := range in {
			b.AddPrefix(p.Masked())
		}
		set, _ := b.IPSet()
		want := set.Prefixes()
		if len(got) != len(want) {
			t.Fatalf("round %d: %d prefixes, netipx %d\nin  %v\ngot %v\nwant %v", round, len(got), len(want), in, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("round %d: prefix %d = %s, netipx %s", round, i, got[i], want[i])
			}
		}
		// Sorted, canonical, disjoint.
		for i, p := range got {
			if p.Masked() != p {
				t.Fatalf("round %d: %s not canonical", round, p)
			}
			if i > 0 && (got[i-1].Overlaps(p) || got[i-1].Addr().Compare(p.Addr()) >= 0) {
				t.Fatalf("round %d: %s and %s out of order or overlapping", round, got[i-1], p)
			}
		}
		var probes []netip.Addr
		for _, p := range in {
			first := p.Masked().Addr()
			last := netipx.PrefixLastIP(p)
			probes = append(probes, first, last, first.Prev(), last.Next())
		}
		for _, a := range probes {
			if !a.IsValid() {
				continue
			}
			inInput, inOutput := false, false
			for _, p := range in {
				inInput = inInput || p.Masked().Contains(a)
			}
			for _, p := range got {
				inOutput = inOutput || p.Contains(a)
			}
			if inInput != inOutput {
				t.Fatalf("round %d: %s: input %v, aggregated %v\nin  %v\ngot %v", round, a, inInput, inOutput, in, got)
			}
		}
	}
}

func TestAggregateEdges(t *testing.T) {
	mp := netip.MustParsePrefix
	tests := []struct {
		in, want []string
	}{
		{nil, nil},
		{[]string{"0.0.0.0/0"}, []string{"0.0.0.0/0"}},
		{[]string{"0.0.0.0/1", "128.0.0.0/1"}, []string{"0.0.0.0/0"}},
		{[]string{"255.255.255.255/32", "255.255.255.254/32"}, []string{"255.255.255.254/31"}},
		{[]string{"::/0", "1.2.3.0/24"}, []string{"1.2.3.0/24", "::/0"}},
		{[]string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/128"}, []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"}},
		{[]string{"192.0.2.1/24", "192.0.2.0/25"}, []string{"192.0.2.0/24"}},
		{[]string{"192.0.2.0/25", "192.0.2.192/26", "192.0.2.128/27"}, []string{"192.0.2.0/25", "192.0.2.128/27", "192.0.2.192/26"}},
	}
	for _, tt := range tests {
		var in []netip.Prefix
		for _, s := range tt.in {
			in = append(in, mp(s))
		}
		got := Aggregate(in)
		if len(got) != len(tt.want) {
			t.Errorf("%v: got %v, want %v", tt.in, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != mp(tt.want[i]) {
				t.Errorf("%v: got %v, want %v", tt.in, got, tt.want)
			}
		}
	}
}

// TestSpecialSearchMatchesLinear: the binary search over special-purpose
// spans agrees with checking every range, on random prefixes near them.
func TestSpecialSearchMatchesLinear(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var v4, v6 []netip.Prefix
	for _, s := range SpecialPurpose {
		if s.Addr().Is4() {
			v4 = append(v4, s)
		} else {
			v6 = append(v6, s)
		}
	}
	for range 20000 {
		var p netip.Prefix
		if r.IntN(2) == 0 {
			base := v4[r.IntN(len(v4))].Addr().As4()
			base[r.IntN(4)] += byte(r.IntN(3)) - 1
			p = netip.PrefixFrom(netip.AddrFrom4(base), r.IntN(33)).Masked()
		} else {
			var b [16]byte
			s := v6[r.IntN(len(v6))].Addr().As16()
			b = s
			b[r.IntN(16)] += byte(r.IntN(3)) - 1
			p = netip.PrefixFrom(netip.AddrFrom16(b), r.IntN(129)).Masked()
		}
		linear := false
		for _, s := range SpecialPurpose {
			linear = linear || s.Overlaps(p)
		}
		set := special6
		if p.Addr().Is4() {
			set = special4
		}
		if got := overlapsAny(set, p); got != linear {
			t.Fatalf("%s: search %v, linear %v", p, got, linear)
		}
	}
}
