package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/rules"
)

// holder is a range-enforcing component that says it holds a previous
// run's generation, as the XDP and nftables layers do after a restart.
type holder struct{ *recorder }

func (holder) HoldsPrevious() (bool, error) { return true, nil }

func readyz(t *testing.T, metrics string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + metrics + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// feedConfigUnreachable is feedConfig with the mirror gone: the feed has
// neither a last known good release nor a reachable source.
func feedConfigUnreachable(t *testing.T) (path, metrics, feedDir string) {
	t.Helper()
	path, _, feedDir = feedConfig(t)
	if err := os.Rename(feedDir, feedDir+".gone"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Rename(feedDir+".gone", feedDir) })
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, regexp.MustCompile(`listen: "([^"]+)"`).FindStringSubmatch(string(b))[1], feedDir
}

// TestStartedWithoutFeedIsNotReady: a daemon whose only feed has no
// verified release enforces static_ranges alone but is not ready: /readyz
// answers 503 naming the feed and why, and status says the same. Once the
// feed is fetched and verified it is ready.
func TestStartedWithoutFeedIsNotReady(t *testing.T) {
	path, metrics, feedDir := feedConfigUnreachable(t)
	a := &recorder{name: "a"}
	d := runDaemon(t, path, a)
	waitFor(t, "the first generation", func() bool { return a.last() != 0 })
	code, body := readyz(t, metrics)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "feed lab has no verified release") || !strings.Contains(body, "lab.lkg.json") {
		t.Errorf("/readyz with a feed never verified: %d %q, want 503 naming the feed and its state file", code, body)
	}
	st := d.Status()
	raw, _ := json.Marshal(st)
	if st.Ready || len(st.Feeds) != 1 || st.Feeds[0].Verified || st.Feeds[0].Problem == "" {
		t.Errorf("status: %s", raw)
	}

	os.Rename(feedDir+".gone", feedDir)
	fs := d.feeds.Load()
	if err := fs.mgr.Cycle(context.Background(), "lab", func(up rules.Update) error { return d.onFeedUpdate(fs.mgr, up) }); err != nil {
		t.Fatal(err)
	}
	if code, body := readyz(t, metrics); code != http.StatusOK {
		t.Errorf("/readyz once the feed is verified: %d %q", code, body)
	}
}

// TestHeldLayerKeepsPreviousRun: a kernel layer that holds a previous run's
// generation is not given a generation that lacks a feed (not at start,
// not on a reload); the others are. It gets the first generation built
// with every feed, and the daemon is ready only from then on.
func TestHeldLayerKeepsPreviousRun(t *testing.T) {
	path, metrics, feedDir := feedConfigUnreachable(t)
	kernel, proxy := holder{&recorder{name: "xdp"}}, blind{&recorder{name: "proxy"}}
	d := runDaemon(t, path, kernel, proxy)
	waitFor(t, "the first generation", func() bool { return proxy.last() != 0 })
	if got := kernel.last(); got != 0 {
		t.Fatalf("the held layer was given generation %d, built without the feed", got)
	}
	if code, body := readyz(t, metrics); code != http.StatusServiceUnavailable || !strings.Contains(body, "kernel layers xdp keep the previous run's admitted ranges") {
		t.Errorf("/readyz with a held layer: %d %q", code, body)
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := kernel.last(); got != 0 {
		t.Fatalf("a reload without the feed reached the held layer: generation %d", got)
	}
	if st := d.Status(); len(st.Held) != 1 || st.Held[0] != "xdp" {
		t.Errorf("status held layers: %v", st.Held)
	}

	os.Rename(feedDir+".gone", feedDir)
	fs := d.feeds.Load()
	if err := fs.mgr.Cycle(context.Background(), "lab", func(up rules.Update) error { return d.onFeedUpdate(fs.mgr, up) }); err != nil {
		t.Fatal(err)
	}
	if g := d.Policy().Generation; kernel.last() != g || !d.Policy().Admitted.Contains(mustAddr("198.51.100.7")) {
		t.Errorf("after the feed: held layer at %d, daemon at %d", kernel.last(), g)
	}
	if code, body := readyz(t, metrics); code != http.StatusOK {
		t.Errorf("/readyz once every layer has every feed: %d %q", code, body)
	}
}

// TestNewRefusesUnusableStateDir: run refuses a state_dir that is a file
// before building anything, naming it (check refuses it alike: cmd
// TestCheckRefusesUnusableStateDir).
func TestNewRefusesUnusableStateDir(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, freePort(t), "203.0.113.0/24")
	file := filepath.Join(dir, "state-file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	cfg := strings.Replace(string(b), "state_dir: "+dir, "state_dir: "+file, 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	built := false
	_, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(*Env) ([]Component, error) { built = true; return nil, nil }})
	if err == nil || !strings.Contains(err.Error(), "state_dir "+file+": not a directory") {
		t.Errorf("New with state_dir a file: %v", err)
	}
	if built {
		t.Error("components were built for an unusable state_dir")
	}
}

