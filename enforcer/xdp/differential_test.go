package xdp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/bpf"
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
}

const (
	diffListener = 443
	diffMgmt     = 2200
	diffOther    = 8080
	diffUDP      = 5353
	diffEph      = 40000
)

func diffPolicy(mode policy.Mode) *policy.Policy {
	return &policy.Policy{
		Generation: 1,
		Enforcement: policy.Enforcement{
			XDP: policy.XDPAuto, NFTables: true, Mode: mode,
			Management: []policy.Management{
				{Prefix: netip.MustParsePrefix("192.0.2.200/32"), Ports: []uint16{diffMgmt}},
				{Prefix: netip.MustParsePrefix("2001:db8::200/128"), Ports: []uint16{diffMgmt}},
			},
			// No scan detection, rate or cap: every row is judged on its
			// own, not on the rows before it.
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
// conntrack knows, and nftables, which knows, drops it.
type diffKind struct {
	name   string
	proto  uint8
	dport  uint16
	flags  uint8
	icmp4  uint8
	icmp6  uint8
	frag   bool
	v6only bool
	why    string
	// blockedWhy is why, for blocked sources only.
	blockedWhy string
}

const (
	whyCookie  = "an ACK to a listener port that completes no handshake: XDP cannot know; synproxy finds no cookie in it and drops it"
	whyACK     = "not a SYN: XDP leaves it to conntrack, which finds no flow (loose pick-up makes it new) and nftables judges it as new"
	whyEph     = "UDP to the ephemeral range may answer the appliance's own query: XDP cannot know, conntrack finds no query"
	whyReply   = "an echo reply answers our own echo request: XDP cannot know, conntrack finds none and calls it invalid"
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

// diffXDP is the program loaded for BPF_PROG_TEST_RUN, outside any
// interface.
type diffXDP struct {
	coll *ebpf.Collection
	gen  *ebpf.Map
}

func newDiffXDP(t *testing.T) *diffXDP {
	t.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	spec, err := bpf.Spec(false)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	x := &diffXDP{coll: coll}
	t.Cleanup(func() {
		if x.gen != nil {
			x.gen.Close()
		}
		coll.Close()
	})
	return x
}

// apply publishes p as Apply does, and blocks the blocked classes as
// Block does.
func (x *diffXDP) apply(t *testing.T, p *policy.Policy, eph [2]uint16) {
	t.Helper()
	g, err := compile(p, eph)
	if err != nil {
		t.Fatal(err)
	}
	pages, err := g.Encode()
	if err != nil {
		t.Fatal(err)
	}
	m, err := bpf.NewGenerationMap(pages)
	if err != nil {
		t.Fatal(err)
	}
	if err := bpf.Publish(x.coll.Maps[bpf.MapGen], m); err != nil {
		t.Fatal(err)
	}
	if x.gen != nil {
		x.gen.Close()
	}
	x.gen = m
	until := monotonic() + uint64(time.Hour)
	for _, c := range diffClasses {
		if !c.blocked {
			continue
		}
		if err := x.coll.Maps[bpf.MapBlock4].Put(p.Enforcement.SourcePrefix.Source(c.v4).Addr().As4(), until); err != nil {
			t.Fatal(err)
		}
		if err := x.coll.Maps[bpf.MapBlock6].Put(p.Enforcement.SourcePrefix.Source(c.v6).Addr().As16(), until); err != nil {
			t.Fatal(err)
		}
	}
	if err := bpf.SetBlockActive(x.coll.Maps[bpf.MapState], true); err != nil {
		t.Fatal(err)
	}
}

func (x *diffXDP) pass(t *testing.T, frame []byte) bool {
	t.Helper()
	ret, err := x.coll.Programs[bpf.ProgXDP].Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatal(err)
	}
	return ret == 2 // XDP_PASS
}

// TestLayersAgree is the differential test of the two kernel layers: one
// matrix of packets (both families; TCP, UDP, ICMP, another protocol;
// admitted, management, other and blocked sources; listener, management and
// other ports; whole packets and fragmented datagrams; both modes) goes
// through the XDP program with BPF_PROG_TEST_RUN and, on a veth, through
// the nftables table, whose verdict on each packet is read from nftables'
// trace. Both layers get the same policy and the same blocked sources. A
// packet XDP drops must be one nftables drops too; a packet XDP passes and
// nftables drops is allowed only where the row says why (state XDP cannot
// have). A fragmented datagram passes XDP only if every fragment does.
func TestLayersAgree(t *testing.T) {
	wire := netns.New(t, "wire")
	gate := netns.New(t, "gate")
	v := netns.Connect(t, wire, nil, gate, []string{diffGate4.String() + "/24", diffGate6.String() + "/64"})
	fd, err := unix.Open(gate.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ne, err := nft.New(nft.Config{NetNS: fd})
	if err != nil {
		t.Fatal(err)
	}
	defer ne.Close()
	// Every packet is traced from prerouting, after reassembly (-400) and
	// before table gatehouse's raw chain (-300); the tracer keeps the
	// table's drop, wherever it is, or the verdict of its input chain.
	gate.Exec(t, "nft", "add table inet witness { chain pre { type filter hook prerouting priority -350; policy accept; meta nftrace set 1; }; }")
	tr, err := newTracer(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	gateMAC := gate.HardwareAddr(t, v.B)
	var eph [2]uint16
	if err := gate.Do(func() error { eph = ephemeralPorts(); return nil }); err != nil {
		t.Fatal(err)
	}
	x := newDiffXDP(t)

	marker := uint32(0)
	mismatches, legit, rows := 0, 0, 0
	for _, mode := range []policy.Mode{policy.ModeListeners, policy.ModeStrict} {
		p := diffPolicy(mode)
		if err := ne.Apply(p); err != nil {
			t.Fatal(err)
		}
		for _, c := range diffClasses {
			if c.blocked {
				for _, a := range []netip.Addr{c.v4, c.v6} {
					if err := ne.Block(a, time.Hour); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		x.apply(t, p, eph)
		for _, v6 := range []bool{false, true} {
			for _, c := range diffClasses {
				for _, k := range diffKinds {
					if k.v6only && !v6 {
						continue
					}
					marker++
					pk := netns.Packet{Src: c.v4, Dst: diffGate4, Proto: k.proto, DstPort: k.dport, TCPFlags: k.flags,
						ICMPType: k.icmp4, SrcPort: uint16(20000 + marker), ID: marker, Fragment: k.frag}
					if v6 {
						pk.Src, pk.Dst, pk.ICMPType = c.v6, diffGate6, k.icmp6
						if k.proto == unix.IPPROTO_ICMP {
							pk.Proto = unix.IPPROTO_ICMPV6
						}
					}
					name := fmt.Sprintf("%s/%s/%s from %s", mode, family(v6), k.name, c.name)
					frames, err := pk.Frames(gateMAC)
					if err != nil {
						t.Fatal(err)
					}
					var each []string
					xdpPass := true
					for _, f := range frames {
						ok := x.pass(t, f)
						xdpPass = xdpPass && ok
						each = append(each, passDrop(ok))
					}
					if err := wire.Send(v.A, frames); err != nil {
						t.Fatal(err)
					}
					nv, err := tr.wait(marker, 5*time.Second)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					rows++
					why := k.why
					if c.blocked && why == "" {
						why = k.blockedWhy
					}
					switch {
					case xdpPass == nv.accept:
					case xdpPass && why != "":
						legit++
						t.Logf("%s: XDP passes, nftables drops (rule handle %d): %s", name, nv.rule, why)
					default:
						mismatches++
						t.Errorf("%s: XDP %s (fragments: %s), nftables %s (rule handle %d)",
							name, passDrop(xdpPass), strings.Join(each, ", "), passDrop(nv.accept), nv.rule)
					}
				}
			}
		}
		if t.Failed() {
			t.Logf("%s mode table:\n%s", mode, gate.Exec(t, "nft", "-a", "list", "table", "inet", nft.TableName))
		}
	}
	t.Logf("%d rows: %d agree, %d differ where XDP cannot have the state, %d disagree", rows, rows-legit-mismatches, legit, mismatches)
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
