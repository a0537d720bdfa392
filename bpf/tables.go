package bpf

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
)

// The admitted set's tables in a generation (see the top comment of
// gatehouse.c): the IPv4 directory with the bitmaps of partial /24s, and the
// IPv6 map of top-24-bit blocks with its two-choice hash table.

// mix is the IPv6 table's hash finaliser, as in the program.
func mix(h uint64) uint64 {
	h ^= h >> 31
	h *= 0x94d049bb133111eb
	h ^= h >> 29
	return h
}

// setState sets the 2-bit state of blocks [lo, hi) in a 4 MiB map.
func setState(state []byte, lo, hi uint32, s byte) {
	for i := lo; i < hi; {
		if i&3 == 0 && hi-i >= 4 {
			// Whole bytes at once.
			n := (hi - i) / 4
			fill := s | s<<2 | s<<4 | s<<6
			b := state[i/4 : i/4+n]
			for j := range b {
				b[j] = fill
			}
			i += n * 4
			continue
		}
		sh := (i & 3) * 2
		state[i/4] = state[i/4]&^(3<<sh) | s<<sh
		i++
	}
}

func getState(state []byte, i uint32) byte { return state[i/4] >> ((i & 3) * 2) & 3 }

type v4Tables struct {
	dir  []byte // v4DirPages pages of entries: states | rank<<32
	bits []byte // 32-byte bitmaps of the partial /24s, in address order
}

// v4Part is a prefix longer than /24: addresses first..first+n-1 of /24
// number idx.
type v4Part struct {
	idx      uint32
	first, n uint16
}

func buildV4(list []netip.Prefix) (*v4Tables, error) {
	state := make([]byte, 1<<24/4) // 2 bits per /24
	var parts []v4Part
	for _, pr := range list {
		if !pr.IsValid() || !pr.Addr().Is4() {
			return nil, fmt.Errorf("admitted IPv4 %s: %w", pr, ErrBadPrefix)
		}
		pr = pr.Masked()
		b := pr.Addr().As4()
		a := binary.BigEndian.Uint32(b[:])
		if pr.Bits() <= 24 {
			n := uint32(1) << (24 - pr.Bits())
			setState(state, a>>8, a>>8+n, stateWhole)
			continue
		}
		parts = append(parts, v4Part{a >> 8, uint16(a & 0xff), uint16(1) << (32 - pr.Bits())})
	}
	slices.SortFunc(parts, func(x, y v4Part) int { return cmp.Compare(x.idx, y.idx) })
	t := &v4Tables{}
	// One bitmap per partial /24, in address order: a bitmap's index is the
	// number of partial /24s below it, its rank.
	for i := 0; i < len(parts); {
		idx := parts[i].idx
		var bm [bitmapSize]byte
		for ; i < len(parts) && parts[i].idx == idx; i++ {
			for h := parts[i].first; h < parts[i].first+parts[i].n; h++ {
				bm[h/8] |= 1 << (h % 8)
			}
		}
		if getState(state, idx) == stateWhole {
			continue
		}
		full := true
		for _, x := range bm {
			full = full && x == 0xff
		}
		if full {
			setState(state, idx, idx+1, stateWhole)
			continue
		}
		setState(state, idx, idx+1, statePartial)
		t.bits = append(t.bits, bm[:]...)
	}
	// Entry e holds the states of /24s 16e..16e+15, which are the bytes
	// 4e..4e+3 of state read as one little-endian word, and the rank of
	// its first partial /24.
	le := binary.LittleEndian
	t.dir = make([]byte, v4DirPages*PageSize)
	var rank uint64
	for e := range 1 << 24 / v4PerEntry {
		s := le.Uint32(state[4*e:])
		le.PutUint64(t.dir[8*e:], uint64(s)|rank<<32)
		rank += uint64(bits.OnesCount32(s >> 1 &^ s & 0x55555555))
	}
	return t, nil
}

func roundPage(n int) int { return (n + PageSize - 1) / PageSize * PageSize }

type v6Tables struct {
	state   []byte
	buckets int
	table   []byte // buckets*v6Slots entries of 32 bytes
}

type v6Key struct {
	hi, lo uint64
	len    uint8
}

func v6Buckets(k v6Key, mask uint32) (uint32, uint32) {
	m := mix(k.hi*0x9e3779b97f4a7c15 ^ k.lo*0xc2b2ae3d27d4eb4f ^ (uint64(k.len)+1)*0x165667b19e3779f9)
	return uint32(m>>32) & mask, uint32(m) & mask
}

