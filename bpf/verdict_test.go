package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func testGeneration(strict bool) *Generation {
	return &Generation{
		Strict:      strict,
		EphemeralLo: 32768,
		EphemeralHi: 60999,
		Ports:       []Port{{"tcp", 443}, {"udp", 4433}},
		Management: []Management{
			{Prefix: netip.MustParsePrefix("192.0.2.0/28"), Ports: []uint16{22}},
			{Prefix: netip.MustParsePrefix("2001:db8:ffff::/64"), Ports: []uint16{22}},
		},
		V4: []netip.Prefix{
			netip.MustParsePrefix("198.51.100.0/24"), // a whole /24
			netip.MustParsePrefix("203.0.113.0/25"),  // part of a /24
			netip.MustParsePrefix("203.0.113.130/32"),
		},
		V6: []netip.Prefix{
			netip.MustParsePrefix("2001:db8:1::/48"),
			netip.MustParsePrefix("2001:db8:2:3::7/128"),
		},
	}
}

const (
	in4    = "198.51.100.7"
	in4b   = "203.0.113.5"
	out4   = "203.0.113.200"
	mgmt4  = "192.0.2.5"
	dst4   = "192.0.2.100"
	in6    = "2001:db8:1::99"
	out6   = "2001:db8:2:3::8"
	mgmt6  = "2001:db8:ffff::5"
	dst6   = "2001:db8:100::1"
	tpid   = 0x8100
	tpidAD = 0x88a8
)

type verdictCase struct {
	name   string
	strict bool
	f      frame
	raw    []byte // instead of f
	action int
	reason string
}

