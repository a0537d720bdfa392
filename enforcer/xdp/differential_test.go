package xdp

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// The differential test's addresses: the gate, and one source of each
// class per family. The blocked ones are in their own /64s, so that
// blocking them (a /64 for IPv6) blocks no other class.
var (
	diffGate4 = netip.MustParseAddr("192.0.2.1")
	diffGate6 = netip.MustParseAddr("2001:db8::1")
)

type diffClass struct {
	name     string
	v4, v6   netip.Addr
	blocked  bool
	admitted bool
}

var diffClasses = []diffClass{
	{name: "admitted", v4: netip.MustParseAddr("192.0.2.10"), v6: netip.MustParseAddr("2001:db8::10"), admitted: true},
	{name: "management", v4: netip.MustParseAddr("192.0.2.200"), v6: netip.MustParseAddr("2001:db8::200")},
	{name: "other", v4: netip.MustParseAddr("192.0.2.150"), v6: netip.MustParseAddr("2001:db8::150")},
	{name: "blocked admitted", v4: netip.MustParseAddr("192.0.2.20"), v6: netip.MustParseAddr("2001:db8:0:b::20"), blocked: true, admitted: true},
	{name: "blocked other", v4: netip.MustParseAddr("192.0.2.160"), v6: netip.MustParseAddr("2001:db8:0:c::160"), blocked: true},
	// A management address whose source is blocked: for IPv6 its /64, as
	// a scan from another address of that /64 blocks it (both layers keep
	// its management port by rule order).
	{name: "management in a blocked source", v4: netip.MustParseAddr("192.0.2.210"), v6: netip.MustParseAddr("2001:db8:0:d::200"), blocked: true},
}

const (
	diffListener = 443
	diffMgmt     = 2200
	diffOther    = 8080
	diffUDP      = 5353
	diffEph      = 40000
	diffFixed    = 123 // a service of the gate that sends from a fixed port (NTP)
)

func diffPolicy(mode policy.Mode) *policy.Policy {
	var mgmt []policy.Management
	for _, c := range diffClasses {
		if strings.HasPrefix(c.name, "management") {
			mgmt = append(mgmt,
				policy.Management{Prefix: netip.PrefixFrom(c.v4, 32), Ports: []uint16{diffMgmt}},
				policy.Management{Prefix: netip.PrefixFrom(c.v6, 128), Ports: []uint16{diffMgmt}})
		}
	}
	return &policy.Policy{
		Generation: 1,
		Enforcement: policy.Enforcement{
			XDP: policy.XDPAuto, NFTables: true, Mode: mode, Management: mgmt,
			// No scan detection, rate or cap in the matrix: every row is
			// judged on its own, not on the rows before it (the scan
			// sequence has its own phase).
			SourcePrefix: policy.SourcePrefix{V4: 32, V6: 64},
		},
		Admitted: policy.Admitted{
			V4: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/25")},
			V6: []netip.Prefix{netip.MustParsePrefix("2001:db8::/120"), netip.MustParsePrefix("2001:db8:0:b::/120")},
		},
		Listeners: []policy.Listener{{Name: "web", Port: diffListener, Protocol: policy.ProtoHTTPS}},
	}
}

// diffKind is one kind of packet. why, when set, is the reason the layers
// may differ for it: XDP passes it because it may belong to a flow only
// conntrack knows, and nftables, which knows, drops it. blockedWhy is the
// same for blocked sources only.
type diffKind struct {
	name       string
	proto      uint8
	dport      uint16
	flags      uint8
	icmp4      uint8
	icmp6      uint8
	frag       bool
	v6only     bool
	why        string
	blockedWhy string
}

