package xdp

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestManagementBound: the config check and the program agree on how many
// management pairs a generation holds.
func TestManagementBound(t *testing.T) {
	if bpf.MaxManagement != policy.MaxManagementPairs {
		t.Fatalf("the program holds %d management pairs, policy.MaxManagementPairs says %d", bpf.MaxManagement, policy.MaxManagementPairs)
	}
}

// TestProgramScanBlock: the program's own scan detection blocks a scanner
// with real TCP in both modes, also in strict mode where its SYNs to
// closed ports never reach nftables; Run reports each block once through
// OnBlock and the gauge, and a block pushed in with Block is not handed
// back.
func TestProgramScanBlock(t *testing.T) {
	for _, mode := range []policy.Mode{policy.ModeListeners, policy.ModeStrict} {
		t.Run(string(mode), func(t *testing.T) { testProgramScanBlock(t, mode) })
	}
}

func testProgramScanBlock(t *testing.T, mode policy.Mode) {
	const ports = 5
	tp := newTopo(t)
	var mu sync.Mutex
	reported := map[netip.Addr]time.Duration{}
	var e *Enforcer
	if err := tp.gate.Do(func() (err error) {
		e, err = New(Config{Interface: tp.iface, Mode: policy.XDPAuto, PinDir: tp.pinDir,
			OnBlock: func(a netip.Addr, d time.Duration) error {
				mu.Lock()
				defer mu.Unlock()
				reported[a] = d
				return nil
			}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Teardown(tp.pinDir, tp.iface); e.Close() })
	p := testPolicy(mode)
	p.Enforcement.ScanBlock = policy.ScanBlock{DistinctPorts: ports, Window: time.Minute, BlockFor: time.Hour}
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	// A pushed-in block is not reported back.
	if err := e.Block(netip.MustParseAddr("2001:db8:9::1"), time.Hour); err != nil {
		t.Fatal(err)
	}
	// The scanner (not admitted) tries ports-1 closed ports, all at once.
	scan := func(from, to int) {
		var wg sync.WaitGroup
		for port := from; port < to; port++ {
			wg.Go(func() {
				// Refused (listeners mode) or unanswered (strict): only
				// the SYN matters.
				ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
				defer cancel()
				c, err := tp.cloud.DialContext(ctx, "tcp", net.JoinHostPort(cloudOut4, "0"), net.JoinHostPort(gate4, strconv.Itoa(port)))
				if err == nil {
					c.Close()
				}
			})
		}
		wg.Wait()
	}
	scan(1001, 1001+ports-1)
	if err := e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if len(reported) != 0 {
		t.Fatalf("blocked below the threshold: %v", reported)
	}
	if c := counter(t, e, "drop", "scan_detected"); c != 0 {
		t.Fatalf("scan_detected %d below the threshold", c)
	}
	scan(1001+ports-1, 1001+ports)
	if c := counter(t, e, "drop", "scan_detected"); c != 1 {
		t.Errorf("scan_detected counted %d, want 1", c)
	}
	if err := e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	d, ok := reported[netip.MustParseAddr(cloudOut4)]
	n := len(reported)
	mu.Unlock()
	if !ok || n != 1 || d < 59*time.Minute || d > time.Hour {
		t.Fatalf("OnBlock got %v, want only %s for about an hour", reported, cloudOut4)
	}
	if got := gather(t, e)["gatehouse_xdp_blocked_sources"]; got != 2 {
		t.Errorf("gatehouse_xdp_blocked_sources = %v, want 2 (the scanner and the pushed-in /64)", got)
	}
	// Blocked now: in listeners mode it loses the open port, which another
	// source still reaches; in both modes the port scan goes on unanswered.
	before := counter(t, e, "drop", "blocked")
	probes := []probe{{cloudOut4, open, false}, {cloudIn4, open, mode == policy.ModeListeners}, {cloudIn4, protected, true}}
	tp.expect(t, "after the scan", probes)
	if counter(t, e, "drop", "blocked") == before {
		t.Error("the scanner's next SYN was not dropped as blocked")
	}
	// A second poll reports nothing new.
	if err := e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	if len(reported) != 1 {
		t.Errorf("reported again: %v", reported)
	}
	// Run polls by itself and stops with its context.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