func verdictCases() []verdictCase {
	ipv4 := func(src string, proto uint8, dport uint16) frame {
		return frame{src: src, dst: dst4, proto: proto, dport: dport}
	}
	ipv6 := func(src string, proto uint8, dport uint16) frame {
		return frame{src: src, dst: dst6, proto: proto, dport: dport}
	}
	with := func(f frame, fn func(*frame)) frame { fn(&f); return f }
	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	cs := []verdictCase{
		// Protected ports, both modes.
		{name: "v4 admitted whole /24", f: ipv4(in4, 6, 443), action: 0, reason: "admitted"},
		{name: "v4 admitted partial /24", f: ipv4(in4b, 6, 443), action: 0, reason: "admitted"},
		{name: "v4 admitted /32 in partial", f: ipv4("203.0.113.130", 6, 443), action: 0, reason: "admitted"},
		{name: "v4 neighbour of /32", f: ipv4("203.0.113.131", 6, 443), action: 1, reason: "not_admitted"},
		{name: "v4 not admitted", f: ipv4(out4, 6, 443), action: 1, reason: "not_admitted"},
		{name: "v4 not admitted ACK", f: with(ipv4(out4, 6, 443), func(f *frame) { f.flags = 0x10 }), action: 1, reason: "not_admitted"},
		{name: "v4 not admitted strict", strict: true, f: ipv4(out4, 6, 443), action: 1, reason: "not_admitted"},
		{name: "v4 udp admitted", f: ipv4(in4, 17, 4433), action: 0, reason: "admitted"},
		{name: "v4 udp not admitted", f: ipv4(out4, 17, 4433), action: 1, reason: "not_admitted"},
		{name: "v4 tcp on udp port", f: ipv4(out4, 6, 4433), action: 0, reason: "passthrough"},
		{name: "v6 admitted", f: ipv6(in6, 6, 443), action: 0, reason: "admitted"},
		{name: "v6 admitted /128", f: ipv6("2001:db8:2:3::7", 6, 443), action: 0, reason: "admitted"},
		{name: "v6 not admitted", f: ipv6(out6, 6, 443), action: 1, reason: "not_admitted"},
		{name: "v6 not admitted other block", f: ipv6("2001:db9::1", 6, 443), action: 1, reason: "not_admitted"},
		{name: "v6 udp admitted", f: ipv6(in6, 17, 4433), action: 0, reason: "admitted"},

		// Unprotected ports follow the mode.
		{name: "listeners other port", f: ipv4(out4, 6, 80), action: 0, reason: "passthrough"},
		{name: "strict SYN other port", strict: true, f: ipv4(out4, 6, 80), action: 1, reason: "not_admitted"},
		{name: "strict SYN other port admitted src", strict: true, f: ipv4(in4, 6, 80), action: 1, reason: "not_admitted"},
		{name: "strict ACK other port", strict: true, f: with(ipv4(out4, 6, 80), func(f *frame) { f.flags = 0x10 }), action: 0, reason: "passthrough"},
		{name: "strict SYN-ACK other port", strict: true, f: with(ipv4(out4, 6, 40000), func(f *frame) { f.flags = 0x12 }), action: 0, reason: "passthrough"},
		{name: "strict RST", strict: true, f: with(ipv4(out4, 6, 80), func(f *frame) { f.flags = 0x04 }), action: 0, reason: "passthrough"},
		{name: "strict udp ephemeral", strict: true, f: ipv4(out4, 17, 40000), action: 0, reason: "passthrough"},
		{name: "strict udp low port", strict: true, f: ipv4(out4, 17, 53), action: 1, reason: "not_admitted"},
		{name: "listeners udp low port", f: ipv4(out4, 17, 53), action: 0, reason: "passthrough"},
		{name: "strict v6 SYN", strict: true, f: ipv6(out6, 6, 80), action: 1, reason: "not_admitted"},
		{name: "strict gre", strict: true, f: ipv4(in4, 47, 0), action: 1, reason: "not_admitted"},
		{name: "listeners gre", f: ipv4(out4, 47, 0), action: 0, reason: "passthrough"},
		{name: "strict v6 no next header", strict: true, f: ipv6(in6, 59, 0), action: 1, reason: "not_admitted"},

		// Management.
		{name: "mgmt v4", strict: true, f: ipv4(mgmt4, 6, 22), action: 0, reason: "management"},
		{name: "mgmt v4 listeners", f: ipv4(mgmt4, 6, 22), action: 0, reason: "management"},
		{name: "mgmt v4 outside range", strict: true, f: ipv4("192.0.2.77", 6, 22), action: 1, reason: "not_admitted"},
		{name: "mgmt v4 other port", strict: true, f: ipv4(mgmt4, 6, 23), action: 1, reason: "not_admitted"},
		{name: "mgmt v4 udp", strict: true, f: ipv4(mgmt4, 17, 22), action: 0, reason: "management"},
		{name: "mgmt v6", strict: true, f: ipv6(mgmt6, 6, 22), action: 0, reason: "management"},
		{name: "mgmt v6 outside", strict: true, f: ipv6("2001:db8:fffe::5", 6, 22), action: 1, reason: "not_admitted"},
		{name: "mgmt v4 range not v6", strict: true, f: ipv6(in6, 6, 22), action: 1, reason: "not_admitted"},

		// ICMP.
		{name: "listeners echo request", f: ipv4(out4, 1, 0), action: 0, reason: "passthrough"},
		{name: "strict echo request", strict: true, f: with(ipv4(out4, 1, 0), func(f *frame) { f.icmpType = 8 }), action: 1, reason: "not_admitted"},
		{name: "strict echo request admitted", strict: true, f: with(ipv4(in4, 1, 0), func(f *frame) { f.icmpType = 8 }), action: 0, reason: "admitted"},
		{name: "strict echo reply", strict: true, f: with(ipv4(out4, 1, 0), func(f *frame) { f.icmpType = 0 }), action: 0, reason: "passthrough"},
		{name: "strict unreachable", strict: true, f: with(ipv4(out4, 1, 0), func(f *frame) { f.icmpType = 3 }), action: 0, reason: "passthrough"},
		{name: "strict v6 echo request", strict: true, f: with(ipv6(out6, 58, 0), func(f *frame) { f.icmpType = 128 }), action: 1, reason: "not_admitted"},
		{name: "strict v6 packet too big", strict: true, f: with(ipv6(out6, 58, 0), func(f *frame) { f.icmpType = 2 }), action: 0, reason: "passthrough"},
		{name: "strict v6 neighbour solicitation", strict: true, f: with(ipv6("fe80::1", 58, 0), func(f *frame) { f.icmpType = 135 }), action: 0, reason: "passthrough"},
		{name: "strict v6 router advertisement", strict: true, f: with(ipv6("fe80::1", 58, 0), func(f *frame) { f.icmpType = 134 }), action: 0, reason: "passthrough"},
		{name: "strict arp", strict: true, raw: arp, action: 0, reason: "passthrough"},
		{name: "strict v6 MLDv2 report", strict: true, f: with(ipv6("fe80::1", 58, 0), func(f *frame) { f.icmpType = 143 }), action: 0, reason: "passthrough"},
		{name: "strict v6 MLD query", strict: true, f: with(ipv6("fe80::1", 58, 0), func(f *frame) { f.icmpType = 130 }), action: 0, reason: "passthrough"},
		{name: "strict v6 redirect", strict: true, f: with(ipv6("fe80::1", 58, 0), func(f *frame) { f.icmpType = 137 }), action: 0, reason: "passthrough"},
		{name: "strict v6 node information query", strict: true, f: with(ipv6(out6, 58, 0), func(f *frame) { f.icmpType = 139 }), action: 1, reason: "not_admitted"},
		// The kernel drops an IPv4-mapped IPv6 source before any hook.
		{name: "v6 v4-mapped source", f: ipv6("::ffff:203.0.113.200", 6, 80), action: 1, reason: "malformed"},
		{name: "v6 v4-mapped source to a listener", f: ipv6("::ffff:198.51.100.7", 6, 443), action: 1, reason: "malformed"},
		{name: "icmp in v6 is not icmp", strict: true, f: with(ipv6(out6, 1, 0), func(f *frame) { f.icmpType = 0 }), action: 1, reason: "not_admitted"},

		// VLAN tags.
		{name: "802.1Q admitted", f: with(ipv4(in4, 6, 443), func(f *frame) { f.vlans = []uint16{tpid} }), action: 0, reason: "admitted"},
		{name: "802.1Q not admitted", f: with(ipv4(out4, 6, 443), func(f *frame) { f.vlans = []uint16{tpid} }), action: 1, reason: "not_admitted"},
		{name: "QinQ not admitted v6", f: with(ipv6(out6, 6, 443), func(f *frame) { f.vlans = []uint16{tpidAD, tpid} }), action: 1, reason: "not_admitted"},
		{name: "QinQ admitted v6", f: with(ipv6(in6, 6, 443), func(f *frame) { f.vlans = []uint16{tpidAD, tpid} }), action: 0, reason: "admitted"},
		{name: "three tags", f: with(ipv4(in4, 6, 443), func(f *frame) { f.vlans = []uint16{tpidAD, tpid, tpid} }), action: 1, reason: "malformed"},

		// IPv4 options and malformed headers.
		{name: "v4 options admitted", f: with(ipv4(in4, 6, 443), func(f *frame) { f.v4Opts = 12 }), action: 0, reason: "admitted"},
		{name: "v4 options not admitted", f: with(ipv4(out4, 6, 443), func(f *frame) { f.v4Opts = 40 }), action: 1, reason: "not_admitted"},
		{name: "v4 ihl below 5", f: with(ipv4(in4, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, l3, _ int) { b[l3] = 0x44 }
		}), action: 1, reason: "malformed"},
		{name: "v4 wrong version", f: with(ipv4(in4, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, l3, _ int) { b[l3] = 0x65 }
		}), action: 1, reason: "malformed"},
		{name: "v4 total length beyond frame", f: with(ipv4(in4, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, l3, _ int) { binary.BigEndian.PutUint16(b[l3+2:], 200) }
		}), action: 1, reason: "malformed"},
		{name: "v4 total length below header", f: with(ipv4(in4, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, l3, _ int) { binary.BigEndian.PutUint16(b[l3+2:], 16) }
		}), action: 1, reason: "malformed"},
		{name: "v4 header cut", raw: frame{src: in4, dst: dst4, dport: 443}.bytes()[:14+12], action: 1, reason: "malformed"},
		{name: "v4 options cut", raw: frame{src: in4, dst: dst4, dport: 443, v4Opts: 40}.bytes()[:14+40], action: 1, reason: "malformed"},
		{name: "tcp cut", f: with(ipv4(in4, 6, 443), func(f *frame) { f.l4Len = 10 }), action: 1, reason: "malformed"},
		{name: "tcp data offset below 5", f: with(ipv4(in4, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, _, l4 int) { b[l4+12] = 4 << 4 }
		}), action: 1, reason: "malformed"},
		{name: "tcp options beyond packet", f: with(ipv4(in4, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, _, l4 int) { b[l4+12] = 15 << 4 }
		}), action: 1, reason: "malformed"},
		{name: "udp cut", f: with(ipv4(in4, 17, 4433), func(f *frame) { f.l4Len = 6 }), action: 1, reason: "malformed"},
		{name: "icmp cut", f: with(ipv4(in4, 1, 0), func(f *frame) { f.l4Len = 4 }), action: 1, reason: "malformed"},
		{name: "v6 tcp cut", f: with(ipv6(in6, 6, 443), func(f *frame) { f.l4Len = 19 }), action: 1, reason: "malformed"},
		{name: "v6 header cut", raw: frame{src: in6, dst: dst6, dport: 443}.bytes()[:14+39], action: 1, reason: "malformed"},
		{name: "v6 payload length beyond frame", f: with(ipv6(in6, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, l3, _ int) { binary.BigEndian.PutUint16(b[l3+4:], 100) }
		}), action: 1, reason: "malformed"},
		{name: "v6 wrong version", f: with(ipv6(in6, 6, 443), func(f *frame) {
			f.mutate = func(b []byte, l3, _ int) { b[l3] = 0x40 }
		}), action: 1, reason: "malformed"},
		{name: "ethernet padding after ip", raw: append(frame{src: in4, dst: dst4, dport: 443}.bytes(), make([]byte, 10)...), action: 0, reason: "admitted"},

		// IPv6 extension headers.
		{name: "v6 hop-by-hop and dst opts admitted", f: with(ipv6(in6, 6, 443), func(f *frame) { f.ext = []ext{{0, 8}, {60, 16}} }), action: 0, reason: "admitted"},
		{name: "v6 hop-by-hop and dst opts not admitted", f: with(ipv6(out6, 6, 443), func(f *frame) { f.ext = []ext{{0, 8}, {60, 16}} }), action: 1, reason: "not_admitted"},
		{name: "v6 routing and AH", f: with(ipv6(out6, 6, 443), func(f *frame) { f.ext = []ext{{43, 24}, {51, 16}} }), action: 1, reason: "not_admitted"},
		{name: "v6 eight ext headers", f: with(ipv6(in6, 6, 443), func(f *frame) {
			f.ext = []ext{{0, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}}
		}), action: 0, reason: "admitted"},
		{name: "v6 nine ext headers", f: with(ipv6(in6, 6, 443), func(f *frame) {
			f.ext = []ext{{0, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}, {60, 8}}
		}), action: 1, reason: "malformed"},
		{name: "v6 ext header beyond payload", f: with(ipv6(in6, 6, 443), func(f *frame) {
			f.ext = []ext{{60, 8}}
			f.mutate = func(b []byte, l3, _ int) { b[l3+40+1] = 20 }
		}), action: 1, reason: "malformed"},
		{name: "v6 ext header cut", raw: frame{src: in6, dst: dst6, dport: 443, ext: []ext{{0, 8}}}.bytes()[:14+40+4], action: 1, reason: "malformed"},

		// Fragments.
		{name: "v4 first fragment admitted", f: with(ipv4(in4, 6, 443), func(f *frame) { f.more = true }), action: 0, reason: "admitted"},
		{name: "v4 first fragment not admitted", f: with(ipv4(out4, 6, 443), func(f *frame) { f.more = true }), action: 1, reason: "not_admitted"},
		{name: "v4 first fragment too short for tcp", f: with(ipv4(in4, 6, 443), func(f *frame) { f.more = true; f.l4Len = 8 }), action: 1, reason: "malformed"},
		// A later fragment carries no port. In listeners mode anyone may
		// have sent its first fragment (to a port that is not a
		// listener); in strict mode only admitted and management sources.
		{name: "v4 later fragment admitted", f: with(ipv4(in4, 6, 80), func(f *frame) { f.fragOff = 100; f.l4Len = 8 }), action: 0, reason: "passthrough"},
		{name: "v4 later fragment not admitted", f: with(ipv4(out4, 6, 80), func(f *frame) { f.fragOff = 100; f.l4Len = 8 }), action: 0, reason: "passthrough"},
		{name: "strict v4 later fragment admitted", strict: true, f: with(ipv4(in4, 17, 80), func(f *frame) { f.fragOff = 100 }), action: 0, reason: "admitted"},
		{name: "strict v4 later fragment not admitted", strict: true, f: with(ipv4(out4, 17, 80), func(f *frame) { f.fragOff = 100 }), action: 1, reason: "not_admitted"},
		{name: "strict v4 later fragment management", strict: true, f: with(ipv4(mgmt4, 17, 22), func(f *frame) { f.fragOff = 100 }), action: 0, reason: "management"},
		{name: "strict v4 later fragment outside management range", strict: true, f: with(ipv4("192.0.2.77", 17, 22), func(f *frame) { f.fragOff = 100 }), action: 1, reason: "not_admitted"},
		{name: "strict v6 later fragment management", strict: true, f: with(ipv6(mgmt6, 17, 22), func(f *frame) { f.ext = []ext{{44, 8}}; f.fragOff = 90 }), action: 0, reason: "management"},
		{name: "strict v6 later fragment not admitted", strict: true, f: with(ipv6(out6, 17, 22), func(f *frame) { f.ext = []ext{{44, 8}}; f.fragOff = 90 }), action: 1, reason: "not_admitted"},
		{name: "strict v6 later fragment admitted", strict: true, f: with(ipv6(in6, 17, 22), func(f *frame) { f.ext = []ext{{44, 8}}; f.fragOff = 90 }), action: 0, reason: "admitted"},
		{name: "v6 first fragment", f: with(ipv6(out6, 6, 443), func(f *frame) { f.ext = []ext{{44, 8}}; f.more = true }), action: 1, reason: "not_admitted"},
		{name: "v6 first fragment admitted", f: with(ipv6(in6, 6, 443), func(f *frame) { f.ext = []ext{{44, 8}}; f.more = true }), action: 0, reason: "admitted"},
		{name: "v6 later fragment admitted", f: with(ipv6(in6, 6, 80), func(f *frame) { f.ext = []ext{{0, 8}, {44, 8}}; f.fragOff = 90 }), action: 0, reason: "passthrough"},
		{name: "v6 later fragment not admitted", f: with(ipv6(out6, 6, 80), func(f *frame) { f.ext = []ext{{44, 8}}; f.fragOff = 90 }), action: 0, reason: "passthrough"},
	}
	return cs
}