const (
	whyCookie  = "an ACK to a listener port that completes no handshake: XDP cannot know; synproxy finds no cookie in it and drops it"
	whyACK     = "not a SYN: XDP leaves it to conntrack, which finds no flow (loose pick-up makes it new) and nftables judges it as new"
	whyEph     = "UDP to the ephemeral range may answer the appliance's own query: XDP passes it without asking conntrack (only its drop path asks), and conntrack finds no query"
	whyReply   = "an echo reply answers our own echo request: XDP cannot ask (the conntrack kfuncs take TCP and UDP only), conntrack finds none and calls it invalid"
	whyBlocked = "the XDP blocklist takes only bare SYNs and echo requests: this may belong to a flow of the blocked source, which conntrack knows and nftables' blocked rule (after established) judges"
)

var diffKinds = []diffKind{
	{name: "SYN to listener", proto: unix.IPPROTO_TCP, dport: diffListener, flags: 0x02},
	{name: "SYN to management port", proto: unix.IPPROTO_TCP, dport: diffMgmt, flags: 0x02},
	{name: "SYN to other port", proto: unix.IPPROTO_TCP, dport: diffOther, flags: 0x02},
	{name: "ACK to listener", proto: unix.IPPROTO_TCP, dport: diffListener, flags: 0x10, why: whyCookie},
	{name: "ACK to other port", proto: unix.IPPROTO_TCP, dport: diffOther, flags: 0x10, why: whyACK},
	{name: "UDP to management port", proto: unix.IPPROTO_UDP, dport: diffMgmt, blockedWhy: whyBlocked},
	{name: "UDP to other port", proto: unix.IPPROTO_UDP, dport: diffUDP, blockedWhy: whyBlocked},
	{name: "UDP to ephemeral port", proto: unix.IPPROTO_UDP, dport: diffEph, why: whyEph},
	{name: "echo request", proto: unix.IPPROTO_ICMP, icmp4: 8, icmp6: 128},
	{name: "echo reply", proto: unix.IPPROTO_ICMP, icmp4: 0, icmp6: 129, why: whyReply},
	{name: "other protocol (GRE)", proto: 47, blockedWhy: whyBlocked},
	{name: "neighbour solicitation", proto: unix.IPPROTO_ICMPV6, icmp6: 135, v6only: true},
	{name: "fragmented UDP to management port", proto: unix.IPPROTO_UDP, dport: diffMgmt, frag: true, blockedWhy: whyBlocked},
	{name: "fragmented UDP to other port", proto: unix.IPPROTO_UDP, dport: diffUDP, frag: true, blockedWhy: whyBlocked},
	{name: "fragmented UDP to ephemeral port", proto: unix.IPPROTO_UDP, dport: diffEph, frag: true, why: whyEph},
	{name: "fragmented echo request", proto: unix.IPPROTO_ICMP, icmp4: 8, icmp6: 128, frag: true},
}

// TestLayersAgree is the differential test of the two kernel layers, in
// both modes and both families. First a matrix of packets (TCP, UDP, ICMP,
// another protocol; admitted, management, other and blocked sources, and
// a management address in a blocked source; listener, management and
// other ports; whole packets and fragmented datagrams). Then answers to
// flows the gate itself opened (UDP from a fixed port, GRE), which only
// conntrack can tell from new flows: the established rule must come before
// every block, and XDP, which asks conntrack before it drops UDP in strict
// mode, must pass the UDP answers too; beside each a forged one (the wrong
// source port), which neither may pass in strict mode. Then one sequence
// of SYNs with scan detection on, which
// both layers must count alike. Both layers get the same policy and the
// same blocked sources.
func TestLayersAgree(t *testing.T) {
	d := newDiffRig(t, false)
	for _, mode := range []policy.Mode{policy.ModeListeners, policy.ModeStrict} {
		p := diffPolicy(mode)
		d.applyBoth(t, p)
		for _, v6 := range []bool{false, true} {
			for _, c := range diffClasses {
				for _, k := range diffKinds {
					if k.v6only && !v6 {
						continue
					}
					pk := netns.Packet{Src: c.v4, Dst: diffGate4, Proto: k.proto, DstPort: k.dport, TCPFlags: k.flags,
						ICMPType: k.icmp4, Fragment: k.frag}
					if v6 {
						pk.Src, pk.Dst, pk.ICMPType = c.v6, diffGate6, k.icmp6
						if k.proto == unix.IPPROTO_ICMP {
							pk.Proto = unix.IPPROTO_ICMPV6
						}
					}
					why := k.why
					if c.blocked && why == "" {
						why = k.blockedWhy
					}
					d.verdictOf(t, fmt.Sprintf("%s/%s/%s from %s", mode, family(v6), k.name, c.name), pk, why)
				}
			}
		}
		if t.Failed() {
			t.Logf("%s mode table:\n%s", mode, d.gate.Exec(t, "nft", "-a", "list", "table", "inet", nft.TableName))
		}
	}
	// The flows the gate opens stay in conntrack: after the whole matrix.
	for _, mode := range []policy.Mode{policy.ModeListeners, policy.ModeStrict} {
		d.applyBoth(t, diffPolicy(mode))
		d.answers(t, mode)
		d.scan(t, mode)
	}
	t.Logf("%d rows: %d agree, %d differ where XDP cannot have the state, %d disagree", d.rows, d.rows-d.legit-d.mismatches, d.legit, d.mismatches)
}

