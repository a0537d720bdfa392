package test

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// floodSYNs has the attacker send SYNs to the gate's listener with the
// sources srcs in turn, one every gap, through the router, until stop is
// closed or max are sent: the flood ends by itself. It returns how many
// were sent.
func (sn *scanNet) floodSYNs(t *testing.T, srcs []netip.Addr, gap time.Duration, max int, stop <-chan struct{}) <-chan int {
	t.Helper()
	var frames [][]byte
	for i, src := range srcs {
		dst := netip.MustParseAddr(scanGate4)
		if src.Is6() {
			dst = netip.MustParseAddr(scanGate6)
		}
		f, err := netns.Packet{Src: src, Dst: dst, Proto: 6, SrcPort: uint16(30000 + i), DstPort: 443,
			TCPFlags: 0x02, ID: uint32(i + 1)}.Frames(sn.routerMAC)
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
			if sn.attacker.Send(sn.attackerDev, [][]byte{frames[n%len(frames)]}) == nil {
				n++
			}
		}
		sent <- n
	}()
	return sent
}

// TestForgedSYNFloodCostsTenantsNothing: the review's attack on the
// per-source limits, end to end. From a namespace of its own the attacker
// forges SYNs to the listener, from unused addresses of the tenant's
// admitted IPv6 /64 and from the tenant's own IPv4 address, at 100 a
// second, past XDP (the sources are admitted) into nftables. Before
// synproxy each forged SYN took a token of the tenant's rate bucket and a
// slot of its connection cap for a minute or two, and the tenant's new
// connections failed. With synproxy a forged SYN only gets a SYN cookie
// sent to the address it names: the tenant's new mutual-TLS sessions all
// succeed during the flood, and the flood leaves nothing in conntrack. A
// real flood of completed connections from the tenant's address is still
// rate limited, and capped.
func TestForgedSYNFloodCostsTenantsNothing(t *testing.T) {
	sn := newScanNet(t, "listeners", "new_conn_rate: {per_source: 5/s, burst: 10}", "max_conns_per_source: 20")
	var forged []netip.Addr
	for i := range 200 {
		forged = append(forged, netip.MustParseAddr(fmt.Sprintf("2001:db8:b::1:%x", i))) // unused, in the tenant's /64
	}
	forged = append(forged, netip.MustParseAddr(scanTenant4)) // the tenant's own address
	stop := make(chan struct{})
	// At most 60 s at 100 a second: far longer than the tenant needs.
	sent := sn.floodSYNs(t, forged, 10*time.Millisecond, 6000, stop)
	sn.d.waitFor(t, "the flood passing XDP", func() bool {
		return sn.metric(t, `gatehouse_xdp_packets_total\{action="pass",reason="admitted"\}`) >= 50
	})
	// The tenant opens sessions during the flood, from both families, a
	// little slower than its rate allows.
	failed := 0
	for i := range 12 {
		src := scanTenant4
		if i%2 == 1 {
			src = scanTenant6
		}
		s, err := sn.openSession(src)
		if err == nil {
			err = s.request()
			s.c.Close()
		}
		if err != nil {
			failed++
			t.Errorf("the tenant's session %d from %s during the flood: %v", i, src, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	close(stop)
	n := <-sent
	t.Logf("%d forged SYNs; syn_proxy %v, rate_limited %v, conn_limited %v", n,
		sn.metric(t, `gatehouse_nft_packets_total\{rule="syn_proxy"\}`),
		sn.metric(t, `gatehouse_nft_packets_total\{rule="rate_limited"\}`),
		sn.metric(t, `gatehouse_nft_packets_total\{rule="conn_limited"\}`))
	if v := sn.metric(t, `gatehouse_xdp_packets_total\{action="pass",reason="admitted"\}`); v < float64(n)/2 {
		t.Errorf("XDP admitted %v packets for %d forged SYNs: the flood did not pass XDP", v, n)
	}
	for _, line := range strings.Split(sn.dmz.Exec(t, "cat", "/proc/net/nf_conntrack"), "\n") {
		if strings.Contains(line, "src=2001:0db8:000b:0000:0000:0000:0001:") {
			t.Errorf("a forged SYN left a conntrack entry: %s", line)
			break
		}
	}

	// A real flood of completed connections from the tenant's address: 30
	// at once, each given 1.5 s. The rate lets through at most its burst
	// and what it refills meanwhile.
	var ok atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for range 30 {
		wg.Go(func() {
			if sn.handshake(scanTenant4, 1500*time.Millisecond) == nil {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	maxOK := 10 + int(time.Since(start).Seconds()*5) + 1
	if got := int(ok.Load()); got < 10 || got > maxOK {
		t.Errorf("%d of 30 simultaneous connections of one source got through, want 10..%d (burst 10, 5/s)", got, maxOK)
	}
	if sn.metric(t, `gatehouse_nft_packets_total\{rule="rate_limited"\}`) <= 0 {
		t.Error("rate_limited did not count the flood of real connections")
	}
	// And the cap: 20 sessions held, the next one refused.
	var held []*tls.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for len(held) < 20 {
		time.Sleep(200 * time.Millisecond) // within the rate, not synchronisation
		// Generous: a session the rate or the cap refused never
		// completes (synproxy's SYN to the listener is dropped), however
		// long it is given; a loaded machine only makes one slow.
		c, err := sn.dialTLS(scanTenant6, 10*time.Second)
		if err != nil {
			t.Fatalf("session %d of 20 under the cap: %v", len(held)+1, err)
		}
		held = append(held, c)
	}
	time.Sleep(time.Second) // a token for the next one
	if c, err := sn.dialTLS(scanTenant6, 1500*time.Millisecond); err == nil {
		c.Close()
		t.Error("a 21st session got past a cap of 20")
	}
	if sn.metric(t, `gatehouse_nft_packets_total\{rule="conn_limited"\}`) <= 0 {
		t.Error("conn_limited did not count the refused session")
	}
}

// dialTLS opens a mutual-TLS session of the tenant from src within d.
func (sn *scanNet) dialTLS(src string, d time.Duration) (*tls.Conn, error) {
	raw, err := dialGate(sn.tenant, src, 443)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, &tls.Config{RootCAs: sn.serverCA.Pool(), ServerName: "gate.example", Certificates: []tls.Certificate{sn.client.TLS}})
	c.SetDeadline(time.Now().Add(d))
	if err := c.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// handshake opens and closes one mutual-TLS session from src within d.
func (sn *scanNet) handshake(src string, d time.Duration) error {
	c, err := sn.dialTLS(src, d)
	if err != nil {
		return err
	}
	return c.Close()
}
