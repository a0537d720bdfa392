package nft

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// forgeSYNs sends SYNs to the gate's listener from srcs in turn, one every
// gap, until stop is closed or max are sent (a flood that ends by itself).
func forgeSYNs(t *testing.T, from *netns.NS, dev string, dstMAC []byte, srcs []netip.Addr, gap time.Duration, max int, stop <-chan struct{}) <-chan int {
	t.Helper()
	var frames [][]byte
	for i, src := range srcs {
		dst := netip.MustParseAddr(gateV4)
		if src.Is6() {
			dst = netip.MustParseAddr(gateV6)
		}
		f, err := netns.Packet{Src: src, Dst: dst, Proto: 6, SrcPort: uint16(30000 + i), DstPort: listenPort,
			TCPFlags: 0x02, ID: uint32(i + 1)}.Frames(dstMAC)
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f...)
	}
	sent := make(chan int, 1)
	go func() {
		n := 0
		tick := time.NewTicker(gap)
		defer tick.Stop()
		for n < max {
			select {
			case <-stop:
				sent <- n
				return
			case <-tick.C:
			}
			if from.Send(dev, [][]byte{frames[n%len(frames)]}) == nil {
				n++
			}
		}
		sent <- n
	}()
	return sent
}

// TestForgedSYNsCostTheTenantNothing reproduces the review's attack on the
// per-source limits: SYNs forged from unused addresses of an admitted
// tenant's /64, and from the tenant's own IPv4 address, at 50 a second.
// Before synproxy they filled the tenant's rate bucket and connection cap
// (the cap counted their half-open conntrack entries for a minute or two),
// and the tenant's own connections failed. Now a SYN to a listener only
// gets a cookie: no conntrack entry, no token, no slot is spent until the
// handshake's last ACK proves the address, so every connection of the
// tenant gets through while the flood goes on, and the flood leaves
// nothing in conntrack.
func TestForgedSYNsCostTheTenantNothing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		family string
		limit  func(*policy.Enforcement)
	}{
		{"rate v6", "v6", func(e *policy.Enforcement) { e.NewConnRate = policy.Rate{PerSecond: 5, Burst: 10} }},
		{"cap v6", "v6", func(e *policy.Enforcement) { e.MaxConnsPerSource = 20 }},
		{"rate v4", "v4", func(e *policy.Enforcement) { e.NewConnRate = policy.Rate{PerSecond: 5, Burst: 10} }},
		{"cap v4", "v4", func(e *policy.Enforcement) { e.MaxConnsPerSource = 20 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := netns.New(t, "cloud")
			gns := netns.New(t, "gate")
			v := netns.Connect(t, client, []string{admittedV4 + "/24", admittedV6 + "/64"}, gns, []string{gateV4 + "/24", gateV6 + "/64"})
			// The tenant sits behind a stateful firewall, as most do: a
			// SYN-ACK it did not ask for is dropped, not reset, so the
			// gate's half-open entry for a forged SYN is not cleared.
			nft := netns.RequireTool(t, "nft", "nftables")
			client.Exec(t, nft, "add table inet tenant_fw")
			client.Exec(t, nft, "add chain inet tenant_fw input { type filter hook input priority 0; policy accept; }")
			client.Exec(t, nft, "add rule inet tenant_fw input ct state invalid drop")
			tp := &topo{gate: newGateIn(t, gns, Config{}), client: client}
			tp.serve(t, listenPort)
			p := testPolicy(policy.ModeListeners)
			p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
			tc.limit(&p.Enforcement)
			if err := tp.e.Apply(p); err != nil {
				t.Fatal(err)
			}
			tenant, gate := admittedV4, gateV4
			var forged []netip.Addr
			if tc.family == "v6" {
				tenant, gate = admittedV6, gateV6
				for i := range 150 { // unused admitted addresses of the tenant's /64
					forged = append(forged, netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", 0x40+i)))
				}
			} else {
				for range 150 { // the tenant's own address, from 150 ports
					forged = append(forged, netip.MustParseAddr(admittedV4))
				}
			}
			stop := make(chan struct{})
			// Up to 60 s at 50 a second: far longer than the tenant needs.
			sent := forgeSYNs(t, client, v.A, gns.HardwareAddr(t, v.B), forged, 20*time.Millisecond, 3000, stop)
			// The tenant connects while the flood goes on, a little
			// slower than its rate allows.
			time.Sleep(500 * time.Millisecond) // a head start for the flood, not synchronisation
			ok := 0
			for range 10 {
				if patientEcho(tp.client, tenant, gate, listenPort) == nil {
					ok++
				}
				time.Sleep(250 * time.Millisecond)
			}
			close(stop)
			n := <-sent
			c := tp.counters(t)
			if ok != 10 {
				t.Errorf("%d of 10 tenant connections got through %d forged SYNs; counters %v", ok, n, c)
			}
			// Not one of them was held back by the limits either (a
			// retransmission could hide that).
			if c[ruleRateLimited]+c[ruleConnLimited] != 0 {
				t.Errorf("the limits dropped SYNs during a forged flood: %v", c)
			}
			if n < 50 {
				t.Errorf("only %d forged SYNs sent", n)
			}
			// No forged source holds a conntrack entry.
			if tc.family == "v6" { // (the tenant's own IPv4 connections are there)
				for _, line := range strings.Split(tp.ns.Exec(t, "cat", "/proc/net/nf_conntrack"), "\n") {
					for _, f := range forged {
						if strings.Contains(line, "src="+expandV6(f)) {
							t.Errorf("a forged SYN left a conntrack entry: %s", line)
						}
					}
				}
			}
			if c := tp.counters(t); c[ruleSynProxy] < uint64(n) {
				t.Errorf("syn_proxy counted %d packets for %d forged SYNs", c[ruleSynProxy], n)
			}
		})
	}
}

// patientEcho connects and sends a line through, allowing a loaded machine
// seconds for it (a retransmitted SYN included): the limits' drops are
// counted apart, so slowness is not taken for a refusal.
func patientEcho(ns *netns.NS, src, dst string, port int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(4 * time.Second))
	msg := []byte("gatehouse")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, len(msg)))
	return err
}

// expandV6 writes an address as /proc/net/nf_conntrack does.
func expandV6(a netip.Addr) string {
	b := a.As16()
	var parts []string
	for i := 0; i < 16; i += 2 {
		parts = append(parts, fmt.Sprintf("%02x%02x", b[i], b[i+1]))
	}
	return strings.Join(parts, ":")
}

// TestLoopbackReachesListeners: the appliance's own connections to its
// listeners (a local health check, over loopback or to its own address)
// are neither dropped as not admitted nor sent through synproxy.
func TestLoopbackReachesListeners(t *testing.T) {
	tp := newTopo(t, Config{})
	p := testPolicy(policy.ModeStrict)
	p.Enforcement.NewConnRate = policy.Rate{PerSecond: 1, Burst: 1}
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{"127.0.0.1", "::1", gateV4, gateV6} {
		for range 3 { // more than the rate allows a source
			c, err := dialEcho(tp.ns, "", dst, listenPort)
			if err != nil {
				t.Errorf("local connection to %s: %v", dst, err)
				break
			}
			c.Close()
		}
	}
	if c := tp.counters(t); c[ruleNotAdmitted]+c[ruleSynProxy]+c[ruleRateLimited] != 0 {
		t.Errorf("local connections were policed: %v", c)
	}
}
