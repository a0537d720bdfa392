package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// This file holds what the differential test needs to put packets on a wire
// and to read nftables' verdict on each: a builder of frames with correct
// checksums (conntrack drops bad ones as invalid before any rule), and a
// reader of nftables trace events.

// wirePkt is one IP packet or datagram of the differential matrix.
type wirePkt struct {
	src, dst netip.Addr
	proto    uint8 // 6, 17, 1, 58, 47
	dport    uint16
	sport    uint16 // also the ICMP echo identifier
	flags    uint8  // TCP flags
	icmpType uint8
	// marker tells the packet apart in nftables' trace: the IPv4
	// identification or the IPv6 flow label (and fragment identification).
	marker uint32
	// frag splits the datagram into a first fragment carrying the
	// transport header and a later one carrying the rest.
	frag bool
}

// transport returns the transport header and payload, checksummed.
func (p wirePkt) transport() []byte {
	payload := make([]byte, 40)
	for i := range payload {
		payload[i] = byte(i)
	}
	var b []byte
	ck := -1 // offset of the checksum field, -1 for none
	switch p.proto {
	case unix.IPPROTO_TCP:
		b = make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		binary.BigEndian.PutUint32(b[4:], 1000)
		if p.flags&0x10 != 0 {
			binary.BigEndian.PutUint32(b[8:], 2000)
		}
		b[12] = 5 << 4
		b[13] = p.flags
		binary.BigEndian.PutUint16(b[14:], 64240)
		ck = 16
		payload = nil // a SYN or ACK without data
	case unix.IPPROTO_UDP:
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
		ck = 6
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		b = make([]byte, 8)
		b[0] = p.icmpType
		binary.BigEndian.PutUint16(b[4:], p.sport)
		binary.BigEndian.PutUint16(b[6:], 1)
		ck = 2
		if p.proto == unix.IPPROTO_ICMPV6 && p.icmpType == 135 {
			// Neighbour solicitation: reserved, then the target.
			t := p.dst.As16()
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
		if p.proto != unix.IPPROTO_ICMP {
			sum = pseudoSum(p.src, p.dst, p.proto, len(b))
		}
		binary.BigEndian.PutUint16(b[ck:], fold(sum+onesSum(b)))
		if p.proto == unix.IPPROTO_UDP && binary.BigEndian.Uint16(b[ck:]) == 0 {
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

// frames returns the Ethernet frames of the packet: one, or the first and
// the later fragment.
func (p wirePkt) frames(dstMAC []byte) [][]byte {
	l4 := p.transport()
	parts := [][]byte{l4}
	if p.frag {
		parts = [][]byte{l4[:16], l4[16:]} // a multiple of 8, past every header
	}
	var out [][]byte
	off := 0
	for i, part := range parts {
		more := i+1 < len(parts)
		eth := append(append([]byte{}, dstMAC...), 0x02, 0, 0, 0, 0, 0x47)
		var ip []byte
		if p.src.Is4() {
			eth = append(eth, 0x08, 0x00)
			ip = make([]byte, 20)
			ip[0] = 0x45
			binary.BigEndian.PutUint16(ip[2:], uint16(20+len(part)))
			binary.BigEndian.PutUint16(ip[4:], uint16(p.marker))
			fo := uint16(off / 8)
			if more {
				fo |= 0x2000
			}
			if p.frag {
				binary.BigEndian.PutUint16(ip[6:], fo)
			}
			ip[8] = 64
			ip[9] = p.proto
			s, d := p.src.As4(), p.dst.As4()
			copy(ip[12:], s[:])
			copy(ip[16:], d[:])
			binary.BigEndian.PutUint16(ip[10:], fold(onesSum(ip)))
		} else {
			eth = append(eth, 0x86, 0xdd)
			ip = make([]byte, 40)
			binary.BigEndian.PutUint32(ip[0:], 6<<28|p.marker&0xfffff)
			next := p.proto
			if p.frag {
				next = 44
			}
			ip[6] = next
			ip[7] = 64
			if p.proto == unix.IPPROTO_ICMPV6 && p.icmpType == 135 {
				ip[7] = 255 // neighbour discovery demands it
			}
			s, d := p.src.As16(), p.dst.As16()
			copy(ip[8:], s[:])
			copy(ip[24:], d[:])
			if p.frag {
				fh := make([]byte, 8)
				fh[0] = p.proto
				fo := uint16(off/8) << 3
				if more {
					fo |= 1
				}
				binary.BigEndian.PutUint16(fh[2:], fo)
				binary.BigEndian.PutUint32(fh[4:], p.marker)
				ip = append(ip, fh...)
			}
			binary.BigEndian.PutUint16(ip[4:], uint16(len(ip)-40+len(part)))
		}
		out = append(out, append(append(eth, ip...), part...))
		off += len(part)
	}
	return out
}

// traceVerdict is nftables' decision on one packet in one base chain.
type traceVerdict struct {
	accept bool
	rule   uint64 // handle of the deciding rule; 0 for the chain policy
}

// tracer reads nftables trace events of one namespace and hands out the
// verdict of chain input of table gatehouse per packet marker.
type tracer struct {
	nl *netlink.Conn
	mu sync.Mutex
	// got holds verdicts by marker until taken; waiters are woken by ch.
	got map[uint32]traceVerdict
	// ids maps a trace id to the marker of its packet: the kernel dumps a
	// packet's headers with the first event of a chain only.
	ids map[uint32]uint32
	ch  chan struct{}
	err error
}

func newTracer(netnsFd int) (*tracer, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netnsFd})
	if err != nil {
		return nil, err
	}
	if err := nl.JoinGroup(unix.NFNLGRP_NFTRACE); err != nil {
		nl.Close()
		return nil, err
	}
	tr := &tracer{nl: nl, got: map[uint32]traceVerdict{}, ids: map[uint32]uint32{}, ch: make(chan struct{}, 1)}
	go tr.loop()
	return tr, nil
}

func (tr *tracer) Close() error { return tr.nl.Close() }

func (tr *tracer) loop() {
	for {
		msgs, err := tr.nl.Receive()
		if err != nil {
			tr.mu.Lock()
			tr.err = err
			tr.mu.Unlock()
			tr.wake()
			return
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_TRACE) || len(m.Data) < 4 {
				continue
			}
			ev, ok := parseTrace(m.Data[4:])
			if !ok {
				continue
			}
			tr.mu.Lock()
			if ev.hasMarker {
				tr.ids[ev.id] = ev.marker
			}
			marker, known := tr.ids[ev.id]
			if ev.final && known {
				tr.got[marker] = ev.verdict
				delete(tr.ids, ev.id)
			}
			tr.mu.Unlock()
			if ev.final {
				tr.wake()
			}
		}
	}
}

func (tr *tracer) wake() {
	select {
	case tr.ch <- struct{}{}:
	default:
	}
}

// traceEvent is one trace event of chain input of table gatehouse.
type traceEvent struct {
	id        uint32
	marker    uint32
	hasMarker bool // the event carries the packet's network header
	final     bool // the event is the chain's decision
	verdict   traceVerdict
}

// parseTrace decodes an event of chain input of table gatehouse; ok is
// false for every other event.
func parseTrace(b []byte) (ev traceEvent, ok bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ev, false
	}
	ad.ByteOrder = binary.BigEndian
	var table, chain string
	var typ uint32
	var hdr []byte
	var nfproto uint32
	code := int32(-100)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_ID:
			ev.id = ad.Uint32()
		case unix.NFTA_TRACE_TABLE:
			table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			chain = ad.String()
		case unix.NFTA_TRACE_TYPE:
			typ = ad.Uint32()
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.verdict.rule = ad.Uint64()
		case unix.NFTA_TRACE_NETWORK_HEADER:
			hdr = ad.Bytes()
		case unix.NFTA_TRACE_NFPROTO:
			nfproto = ad.Uint32()
		case unix.NFTA_TRACE_POLICY:
			code = int32(ad.Uint32())
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					if nd.Type() == unix.NFTA_VERDICT_CODE {
						code = int32(nd.Uint32())
					}
				}
				return nil
			})
		}
	}
	if ad.Err() != nil || table != "gatehouse" || chain != "input" {
		return ev, false
	}
	switch {
	case nfproto == unix.NFPROTO_IPV4 && len(hdr) >= 20:
		ev.marker, ev.hasMarker = uint32(binary.BigEndian.Uint16(hdr[4:])), true
	case nfproto == unix.NFPROTO_IPV6 && len(hdr) >= 40:
		ev.marker, ev.hasMarker = binary.BigEndian.Uint32(hdr[0:])&0xfffff, true
	}
	if typ == unix.NFT_TRACETYPE_RULE || typ == unix.NFT_TRACETYPE_POLICY {
		switch code {
		case nfAccept:
			ev.final, ev.verdict.accept = true, true
		case nfDrop:
			ev.final = true
		}
	}
	return ev, true
}

// Netfilter verdicts (linux/netfilter.h).
const (
	nfDrop   = 0
	nfAccept = 1
)

var errNoVerdict = errors.New("no nftables verdict")

// wait returns the verdict on the packet with marker, waiting up to d.
func (tr *tracer) wait(marker uint32, d time.Duration) (traceVerdict, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		tr.mu.Lock()
		v, ok := tr.got[marker]
		delete(tr.got, marker)
		err := tr.err
		tr.mu.Unlock()
		if ok {
			return v, nil
		}
		if err != nil {
			return v, fmt.Errorf("trace socket: %w", err)
		}
		select {
		case <-tr.ch:
		case <-deadline.C:
			return v, fmt.Errorf("%w for marker %d within %s", errNoVerdict, marker, d)
		}
	}
}
