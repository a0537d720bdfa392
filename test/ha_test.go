package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// haLoad is the traffic during the failovers: a new tenant request to the
// VIP every 100 ms, each on its own connection and goroutine (a request
// stuck on a SYN sent to a node that lost the VIP does not hold up the
// next), and an intruder probing the VIP and both nodes' own addresses.
type haLoad struct {
	ht        *haTopology
	mu        sync.Mutex
	requests  []haRequest
	probes    int
	intrusion []string
	stop      chan struct{}
	wg        sync.WaitGroup
}

type haRequest struct {
	began, ended time.Time
	node         string // who served it; "" when it failed
	err          error
}

func (ht *haTopology) startLoad(t *testing.T) *haLoad {
	l := &haLoad{ht: ht, stop: make(chan struct{})}
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				r := haRequest{began: time.Now()}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				r.node, r.err = ht.get(ctx)
				cancel()
				r.ended = time.Now()
				l.mu.Lock()
				l.requests = append(l.requests, r)
				l.mu.Unlock()
			}()
		}
	}()
	go func() {
		defer l.wg.Done()
		targets := []string{haVIP, ht.nodes[0].wanV4, ht.nodes[1].wanV4, ht.nodes[0].intrV4, ht.nodes[1].intrV4}
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			// One probe every 20 ms, each in its own goroutine: a dropped
			// SYN waits out its 300 ms, so at most 15 are under way.
			dst := targets[i%len(targets)]
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				got, err := probeFrom(ht, dst)
				l.mu.Lock()
				l.probes++
				if err != nil || got != "dropped" {
					l.intrusion = append(l.intrusion, fmt.Sprintf("%s → %s: %s %v", time.Now().Format("15:04:05.000"), dst, got, err))
				}
				l.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(l.halt)
	return l
}

// probeFrom opens a TCP connection from the intruder to dst:443: a
// SYN-ACK or a reset means a packet got through both kernel layers.
func probeFrom(ht *haTopology, dst string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := ht.intruder.DialContext(ctx, "tcp", "", net.JoinHostPort(dst, "443"))
	var ne net.Error
	switch {
	case err == nil:
		c.Close()
		return "connected", nil
	case ctx.Err() != nil, errors.As(err, &ne) && ne.Timeout():
		return "dropped", nil
	case strings.Contains(err.Error(), syscall.ECONNREFUSED.Error()), strings.Contains(err.Error(), syscall.ECONNRESET.Error()):
		return "refused", nil
	case strings.Contains(err.Error(), syscall.EHOSTUNREACH.Error()):
		// No neighbour answered ARP (the VIP between two nodes): nothing
		// was sent to a node.
		return "dropped", nil
	}
	return "", err
}

