package test

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// pinnedLinkID asks bpftool for the ID of the XDP link pinned at path.
func pinnedLinkID(t *testing.T, bpftool, path string) int {
	t.Helper()
	out, err := exec.Command(bpftool, "-j", "link", "show", "pinned", path).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool link show pinned %s: %v\n%s", path, err, out)
	}
	var l struct {
		ID int `json:"id"`
	}
	if err := json.Unmarshal(out, &l); err != nil || l.ID == 0 {
		t.Fatalf("bpftool link show: %v: %s", err, out)
	}
	return l.ID
}

// TestXDPDetachedIsReattached: the running daemon notices its XDP filter
// detached behind its back (bpftool link detach) or unpinned (the link pin
// removed), puts it back, logs it and counts it in
// gatehouse_xdp_reattach_total; `ip link set dev … xdp off` cannot remove
// it. When it cannot be put back (the interface is gone), /readyz says so.
func TestXDPDetachedIsReattached(t *testing.T) {
	tp := newTopology(t)
	bpftool := netns.RequireTool(t, "bpftool", "bpftool")
	mode := "native"
	if tp.metric(t, `gatehouse_xdp_attach_mode\{mode="generic"\}`) == 1 {
		mode = "generic"
	}
	pin := filepath.Join(tp.pinDir, tp.outside.B, "link_"+mode)
	attached := func() bool {
		return strings.Contains(tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B), "xdp")
	}
	repairs := func() float64 { return tp.metric(t, `gatehouse_xdp_reattach_total\{result="ok"\}`) }
	// reattached waits for one more repair than base, and the filter on.
	reattached := func(base float64) func() bool {
		return func() bool { return repairs() > base && attached() }
	}
	if v := repairs(); v != 0 {
		t.Errorf("gatehouse_xdp_reattach_total{result=ok} = %v at start, want 0 (the series exists from the start)", v)
	}

	// Each case counts from what it finds: they do not depend on each
	// other's counts.
	t.Run("bpftool link detach", func(t *testing.T) {
		base := repairs()
		id := pinnedLinkID(t, bpftool, pin)
		if out, err := exec.Command(bpftool, "link", "detach", "id", strconv.Itoa(id)).CombinedOutput(); err != nil {
			t.Fatalf("bpftool link detach: %v\n%s", err, out)
		}
		tp.d.waitFor(t, "the filter attached again", reattached(base))
		if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
			t.Errorf("intruder after the re-attach: %s, want dropped", got)
		}
		if got := tp.probe(t, cloudAddr, gateV4); got != "connected" {
			t.Errorf("admitted source after the re-attach: %s", got)
		}
		if pinnedLinkID(t, bpftool, pin) == id {
			t.Errorf("the pin still names the detached link %d", id)
		}
		if !strings.Contains(tp.d.out.String(), "detached or unpinned behind the daemon's back") {
			t.Errorf("the log does not say the filter was found detached:\n%s", tp.d.out.String())
		}
	})

	t.Run("ip link set xdp off", func(t *testing.T) {
		// The kernel refuses to remove a filter attached through a link;
		// should it not, the daemon puts it back.
		out, err := tp.dmz.Command("ip", "link", "set", "dev", tp.outside.B, "xdp", "off").CombinedOutput()
		t.Logf("ip link set xdp off: %v %s", err, out)
		tp.d.waitFor(t, "the filter in place", attached)
		if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
			t.Errorf("intruder after ip link set xdp off: %s, want dropped", got)
		}
	})

	t.Run("link pin removed", func(t *testing.T) {
		base := repairs()
		if err := os.Remove(pin); err != nil {
			t.Fatal(err)
		}
		tp.d.waitFor(t, "the link pinned again", func() bool { _, err := os.Stat(pin); return err == nil })
		tp.d.waitFor(t, "the re-pin counted", func() bool { return repairs() > base })
	})

	// The repaired filter outlives the daemon, and a new one adopts it.
	tp.d.kill()
	if !attached() {
		t.Fatal("XDP detached when the daemon was killed: the repairs left it unpinned")
	}
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder with the daemon killed: %s, want dropped", got)
	}
	tp.start(t)
	if !strings.Contains(tp.d.out.String(), "adopting pinned maps") {
		t.Errorf("the restarted daemon did not adopt the re-pinned maps:\n%s", tp.d.out.String())
	}

	t.Run("interface gone and created again", func(t *testing.T) {
		if code, _ := tp.d.get(t, "/readyz"); code != http.StatusOK {
			t.Fatalf("not ready before the interface is removed: %d", code)
		}
		base := repairs()
		tp.dmz.Exec(t, "ip", "link", "del", tp.outside.B)
		tp.d.waitFor(t, "/readyz to say the filter could not be put back", func() bool {
			code, body := tp.d.get(t, "/readyz")
			return code == http.StatusServiceUnavailable && strings.Contains(body, "xdp: the XDP filter was detached and could not be put back")
		})
		if v := tp.metric(t, `gatehouse_xdp_reattach_total\{result="error"\}`); v < 1 {
			t.Errorf("gatehouse_xdp_reattach_total{result=error} = %v, want ≥ 1", v)
		}
		// A VLAN or bond rebuilt, a NIC re-probed: the same name, another
		// index. The filter goes onto the new interface.
		tp.dmz.Exec(t, "ip", "link", "add", tp.outside.B, "type", "veth", "peer", "name", tp.outside.A, "netns", tp.cloud.Path())
		tp.dmz.Exec(t, "ip", "link", "set", tp.outside.B, "up")
		tp.d.waitFor(t, "the filter on the re-created interface", reattached(base))
		tp.d.waitFor(t, "/readyz", func() bool { code, _ := tp.d.get(t, "/readyz"); return code == http.StatusOK })
		if n := strings.Count(tp.d.out.String(), `msg="XDP layer not ready"`); n != 1 {
			t.Errorf("%d log lines saying the XDP layer is not ready while the interface was gone, want the reason once", n)
		}
	})
}

