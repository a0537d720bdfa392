package rules

import (
	"cmp"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
)

// u128 is an address as a 128-bit integer; IPv4 uses the low 32 bits.
type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) addOne() (u128, bool) {
	lo := a.lo + 1
	hi := a.hi
	if lo == 0 {
		hi++
		if hi == 0 {
			return u128{}, true // wrapped: a was the last address
		}
	}
	return u128{hi, lo}, false
}

// setLowBits returns a with its n lowest bits set.
func (a u128) setLowBits(n int) u128 {
	switch {
	case n == 0:
		return a
	case n < 64:
		return u128{a.hi, a.lo | (1<<n - 1)}
	case n == 64:
		return u128{a.hi, ^uint64(0)}
	case n < 128:
		return u128{a.hi | (1<<(n-64) - 1), ^uint64(0)}
	}
	return u128{^uint64(0), ^uint64(0)}
}

func (a u128) trailingZeros() int {
	if a.lo != 0 {
		return bits.TrailingZeros64(a.lo)
	}
	return 64 + bits.TrailingZeros64(a.hi)
}

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func fromU128(v u128, is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(v.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	return netip.AddrFrom16(b)
}

type span struct{ first, last u128 }

func spanOf(p netip.Prefix) span {
	p = p.Masked()
	width := 128
	if p.Addr().Is4() {
		width = 32
	}
	first := toU128(p.Addr())
	return span{first, first.setLowBits(width - p.Bits())}
}

// aggregateFamily merges the prefixes of one family into the fewest
// prefixes covering the same addresses, sorted: ranges sorted by first
// address, overlapping and adjacent ones merged, each range cut back into
// aligned blocks.
func aggregateFamily(ps []netip.Prefix, is4 bool, out []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return out
	}
	width := 128
	if is4 {
		width = 32
	}
	spans := make([]span, len(ps))
	for i, p := range ps {
		spans[i] = spanOf(p)
	}
	slices.SortFunc(spans, func(a, b span) int { return a.first.cmp(b.first) })
	merged := spans[:1]
	for _, s := range spans[1:] {
		cur := &merged[len(merged)-1]
		next, wrapped := cur.last.addOne()
		if wrapped || s.first.cmp(next) <= 0 {
			if s.last.cmp(cur.last) > 0 {
				cur.last = s.last
			}
			continue
		}
		merged = append(merged, s)
	}
	for _, s := range merged {
		first := s.first
		for {
			// The largest aligned block starting at first that ends by last.
			n := min(first.trailingZeros(), width)
			for first.setLowBits(n).cmp(s.last) > 0 {
				n--
			}
			out = append(out, netip.PrefixFrom(fromU128(first, is4), width-n))
			end := first.setLowBits(n)
			if end == s.last {
				break
			}
			first, _ = end.addOne()
		}
	}
	return out
}
