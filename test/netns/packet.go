package netns

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// Packet is one IP packet, or a datagram cut into two fragments, built
// byte by byte with correct checksums (conntrack calls a packet with a bad
// one invalid before any rule sees it): for tests that put on a wire what
// no socket sends, such as a forged source address or fragments.
type Packet struct {
	Src, Dst netip.Addr // documentation addresses only
	Proto    uint8      // 6, 17, 1, 58; anything else gets 8 bytes of GRE
	DstPort  uint16
	SrcPort  uint16 // also the ICMP echo identifier
	TCPFlags uint8
	ICMPType uint8 // 135 builds a neighbour solicitation for Dst
	// ID is the IPv4 identification, or the IPv6 flow label and fragment
	// identification: it tells the packet apart in traces.
	ID uint32
	// Fragment cuts the datagram into a first fragment carrying the
	// transport header and a later one carrying the rest.
	Fragment bool
}

// transport returns the transport header and payload, checksummed.
func (p Packet) transport() []byte {
	payload := make([]byte, 40)
	for i := range payload {
		payload[i] = byte(i)
	}
	var b []byte
	ck := -1 // offset of the checksum field, -1 for none
	switch p.Proto {
	case unix.IPPROTO_TCP:
		b = make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.SrcPort)
		binary.BigEndian.PutUint16(b[2:], p.DstPort)
		binary.BigEndian.PutUint32(b[4:], 1000)
		if p.TCPFlags&0x10 != 0 {
			binary.BigEndian.PutUint32(b[8:], 2000)
		}
		b[12] = 5 << 4
		b[13] = p.TCPFlags
		binary.BigEndian.PutUint16(b[14:], 64240)
		ck = 16
		payload = nil // a SYN or ACK without data
	case unix.IPPROTO_UDP:
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], p.SrcPort)
		binary.BigEndian.PutUint16(b[2:], p.DstPort)
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
		ck = 6
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		b = make([]byte, 8)
		b[0] = p.ICMPType
		binary.BigEndian.PutUint16(b[4:], p.SrcPort)
		binary.BigEndian.PutUint16(b[6:], 1)
		ck = 2
		if p.Proto == unix.IPPROTO_ICMPV6 && p.ICMPType == 135 {
			// Neighbour solicitation: reserved, then the target.
			t := p.Dst.As16()
			b = append(b[:4:4], make([]byte, 4)...)
			b = append(b, t[:]...)
			payload = nil
		}
	default: // GRE: flags and version 0, IPv4 inside
		b = []byte{0, 0, 0x08, 0x00}
	}
	b = append(b, payload...)
	if ck >= 0 {
		var sum uint32
		if p.Proto != unix.IPPROTO_ICMP {
			sum = pseudoSum(p.Src, p.Dst, p.Proto, len(b))
		}
		binary.BigEndian.PutUint16(b[ck:], fold(sum+onesSum(b)))
		if p.Proto == unix.IPPROTO_UDP && binary.BigEndian.Uint16(b[ck:]) == 0 {
			binary.BigEndian.PutUint16(b[ck:], 0xffff)
		}
	}
	return b
}

