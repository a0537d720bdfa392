package test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// probePort is probe to another port than 443.
func (tp *topology) probePort(t *testing.T, src, dst, port string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := tp.cloud.DialContext(ctx, "tcp", net.JoinHostPort(src, "0"), net.JoinHostPort(dst, port))
	var ne net.Error
	switch {
	case err == nil:
		c.Close()
		return "connected"
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return "dropped"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	}
	t.Fatalf("probe %s → %s:%s: %v", src, dst, port, err)
	return ""
}

// heldTopology runs the topology on a signed feed alone, then restarts the
// daemon with the feed's state lost and its mirror unreachable: both kernel
// layers keep the previous run's admitted ranges.
func heldTopology(t *testing.T) (*topology, *feedMirror) {
	t.Helper()
	tp := newTopology(t)
	tp.stopAndTeardown(t)
	mirror := newFeedMirror(t, filepath.Join(tp.dir, "mirror"))
	mirror.publish(t, 1, "192.0.2.0/25\n2001:db8:1::/112\n")
	tp.feedOnly(t, mirror)
	tp.start(t)
	lkg := filepath.Join(tp.dir, "state", "feeds", "lab.lkg.json")
	tp.d.waitFor(t, "the feed release persisted", func() bool { _, err := os.Stat(lkg); return err == nil })
	tp.d.kill()
	if err := os.RemoveAll(filepath.Join(tp.dir, "state")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(mirror.dir, mirror.dir+".unreachable"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Rename(mirror.dir+".unreachable", mirror.dir) })
	tp.startUnready(t)
	tp.d.waitFor(t, "the hold", func() bool {
		code, body := tp.d.get(t, "/readyz")
		return code == 503 && strings.Contains(body, "keep the previous run's admitted ranges")
	})
	return tp, mirror
}

// TestHoldReloadAddsListener: while the kernel layers keep the previous
// run's ranges (a feed's state lost, its mirror unreachable), SIGHUP adds
// a listener on :8443. The proxies open it, and the kernel layers police it
// at once with the ranges they hold: the intruder is dropped on the new
// port, the admitted cloud address connects.
func TestHoldReloadAddsListener(t *testing.T) {
	tp, _ := heldTopology(t)
	if got := tp.probePort(t, intruderAddr, gateV4Alt, "443"); got != "dropped" {
		t.Fatalf("intruder → :443 while held: %s", got)
	}
	b, err := os.ReadFile(tp.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	i := strings.Index(cfg, "  - name: web\n")
	web2 := strings.Replace(strings.Replace(cfg[i:], "name: web\n", "name: web2\n", 1), `listen: ":443"`, `listen: ":8443"`, 1)
	if err := os.WriteFile(tp.config, []byte(cfg+web2), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tp.d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	tp.d.waitFor(t, "the reload", func() bool {
		return strings.Contains(tp.d.out.String(), "configuration reloaded") || strings.Contains(tp.d.out.String(), "reload refused")
	})
	if !strings.Contains(tp.d.out.String(), "configuration reloaded") {
		t.Fatalf("reload adding a listener while held was refused:\n%s", tp.d.out.String())
	}
	if got := tp.probePort(t, intruderAddr, gateV4Alt, "8443"); got != "dropped" {
		t.Errorf("intruder → the new listener :8443 while held: %s, want dropped", got)
	}
	if got := tp.probePort(t, cloudAddr, gateV4, "8443"); got != "connected" {
		t.Errorf("admitted source → the new listener :8443 while held: %s, want connected", got)
	}
	set := tp.dmz.Exec(t, "nft", "list", "set", "inet", "gatehouse", "listener_ports")
	if !strings.Contains(set, "8443") {
		t.Errorf("nftables does not police :8443:\n%s", set)
	}
}

// TestHoldRepairsTable: while held, the nftables table is deleted behind
// the daemon's back (nft flush ruleset) and, later, everything is torn
// down with teardown --force. The daemon rebuilds the table with the
// ranges it holds (and puts the XDP filter back): the held layer is
// repaired like any other, status keeps saying what is held, and the
// admitted source still connects while the intruder is dropped.
func TestHoldRepairsTable(t *testing.T) {
	tp, _ := heldTopology(t)
	held := func() bool {
		if err := tp.dmz.Command("nft", "list", "set", "inet", "gatehouse", "admitted_v4").Run(); err != nil {
			return false
		}
		return strings.Contains(tp.dmz.Exec(t, "nft", "list", "set", "inet", "gatehouse", "admitted_v4"), "192.0.2.0/25")
	}
	waitLong := func(what string, ok func() bool) {
		t.Helper()
		// The table is checked every reconcile interval (10 s).
		deadline := time.Now().Add(40 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s:\n%s", what, tp.d.out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	tp.dmz.Exec(t, "nft", "flush", "ruleset")
	waitLong("the table rebuilt with the held ranges", held)

	out, err := tp.dmz.Command(binary(t), "teardown", "--yes", "--force", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput()
	if err != nil {
		t.Fatalf("teardown --force: %v\n%s", err, out)
	}
	waitLong("the table rebuilt after teardown --force", held)
	tp.d.waitFor(t, "the XDP filter back", func() bool {
		return strings.Contains(tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B), "xdp")
	})
	if got := tp.probe(t, cloudAddr, gateV4); got != "connected" {
		t.Errorf("admitted source after the repairs: %s", got)
	}
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder after the repairs: %s, want dropped", got)
	}
	status, _ := tp.dmz.Command(binary(t), "status", "-c", tp.config).CombinedOutput()
	if !strings.Contains(string(status), "keep the previous run's admitted ranges") {
		t.Errorf("status after the repairs:\n%s", status)
	}
}
