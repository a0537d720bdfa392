package bpf

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The conntrack test's addresses: the gate, and a peer that is neither
// admitted nor management in testGeneration.
var (
	ctGate4 = netip.MustParseAddr("192.0.2.100")
	ctPeer4 = netip.MustParseAddr("192.0.2.50")
	ctGate6 = netip.MustParseAddr("2001:db8:100::1")
	ctPeer6 = netip.MustParseAddr("2001:db8:100::50")
)

const ctPort = 123 // the gate's NTP client sends from 123 to 123

// runIn runs frame through prog in ns: BPF_PROG_TEST_RUN gives the program
// that namespace's loopback as its device, so its conntrack lookup sees that
// namespace's flows.
func runIn(t *testing.T, ns *netns.NS, prog *ebpf.Program, frame []byte) uint32 {
	t.Helper()
	var ret uint32
	err := ns.Do(func() (err error) {
		ret, err = prog.Run(&ebpf.RunOptions{Data: frame})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ret
}

func udpFrame(t *testing.T, src, dst netip.Addr, sport, dport uint16) []byte {
	t.Helper()
	frames, err := netns.Packet{Src: src, Dst: dst, Proto: unix.IPPROTO_UDP, SrcPort: sport, DstPort: dport}.
		Frames(net.HardwareAddr{2, 0, 0, 0, 0, 1})
	if err != nil {
		t.Fatal(err)
	}
	return frames[0]
}

// TestConntrackLookup: in strict mode a UDP datagram to a port that is
// neither listener, management nor ephemeral, from a source that is neither
// admitted nor management, passes only as the answer to a flow the gate
// opened for real (counted "established"). A forged answer does not: from
// another source port, to another port, the flow's own original direction
// (the gate's address as source), or in a namespace that opened no flow;
// nor does the program loaded without the lookup. In listeners mode the
// datagram passes without a lookup, as before.
func TestConntrackLookup(t *testing.T) {
	netns.RequirePriv(t)
	gate := netns.New(t, "gate")
	peer := netns.New(t, "peer")
	other := netns.New(t, "other")
	netns.Connect(t, gate, []string{ctGate4.String() + "/24", ctGate6.String() + "/64"},
		peer, []string{ctPeer4.String() + "/24", ctPeer6.String() + "/64"})
	// The kernel tracks connections in a namespace only once a rule there
	// asks for their state (on the appliance, the nftables table).
	netns.RequireTool(t, "nft", "nftables")
	for _, ns := range []*netns.NS{gate, other} {
		ns.Exec(t, "nft", "add table inet track { chain out { type filter hook output priority 0; ct state new accept; }; }")
	}
	for _, p := range []netip.Addr{ctPeer4, ctPeer6} {
		if err := gate.Do(func() error { return sendFrom(ctPort, p, ctPort) }); err != nil {
			t.Fatalf("open a flow to %s: %v", p, err)
		}
	}

	strict, listeners := newRig(t, false), newRig(t, false)
	strict.apply(t, testGeneration(true))
	listeners.apply(t, testGeneration(false))
	spec, err := Spec(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := WithoutConntrack(spec); err != nil {
		t.Fatal(err)
	}
	noCT := &rig{}
	if noCT.coll, err = ebpf.NewCollection(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if noCT.gen != nil {
			noCT.gen.Close()
		}
		noCT.coll.Close()
	})
	noCT.prog = noCT.coll.Programs[ProgXDP]
	noCT.apply(t, testGeneration(true))

	for _, fam := range []struct {
		name       string
		gate, peer netip.Addr
	}{{"v4", ctGate4, ctPeer4}, {"v6", ctGate6, ctPeer6}} {
		answer := udpFrame(t, fam.peer, fam.gate, ctPort, ctPort)
		for _, c := range []struct {
			name  string
			r     *rig
			ns    *netns.NS
			frame []byte
			want  uint32
		}{
			{"the answer", strict, gate, answer, xdpPass},
			{"from another source port", strict, gate, udpFrame(t, fam.peer, fam.gate, ctPort+1, ctPort), xdpDrop},
			{"to another port", strict, gate, udpFrame(t, fam.peer, fam.gate, ctPort, ctPort+1), xdpDrop},
			{"the flow's original direction", strict, gate, udpFrame(t, fam.gate, fam.peer, ctPort, ctPort), xdpDrop},
			{"in a namespace without the flow", strict, other, answer, xdpDrop},
			{"without the lookup", noCT, gate, answer, xdpDrop},
			{"in listeners mode", listeners, gate, answer, xdpPass},
		} {
			if got := runIn(t, c.ns, c.r.prog, c.frame); got != c.want {
				t.Errorf("%s: %s: XDP %d, want %d", fam.name, c.name, got, c.want)
			}
		}
	}
	est := [2]int{0, reasonIndex(t, "established")} // pass
	for _, c := range []struct {
		name string
		r    *rig
		want uint64
	}{{"strict", strict, 2}, {"without the lookup", noCT, 0}, {"listeners", listeners, 0}} {
		if got := c.r.counters(t)[est]; got != c.want {
			t.Errorf("%s: %d passes counted established, want %d", c.name, got, c.want)
		}
	}
}

// sendFrom sends one datagram from the local port sport to dst:dport.
func sendFrom(sport uint16, dst netip.Addr, dport uint16) error {
	network := "udp4"
	if dst.Is6() {
		network = "udp6"
	}
	c, err := net.ListenUDP(network, &net.UDPAddr{Port: int(sport)})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.WriteToUDPAddrPort([]byte("ntp"), netip.AddrPortFrom(dst, dport))
	return err
}

func reasonIndex(t *testing.T, name string) int {
	t.Helper()
	for i, r := range Reasons {
		if r == name {
			return i
		}
	}
	t.Fatalf("no reason %q", name)
	return -1
}
