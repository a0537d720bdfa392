package nft

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// fillBlocked puts n sources into the blocked set of a family by hand, as
// forged scans would, n/1000 elements a command (at most 512 for IPv4).
func fillBlocked(t *testing.T, g *gate, v6 bool, n int) {
	t.Helper()
	var b strings.Builder
	for i := range n {
		if i%1000 == 0 {
			if i > 0 {
				b.WriteString(" }\n")
			}
			fmt.Fprintf(&b, "add element inet %s %s { ", TableName, setName(setBlocked, v6))
		} else {
			b.WriteString(", ")
		}
		if v6 {
			fmt.Fprintf(&b, "2001:db8:%x:%x::", 0x1000+i/65536, i%65536)
		} else {
			fmt.Fprintf(&b, "%s.%d", [...]string{"203.0.113", "198.51.100"}[i/256], i%256)
		}
	}
	b.WriteString(" }\n")
	f := filepath.Join(t.TempDir(), "fill.nft")
	if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	g.ns.Exec(t, "nft", "-f", f)
}

// TestFullBlocklist: forged scans can fill a blocked set (65535 sources
// cost an attacker 65535 × distinct_ports forged SYNs per block_for). A
// real scanner that comes then cannot be blocked, but every SYN of its
// scan past the threshold is still dropped (rule blocklist_full), not
// let through; the fill shows in gatehouse_nft_blocklist_fill_ratio, and
// Block (the XDP layer's mirror) says policy.ErrBlocklistFull, as the
// kernel's answer and, once a poll counted the set, at once without asking
// the kernel, so the mirror can stop trying.
func TestFullBlocklist(t *testing.T) {
	tp := newTopo(t, Config{})
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.SourcePrefix = policy.SourcePrefix{V4: 32, V6: 64}
	p.Enforcement.ScanBlock = policy.ScanBlock{DistinctPorts: 5, Window: time.Minute, BlockFor: 10 * time.Minute}
	if err := tp.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	fillBlocked(t, tp.gate, true, dynamicSetSize)
	// The kernel says so (ENFILE) before a poll has counted the set.
	if err := tp.e.Block(netip.MustParseAddr("2001:db8:fffe::1"), time.Minute); !errors.Is(err, policy.ErrBlocklistFull) {
		t.Errorf("Block into the full set before a poll: %v, want ErrBlocklistFull", err)
	}
	if err := tp.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tp.e)
	if got := gathered(t, reg, "gatehouse_nft_blocklist_fill_ratio", "ipv6"); got != 1 {
		t.Errorf("fill ratio of blocked_v6 %v, want 1", got)
	}
	if got := gathered(t, reg, "gatehouse_nft_blocklist_fill_ratio", "ipv4"); got != 0 {
		t.Errorf("fill ratio of blocked_v4 %v, want 0", got)
	}
	err := tp.e.Block(netip.MustParseAddr("2001:db8:ffff::1"), time.Minute)
	if !errors.Is(err, policy.ErrBlocklistFull) {
		t.Errorf("Block into the full set: %v, want ErrBlocklistFull", err)
	}
	if err := tp.e.Block(netip.MustParseAddr(scannerV4), time.Minute); err != nil {
		t.Errorf("Block into the other family's set: %v", err)
	}

	// A real scanner (admitted, in a /64 of its own) scans closed ports.
	var mu sync.Mutex
	refused, dropped := 0, 0
	var wg sync.WaitGroup
	for port := 3000; port < 3010; port++ {
		wg.Go(func() {
			c, err := tp.dial(admittedV6, gateV6, port)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				c.Close()
			case errors.Is(err, syscall.ECONNREFUSED):
				refused++ // let through and answered with a reset
			default:
				dropped++
			}
		})
	}
	wg.Wait()
	c := tp.counters(t)
	if dropped < 5 || refused > 4 || c[ruleFull] < 5 {
		t.Errorf("scan of 10 closed ports past a threshold of 5 into a full set: %d refused, %d dropped, counters %v; want at most 4 refused, the rest dropped as blocklist_full",
			refused, dropped, c)
	}
	if c[ruleScan] != 0 {
		t.Errorf("scan_detected %d: a full set blocked someone", c[ruleScan])
	}
}

// TestBlockLogSummary: a poll that finds many new blocks says so in one
// warning (naming a few), with a line per source at debug only: forged
// scans block at the attacker's rate, and the log must not follow. A
// restarted daemon adopting the table reports none of its blocks as new,
// and hands each to the XDP layer once more (the XDP layer may have lost
// them).
func TestBlockLogSummary(t *testing.T) {
	logs := &testkit.LogBuffer{}
	var mu sync.Mutex
	pushed := map[netip.Addr]int{}
	cfg := Config{
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnBlock: func(a netip.Addr, d time.Duration) error {
			mu.Lock()
			defer mu.Unlock()
			pushed[a]++
			return nil
		},
	}
	g := newGate(t, cfg)
	p := testPolicy(policy.ModeListeners)
	p.Enforcement.ScanBlock = policy.ScanBlock{DistinctPorts: 5, Window: time.Minute, BlockFor: 10 * time.Minute}
	if err := g.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	const n = 300
	fillBlocked(t, g, false, n)
	if err := g.e.PollBlocked(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if w := strings.Count(out, "level=WARN"); w != 1 || !strings.Contains(out, `msg="scanners blocked"`) || !strings.Contains(out, "count=300") {
		t.Errorf("%d warnings for %d new blocks, want one summary:\n%s", w, n, out)
	}
	if d := strings.Count(out, `msg="scanner blocked"`); d != n {
		t.Errorf("%d debug lines, want one per source (%d)", d, n)
	}
	if len(pushed) != n {
		t.Errorf("%d sources handed to the XDP layer, want %d", len(pushed), n)
	}

	// The restart: a new Enforcer adopts the table.
	logs2 := &testkit.LogBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs2, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.NetNS = g.fd
	e2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2.Close() })
	if err := e2.Apply(p); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := e2.PollBlocked(); err != nil {
			t.Fatal(err)
		}
	}
	out = logs2.String()
	if strings.Contains(out, "scanners blocked") || strings.Contains(out, "scanner blocked") {
		t.Errorf("the restarted daemon reported adopted blocks as new:\n%s", out)
	}
	if !strings.Contains(out, "sources still blocked from before the restart") {
		t.Errorf("no line about the adopted blocks:\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	for a, k := range pushed {
		if k != 2 {
			t.Errorf("%s handed to the XDP layer %d times over a restart and two polls, want twice in all", a, k)
			break
		}
	}
}