// TestNewRefusesStateSubdirFile: a file where the daemon keeps a
// directory of its state (state_dir/feeds with feeds configured would fail
// OpenStore) is refused by New, as by check, naming the path.
func TestNewRefusesStateSubdirFile(t *testing.T) {
	path, _, _ := feedConfig(t)
	b, _ := os.ReadFile(path)
	state := regexp.MustCompile(`state_dir: (\S+)`).FindStringSubmatch(string(b))[1]
	feeds := filepath.Join(state, "feeds")
	if err := os.WriteFile(feeds, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(*Env) ([]Component, error) { return nil, nil }})
	if err == nil || !strings.Contains(err.Error(), "state_dir "+feeds+": not a directory") {
		t.Errorf("New with state_dir/feeds a file: %v", err)
	}
	if err := CheckStateDir(state); err == nil {
		t.Error("CheckStateDir passes a state_dir whose feeds is a file")
	}
}

// TestNothingAdmittedIsNotReady: a daemon whose kernel layers enforce the
// ranges but whose policy admits no source at all (no static_ranges, no
// feed) drops every connection: it is not ready, and says why. The same
// configuration with a static range, or with no kernel layer enforcing the
// ranges, is ready.
func TestNothingAdmittedIsNotReady(t *testing.T) {
	for _, tc := range []struct {
		name, enforcement, static string
		ready                     bool
	}{
		{"nftables-nothing-admitted", `{xdp: "off", nftables: true}`, "", false},
		{"nftables-static-range", `{xdp: "off", nftables: true}`, "203.0.113.0/24", true},
		{"no-kernel-layer-nothing-admitted", `{xdp: "off", nftables: false}`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			metrics := freePort(t)
			path := writeConfig(t, dir, metrics, tc.static)
			b, _ := os.ReadFile(path)
			cfg := strings.Replace(string(b), `enforcement: {xdp: "off", nftables: false}`, "enforcement: "+tc.enforcement, 1)
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			a := &recorder{name: "nftables"}
			d := runDaemon(t, path, a)
			waitFor(t, "the first generation", func() bool { return a.last() != 0 })
			waitFor(t, "/readyz", func() bool { code, _ := readyz(t, metrics); return code != 0 })
			code, body := readyz(t, metrics)
			const why = "nothing is admitted"
			if tc.ready && code != http.StatusOK {
				t.Errorf("/readyz: %d %q, want 200", code, body)
			}
			if !tc.ready && (code != http.StatusServiceUnavailable || !strings.Contains(body, why)) {
				t.Errorf("/readyz: %d %q, want 503 saying %q", code, body, why)
			}
			if st := d.Status(); st.Ready != tc.ready {
				t.Errorf("status ready = %v, want %v (%v)", st.Ready, tc.ready, st.NotReady)
			}
		})
	}
}