// TestTeardownAgainstRunningDaemon: `gatehouse teardown` refuses while a
// daemon answers on the admin socket, saying so, and removes nothing; with
// --force it tears down, and the running daemon puts both filters back
// (XDP at once, counted; the table by drift repair) and is ready again.
func TestTeardownAgainstRunningDaemon(t *testing.T) {
	tp := newTopology(t)
	out, err := tp.dmz.Command(binary(t), "teardown", "--yes", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "answers on") || !strings.Contains(string(out), "stop it first") {
		t.Errorf("teardown against a running daemon: %v, want a refusal naming the daemon:\n%s", err, out)
	}
	if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); !strings.Contains(link, "xdp") {
		t.Errorf("a refused teardown detached XDP:\n%s", link)
	}
	tp.dmz.Exec(t, "nft", "list", "table", "inet", "gatehouse")
	if code, _ := tp.d.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after a refused teardown: %d", code)
	}

	// The configuration's admin_socket no longer says where the daemon
	// answers (moved, or turned off, since it started): the daemon is
	// still seen, as the process holding the pinned XDP filter.
	good, err := os.ReadFile(tp.config)
	if err != nil {
		t.Fatal(err)
	}
	for _, socket := range []string{filepath.Join(tp.dir, "moved.sock"), `""`} {
		edited := strings.Replace(string(good), "admin_socket: "+tp.dir+"/admin.sock", "admin_socket: "+socket, 1)
		if err := os.WriteFile(tp.config, []byte(edited), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := tp.dmz.Command(binary(t), "teardown", "--yes", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "holding the XDP filter") || !strings.Contains(string(out), "Nothing removed") {
			t.Errorf("teardown with admin_socket %s in the configuration: %v, want a refusal naming the daemon:\n%s", socket, err, out)
		}
	}
	if err := os.WriteFile(tp.config, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if link := tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B); !strings.Contains(link, "xdp") {
		t.Fatalf("a refused teardown detached XDP:\n%s", link)
	}

	out, err = tp.dmz.Command(binary(t), "teardown", "--yes", "--force", "--pin-dir", tp.pinDir, "-c", tp.config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "will put the filters back") || !strings.Contains(string(out), "puts them back") {
		t.Fatalf("teardown --force: %v\n%s", err, out)
	}
	// At least one repair: a watch tick in the middle of the teardown
	// attaches the filter again before the pins are gone, and the next
	// one pins it again.
	tp.d.waitFor(t, "the XDP filter attached again", func() bool {
		return tp.metric(t, `gatehouse_xdp_reattach_total\{result="ok"\}`) >= 1 &&
			strings.Contains(tp.dmz.Exec(t, "ip", "link", "show", tp.outside.B), "xdp")
	})
	if got := tp.probe(t, intruderAddr, gateV4Alt); got != "dropped" {
		t.Errorf("intruder after teardown --force: %s, want dropped (XDP back)", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(tp.pinDir, tp.outside.B)); len(entries) < 6 {
		t.Errorf("pins after the repair: %v, want the link, the maps and the generation", entries)
	}
	tp.d.waitFor(t, "the nftables table rebuilt", func() bool {
		return tp.dmz.Command("nft", "list", "table", "inet", "gatehouse").Run() == nil
	})
	if code, body := tp.d.get(t, "/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after the filters came back: %d %s", code, body)
	}
}