func buildV6(list []netip.Prefix) (*v6Tables, error) {
	t := &v6Tables{state: make([]byte, dirPages*PageSize)}
	// Prefixes longer than /24, sorted by block, then length, then address.
	var long []v6Key
	for _, pr := range list {
		if !pr.IsValid() || !pr.Addr().Is6() || pr.Addr().Is4In6() {
			return nil, fmt.Errorf("admitted IPv6 %s: %w", pr, ErrBadPrefix)
		}
		pr = pr.Masked()
		hi, lo := addrWords(pr.Addr())
		idx := uint32(hi >> 40)
		if pr.Bits() <= 24 {
			setState(t.state, idx, idx+1<<(24-pr.Bits()), stateWhole)
			continue
		}
		long = append(long, v6Key{hi, lo, uint8(pr.Bits())})
	}
	slices.SortFunc(long, func(a, b v6Key) int {
		if c := cmp.Compare(a.hi>>40, b.hi>>40); c != 0 {
			return c
		}
		return compareInBlock(a, b)
	})
	long = slices.Compact(long)
	var entries []v6Key
	lensOf := map[uint32][]uint8{}
	for i := 0; i < len(long); {
		idx := uint32(long[i].hi >> 40)
		j := i
		for j < len(long) && uint32(long[j].hi>>40) == idx {
			j++
		}
		block := long[i:j]
		i = j
		if getState(t.state, idx) == stateWhole {
			continue
		}
		block, err := mergeLengths(idx, block)
		if err != nil {
			return nil, err
		}
		var lens []uint8
		for _, k := range block {
			if len(lens) == 0 || lens[len(lens)-1] != k.len {
				lens = append(lens, k.len)
			}
		}
		slices.Reverse(lens) // longest first
		lensOf[idx] = lens
		entries = append(entries, block...)
		entries = append(entries, v6Key{uint64(idx) << 40, 0, 24})
		setState(t.state, idx, idx+1, statePartial)
	}
	if len(entries) == 0 {
		return t, nil
	}
	le := binary.LittleEndian
	nb := 1 << bits.Len(uint(len(entries)*5/4/v6Slots))
	for ; ; nb *= 2 {
		tab := make([]byte, roundPage(nb*v6Slots*v6EntSize))
		fill := make([]uint8, nb)
		ok := true
		for _, k := range entries {
			b1, b2 := v6Buckets(k, uint32(nb-1))
			b := b1
			if fill[b2] < fill[b1] {
				b = b2
			}
			if fill[b] == v6Slots {
				ok = false
				break
			}
			e := tab[(int(b)*v6Slots+int(fill[b]))*v6EntSize:]
			fill[b]++
			le.PutUint64(e[0:], k.hi)
			le.PutUint64(e[8:], k.lo)
			tag, val := uint64(k.len), uint64(0)
			if k.len == 24 {
				for i, l := range lensOf[uint32(k.hi>>40)] {
					if i < 7 {
						tag |= uint64(l) << (8 * (i + 1))
					} else {
						val |= uint64(l) << (8 * (i - 7))
					}
				}
			}
			le.PutUint64(e[16:], tag)
			le.PutUint64(e[24:], val)
		}
		if ok {
			t.buckets, t.table = nb, tab
			return t, nil
		}
	}
}

// compareInBlock orders the keys of one top-24-bit block by length, then
// address.
func compareInBlock(a, b v6Key) int {
	if c := cmp.Compare(a.len, b.len); c != 0 {
		return c
	}
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

// mergeLengths expands the shortest prefixes of a block into the next
// length up until at most maxLens lengths remain: the lookup probes each
// length once, so their number bounds its cost. block is sorted by length,
// then address, and so is the result.
func mergeLengths(idx uint32, block []v6Key) ([]v6Key, error) {
	for {
		var lens []int
		count := map[int]int{}
		for _, k := range block {
			if len(lens) == 0 || lens[len(lens)-1] != int(k.len) {
				lens = append(lens, int(k.len))
			}
			count[int(k.len)]++
		}
		if len(lens) <= maxLens {
			return block, nil
		}
		// Merge the adjacent pair that costs the fewest expanded prefixes.
		best, bestCost := -1, 0
		for i := 0; i+1 < len(lens); i++ {
			d := lens[i+1] - lens[i]
			if d > maxExpand {
				continue
			}
			cost := count[lens[i]] << d
			if best < 0 || cost < bestCost {
				best, bestCost = i, cost
			}
		}
		if best < 0 {
			return nil, fmt.Errorf("block %06x::/24: %w", idx, ErrTooManyLengths)
		}
		from, to := lens[best], lens[best+1]
		var next []v6Key
		for _, k := range block {
			if int(k.len) != from {
				next = append(next, k)
				continue
			}
			for i := uint64(0); i < 1<<(to-from); i++ {
				hi, lo := k.hi, k.lo
				// Set the bits between from and to to i.
				for j := range to - from {
					bit := from + j // 0 = most significant
					if i>>(to-from-1-j)&1 == 0 {
						continue
					}
					if bit < 64 {
						hi |= 1 << (63 - bit)
					} else {
						lo |= 1 << (127 - bit)
					}
				}
				next = append(next, v6Key{hi, lo, uint8(to)})
			}
		}
		slices.SortFunc(next, compareInBlock)
		block = slices.Compact(next)
	}
}