func onesSum(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func pseudoSum(src, dst netip.Addr, proto uint8, n int) uint32 {
	s := onesSum(src.AsSlice()) + onesSum(dst.AsSlice()) + uint32(proto)
	return s + uint32(n>>16) + uint32(n&0xffff)
}

// Frames returns the Ethernet frames of the packet, to dstMAC: one, or the
// first and the later fragment. Addresses outside the documentation ranges
// are refused.
func (p Packet) Frames(dstMAC net.HardwareAddr) ([][]byte, error) {
	for _, a := range []netip.Addr{p.Src, p.Dst} {
		if !a.IsValid() || !isDocumentation(netip.PrefixFrom(a, a.BitLen())) {
			return nil, fmt.Errorf("packet %s → %s: %w", p.Src, p.Dst, errNotDocumentation)
		}
	}
	if p.Src.Is4() != p.Dst.Is4() {
		return nil, fmt.Errorf("packet %s → %s: address families differ", p.Src, p.Dst)
	}
	l4 := p.transport()
	parts := [][]byte{l4}
	if p.Fragment {
		parts = [][]byte{l4[:16], l4[16:]} // a multiple of 8, past every header
	}
	var out [][]byte
	off := 0
	for i, part := range parts {
		more := i+1 < len(parts)
		eth := append(append([]byte{}, dstMAC...), 0x02, 0, 0, 0, 0, 0x47)
		var ip []byte
		if p.Src.Is4() {
			eth = append(eth, 0x08, 0x00)
			ip = make([]byte, 20)
			ip[0] = 0x45
			binary.BigEndian.PutUint16(ip[2:], uint16(20+len(part)))
			binary.BigEndian.PutUint16(ip[4:], uint16(p.ID))
			fo := uint16(off / 8)
			if more {
				fo |= 0x2000
			}
			if p.Fragment {
				binary.BigEndian.PutUint16(ip[6:], fo)
			}
			ip[8] = 64
			ip[9] = p.Proto
			s, d := p.Src.As4(), p.Dst.As4()
			copy(ip[12:], s[:])
			copy(ip[16:], d[:])
			binary.BigEndian.PutUint16(ip[10:], fold(onesSum(ip)))
		} else {
			eth = append(eth, 0x86, 0xdd)
			ip = make([]byte, 40)
			binary.BigEndian.PutUint32(ip[0:], 6<<28|p.ID&0xfffff)
			next := p.Proto
			if p.Fragment {
				next = 44
			}
			ip[6] = next
			ip[7] = 64
			if p.Proto == unix.IPPROTO_ICMPV6 && p.ICMPType == 135 {
				ip[7] = 255 // neighbour discovery demands it
			}
			s, d := p.Src.As16(), p.Dst.As16()
			copy(ip[8:], s[:])
			copy(ip[24:], d[:])
			if p.Fragment {
				fh := make([]byte, 8)
				fh[0] = p.Proto
				fo := uint16(off/8) << 3
				if more {
					fo |= 1
				}
				binary.BigEndian.PutUint16(fh[2:], fo)
				binary.BigEndian.PutUint32(fh[4:], p.ID)
				ip = append(ip, fh...)
			}
			binary.BigEndian.PutUint16(ip[4:], uint16(len(ip)-40+len(part)))
		}
		out = append(out, append(append(eth, ip...), part...))
		off += len(part)
	}
	return out, nil
}

// Send writes frames, in order, to the interface dev of the namespace
// through a packet socket: they arrive at the other end of dev's veth as
// if from a wire. An unfragmented TCP, UDP or ICMPv6 segment goes as a
// local stack hands it to a NIC that offloads checksums (CHECKSUM_PARTIAL,
// which the receiver takes as verified), the way real clients' packets
// arrive over a veth and a checksum-verifying NIC's from a wire: the
// kernel's synproxy refuses an IPv6 segment whose checksum no one verified
// (it checks it as IPv4), which a crafted frame otherwise is.
func (n *NS) Send(dev string, frames [][]byte) error {
	return n.Do(func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		for _, f := range frames {
			sa := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
			copy(sa.Addr[:], f[:6])
			if err := unix.Sendto(fd, offloaded(f), 0, sa); err != nil {
				return fmt.Errorf("send on %s: %w", dev, err)
			}
		}
		return nil
	})
}

// offloaded returns a frame behind its virtio_net_hdr: for an unfragmented
// TCP, UDP or ICMPv6 segment, NEEDS_CSUM with its checksum field holding
// the pseudo-header sum (as the stack leaves it for the NIC); for anything
// else, no flags.
func offloaded(f []byte) []byte {
	vnet := make([]byte, 10, 10+len(f))
	out := append(vnet, f...)
	if len(f) < 14 {
		return out
	}
	var l4 int
	var proto uint8
	var src, dst []byte
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		ip := f[14:]
		if len(ip) < 20 || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return out // a fragment
		}
		l4, proto, src, dst = 14+int(ip[0]&0x0f)*4, ip[9], ip[12:16], ip[16:20]
	case 0x86dd:
		ip := f[14:]
		if len(ip) < 40 {
			return out
		}
		l4, proto, src, dst = 14+40, ip[6], ip[8:24], ip[24:40]
	default:
		return out
	}
	off := map[uint8]int{unix.IPPROTO_TCP: 16, unix.IPPROTO_UDP: 6, unix.IPPROTO_ICMPV6: 2}[proto]
	if off == 0 || len(f) < l4+off+2 {
		return out
	}
	addr := func(b []byte) netip.Addr { a, _ := netip.AddrFromSlice(b); return a }
	sum := pseudoSum(addr(src), addr(dst), proto, len(f)-l4)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(out[10+l4+off:], uint16(sum))
	out[0] = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	binary.LittleEndian.PutUint16(out[6:], uint16(l4))
	binary.LittleEndian.PutUint16(out[8:], uint16(off))
	return out
}

// HardwareAddr returns the MAC address of interface dev of the namespace.
func (n *NS) HardwareAddr(t testing.TB, dev string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := n.Do(func() error {
		ifc, err := net.InterfaceByName(dev)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	})
	if err != nil {
		t.Fatalf("netns: %s: %s: %v", n.Name, dev, err)
	}
	return mac
}
