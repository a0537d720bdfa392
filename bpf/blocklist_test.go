package bpf

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestBlocklist: a blocked source loses the new connections it could open
// elsewhere (bare SYNs, echo requests), but not its listener ports (when
// admitted), not a management port of its range, and never a packet that
// may belong to a live flow. A source is its /64 when the generation says
// so.
func TestBlocklist(t *testing.T) {
	for _, strict := range []bool{false, true} {
		r := newRig(t, false)
		g := testGeneration(strict)
		g.SourceBits6 = 64
		r.apply(t, g)
		now := monotonicNow(t)
		block := func(a string, until uint64) {
			addr := netip.MustParseAddr(a)
			var err error
			if addr.Is4() {
				err = r.coll.Maps[MapBlock4].Put(addr.As4(), until)
			} else {
				err = r.coll.Maps[MapBlock6].Put(addr.As16(), until)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		block(in4, now+uint64(time.Hour))
		block(in4b, now-1) // expired
		block(mgmt4, now+uint64(time.Hour))
		block("2001:db8:1::", now+uint64(time.Hour)) // the /64 of in6
		block("2001:db8:2:3::", now+uint64(time.Hour))
		syn := frame{src: in4, dst: dst4, dport: 80}
		// Entries are ignored until the state says the blocklist is active.
		if strict {
			syn.dport = 443 // the only port strict leaves open besides management
		}
		if got := r.run(t, syn.bytes()); got != xdpPass {
			t.Fatalf("inactive blocklist: action %d, want pass", got)
		}
		if err := SetBlockActive(r.coll.Maps[MapState], true); err != nil {
			t.Fatal(err)
		}
		with := func(f frame, fn func(*frame)) frame { fn(&f); return f }
		// In strict mode a new flow to a closed port is dropped anyway:
		// "blocked" or "not_admitted" is the reason.
		closed := "blocked"
		type tc struct {
			name   string
			f      frame
			action int
			reason string
		}
		cases := []tc{
			{"admitted keeps its listener", frame{src: in4, dst: dst4, dport: 443}, 0, "admitted"},
			{"udp listener", frame{src: in4, dst: dst4, proto: 17, dport: 4433}, 0, "admitted"},
			{"v6 /64 keeps its listener", frame{src: in6, dst: dst6, dport: 443}, 0, "admitted"},
			{"management keeps its port", frame{src: mgmt4, dst: dst4, dport: 22}, 0, "management"},
			{"management udp", frame{src: mgmt4, dst: dst4, proto: 17, dport: 22}, 0, "management"},
			{"not admitted to a listener", frame{src: out4, dst: dst4, dport: 443}, 1, "not_admitted"},
			{"expired block", frame{src: in4b, dst: dst4, dport: 443}, 0, "admitted"},
			{"ACK may be return traffic", with(frame{src: in4, dst: dst4, dport: 40000}, func(f *frame) { f.flags = 0x10 }), 0, "passthrough"},
			{"SYN-ACK answers our SYN", with(frame{src: in4, dst: dst4, dport: 40000}, func(f *frame) { f.flags = 0x12 }), 0, "passthrough"},
			{"udp to the ephemeral range", frame{src: in4, dst: dst4, proto: 17, dport: 40000}, 0, "passthrough"},
			{"echo reply", frame{src: in4, dst: dst4, proto: 1, icmpType: 0}, 0, "passthrough"},
			{"v6 packet too big", frame{src: in6, dst: dst6, proto: 58, icmpType: 2}, 0, "passthrough"},
			{"v6 ND is never blocked", frame{src: in6, dst: dst6, proto: 58, icmpType: 135}, 0, "passthrough"},
			{"v6 another /64 is not blocked", frame{src: "2001:db8:1:1::9", dst: dst6, proto: 58, icmpType: 129}, 0, "passthrough"},
		}
		if strict {
			cases = append(cases,
				tc{"SYN elsewhere", frame{src: in4, dst: dst4, dport: 80}, 1, closed},
				tc{"management source elsewhere", frame{src: mgmt4, dst: dst4, dport: 23}, 1, closed},
				tc{"udp elsewhere", frame{src: in4, dst: dst4, proto: 17, dport: 53}, 1, "not_admitted"},
				tc{"echo request of an admitted source", frame{src: in4, dst: dst4, proto: 1, icmpType: 8}, 1, "blocked"},
				tc{"v6 echo request of its /64", frame{src: "2001:db8:1::77", dst: dst6, proto: 58, icmpType: 128}, 1, "blocked"},
				tc{"later fragment of an admitted source", with(frame{src: in4, dst: dst4, proto: 17, dport: 80}, func(f *frame) { f.fragOff = 100 }), 0, "admitted"},
				tc{"later fragment of a management source", with(frame{src: mgmt4, dst: dst4, proto: 17, dport: 80}, func(f *frame) { f.fragOff = 100 }), 0, "management"},
			)
		} else {
			cases = append(cases,
				tc{"SYN elsewhere", frame{src: in4, dst: dst4, dport: 80}, 1, "blocked"},
				tc{"management source elsewhere", frame{src: mgmt4, dst: dst4, dport: 23}, 1, "blocked"},
				tc{"udp elsewhere is nftables' to judge", frame{src: in4, dst: dst4, proto: 17, dport: 53}, 0, "passthrough"},
				tc{"echo request", frame{src: in4, dst: dst4, proto: 1, icmpType: 8}, 1, "blocked"},
				tc{"other protocol is nftables' to judge", frame{src: in4, dst: dst4, proto: 47}, 0, "passthrough"},
				tc{"v6 SYN of its /64", frame{src: "2001:db8:1::77", dst: dst6, dport: 80}, 1, "blocked"},
				tc{"v6 another /64 is not blocked", frame{src: "2001:db8:1:1::9", dst: dst6, dport: 80}, 0, "passthrough"},
				tc{"v6 blocked /64 without admission", frame{src: "2001:db8:2:3::99", dst: dst6, dport: 80}, 1, "blocked"},
				tc{"later fragment", with(frame{src: in4, dst: dst4, proto: 17, dport: 53}, func(f *frame) { f.fragOff = 100 }), 0, "passthrough"},
			)
		}
		for _, c := range cases {
			name := fmt.Sprintf("strict=%v/%s", strict, c.name)
			before := r.counters(t)
			got := r.run(t, c.f.bytes())
			want := uint32(xdpPass)
			if c.action == 1 {
				want = xdpDrop
			}
			if got != want {
				t.Errorf("%s: action %d, want %d (%s)", name, got, want, c.reason)
			}
			after := r.counters(t)
			for k, v := range after {
				d := v - before[k]
				wantD := uint64(0)
				if Actions[k[0]] == Actions[c.action] && Reasons[k[1]] == c.reason {
					wantD = 1
				}
				if d != wantD {
					t.Errorf("%s: counter %s/%s moved by %d, want %d", name, Actions[k[0]], Reasons[k[1]], d, wantD)
				}
			}
		}
	}
}

// TestBlockedSourceKeepsItsFlows: the blocklist takes only bare SYNs and
// echo requests. What a blocked source sends that may answer the
// appliance's own query or belong to a tunnel (an NTP or DHCP answer, UDP
// to another host's ephemeral range, GRE, ESP, SCTP) passes to nftables,
// which accepts it as established: a scan forged in the name of the
// appliance's NTP server or IPsec peer must not cut them.
func TestBlockedSourceKeepsItsFlows(t *testing.T) {
	const peer = "203.0.113.53" // admitted (203.0.113.0/25)
	for _, strict := range []bool{false, true} {
		r := newRig(t, false)
		g := testGeneration(strict)
		r.apply(t, g)
		if err := r.coll.Maps[MapBlock4].Put(netip.MustParseAddr(peer).As4(), monotonicNow(t)+uint64(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := SetBlockActive(r.coll.Maps[MapState], true); err != nil {
			t.Fatal(err)
		}
		// In strict mode UDP outside the ephemeral range and other
		// protocols are new flows, dropped whoever sends them.
		other := "passthrough"
		otherAction := uint32(xdpPass)
		if strict {
			other, otherAction = "not_admitted", xdpDrop
		}
		for _, c := range []struct {
			name   string
			f      frame
			want   uint32
			reason string
		}{
			{"NTP answer to 123", frame{src: peer, dst: dst4, proto: 17, dport: 123}, otherAction, other},
			{"DHCP answer to 68", frame{src: peer, dst: dst4, proto: 17, dport: 68}, otherAction, other},
			{"UDP to 62000, outside the ephemeral range", frame{src: peer, dst: dst4, proto: 17, dport: 62000}, otherAction, other},
			{"UDP to the ephemeral range", frame{src: peer, dst: dst4, proto: 17, dport: 40000}, xdpPass, "passthrough"},
			{"GRE", frame{src: peer, dst: dst4, proto: 47}, otherAction, other},
			{"ESP", frame{src: peer, dst: dst4, proto: 50}, otherAction, other},
			{"SCTP", frame{src: peer, dst: dst4, proto: 132}, otherAction, other},
			{"SYN", frame{src: peer, dst: dst4, dport: 80}, xdpDrop, "blocked"},
			{"echo request", frame{src: peer, dst: dst4, proto: 1, icmpType: 8}, xdpDrop, "blocked"},
		} {
			before := r.counters(t)
			if got := r.run(t, c.f.bytes()); got != c.want {
				t.Errorf("strict=%v, blocked source, %s: action %d, want %d", strict, c.name, got, c.want)
			}
			after := r.counters(t)
			for k, v := range after {
				if v != before[k] && Reasons[k[1]] != c.reason {
					t.Errorf("strict=%v, blocked source, %s: counted as %s, want %s", strict, c.name, Reasons[k[1]], c.reason)
				}
			}
		}
	}
}

// TestMappedSourceScansNothing: SYNs from an IPv4-mapped IPv6 source are
// malformed; they neither count as a scan nor block ::/64.
func TestMappedSourceScansNothing(t *testing.T) {
	r := newRig(t, false)
	g := testGeneration(false)
	g.SourceBits6 = 64
	g.Scan = Scan{DistinctPorts: 3, Window: time.Hour, Gap: time.Hour / 3, BlockFor: time.Hour}
	r.apply(t, g)
	for p := uint16(1001); p < 1010; p++ {
		if got := r.run(t, frame{src: "::ffff:203.0.113.200", dst: dst6, dport: p}.bytes()); got != xdpDrop {
			t.Errorf("port %d from a mapped source: action %d, want drop", p, got)
		}
	}
	var until uint64
	if err := r.coll.Maps[MapBlock6].Lookup(netip.IPv6Unspecified().As16(), &until); err == nil {
		t.Error("a mapped source blocked ::/64")
	}
	if c := r.counters(t)[[2]int{1, 3}]; c != 9 {
		t.Errorf("%d malformed drops, want 9", c)
	}
}
