package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
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

// Scan configures the program's port-scan detection: a (source, port) pair
// counts once per Window; a source's new pairs drain a bucket of
// DistinctPorts-1 tokens that refills one per Gap, and the pair that finds
// it empty blocks the source for BlockFor. Zero DistinctPorts turns it off.
// Gap is the policy's (policy.ScanRefill.Gap), so that the nftables layer's
// limit refills exactly alike.
type Scan struct {
	DistinctPorts int
	Window        time.Duration
	Gap           time.Duration
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
	if sc.DistinctPorts < 0 || sc.DistinctPorts > 65535 || sc.Window <= 0 || sc.Gap <= 0 || sc.BlockFor <= 0 {
		return fmt.Errorf("%d ports in %s (one per %s), blocked for %s: %w", sc.DistinctPorts, sc.Window, sc.Gap, sc.BlockFor, ErrBadScan)
	}
	le := binary.LittleEndian
	gap := uint64(sc.Gap.Nanoseconds())
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
