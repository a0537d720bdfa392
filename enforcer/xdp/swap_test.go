package xdp

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestApplyUnderFlood injects SYNs on the wire while Apply alternates two
// generations (different ranges and modes): a source admitted by both must
// pass every time, a source admitted by neither must be dropped every time,
// and the counters must account for exactly the frames sent.
func TestApplyUnderFlood(t *testing.T) {
	tp := newTopo(t)
	e := tp.newEnforcer(t)
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	genA := testPolicy(policy.ModeListeners)
	genA.Admitted.V4 = []netip.Prefix{netip.MustParsePrefix("198.51.100.8/29"), netip.MustParsePrefix("203.0.113.0/24")}
	genB := testPolicy(policy.ModeStrict)
	genB.Generation = 2
	genB.Admitted.V4 = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/28")}
	if err := e.Apply(genA); err != nil {
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
	both := taggedSYN(gateMAC, nil, netip.MustParseAddr(cloudIn4), netip.MustParseAddr(gate4), protected)
	neither := taggedSYN(gateMAC, nil, netip.MustParseAddr(cloudOut4), netip.MustParseAddr(gate4), protected)
	admitted0, dropped0 := counter(t, e, "pass", "admitted"), counter(t, e, "drop", "not_admitted")

	const swaps, perRound = 10, 10
	var wg sync.WaitGroup
	var done atomic.Bool
	applyErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer done.Store(true)
		for i := range swaps {
			p := genA
			if i%2 == 0 {
				p = genB
			}
			if err := e.Apply(p); err != nil {
				applyErr <- err
				return
			}
		}
	}()
	start := time.Now()
	rounds := 0
	err := tp.cloud.Do(func() error {
		// Send until the swaps are over, and at least 50 rounds.
		for ; rounds < 50 || !done.Load(); rounds++ {
			if err := sendRaw(tp.peer, both, perRound); err != nil {
				return err
			}
			if err := sendRaw(tp.peer, neither, perRound); err != nil {
				return err
			}
		}
		return nil
	})
	sent := time.Since(start)
	wg.Wait()
	t.Logf("%d frames sent in %v during %d swaps", 2*rounds*perRound, sent, swaps)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-applyErr:
		t.Fatal(err)
	default:
	}
	want := uint64(rounds) * perRound
	deadline := time.Now().Add(3 * time.Second)
	var admitted, dropped uint64
	for {
		admitted = counter(t, e, "pass", "admitted") - admitted0
		dropped = counter(t, e, "drop", "not_admitted") - dropped0
		if admitted+dropped >= 2*want || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if admitted != want || dropped != want {
		t.Errorf("during %d swaps: %d admitted and %d dropped, want %d each", swaps, admitted, dropped, want)
	}
}