func TestVerdicts(t *testing.T) {
	for _, lpm := range []bool{false, true} {
		r := newRig(t, lpm)
		for _, strict := range []bool{false, true} {
			r.apply(t, testGeneration(strict))
			for _, c := range verdictCases() {
				if c.strict != strict {
					continue
				}
				name := c.name
				if lpm {
					name = "lpm/" + name
				}
				t.Run(name, func(t *testing.T) {
					pkt := c.raw
					if pkt == nil {
						pkt = c.f.bytes()
					}
					before := r.counters(t)
					got := r.run(t, pkt)
					want := uint32(xdpPass)
					if c.action == 1 {
						want = xdpDrop
					}
					if got != want {
						t.Errorf("action %d, want %d (%s %s)", got, want, Actions[c.action], c.reason)
					}
					after := r.counters(t)
					reason := -1
					for i, n := range Reasons {
						if n == c.reason {
							reason = i
						}
					}
					for k, v := range after {
						d := v - before[k]
						wantD := uint64(0)
						if k == [2]int{c.action, reason} {
							wantD = 1
						}
						if d != wantD {
							t.Errorf("counter %s/%s moved by %d, want %d", Actions[k[0]], Reasons[k[1]], d, wantD)
						}
					}
				})
			}
		}
	}
}

