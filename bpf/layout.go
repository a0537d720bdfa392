package bpf

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"slices"
	"time"
)

// Page layout shared with gatehouse.c. A generation is one BPF array map of
// PageSize-byte pages; page 0 is the header.
const (
	PageSize = 65536
	// Magic is the layout version the program checks in every header.
	Magic = 0x67680004

	// MaxPages is the size of every generation map (32 MiB): enough for
	// 100k random IPv4 and 100k random IPv6 prefixes together (464 pages);
	// all of AWS takes 133, most of them the IPv4 directory.
	MaxPages = 512

	dirPages = 64 // IPv6: 2 bits per top-24-bit block = 4 MiB = 64 pages
	// MaxManagement is how many (range, port) pairs the header holds.
	MaxManagement = 32
	maxLens       = 15 // prefix lengths probed under one IPv6 block
	maxExpand     = 16 // most bits one IPv6 prefix is expanded by to merge lengths
	v6Slots       = 4  // entries per IPv6 bucket
	v6EntSize     = 32
	bitmapSize    = 32 // one partial IPv4 /24: 256 bits

	// The IPv4 directory: one 8-byte entry per 16 /24s, always pages 1 to
	// 128; the bitmaps of partial /24s follow from page 129 in rank order.
	v4DirPage    = 1
	v4DirPages   = 128
	v4BitsPage   = v4DirPage + v4DirPages
	v4PerEntry   = 16
	hdrV6TabPage = 12
	hdrV6Mask    = 16
	hdrMgmtCount = 20
	hdrV6Dir     = 24
	hdrMgmt      = 152
	mgmtSize     = 24
	hdrSrcMask4  = 920
	hdrScanPorts = 924
	hdrSrcMask6  = 928
	hdrScanWin   = 944
	hdrScanGap   = 952
	hdrScanBurst = 960
	hdrBlockFor  = 968
	// hdrPorts is where the port flags start in the header page: four bits
	// per port, the even port in the low nibble.
	hdrPorts = 32768

	stateNone    = 0
	stateWhole   = 1
	statePartial = 2

	portTCP     = 0x01
	portUDP     = 0x02
	portMgmtTCP = 0x04
	portMgmtUDP = 0x08

	flagStrict = 0x01
)

// Errors returned by Encode.
var (
	ErrTooManyManagement = errors.New("too many management range and port pairs")
	ErrBadPrefix         = errors.New("invalid prefix")
	ErrBadPort           = errors.New("invalid port")
	ErrTooManyLengths    = errors.New("too many distinct IPv6 prefix lengths under one /24")
	ErrTooLarge          = errors.New("admitted set too large for one generation map")
	ErrBadScan           = errors.New("invalid scan detection or source prefix")
)

// Port is a transport port whose packets must come from an admitted source.
type Port struct {
	Proto string // "tcp" or "udp"
	Num   uint16
}

// Management lets a range reach some ports whatever the admitted set says.
// Its ports apply to TCP and UDP.
type Management struct {
	Prefix netip.Prefix
	Ports  []uint16
}

// Generation is everything one program generation decides on.
type Generation struct {
	Strict bool
	// EphemeralLo..EphemeralHi is the local port range of outbound
	// connections; in strict mode UDP to it passes to conntrack. Zero Lo
	// turns that off.
	EphemeralLo, EphemeralHi uint16
	Ports                    []Port
	Management               []Management
	V4, V6                   []netip.Prefix
	// SourceBits4 and SourceBits6 are how many leading bits of an address
	// make one source for scan detection and the blocklist; zero means
	// the whole address.
	SourceBits4, SourceBits6 int
	Scan                     Scan
}

// Scan configures the program's port-scan detection: a source that opens
// flows to DistinctPorts closed ports within Window is blocked for
// BlockFor. Zero DistinctPorts turns it off.
type Scan struct {
	DistinctPorts int
	Window        time.Duration
	BlockFor      time.Duration
}

// Pages is an encoded generation: Count pages, of which only those in Data
// are not all zero.
type Pages struct {
	Count uint32
	Data  map[uint32][]byte
}

type pager struct {
	next  uint32
	pages map[uint32][]byte
}

func (p *pager) alloc(n uint32) uint32 {
	first := p.next
	p.next += n
	return first
}

