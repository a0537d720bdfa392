package nft

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

func TestStrictMode(t *testing.T) {
	tp := newTopo(t, Config{})
	if err := tp.e.Apply(testPolicy(policy.ModeStrict)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst string
		port     int
		want     bool
	}{
		{admittedV4, gateV4, listenPort, true},
		{admittedV4, gateV4, otherPort, false},
		{admittedV4, gateV4, mgmtPort, false}, // management is per source range
		{outsideV4, gateV4, mgmtPort, true},
		{outsideV4, gateV4, otherPort, false},
		{outsideV4, gateV4, listenPort, false},
		{admittedV6, gateV6, listenPort, true},
		{outsideV6, gateV6, mgmtPort, true},
		{outsideV6, gateV6, otherPort, false},
	} {
		if got := tp.reach(tc.src, tc.dst, tc.port); got != tc.want {
			t.Errorf("strict: %s -> %s:%d: reached %v, want %v", tc.src, tc.dst, tc.port, got, tc.want)
		}
	}
	if c := tp.counters(t); c[ruleStrictDrop] == 0 || c[ruleManagement] < 2 {
		t.Errorf("counters %v: want strict_drop and management counted", c)
	}
	// From neighbour discovery afresh: management reaches its port over
	// UDP too (as XDP lets it) and nobody else does; echo requests are
	// answered for admitted sources only, as XDP decides them.
	serveUDP(t, tp.ns, mgmtPort)
	tp.client.Exec(t, "ip", "neigh", "flush", "all")
	tp.ns.Exec(t, "ip", "neigh", "flush", "all")
	for _, tc := range []struct {
		udp      bool // else ICMP echo
		src, dst string
		want     bool
	}{
		{false, admittedV6, gateV6, true},
		{false, admittedV4, gateV4, true},
		{false, outsideV4, gateV4, false},
		{false, outsideV6, gateV6, false},
		{true, outsideV4, gateV4, true},
		{true, outsideV6, gateV6, true},
		{true, admittedV4, gateV4, false},
	} {
		var err error
		if tc.udp {
			err = udpEcho(tp.client, tc.src, tc.dst, mgmtPort)
		} else {
			err = echo(tp.client, tc.src, tc.dst)
		}
		if (err == nil) != tc.want {
			t.Errorf("strict: udp=%v %s -> %s: %v, want answered %v", tc.udp, tc.src, tc.dst, err, tc.want)
		}
	}
	if c := tp.counters(t); c[ruleICMP] == 0 {
		t.Errorf("icmp_allowed counter is 0: %v", c)
	}
}

// serveUDP echoes datagrams on port in ns, both families.
func serveUDP(t *testing.T, ns *netns.NS, port int) {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

// udpEcho sends one datagram from src in ns and waits for the echo.
func udpEcho(ns *netns.NS, src, dst string, port int) error {
	var pc net.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", net.JoinHostPort(src, "0"))
		return err
	}); err != nil {
		return err
	}
	defer pc.Close()
	to, err := net.ResolveUDPAddr("udp", net.JoinHostPort(dst, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	if _, err := pc.WriteTo([]byte("gatehouse"), to); err != nil {
		return err
	}
	pc.SetReadDeadline(time.Now().Add(time.Second))
	_, _, err = pc.ReadFrom(make([]byte, 64))
	return err
}

// echo sends one ICMP or ICMPv6 echo request from src in ns and waits for
// the reply.
func echo(ns *netns.NS, src, dst string) error {
	addr := netip.MustParseAddr(dst)
	network, proto, typ := "ip4:icmp", 1, icmp.Type(ipv4.ICMPTypeEcho)
	if addr.Is6() {
		network, proto, typ = "ip6:ipv6-icmp", 58, ipv6.ICMPTypeEchoRequest
	}
	var pc *icmp.PacketConn
	if err := ns.Do(func() (err error) {
		pc, err = icmp.ListenPacket(network, src)
		return err
	}); err != nil {
		return err
	}
	defer pc.Close()
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: 0x4748, Seq: 1, Data: []byte("gatehouse")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := pc.WriteTo(b, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return err
	}
	pc.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		if m.Type == ipv4.ICMPTypeEchoReply || m.Type == ipv6.ICMPTypeEchoReply {
			return nil
		}
	}
}

// TestStrictProtocolsMirrorXDP: in strict mode with XDP on, the input and
// forward chains drop on XDP's interface, before the established rule,
// what the XDP program drops there whatever the flow (IP protocols other
// than TCP, UDP and ICMP; ICMP other than answers from a source not
// admitted), so the layers agree on answers over GRE (TestLayersAgree
// sends them). Elsewhere, in listeners mode and with XDP off, there is no
// such rule: established answers pass as before.
func TestStrictProtocolsMirrorXDP(t *testing.T) {
	g := newGate(t, Config{})
	for _, tc := range []struct {
		name string
		mode policy.Mode
		xdp  policy.XDPMode
		want int // strict_protocol rules: 2 per family and chain
	}{
		{"strict, XDP on", policy.ModeStrict, policy.XDPNative, 8},
		{"strict, XDP off", policy.ModeStrict, policy.XDPOff, 0},
		{"listeners, XDP on", policy.ModeListeners, policy.XDPNative, 0},
	} {
		p := testPolicy(tc.mode)
		p.Enforcement.XDP, p.Enforcement.Forward, p.Interface = tc.xdp, true, "ghwan0"
		if err := g.e.Apply(p); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		list := g.list(t)
		got, onXDP := 0, 0
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, `strict_protocol" drop`) {
				got++
				if strings.HasPrefix(strings.TrimSpace(line), `iifname "ghwan0" `) {
					onXDP++
				}
			}
		}
		if got != tc.want || onXDP != tc.want {
			t.Errorf("%s: %d strict_protocol rules, %d of them on XDP's interface, want %d:\n%s", tc.name, got, onXDP, tc.want, list)
		}
		if tc.want == 0 {
			continue
		}
		// Before the established rule, in both chains.
		for _, chain := range []string{"chain input {", "chain forward {"} {
			body := list[strings.Index(list, chain):]
			if p, e := strings.Index(body, "strict_protocol"), strings.Index(body, `established" accept`); p < 0 || e < 0 || p > e {
				t.Errorf("%s: %s: strict_protocol does not come before established:\n%s", tc.name, chain, body)
			}
		}
	}
}