func TestNoGenerationPasses(t *testing.T) {
	r := newRig(t, false)
	for _, f := range []frame{{src: out4, dst: dst4, dport: 443}, {src: out6, dst: dst6, dport: 443}} {
		if got := r.run(t, f.bytes()); got != xdpPass {
			t.Errorf("%s: action %d before any generation, want pass", f.src, got)
		}
	}
}

func monotonicNow(t testing.TB) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// TestEncodeRejects covers bad input: Encode fails and nothing is half-built.
func TestEncodeRejects(t *testing.T) {
	many := make([]Management, 0, 40)
	for i := range 40 {
		many = append(many, Management{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Ports: []uint16{uint16(1000 + i)}})
	}
	for name, g := range map[string]*Generation{
		"v6 in v4 list":   {V4: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}},
		"v4 in v6 list":   {V6: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
		"invalid prefix":  {V4: []netip.Prefix{{}}},
		"port zero":       {Ports: []Port{{"tcp", 0}}},
		"unknown proto":   {Ports: []Port{{"sctp", 5}}},
		"many management": {Management: many},
		"source prefix":   {SourceBits6: 129},
		"scan window":     {Scan: Scan{DistinctPorts: 10, Gap: time.Second, BlockFor: time.Minute}},
		"scan gap":        {Scan: Scan{DistinctPorts: 10, Window: time.Minute, BlockFor: time.Minute}},
		"scan block_for":  {Scan: Scan{DistinctPorts: 10, Window: time.Minute, Gap: time.Second}},
	} {
		if p, err := g.Encode(); err == nil {
			t.Errorf("%s: Encode gave %d pages, want an error", name, p.Count)
		}
	}
}

