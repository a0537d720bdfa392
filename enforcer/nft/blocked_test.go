package nft

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"github.com/google/nftables/expr"
)

// TestScanBlock: a scanner is blocked after distinct_ports closed ports and
// loses every port but the listeners, which it keeps because it is admitted:
// a scan is easily forged in a tenant's name, so the block must not cut the
// tenant off. Its flows established before the block live on, a management
// source is never blocked however much it scans, and the block expires.
func TestScanBlock(t *testing.T) {
	for _, mode := range []policy.Mode{policy.ModeListeners, policy.ModeStrict} {
		t.Run(string(mode), func(t *testing.T) { testScanBlock(t, mode) })
	}
}

func testScanBlock(t *testing.T, mode policy.Mode) {
	const ports = 5
	blockFor := 6 * time.Second
	var mu sync.Mutex
	pushed := map[netip.Addr]time.Duration{}
	tp := newTopo(t, Config{OnBlock: func(a netip.Addr, d time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		pushed[a] = d
		return nil
	}})
	p := testPolicy(mode)
	// A minute's window: the bucket refills at one port per 12 s, so the
	// dial timeouts of dropped SYNs do not give tokens back in time.
	p.Enforcement.ScanBlock = policy.ScanBlock{DistinctPorts: ports, Window: time.Minute, BlockFor: blockFor}
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	scanner := netip.MustParseAddr(scannerV4)
	// touch tries the ports at once: a dropped SYN costs a dial timeout,
	// and one at a time would let the bucket refill.
	touch := func(src string, ports ...int) {
		var wg sync.WaitGroup
		for _, port := range ports {
			wg.Go(func() { tp.reach(src, gateV4, port) })
		}
		wg.Wait()
	}
	// In listeners mode the scanner holds a flow to an open service port,
	// which counts as one of its distinct ports (in strict mode only the
	// listener is open to it).
	heldPort, below := otherPort, ports-2
	if mode == policy.ModeStrict {
		heldPort, below = listenPort, ports-1
	}
	held, err := tp.dial(scannerV4, gateV4, heldPort)
	if err != nil {
		t.Fatalf("scanner's flow before the scan: %v", err)
	}
	defer held.Close()
	// One port short of the threshold, and the same ports again: no block.
	var first []int
	for port := 1001; port < 1001+below; port++ {
		first = append(first, port)
	}
	touch(scannerV4, first...)
	touch(scannerV4, first...)
	// The management source scans twice as many ports: never blocked.
	var many []int
	for port := 2001; port < 2001+2*ports; port++ {
		many = append(many, port)
	}
	touch(outsideV4, many...)
	if err := tp.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if len(pushed) != 0 {
		t.Fatalf("blocked after %d distinct ports (or a management source): %v", ports-1, pushed)
	}
	touch(scannerV4, 1001+ports)
	if err := tp.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	d, ok := pushed[scanner]
	n := len(pushed)
	mu.Unlock()
	if !ok || n != 1 || d <= 0 || d > blockFor {
		t.Fatalf("OnBlock got %v, want only %s for up to %s", pushed, scanner, blockFor)
	}
	if out := tp.ns.Exec(t, "nft", "list", "set", "inet", TableName, "blocked_v4"); !strings.Contains(out, scannerV4) || strings.Contains(out, outsideV4) {
		t.Errorf("blocked_v4 should hold the scanner and not the management source:\n%s", out)
	}
	// The live flow first: a dropped segment would be retransmitted and
	// get through once the block expires.
	if err := echoes(held); err != nil {
		t.Errorf("the scanner's flow established before the block was cut: %v", err)
	}
	if !tp.reach(scannerV4, gateV4, listenPort) {
		t.Error("the blocked scanner, an admitted source, lost its listener port")
	}
	if mode == policy.ModeListeners && tp.reach(scannerV4, gateV4, otherPort) {
		t.Error("the blocked scanner reached another open port")
	}
	if !tp.reach(admittedV4, gateV4, otherPort) && mode == policy.ModeListeners {
		t.Error("another source was blocked with the scanner")
	}
	if !tp.reach(outsideV4, gateV4, mgmtPort) {
		t.Error("the management source lost its management port")
	}
	c := tp.counters(t)
	if c[ruleScan] != 1 || (mode == policy.ModeListeners && c[ruleBlocked] == 0) {
		t.Errorf("counters %v: want scan_detected 1 and (listeners) blocked > 0", c)
	}
	// The block expires after block_for.
	expired := eventually(blockFor+3*time.Second, func() bool {
		if err := tp.e.PollBlocked(); err != nil {
			t.Fatal(err)
		}
		return !strings.Contains(tp.ns.Exec(t, "nft", "list", "set", "inet", TableName, "blocked_v4"), scannerV4)
	})
	if !expired {
		t.Fatal("scanner still blocked long after block_for")
	}
	if mode == policy.ModeListeners && !tp.reach(scannerV4, gateV4, otherPort) {
		t.Error("scanner cannot reach the open port after the block expired")
	}
}

