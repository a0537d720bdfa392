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
	srcs := make([]string, attempts)
	for i := range srcs {
		srcs[i] = admittedV4
	}
	checkBucket(t, "connections of one source", rate, burst, func() (int, int, time.Duration) {
		return tp.reachAtOnce(srcs, gateV4)
	})
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
		c, err := tp.dialUnderCap(admittedV4, gateV4)
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

// reachAtOnce connects from every source of srcs (a source may repeat) to
// dst's listener port at once, and says how many got through, of how many,
// in what time.
func (tp *topo) reachAtOnce(srcs []string, dst string) (ok, of int, took time.Duration) {
	var n atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for _, a := range srcs {
		wg.Go(func() {
			if tp.reach(a, dst, listenPort) {
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return int(n.Load()), len(srcs), time.Since(start)
}

// checkBucket checks that a round of connections made at once gets through
// a per-source token bucket as it should: at least burst, at most burst
// plus what the bucket refilled during the round. More fails at once: the
// limiter let too many through. Fewer can happen on a loaded machine (an
// admitted connection misses dialEcho's bound, kept under the 1 s SYN
// retransmission so that a limited SYN cannot come back and pass), so the
// round is made again, up to three times, once the bucket has refilled.
func checkBucket(t *testing.T, what string, rate, burst int, round func() (ok, of int, took time.Duration)) {
	t.Helper()
	for try := 1; ; try++ {
		got, of, took := round()
		maxOK := burst + int(took.Seconds()*float64(rate)) + 1
		if got > maxOK {
			t.Fatalf("%d of %d %s got through in %s, want at most %d (burst %d, %d/s)", got, of, what, took, maxOK, burst, rate)
		}
		if got >= burst {
			return
		}
		if try == 3 {
			t.Fatalf("%d of %d %s got through in %s, want at least the burst %d, in 3 rounds", got, of, what, took, burst)
		}
		t.Logf("round %d: %d of %d %s got through, fewer than the burst %d: again once the bucket refilled", try, got, of, what, burst)
		time.Sleep(time.Duration(burst/rate+1) * time.Second)
	}
}

// dialUnderCap opens a connection that a per-source cap must let through,
// trying three times: connections an earlier step closed may still be
// counted (ct count forgets a flow only once it reaches TIME_WAIT), and a
// loaded machine can miss dialEcho's bound. A cap that refuses it refuses
// all three.
func (tp *topo) dialUnderCap(src, dst string) (net.Conn, error) {
	var err error
	for try := 0; try < 3; try++ {
		var c net.Conn
		if c, err = tp.dial(src, dst, listenPort); err == nil {
			return c, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return nil, err
}
