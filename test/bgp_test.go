package test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBGPAnnouncesWhileReady runs three gatehouse nodes peering with a real
// BIRD 2 router that installs their service address as one ECMP route: a
// node announces only while ready (never before, not while a feed has no
// release), withdraws when it turns not ready, on SIGTERM withdraws first
// and serves on for withdraw_wait, and a killed node's route goes with its
// session. The times are logged for the README.
func TestBGPAnnouncesWhileReady(t *testing.T) {
	bt := newBGPTopology(t, 3)
	n1, n2, n3 := bt.nodes[0], bt.nodes[1], bt.nodes[2]
	mirror := newFeedMirror(t, t.TempDir())
	noRelease := fmt.Sprintf(`feeds:
  - {name: lab, source: "file://%s/manifest.json", format: cidr, minisign_keys: ["%s"], threshold: 1, refresh: 1h}`,
		mirror.dir, mirror.pub.String())

	// n3 starts not ready: a feed without a release.
	n3.writeConfig(t, bt.nodeConfig(n3, noRelease))
	n1.start(t, true)
	n2.start(t, true)
	n3.start(t, false)
	bt.waitHops(t, "two ready nodes", 20*time.Second, n1, n2)
	bt.waitEstablished(t, n3)
	if code, body := n3.d.get(t, "/readyz"); code != 503 {
		t.Fatalf("n3 /readyz = %d %s, want 503", code, body)
	}
	// Its session is up and it has announced nothing.
	if out, _ := bt.birdcCmd("show", "protocols", "all", n3.name); !strings.Contains(out, "0 imported") {
		t.Errorf("n3 not ready but BIRD imported a route from it:\n%s", out)
	}
	bt.wantMetrics(t, n3, 1, 0)
	bt.wantStatus(t, n3, "withdrawn "+bgpVIP+"/32")
	if _, kernel := bt.nextHops(t); len(kernel) != 2 {
		t.Fatalf("router kernel route has %v, want the two ready nodes", kernel)
	}

	// n3 turns ready (a reload drops the feed): announced.
	n3.writeConfig(t, bt.nodeConfig(n3, ""))
	at := time.Now()
	n3.signal(t, syscall.SIGHUP)
	announce := bt.waitHops(t, "n3 ready", 10*time.Second, n1, n2, n3).Sub(at)
	bt.wantMetrics(t, n3, 1, 1)
	bt.wantStatus(t, n3, "announced "+bgpVIP+"/32")
	if out, _ := bt.birdcCmd("show", "route", "for", bgpVIP+"/32", "all"); !strings.Contains(out, "(64512,100)") {
		t.Errorf("community %s not on the route:\n%s", bgpCommunity, out)
	}

	// The client's flows spread over the nodes by ECMP.
	seen := map[string]int{}
	for range 30 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		node, err := bt.get(ctx, bgpVIP)
		cancel()
		if err != nil {
			t.Fatalf("request to the service address: %v", err)
		}
		seen[node]++
	}
	if len(seen) < 2 {
		t.Errorf("30 connections reached %v: ECMP did not spread them", seen)
	}

	// n2 turns not ready: a reload adds a feed without a release.
	n2.writeConfig(t, bt.nodeConfig(n2, noRelease))
	at = time.Now()
	n2.signal(t, syscall.SIGHUP)
	notReady := bt.waitHops(t, "n2 not ready", 10*time.Second, n1, n3).Sub(at)
	bt.wantMetrics(t, n2, 1, 0)
	n2.writeConfig(t, bt.nodeConfig(n2, ""))
	n2.signal(t, syscall.SIGHUP)
	bt.waitHops(t, "n2 ready again", 10*time.Second, n1, n2, n3)

	// SIGTERM to n1: withdrawn first, while it still serves.
	at = time.Now()
	n1.signal(t, syscall.SIGTERM)
	term := bt.waitHops(t, "n1 stopping", 10*time.Second, n2, n3).Sub(at)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	node, err := bt.get(ctx, n1.addr)
	cancel()
	if err != nil || node != n1.name {
		t.Errorf("n1 withdrawn but no longer serving during withdraw_wait: %q, %v", node, err)
	}
	// Not ready from the signal on, so a VRRP peer tracking /readyz (or
	// `gatehouse status --ready`) takes the VIP while n1 still serves.
	if code, body := n1.d.get(t, "/readyz"); code != 503 || !strings.Contains(body, "stopping") {
		t.Errorf("n1 /readyz during withdraw_wait = %d %q, want 503 stopping", code, body)
	}
	select {
	case <-n1.d.exited:
		t.Fatal("n1 exited before withdraw_wait was over")
	default:
	}
	select {
	case <-n1.d.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("n1 did not stop after SIGTERM:\n%s", n1.d.out.String())
	}
	if out := n1.d.out.String(); !strings.Contains(out, "withdrawn") || strings.Index(out, "withdrawn") > strings.Index(out, "draining sessions") {
		t.Errorf("n1 did not withdraw before draining:\n%s", out)
	}

	// kill -9 of n3: its session ends with the process, and its route.
	at = time.Now()
	n3.d.kill()
	killed := bt.waitHops(t, "n3 killed", 10*time.Second, n2).Sub(at)

	t.Logf("announce after ready: %v; withdrawn after not ready: %v, after SIGTERM: %v, after kill -9: %v; flows over nodes: %v",
		announce.Round(time.Millisecond), notReady.Round(time.Millisecond), term.Round(time.Millisecond), killed.Round(time.Millisecond), seen)
}

func (bt *bgpTopology) waitEstablished(t *testing.T, n *bgpNode) {
	t.Helper()
	bt.waitRoute(t, n.name+" session established", 20*time.Second, func(string, error) bool {
		out, err := bt.birdcCmd("show", "protocols", n.name)
		return err == nil && strings.Contains(out, "Established")
	})
}

// wantMetrics checks the node's gatehouse_bgp_session_up and
// gatehouse_bgp_announced series.
func (bt *bgpTopology) wantMetrics(t *testing.T, n *bgpNode, up, announced int) {
	t.Helper()
	_, body := n.d.get(t, "/metrics")
	for _, want := range []string{
		fmt.Sprintf(`gatehouse_bgp_session_up{neighbor=%q} %d`, bgpRouter, up),
		fmt.Sprintf(`gatehouse_bgp_announced{prefix=%q} %d`, bgpVIP+"/32", announced),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("%s metrics lack %s", n.name, want)
		}
	}
}

// wantStatus checks `gatehouse status` on the node names the session and
// has the line given (its words, whatever the column spacing).
func (bt *bgpTopology) wantStatus(t *testing.T, n *bgpNode, line string) {
	t.Helper()
	out, err := n.ns.Command(binary(t), "status", "-c", n.config).CombinedOutput()
	if err != nil {
		t.Fatalf("%s status: %v\n%s", n.name, err, out)
	}
	s := string(out)
	if !strings.Contains(s, "BGP (AS 64513)") || !strings.Contains(s, bgpRouter+" (AS 64512)") || !strings.Contains(s, "up (established)") {
		t.Errorf("%s status lacks the BGP session:\n%s", n.name, s)
	}
	found := false
	for l := range strings.Lines(s) {
		found = found || strings.Join(strings.Fields(l), " ") == line
	}
	if !found {
		t.Errorf("%s status lacks %q:\n%s", n.name, line, s)
	}
}