// echoes writes to a connection of serveOn and reads the echo back.
func echoes(c net.Conn) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("still here")); err != nil {
		return err
	}
	buf := make([]byte, 10)
	_, err := io.ReadFull(c, buf)
	return err
}

// TestBlockAPI: Block (the XDP layer's scanners) keys the source as the
// scan rule does, takes every source it is handed as the XDP program does
// (a management source keeps its management port by rule order, in both
// layers, and loses the rest), and is not handed back through OnBlock.
func TestBlockAPI(t *testing.T) {
	var pushed atomic.Int32
	tp := newTopo(t, Config{OnBlock: func(netip.Addr, time.Duration) error { pushed.Add(1); return nil }})
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
	if err := tp.e.Block(netip.MustParseAddr(admittedV4), time.Minute); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("Block before a policy: %v, want ErrNoPolicy", err)
	}
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{scannerV4, "2001:db8::77", outsideV4, outsideV6} {
		if err := tp.e.Block(netip.MustParseAddr(a), time.Minute); err != nil {
			t.Fatalf("Block(%s): %v", a, err)
		}
	}
	if err := tp.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if n := pushed.Load(); n != 0 {
		t.Errorf("OnBlock called %d times for sources that came through Block", n)
	}
	v4 := tp.ns.Exec(t, "nft", "list", "set", "inet", TableName, "blocked_v4")
	v6 := tp.ns.Exec(t, "nft", "list", "set", "inet", TableName, "blocked_v6")
	if !strings.Contains(v4, scannerV4) || !strings.Contains(v4, outsideV4) {
		t.Errorf("blocked_v4: want the scanner and the management source, as the XDP layer blocked them:\n%s", v4)
	}
	if !strings.Contains(v6, "2001:db8:: ") || strings.Contains(v6, "2001:db8::77") {
		t.Errorf("blocked_v6: want the /64 2001:db8::, keyed without its host bits:\n%s", v6)
	}
	if !tp.reach(outsideV4, gateV4, mgmtPort) {
		t.Error("the blocked management source lost its management port")
	}
	if tp.reach(outsideV4, gateV4, otherPort) {
		t.Error("the blocked management source reached another port")
	}
	// The /64 is blocked (outsideV6 is management there and keeps its
	// port), and so is every other address in it.
	if tp.reach(admittedV6, gateV6, otherPort) {
		t.Error("an address of the blocked /64 reached an open port")
	}
	if !tp.reach(outsideV6, gateV6, mgmtPort) {
		t.Error("the management source lost its port to the block of its /64")
	}
	if !tp.reach(admittedV6, gateV6, listenPort) {
		t.Error("an admitted address of the blocked /64 lost the listener")
	}
	// A coarser source prefix carries a block over to the whole new
	// source: per address first, then per /64.
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 128}
	tp.ns.Exec(t, "nft", "flush", "set", "inet", TableName, "blocked_v6")
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if err := tp.e.Block(netip.MustParseAddr("2001:db8::77"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if !tp.reach(admittedV6, gateV6, otherPort) {
		t.Error("per address, a block of ::77 took ::10 too")
	}
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if set := tp.ns.Exec(t, "nft", "list", "set", "inet", TableName, "blocked_v6"); !strings.Contains(set, "2001:db8:: ") {
		t.Errorf("the block of 2001:db8::77 was not carried over as its /64:\n%s", set)
	}
}

// TestSourcePrefixLimits: the rate and the connection cap count one IPv6
// /64 as one source, however many of its addresses it sends from, and
// another /64 keeps budgets of its own.
func TestSourcePrefixLimits(t *testing.T) {
	client := netns.New(t, "cloud")
	gns := netns.New(t, "gate")
	var one []string // addresses of 2001:db8:0:1::/64
	for i := 1; i <= 8; i++ {
		one = append(one, fmt.Sprintf("2001:db8:0:1::a%d", i))
	}
	const other = "2001:db8:0:2::b1"
	var addrs []string
	for _, a := range append(slices.Clone(one), other) {
		addrs = append(addrs, a+"/48")
	}
	netns.Connect(t, client, addrs, gns, []string{"2001:db8::1/48"})
	tp := &topo{gate: newGateIn(t, gns, Config{}), client: client}
	tp.serve(t, listenPort)
	p := testPolicy(policy.ModeListeners)
	p.Admitted.V6 = prefixes("2001:db8::/48")
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
	tp.serve(t, otherPort)

	t.Run("rate", func(t *testing.T) {
		const rate, burst = 1, 3
		p.Enforcement.NewConnRate = policy.Rate{PerSecond: rate, Burst: burst}
		if err := tp.e.Apply(p); err != nil {
			t.Fatal(err)
		}
		checkBucket(t, "addresses of one /64 (one bucket)", rate, burst, func() (int, int, time.Duration) {
			return tp.reachAtOnce(one, gateV6)
		})
		if !tp.reach(other, gateV6, listenPort) {
			t.Error("another /64 was limited by the first one's bucket")
		}
	})

	t.Run("scan", func(t *testing.T) {
		const ports = 4
		p.Enforcement.NewConnRate = policy.Rate{}
		p.Enforcement.ScanBlock = policy.ScanBlock{DistinctPorts: ports, Window: time.Minute, BlockFor: time.Minute}
		if err := tp.e.Apply(p); err != nil {
			t.Fatal(err)
		}
		// One closed port from each of four addresses of one /64: one
		// source scanning four ports.
		for i, a := range one[:ports] {
			tp.reach(a, gateV6, 3000+i)
		}
		if set := tp.ns.Exec(t, "nft", "list", "set", "inet", TableName, "blocked_v6"); !strings.Contains(set, "2001:db8:0:1:: ") {
			t.Errorf("four ports from four addresses of one /64 did not block the /64:\n%s", set)
		}
		if tp.reach(one[ports], gateV6, otherPort) {
			t.Error("another address of the blocked /64 reached an open port")
		}
		if !tp.reach(other, gateV6, otherPort) {
			t.Error("another /64 was blocked with the scanning one")
		}
		p.Enforcement.ScanBlock = policy.ScanBlock{}
	})

	t.Run("connection cap", func(t *testing.T) {
		const limit = 3
		p.Enforcement.NewConnRate = policy.Rate{}
		p.Enforcement.MaxConnsPerSource = limit
		if err := tp.e.Apply(p); err != nil {
			t.Fatal(err)
		}
		for i := range limit {
			c, err := tp.dialUnderCap(one[i], gateV6)
			if err != nil {
				t.Fatalf("connection %d of %d: %v", i+1, limit, err)
			}
			defer c.Close()
		}
		for _, a := range one[limit:] {
			if tp.reach(a, gateV6, listenPort) {
				t.Errorf("%s got past a cap of %d held by other addresses of its /64", a, limit)
			}
		}
		if !tp.reach(other, gateV6, listenPort) {
			t.Error("another /64 was capped by the first one's connections")
		}
		if c := tp.counters(t); c[ruleConnLimited] == 0 {
			t.Errorf("conn_limited counter is 0: %v", c)
		}
	})
}

// TestScanRefill: the scan rule's limit refills exactly at the gap the XDP
// program uses (the policy's), and that gap is distinct_ports per window,
// exact where a whole rate per second, minute, hour, day or week gives it
// (nft's limit knows no other units), else rounded to half a token a week.
func TestScanRefill(t *testing.T) {
	for _, tc := range []struct {
		n      int
		window time.Duration
	}{
		{10, 10 * time.Second}, {5, 10 * time.Second}, {100, 10 * time.Second},
		{10, time.Hour}, {10, 7 * time.Second}, {7, time.Minute}, {3, 11 * time.Second},
		{65535, time.Second}, {2, 240 * time.Hour},
	} {
		p := goldenPolicy()
		p.Enforcement.ScanBlock = policy.ScanBlock{DistinctPorts: tc.n, Window: tc.window, BlockFor: time.Minute}
		var lim *expr.Limit
		for _, r := range mustSpec(t, p).build().rules {
			for _, e := range r.Exprs {
				if d, ok := e.(*expr.Dynset); ok && strings.HasPrefix(d.SetName, setScanCount) {
					lim = d.Exprs[0].(*expr.Limit)
				}
			}
		}
		if lim == nil || lim.Rate == 0 {
			t.Fatalf("%d ports in %s: no scan limit", tc.n, tc.window)
		}
		// The kernel's cost of one packet: the unit in ns over the rate.
		cost := time.Duration(uint64(lim.Unit) * uint64(time.Second) / lim.Rate)
		want := float64(tc.window) / float64(tc.n)
		// The kernel divides in whole nanoseconds.
		tolerance := 1.0
		if lim.Unit == expr.LimitTimeWeek {
			tolerance += want * 0.5 / float64(lim.Rate)
		}
		if d := math.Abs(float64(cost) - want); d > tolerance || lim.Burst != uint32(tc.n-1) {
			t.Errorf("%d ports in %s: %d per %d s (one per %s), burst %d: want one per %s, burst %d",
				tc.n, tc.window, lim.Rate, lim.Unit, cost, lim.Burst, time.Duration(want), tc.n-1)
		}
		f, err := p.Filter()
		if err != nil {
			t.Fatal(err)
		}
		if f.Refill.Gap() != cost {
			t.Errorf("%d ports in %s: nftables refills every %s, the XDP program every %s", tc.n, tc.window, cost, f.Refill.Gap())
		}
	}
}

// TestBlockFromPeer: a fleet peer's block goes into the same set, is
// handed to the XDP layer by the next poll, and is not listed by
// LocalBlocks, so that blocks never loop between nodes; a local block a
// peer extends stays local, and its longer time reaches the XDP layer.
func TestBlockFromPeer(t *testing.T) {
	var pushed []netip.Addr
	var mu sync.Mutex
	tp := newTopo(t, Config{OnBlock: func(a netip.Addr, _ time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		pushed = append(pushed, a)
		return nil
	}})
	if err := tp.e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	local, peer := netip.MustParseAddr(scannerV4), netip.MustParseAddr(admittedV4)
	if err := tp.e.Block(local, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := tp.e.BlockFromPeer(peer, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := tp.e.BlockFromPeer(local, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := tp.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	// The peer's block, and the local one its peer extended: the XDP
	// layer takes the longer time too.
	if !slices.Contains(pushed, peer) || !slices.Contains(pushed, local) || len(pushed) != 2 {
		t.Errorf("handed to the XDP layer: %v, want %s and %s", pushed, peer, local)
	}
	mu.Unlock()
	lb := tp.e.LocalBlocks()
	if len(lb) != 1 || lb[0].Source.Addr() != local {
		t.Errorf("LocalBlocks: %v, want only %s: a peer's block must not be served again", lb, local)
	}
	if set := tp.ns.Exec(t, "nft", "list", "set", "inet", TableName, "blocked_v4"); !strings.Contains(set, admittedV4) {
		t.Errorf("the peer's block is not in blocked_v4:\n%s", set)
	}
}
