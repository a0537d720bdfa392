package test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// startFeedDaemon runs the real binary (XDP and nftables off) with one
// signed feed "lab" on a file:// mirror, refreshed only every hour, and
// waits until it is ready (the feed fetched at start).
func startFeedDaemon(t *testing.T, mirror *feedMirror) (*daemonProc, string) {
	t.Helper()
	ca := certstest.NewCA(t, "acme")
	server := ca.Server(t, "localhost")
	dir := t.TempDir()
	metrics := testkit.FreeLoopbackAddr(t)
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s/state
admin_socket: %[1]s/admin.sock
shutdown_grace: 1s
metrics: {listen: "%[2]s"}
feeds:
  - {name: lab, source: "file://%[3]s/manifest.json", format: cidr, minisign_keys: ["%[4]s"], threshold: 1, refresh: 1h}
rules: {reserved_exempt: [192.0.2.0/24, 198.51.100.0/24, "2001:db8::/32"]}
tenants: [{id: acme, client_ca: %[5]s}]
listeners:
  - {name: web, listen: "%[6]s", protocol: https, server_cert: %[7]s, server_key: %[8]s,
     routes: [{tenant: acme, backend: "http://127.0.0.1:1"}]}
`, dir, metrics, mirror.dir, mirror.pub.String(), ca.CertFile, testkit.FreeLoopbackAddr(t), server.CertFile, server.KeyFile)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return launch(t, exec.Command(binary(t), "run", "-c", path), metrics, http.DefaultClient), path
}

// refresh runs `gatehouse feed refresh args…` and returns its output and
// exit code. The daemon fetches a feed on request at most every few
// seconds and answers the last outcome in between: such an answer is
// asked again until the feed is fetched anew.
func refresh(t *testing.T, config string, args ...string) (string, int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code := refreshOnce(t, config, args...)
		if !strings.Contains(out, "[outcome of a refresh") || time.Now().After(deadline) {
			return out, code
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func refreshOnce(t *testing.T, config string, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(binary(t), append([]string{"feed", "refresh", "-c", config}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("feed refresh: %v\n%s", err, out)
	return "", -1
}

// TestFeedRefreshNow: `gatehouse feed refresh` makes the running daemon
// fetch at once instead of at its next refresh (an hour away), waits, and
// prints per feed what came of it: applied with the serial, unchanged,
// refused with the reason, quarantined; the exit status is 0 only when
// every feed is applied or unchanged.
func TestFeedRefreshNow(t *testing.T) {
	mirror := newFeedMirror(t, t.TempDir())
	mirror.publish(t, 1, "192.0.2.0/24\n198.51.100.0/25\n2001:db8:1::/48\n")
	d, config := startFeedDaemon(t, mirror)
	if _, m := d.get(t, "/metrics"); !strings.Contains(m, `gatehouse_feed_serial{feed="lab"} 1`) {
		t.Fatalf("release 1 not in force at start:\n%s", d.out.String())
	}

	// An urgent change: serial 2 adds a range.
	mirror.publish(t, 2, "192.0.2.0/24\n198.51.100.0/25\n198.51.100.128/26\n2001:db8:1::/48\n")
	out, code := refresh(t, config, "lab")
	if code != 0 || !regexpMatch(`(?m)^lab\s+applied serial 2 \(4 prefixes\)$`, out) {
		t.Errorf("refresh of a new release: exit %d\n%s", code, out)
	}
	if _, m := d.get(t, "/metrics"); !strings.Contains(m, `gatehouse_feed_serial{feed="lab"} 2`) {
		t.Errorf("release 2 not in force after the refresh")
	}

	// All feeds (none named), nothing new.
	if out, code := refresh(t, config); code != 0 || !regexpMatch(`(?m)^lab\s+unchanged \(serial 2 in force\)$`, out) {
		t.Errorf("refresh of an unchanged feed: exit %d\n%s", code, out)
	}

	// A release whose signature does not match.
	mirror.publish(t, 3, "192.0.2.0/24\n198.51.100.0/24\n")
	raw, _ := os.ReadFile(filepath.Join(mirror.dir, "manifest.json"))
	os.WriteFile(filepath.Join(mirror.dir, "manifest.json"), []byte(strings.Replace(string(raw), `"serial": 3`, `"serial": 4`, 1)), 0o644)
	if out, code := refresh(t, config, "lab"); code != 1 || !strings.Contains(out, "lab") || !strings.Contains(out, "refused: bad_signature") {
		t.Errorf("refresh of a badly signed release: exit %d, want 1\n%s", code, out)
	}

	// A release that loses most of the covered space is held.
	mirror.publish(t, 5, "192.0.2.0/28\n")
	if out, code := refresh(t, config, "lab"); code != 1 || !strings.Contains(out, "quarantined: serial 5 held") || !strings.Contains(out, "gatehouse feed accept lab") {
		t.Errorf("refresh of a shrinking release: exit %d, want 1\n%s", code, out)
	}

	if out, code := refresh(t, config, "nope"); code != 1 || !strings.Contains(out, `unknown feed "nope"`) {
		t.Errorf("refresh of an unknown feed: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{`result="applied"} 2`, `result="unchanged"} 1`, `result="bad_signature"} 1`, `result="quarantined"} 1`} {
		if _, m := d.get(t, "/metrics"); !strings.Contains(m, `gatehouse_feed_updates_total{feed="lab",`+want) {
			t.Errorf("metrics lack gatehouse_feed_updates_total{feed=\"lab\",%s", want)
		}
	}

	d.kill()
	if out, code := refresh(t, config); code != 3 || !strings.Contains(out, "no answer from the daemon") {
		t.Errorf("refresh without a daemon: exit %d, want 3\n%s", code, out)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }
