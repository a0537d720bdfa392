package xdp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"golang.org/x/sys/unix"
)

// TestVLAN sends 802.1Q and 802.1ad+802.1Q tagged SYNs onto the wire with
// a packet socket (the tags are in the frame, as from a trunk port) and
// reads the filter's verdicts from its counters. The test kernel has no
// VLAN devices, so nothing answers; the counters are the witness.
func TestVLAN(t *testing.T) {
	tp := newTopo(t)
	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	if err := e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	var gateMAC net.HardwareAddr
	if err := tp.gate.Do(func() error {
		ifc, err := net.InterfaceByName(tp.iface)
		if err == nil {
			gateMAC = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		tags   []uint16
		src    string
		action string
		reason string
	}{
		{"802.1Q admitted", []uint16{0x8100}, cloudIn4, "pass", "admitted"},
		{"802.1Q not admitted", []uint16{0x8100}, cloudOut4, "drop", "not_admitted"},
		{"QinQ admitted", []uint16{0x88a8, 0x8100}, cloudIn4, "pass", "admitted"},
		{"QinQ not admitted", []uint16{0x88a8, 0x8100}, cloudOut4, "drop", "not_admitted"},
		{"three tags", []uint16{0x88a8, 0x8100, 0x8100}, cloudIn4, "drop", "malformed"},
	} {
		before := counter(t, e, c.action, c.reason)
		frame := taggedSYN(gateMAC, c.tags, netip.MustParseAddr(c.src), netip.MustParseAddr(gate4), protected)
		if err := tp.cloud.Do(func() error { return sendRaw(tp.peer, frame, 5) }); err != nil {
			t.Fatal(err)
		}
		// The frames are judged on receive, before sendto returns on veth;
		// allow a moment for a generic-mode backlog all the same.
		deadline := time.Now().Add(2 * time.Second)
		for counter(t, e, c.action, c.reason)-before < 5 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := counter(t, e, c.action, c.reason) - before; got != 5 {
			t.Errorf("%s: %s/%s counted %d of 5 frames", c.name, c.action, c.reason, got)
		}
	}
}

func taggedSYN(dst net.HardwareAddr, tags []uint16, src, to netip.Addr, port uint16) []byte {
	b := append([]byte{}, dst...)
	b = append(b, 0x02, 0, 0, 0, 0, 0x99)
	for i, tp := range tags {
		b = append(b, byte(tp>>8), byte(tp), 0, byte(10+i))
	}
	b = append(b, 0x08, 0x00)
	ip := make([]byte, 20)
	ip[0], ip[3], ip[8], ip[9] = 0x45, 40, 64, 6
	s, d := src.As4(), to.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	tcp := make([]byte, 20)
	tcp[0], tcp[1] = 0x9c, 0x40
	tcp[2], tcp[3] = byte(port>>8), byte(port)
	tcp[12], tcp[13] = 5<<4, 0x02
	return append(append(b, ip...), tcp...)
}

// sendRaw writes frame n times to dev through an AF_PACKET socket of the
// calling thread's namespace.
func sendRaw(dev string, frame []byte, n int) error {
	ifc, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
	copy(sa.Addr[:], frame[:6])
	for range n {
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			return err
		}
	}
	return nil
}