// TestLayersAgreeNeedsTheLookup is TestLayersAgree's mutation test: the
// program without its conntrack lookup (as it runs where the kernel has no
// conntrack kfuncs) must disagree with nftables on exactly the UDP answers
// in strict mode, which it drops, and on nothing else of the answers. If
// it did not, the test above could not see the lookup go missing.
func TestLayersAgreeNeedsTheLookup(t *testing.T) {
	d := newDiffRig(t, true)
	var got []string
	d.disagree = &got
	var want []string
	for _, mode := range []policy.Mode{policy.ModeListeners, policy.ModeStrict} {
		d.applyBoth(t, diffPolicy(mode))
		d.answers(t, mode)
		if mode != policy.ModeStrict {
			continue
		}
		for _, v6 := range []bool{false, true} {
			for _, c := range diffClasses {
				want = append(want, fmt.Sprintf("%s/%s/answer from %s to the gate's UDP port 123", mode, family(v6), c.name))
			}
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("without the lookup the layers disagree on:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := d.x.counter(t, "pass", "established"); n != 0 {
		t.Errorf("without the lookup the program counted %d established passes", n)
	}
}

// answers has the gate open flows to every class, UDP from a fixed port
// and GRE, and puts each class's answer through both layers. In listeners
// mode both pass them, whoever sends them, a blocked source too. In strict
// mode XDP asks conntrack for the UDP answer and passes it as nftables
// does; an answer over GRE, which conntrack's XDP lookup cannot find (it
// takes TCP and UDP only), both drop (nftables' strict_protocol rule on
// XDP's interface). A forged answer, from another source port, matches no
// flow: strict mode drops it in both.
func (d *diffRig) answers(t *testing.T, mode policy.Mode) {
	t.Helper()
	before := d.x.counter(t, "pass", "established")
	answered := 0
	for _, v6 := range []bool{false, true} {
		gateAddr := diffGate4
		if v6 {
			gateAddr = diffGate6
		}
		for _, c := range diffClasses {
			peer := c.v4
			if v6 {
				peer = c.v6
			}
			d.open(t, peer)
			name := fmt.Sprintf("%s/%s/answer from %s", mode, family(v6), c.name)
			if d.verdictOf(t, name+" to the gate's UDP port 123", netns.Packet{Src: peer, Dst: gateAddr, Proto: unix.IPPROTO_UDP,
				SrcPort: diffFixed, DstPort: diffFixed}, "") {
				answered++
			}
			forgedWhy := ""
			if c.blocked {
				forgedWhy = whyBlocked // listeners mode: XDP blocks no UDP
			}
			d.verdictOf(t, name+" forged from UDP port 124", netns.Packet{Src: peer, Dst: gateAddr, Proto: unix.IPPROTO_UDP,
				SrcPort: diffFixed + 1, DstPort: diffFixed}, forgedWhy)
			d.verdictOf(t, name+" over GRE", netns.Packet{Src: peer, Dst: gateAddr, Proto: 47}, "")
		}
	}
	// In strict mode every UDP answer XDP passed, it passed as established:
	// it asked conntrack.
	if n := d.x.counter(t, "pass", "established") - before; mode == policy.ModeStrict && d.disagree == nil && n != uint64(answered) {
		t.Errorf("%s: %d UDP answers passed, %d counted established", mode, answered, n)
	}
}

// open sends, from the gate, a datagram from UDP port 123 to peer's port
// 123 and a GRE packet to peer: conntrack then knows both flows.
func (d *diffRig) open(t *testing.T, peer netip.Addr) {
	t.Helper()
	err := d.gate.Do(func() error {
		network, gre := "udp4", "ip4:gre"
		if peer.Is6() {
			network, gre = "udp6", "ip6:gre"
		}
		u, err := net.ListenUDP(network, &net.UDPAddr{Port: diffFixed})
		if err != nil {
			return err
		}
		_, err = u.WriteTo([]byte("ntp"), &net.UDPAddr{IP: peer.AsSlice(), Port: diffFixed})
		u.Close()
		if err != nil {
			return err
		}
		g, err := net.ListenPacket(gre, "")
		if err != nil {
			return err
		}
		defer g.Close()
		_, err = g.WriteTo([]byte{0, 0, 0x08, 0x00, 0x45, 0, 0, 20}, &net.IPAddr{IP: peer.AsSlice()})
		return err
	})
	if err != nil {
		t.Fatalf("open flows to %s: %v", peer, err)
	}
}

// diffScanners are the scanning sources of the scan phase, one per mode:
// neither admitted nor management, in /64s of their own.
var diffScanners = []diffClass{
	{name: "scanner", v4: netip.MustParseAddr("192.0.2.170"), v6: netip.MustParseAddr("2001:db8:0:e::170")},
	{name: "scanner", v4: netip.MustParseAddr("192.0.2.171"), v6: netip.MustParseAddr("2001:db8:0:f::171")},
}

// scan puts one sequence of SYNs through both layers with scan detection
// on (4 distinct ports within an hour): three new ports and a repeat pass
// (in listeners mode), the fourth new port is a scan and blocks the
// source, and after it the source's SYNs to any port but a listener it is
// not admitted to are dropped as blocked. Both layers must decide every
// SYN alike: the same algorithm and the same refill in both.
func (d *diffRig) scan(t *testing.T, mode policy.Mode) {
	t.Helper()
	p := diffPolicy(mode)
	p.Enforcement.ScanBlock = policy.ScanBlock{DistinctPorts: 4, Window: time.Hour, BlockFor: time.Hour}
	d.applyBoth(t, p)
	s := diffScanners[0]
	if mode == policy.ModeStrict {
		s = diffScanners[1]
	}
	for _, v6 := range []bool{false, true} {
		src, dst := s.v4, diffGate4
		if v6 {
			src, dst = s.v6, diffGate6
		}
		var got []string
		for i, port := range []uint16{3001, 3002, 3003, 3001, 3004, 3005, diffOther, diffListener} {
			name := fmt.Sprintf("%s/%s/scan SYN %d to port %d", mode, family(v6), i+1, port)
			got = append(got, passDrop(d.verdictOf(t, name, netns.Packet{Src: src, Dst: dst, Proto: unix.IPPROTO_TCP,
				DstPort: port, TCPFlags: 0x02}, "")))
		}
		want := "pass pass pass pass drop drop drop drop"
		if mode == policy.ModeStrict {
			want = "drop drop drop drop drop drop drop drop"
		}
		if strings.Join(got, " ") != want {
			t.Errorf("%s/%s: scan sequence %v, want %s", mode, family(v6), got, want)
		}
	}
	// The program detected the scans itself.
	if n := d.x.counter(t, "drop", "scan_detected"); n == 0 {
		t.Errorf("%s: the program counted no scans", mode)
	}
}

func family(v6 bool) string {
	if v6 {
		return "v6"
	}
	return "v4"
}

func passDrop(ok bool) string {
	if ok {
		return "pass"
	}
	return "drop"
}
