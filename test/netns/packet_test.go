package netns

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
)

// TestPacketChecksums: every checksum of a built packet verifies, for
// whole packets and both fragments, and addresses outside the
// documentation ranges are refused.
func TestPacketChecksums(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for _, p := range []Packet{
		{Src: netip.MustParseAddr("192.0.2.10"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: 6, DstPort: 443, TCPFlags: 2, ID: 7},
		{Src: netip.MustParseAddr("192.0.2.10"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: 17, DstPort: 53, Fragment: true, ID: 8},
		{Src: netip.MustParseAddr("192.0.2.10"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: 1, ICMPType: 8, ID: 9},
		{Src: netip.MustParseAddr("2001:db8::10"), Dst: netip.MustParseAddr("2001:db8::1"), Proto: 58, ICMPType: 128, ID: 10},
		{Src: netip.MustParseAddr("2001:db8::10"), Dst: netip.MustParseAddr("2001:db8::1"), Proto: 6, DstPort: 22, TCPFlags: 2, ID: 11},
	} {
		frames, err := p.Frames(mac)
		if err != nil {
			t.Fatal(err)
		}
		var l4 []byte
		for _, f := range frames {
			ip := f[14:]
			if p.Src.Is4() {
				if fold(onesSum(ip[:20])) != 0 {
					t.Errorf("%+v: IPv4 header checksum does not verify", p)
				}
				l4 = append(l4, ip[20:]...)
			} else {
				hl := 40
				if ip[6] == 44 {
					hl += 8
				}
				l4 = append(l4, ip[hl:]...)
			}
		}
		var sum uint32
		if p.Proto != 1 {
			sum = pseudoSum(p.Src, p.Dst, p.Proto, len(l4))
		}
		if fold(sum+onesSum(l4)) != 0 {
			t.Errorf("%+v: transport checksum does not verify", p)
		}
		if p.Fragment && (len(frames) != 2 || binary.BigEndian.Uint16(frames[0][14+6:])&0x2000 == 0) {
			t.Errorf("%+v: want a first fragment with more-fragments set and a later one", p)
		}
	}
	_, err := Packet{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("192.0.2.1"), Proto: 6}.Frames(mac)
	if !errors.Is(err, errNotDocumentation) {
		t.Errorf("a private source: %v, want errNotDocumentation", err)
	}
}