func (l *haLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// failover is one measured move of the VIP: it waits until to has served
// 10 requests begun after the failure, then says how long the first took
// and how many requests begun in between failed.
type failover struct {
	what          string
	firstOK       time.Duration // failure → the first request served by the new node ended
	failed, total int
}

func (l *haLoad) await(t *testing.T, what string, at time.Time, to *haNode) failover {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l.mu.Lock()
		f := failover{what: what, firstOK: -1}
		served := 0
		var firstEnd time.Time
		for _, r := range l.requests {
			if r.began.Before(at) {
				continue
			}
			if r.node == to.name {
				served++
				if firstEnd.IsZero() || r.ended.Before(firstEnd) {
					firstEnd = r.ended
				}
			}
		}
		if served >= 10 {
			f.firstOK = firstEnd.Sub(at)
			// The move: requests begun from the failure until the new node
			// served its first.
			for _, r := range l.requests {
				if !r.began.Before(at) && r.began.Before(firstEnd) {
					f.total++
					if r.node == "" {
						f.failed++
					}
				}
			}
			// Once the new node serves, every later request must work.
			for _, r := range l.requests {
				if r.began.After(firstEnd.Add(time.Second)) && r.node != to.name {
					t.Errorf("%s: a request begun %s after the failure was not served by node %s: node %q, %v",
						what, r.began.Sub(at).Round(time.Millisecond), to.name, r.node, r.err)
				}
			}
			l.mu.Unlock()
			return f
		}
		l.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("%s: node %s served %d requests within 30s of the failure", what, to.name, served)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHAKeepalivedFailover runs two gatehouse nodes with keepalived on
// one segment, a tenant and an intruder. The VIP moves three times: on
// kill -9 of gatehouse on the master, on the master turning not ready (a
// reload adds a feed whose mirror has no release), and on the master's
// WAN link going down. Tenant requests keep working on the new node, and
// not one intruder packet reaches either node at any time.
func TestHAKeepalivedFailover(t *testing.T) {
	ht := newHATopology(t)
	a, b := ht.nodes[0], ht.nodes[1]
	load := ht.startLoad(t)
	results := []failover{}

	// Settle: a serves with b standing by.
	results = append(results, load.await(t, "warm-up", time.Now(), a))
	results = results[:0]
	if b.holdsVIP(t) {
		t.Fatal("both nodes hold the VIP")
	}

	// 1. kill -9 of gatehouse on a: its track_script fails, b takes over.
	at := time.Now()
	a.d.kill()
	results = append(results, load.await(t, "kill -9 of gatehouse", at, b))
	if a.holdsVIP(t) {
		t.Error("node a kept the VIP without gatehouse")
	}
	// a comes back (adopting its pinned filter) and stands by: nopreempt.
	a.start(t)

	// 2. b turns not ready: a reload adds a feed with no release.
	raw, err := os.ReadFile(b.config)
	if err != nil {
		t.Fatal(err)
	}
	mirror := newFeedMirror(t, t.TempDir())
	broken := strings.Replace(string(raw), "static_ranges: [192.0.2.0/25]", fmt.Sprintf(`static_ranges: [192.0.2.0/25]
feeds:
  - {name: lab, source: "file://%s/manifest.json", format: cidr, minisign_keys: ["%s"], threshold: 1, refresh: 1h}`,
		mirror.dir, mirror.pub.String()), 1)
	b.writeConfig(t, broken)
	// a must be ready again (two good checks) before b gives up the VIP.
	a.d.waitFor(t, "node a ready", func() bool { code, _ := a.d.get(t, "/readyz"); return code == 200 })
	waitReadyCheck(t, a)
	at = time.Now()
	if err := b.d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	results = append(results, load.await(t, "not ready (feed without release)", at, a))
	if code, _ := b.d.get(t, "/readyz"); code != 503 {
		t.Errorf("node b after the reload: /readyz %d, want 503", code)
	}
	b.writeConfig(t, string(raw))
	if err := b.d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	b.d.waitFor(t, "node b ready again", func() bool { code, _ := b.d.get(t, "/readyz"); return code == 200 })
	waitReadyCheck(t, b)

	// 3. a's WAN link goes down (the switch port): b takes over once a's
	// adverts stop.
	at = time.Now()
	ht.bridge.Exec(t, "ip", "link", "set", a.port, "down")
	results = append(results, load.await(t, "link down", at, b))

	load.halt()
	load.mu.Lock()
	defer load.mu.Unlock()
	if len(load.intrusion) > 0 {
		t.Errorf("intruder packets got through: %v", load.intrusion)
	}
	for _, f := range results {
		t.Logf("%-34s first request served by the new node after %5s; %d of %d requests begun in between failed",
			f.what+":", f.firstOK.Round(10*time.Millisecond), f.failed, f.total)
	}
	t.Logf("%d tenant requests, %d intruder probes (VIP and both nodes), %d through", len(load.requests), load.probes, len(load.intrusion))
}

// waitReadyCheck waits until the node's keepalived has left FAULT: its
// track_script succeeded again, so it may take the VIP.
func waitReadyCheck(t *testing.T, n *haNode) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(lastState(n), "BACKUP") && !strings.Contains(lastState(n), "MASTER") {
		if time.Now().After(deadline) {
			t.Fatalf("node %s: keepalived not back in BACKUP or MASTER:\n%s", n.name, n.keepalived.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lastState is the last "Entering … STATE" line of the node's keepalived.
func lastState(n *haNode) string {
	lines := strings.Split(n.keepalived.out.String(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "Entering") {
			return lines[i]
		}
	}
	return ""
}
