package nft

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestRateLimit(t *testing.T) {
	const rate, burst, attempts = 5, 5, 20
	tp := newTopo(t, Config{})
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.NewConnRate = policy.Rate{PerSecond: rate, Burst: burst}
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	// All attempts at once: the bucket holds burst, refills at rate.
	var ok atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if tp.reach(admittedV4, gateV4, listenPort) {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	maxOK := burst + int(elapsed.Seconds()*rate) + 1
	if got := int(ok.Load()); got < burst || got > maxOK {
		t.Errorf("%d of %d connections got through in %s, want %d..%d (burst %d, %d/s)",
			got, attempts, elapsed, burst, maxOK, burst, rate)
	}
	if c := tp.counters(t); c[ruleRateLimited] == 0 {
		t.Errorf("rate_limited counter is 0: %v", c)
	}
	// Another source has its own bucket.
	if !tp.reach(admittedV6, gateV6, listenPort) {
		t.Error("an IPv6 source was limited by the IPv4 source's bucket")
	}
}

func TestConnCap(t *testing.T) {
	const limit = 3
	tp := newTopo(t, Config{})
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.MaxConnsPerSource = limit
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	for i := range limit {
		c, err := tp.dial(admittedV4, gateV4, listenPort)
		if err != nil {
			t.Fatalf("connection %d of %d: %v", i+1, limit, err)
		}
		held = append(held, c)
	}
	if tp.reach(admittedV4, gateV4, listenPort) {
		t.Errorf("connection %d got through a cap of %d", limit+1, limit)
	}
	if c := tp.counters(t); c[ruleConnLimited] == 0 {
		t.Errorf("conn_limited counter is 0: %v", c)
	}
	held[0].Close()
	// Once both ends closed, the connection leaves the count.
	if !eventually(3*time.Second, func() bool { return tp.reach(admittedV4, gateV4, listenPort) }) {
		t.Error("no new connection after one of the capped ones closed")
	}
	for _, c := range held[1:] {
		c.Close()
	}
}