// TestEncodeTooLarge: a set beyond MaxPages is refused with ErrTooLarge,
// not truncated.
func TestEncodeTooLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 400k prefixes")
	}
	rng := rand.New(rand.NewPCG(5, 5))
	v6 := make([]netip.Prefix, 400000)
	for i := range v6 {
		var a [16]byte
		fillRandom(rng, a[:])
		v6[i] = netip.PrefixFrom(netip.AddrFrom16(a), 128)
	}
	_, err := (&Generation{V6: v6}).Encode()
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Encode of 400k /128s: %v, want ErrTooLarge", err)
	}
}

// TestScanDetection runs the program's scan detection through
// BPF_PROG_TEST_RUN: distinct ports, not packets, drain a source's bucket;
// the pair that empties it blocks the source (its /64 for IPv6) for
// block_for; listener ports, management and ACKs never count.
func TestScanDetection(t *testing.T) {
	const ports = 4
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			r := newRig(t, false)
			g := testGeneration(strict)
			g.SourceBits6 = 64
			g.Scan = Scan{DistinctPorts: ports, Window: time.Hour, Gap: time.Hour / ports, BlockFor: time.Hour}
			r.apply(t, g)
			closedPass := "passthrough"
			closedAction := uint32(xdpPass)
			if strict {
				closedPass, closedAction = "not_admitted", xdpDrop
			}
			expect := func(what string, f frame, want uint32, reason string) {
				t.Helper()
				before := r.counters(t)
				if got := r.run(t, f.bytes()); got != want {
					t.Errorf("%s: action %d, want %d", what, got, want)
				}
				after := r.counters(t)
				moved := ""
				for k, v := range after {
					if v != before[k] {
						moved = Reasons[k[1]]
					}
				}
				if moved != reason {
					t.Errorf("%s: counted as %q, want %q", what, moved, reason)
				}
			}
			syn := func(src string, port uint16) frame {
				dst := dst4
				if netip.MustParseAddr(src).Is6() {
					dst = dst6
				}
				return frame{src: src, dst: dst, dport: port}
			}
			// ports-1 distinct closed ports, each twice, an ACK to a
			// fourth, the listener and UDP: no block.
			for p := uint16(1001); p < 1001+ports-1; p++ {
				expect("below the threshold", syn(out4, p), closedAction, closedPass)
				expect("same port again", syn(out4, p), closedAction, closedPass)
			}
			ack := syn(out4, 2001)
			ack.flags = 0x10
			expect("ACK", ack, xdpPass, "passthrough")
			expect("listener", syn(in4, 443), xdpPass, "admitted")
			for p := uint16(1101); p < 1101+ports-1; p++ {
				expect("an admitted source's own count", syn(in4, p), closedAction, closedPass)
			}
			expect("an admitted source's threshold", syn(in4, 1101+ports-1), xdpDrop, "scan_detected")
			if !strict {
				expect("the scanner's next new flow", syn(in4, 5000), xdpDrop, "blocked")
			}
			expect("the admitted scanner keeps its listener", syn(in4, 443), xdpPass, "admitted")
			expect("the threshold", syn(out4, 1001+ports-1), xdpDrop, "scan_detected")
			expect("blocked afterwards", syn(out4, 1001), xdpDrop, "blocked")
			// The management source scans: never counted.
			for p := uint16(3000); p < 3000+3*ports; p++ {
				expect("management source", syn(mgmt4, p), closedAction, closedPass)
			}
			expect("management port", syn(mgmt4, 22), xdpPass, "management")
			// Two addresses of one /64 are one source; another /64 is not.
			expect("v6 a", syn("2001:db8:5::a", 1001), closedAction, closedPass)
			expect("v6 b", syn("2001:db8:5::b", 1002), closedAction, closedPass)
			expect("v6 other /64", syn("2001:db8:5:1::c", 1003), closedAction, closedPass)
			expect("v6 c", syn("2001:db8:5::c", 1003), closedAction, closedPass)
			expect("v6 d fills its /64's bucket", syn("2001:db8:5::d", 1004), xdpDrop, "scan_detected")
			expect("v6 e of the blocked /64", syn("2001:db8:5::e", 80), xdpDrop, "blocked")
			expect("v6 other /64 still free", syn("2001:db8:5:1::c", 1004), closedAction, closedPass)

			var until uint64
			key := netip.MustParseAddr("2001:db8:5::").As16()
			if err := r.coll.Maps[MapBlock6].Lookup(key, &until); err != nil {
				t.Fatalf("blocklist lacks the /64 keyed 2001:db8:5::: %v", err)
			}
			if left := time.Duration(until - monotonicNow(t)); left < 59*time.Minute || left > time.Hour {
				t.Errorf("blocked for %s, want block_for (1h)", left)
			}
			if err := r.coll.Maps[MapBlock4].Lookup(netip.MustParseAddr(mgmt4).As4(), &until); err == nil {
				t.Error("the management source is in the blocklist")
			}
		})
	}
}

// TestScanBucketRefills: a source that stays below distinct_ports per
// window is never blocked, as with the nftables rule. (The sleeps are the
// slowness of the scan, not synchronisation: a slower machine only makes
// the scan slower still.)
func TestScanBucketRefills(t *testing.T) {
	r := newRig(t, false)
	g := testGeneration(false)
	// 2 ports per 200 ms: one token, refilled every 100 ms.
	g.Scan = Scan{DistinctPorts: 2, Window: 200 * time.Millisecond, Gap: 100 * time.Millisecond, BlockFor: time.Hour}
	r.apply(t, g)
	for i := range 5 {
		if got := r.run(t, frame{src: out4, dst: dst4, dport: uint16(1000 + i)}.bytes()); got != xdpPass {
			t.Fatalf("port %d of a slow scan: action %d, want pass", i, got)
		}
		time.Sleep(150 * time.Millisecond)
	}
}
