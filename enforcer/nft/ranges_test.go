package nft

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

func TestToRanges(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{"192.0.2.0/24"}, []string{"192.0.2.0-192.0.2.255"}},
		{[]string{"203.0.113.0/25", "203.0.113.128/26"}, []string{"203.0.113.0-203.0.113.191"}},
		{[]string{"192.0.2.0/25", "198.51.100.0/24"}, []string{"192.0.2.0-192.0.2.127", "198.51.100.0-198.51.100.255"}},
		{[]string{"2001:db8::/48", "2001:db8:1::/48"}, []string{"2001:db8::-2001:db8:1:ffff:ffff:ffff:ffff:ffff"}},
	} {
		var got []string
		for _, r := range toRanges(prefixes(tc.in...)) {
			got = append(got, r.from.String()+"-"+r.to.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("toRanges(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestIntervalElementsTopOfSpace(t *testing.T) {
	els := intervalElements(toRanges(prefixes("255.255.255.0/24")))
	if len(els) != 1 || els[0].IntervalEnd {
		t.Errorf("range to the top: %+v, want one start element", els)
	}
	els = intervalElements(toRanges(prefixes("192.0.2.0/24")))
	if len(els) != 2 || !els[1].IntervalEnd || netip.AddrFrom4([4]byte(els[1].Key)) != netip.MustParseAddr("192.0.3.0") {
		t.Errorf("192.0.2.0/24: %+v, want start and end at 192.0.3.0", els)
	}
}

func TestDiffRanges(t *testing.T) {
	r := func(ss ...string) []addrRange { return toRanges(prefixes(ss...)) }
	del, add := diffRanges(r("192.0.2.0/24", "198.51.100.0/24"), r("192.0.2.0/25", "198.51.100.0/24", "203.0.113.0/24"))
	if !slices.Equal(del, r("192.0.2.0/24")) || !slices.Equal(add, r("192.0.2.0/25", "203.0.113.0/24")) {
		t.Errorf("diff: del %v add %v", del, add)
	}
}

func TestChunkElements(t *testing.T) {
	els := intervalElements(toRanges(randomPrefixes(20_000, 4)))
	chunks := chunkElements(els)
	var n int
	for i, c := range chunks {
		size := 0
		for _, e := range c {
			size += elementSize(e)
		}
		if size > maxElemBytes {
			t.Errorf("chunk %d: %d bytes", i, size)
		}
		if c[0].IntervalEnd {
			t.Errorf("chunk %d starts with an interval end", i)
		}
		n += len(c)
	}
	if n != len(els) {
		t.Errorf("chunks hold %d elements, want %d", n, len(els))
	}
}

// TestElementSize checks the size estimate against the real encoding.
func TestElementSize(t *testing.T) {
	for _, el := range []nftables.SetElement{
		{Key: []byte{192, 0, 2, 0}},
		{Key: []byte{192, 0, 3, 0}, IntervalEnd: true},
		{Key: netip.MustParseAddr("2001:db8::").AsSlice()},
		{Key: concatKey(netip.MustParseAddr("198.51.100.0"), 22), KeyEnd: concatKey(netip.MustParseAddr("198.51.100.15"), 22)},
	} {
		set := &nftables.Set{Table: ourTable(), Name: "x", ID: 1}
		c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
			if len(req) > 1 {
				n, size := elemCount(t, req[1])
				if n != 1 || size != elementSize(el) {
					t.Errorf("%+v: encodes to %d bytes, estimate %d", el, size, elementSize(el))
				}
			}
			return req, nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SetAddElements(set, []nftables.SetElement{el}); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIntervalChunks: the streamed chunks of a full replace hold exactly the
// elements of intervalElements, in order, each chunk within maxElemBytes and
// starting with a start element, for IPv4 (with a range to the top of the
// space) and IPv6.
func TestIntervalChunks(t *testing.T) {
	v4 := append(randomPrefixes(20_000, 5), netip.MustParsePrefix("255.255.255.0/24"))
	slices.SortFunc(v4, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	r := rand.New(rand.NewPCG(6, 6))
	var v6 []netip.Prefix
	for i := range 8000 {
		var a [16]byte
		copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i)})
		a[6] = byte(r.IntN(256))
		v6 = append(v6, netip.PrefixFrom(netip.AddrFrom16(a), 48+r.IntN(80)).Masked())
	}
	slices.SortFunc(v6, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, set := range [][]netip.Prefix{v4, v6} {
		rs := toRanges(set)
		var got []nftables.SetElement
		chunks := 0
		err := forIntervalChunks(rs, func(c []nftables.SetElement) error {
			chunks++
			size := 0
			for _, e := range c {
				size += elementSize(e)
				// The keys live in a buffer reused for the next chunk.
				got = append(got, nftables.SetElement{Key: slices.Clone(e.Key), IntervalEnd: e.IntervalEnd})
			}
			if size > maxElemBytes {
				t.Errorf("chunk %d: %d bytes", chunks, size)
			}
			if c[0].IntervalEnd {
				t.Errorf("chunk %d starts with an interval end", chunks)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := intervalElements(rs)
		if chunks < 2 || !slices.EqualFunc(got, want, func(a, b nftables.SetElement) bool {
			return slices.Equal(a.Key, b.Key) && a.IntervalEnd == b.IntervalEnd
		}) {
			t.Fatalf("%d chunks; elements equal to intervalElements: false (%d, want %d)", chunks, len(got), len(want))
		}
	}
	wantErr := errors.New("refused")
	if err := forIntervalChunks(toRanges(v4), func([]nftables.SetElement) error { return wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("error of the callback: %v", err)
	}
}