func (p *pager) put(first uint32, data []byte) {
	for i := 0; i*PageSize < len(data); i++ {
		chunk := data[i*PageSize : min(len(data), (i+1)*PageSize)]
		if allZero(chunk) {
			continue
		}
		if len(chunk) < PageSize {
			pg := make([]byte, PageSize)
			copy(pg, chunk)
			chunk = pg
		}
		p.pages[first+uint32(i)] = chunk
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Encode lays the generation out in pages. It fails without side effects on
// bad input.
func (g *Generation) Encode() (*Pages, error) {
	p := &pager{pages: map[uint32][]byte{}}
	hdr := make([]byte, PageSize)
	p.alloc(1) // header
	// The IPv4 directory and bitmaps are always at the same pages, so the
	// program finds them without reading the header; all-zero pages are
	// not written.
	p.alloc(v4DirPages)
	le := binary.LittleEndian
	le.PutUint32(hdr[0:], Magic)
	var flags uint32
	if g.Strict {
		flags |= flagStrict
	}
	le.PutUint32(hdr[4:], flags)
	le.PutUint16(hdr[8:], g.EphemeralLo)
	le.PutUint16(hdr[10:], g.EphemeralHi)

	ports := make([]byte, 65536) // flags per port, packed into hdr below
	for _, pt := range g.Ports {
		switch {
		case pt.Num == 0:
			return nil, fmt.Errorf("port %s/0: %w", pt.Proto, ErrBadPort)
		case pt.Proto == "tcp":
			ports[pt.Num] |= portTCP
		case pt.Proto == "udp":
			ports[pt.Num] |= portUDP
		default:
			return nil, fmt.Errorf("port %s/%d: %w", pt.Proto, pt.Num, ErrBadPort)
		}
	}
	var nmgmt int
	for _, m := range g.Management {
		if !m.Prefix.IsValid() || m.Prefix.Addr().Is4In6() {
			return nil, fmt.Errorf("management %s: %w", m.Prefix, ErrBadPrefix)
		}
		for _, port := range m.Ports {
			if port == 0 {
				return nil, fmt.Errorf("management %s port 0: %w", m.Prefix, ErrBadPort)
			}
			if nmgmt == MaxManagement {
				return nil, fmt.Errorf("more than %d: %w", MaxManagement, ErrTooManyManagement)
			}
			ports[port] |= portMgmtTCP | portMgmtUDP
			e := hdr[hdrMgmt+nmgmt*mgmtSize:]
			pr := m.Prefix.Masked()
			hi, lo := addrWords(pr.Addr())
			if pr.Addr().Is4() {
				e[0] = 4
			} else {
				e[0] = 6
			}
			e[1] = byte(pr.Bits())
			le.PutUint16(e[2:], port)
			le.PutUint64(e[8:], hi)
			le.PutUint64(e[16:], lo)
			nmgmt++
		}
	}
	le.PutUint32(hdr[hdrMgmtCount:], uint32(nmgmt))
	if err := g.putScan(hdr); err != nil {
		return nil, err
	}
	for port, f := range ports {
		hdr[hdrPorts+port/2] |= f << ((port & 1) * 4)
	}

	v4, err := buildV4(g.V4)
	if err != nil {
		return nil, err
	}
	v6, err := buildV6(g.V6)
	if err != nil {
		return nil, err
	}
	putDir := func(off int, state []byte) {
		for d := range dirPages {
			chunk := state[d*PageSize : (d+1)*PageSize]
			if allZero(chunk) {
				continue
			}
			pg := p.alloc(1)
			le.PutUint16(hdr[off+2*d:], uint16(pg))
			p.put(pg, chunk)
		}
	}
	p.put(v4DirPage, v4.dir)
	if len(v4.bits) > 0 {
		// The program finds them at v4BitsPage, straight after the
		// directory; pages beyond MaxPages are refused below.
		if first := p.alloc(pagesFor(len(v4.bits))); first != v4BitsPage {
			return nil, fmt.Errorf("IPv4 bitmaps at page %d, the program reads %d", first, v4BitsPage)
		}
		p.put(v4BitsPage, v4.bits)
	}
	putDir(hdrV6Dir, v6.state)
	if v6.buckets > 0 {
		tab := p.alloc(pagesFor(len(v6.table)))
		le.PutUint16(hdr[hdrV6TabPage:], uint16(tab))
		le.PutUint32(hdr[hdrV6Mask:], uint32(v6.buckets-1))
		p.put(tab, v6.table)
	}
	if p.next > MaxPages {
		return nil, fmt.Errorf("generation needs %d pages of %d: %w", p.next, MaxPages, ErrTooLarge)
	}
	p.pages[0] = hdr
	return &Pages{Count: p.next, Data: p.pages}, nil
}

// putScan writes the source masks and the scan detection settings.
func (g *Generation) putScan(hdr []byte) error {
	b4, b6 := g.SourceBits4, g.SourceBits6
	if b4 == 0 {
		b4 = 32
	}
	if b6 == 0 {
		b6 = 128
	}
	if b4 < 0 || b4 > 32 || b6 < 0 || b6 > 128 {
		return fmt.Errorf("source prefix /%d, /%d: %w", b4, b6, ErrBadScan)
	}
	// The masks are in network order, as the packet holds the address.
	copy(hdr[hdrSrcMask4:hdrSrcMask4+4], net.CIDRMask(b4, 32))
	copy(hdr[hdrSrcMask6:hdrSrcMask6+16], net.CIDRMask(b6, 128))
	sc := g.Scan
	if sc.DistinctPorts == 0 {
		return nil
	}
	if sc.DistinctPorts < 0 || sc.DistinctPorts > 65535 || sc.Window <= 0 || sc.BlockFor <= 0 {
		return fmt.Errorf("%d ports in %s, blocked for %s: %w", sc.DistinctPorts, sc.Window, sc.BlockFor, ErrBadScan)
	}
	le := binary.LittleEndian
	gap := uint64(sc.Window.Nanoseconds()) / uint64(sc.DistinctPorts)
	le.PutUint32(hdr[hdrScanPorts:], uint32(sc.DistinctPorts))
	le.PutUint64(hdr[hdrScanWin:], uint64(sc.Window.Nanoseconds()))
	le.PutUint64(hdr[hdrScanGap:], gap)
	le.PutUint64(hdr[hdrScanBurst:], gap*uint64(sc.DistinctPorts-1))
	le.PutUint64(hdr[hdrBlockFor:], uint64(sc.BlockFor.Nanoseconds()))
	return nil
}

func pagesFor(n int) uint32 { return uint32((n + PageSize - 1) / PageSize) }

// addrWords returns the address as two host-order words; an IPv4 address
// sits in the top 32 bits of hi.
func addrWords(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return uint64(binary.BigEndian.Uint32(b[:])) << 32, 0
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

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
