package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// writeRelease publishes a signed cidr release of feed lab in dir.
func writeRelease(t *testing.T, dir string, key minisign.PrivateKey, serial uint64, body string) {
	t.Helper()
	writeReleaseNamed(t, dir, "lab", key, serial, body)
}

// writeReleaseNamed publishes a signed cidr release of feed name in dir.
func writeReleaseNamed(t *testing.T, dir, name string, key minisign.PrivateKey, serial uint64, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+".txt"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m := rules.Manifest{Source: name, Serial: serial, Issued: now.Add(-time.Minute), Expires: now.Add(time.Hour),
		Files: []rules.ManifestFile{rules.NewManifestFile(name+".txt", "cidr", []byte(body))}}
	raw, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json.minisig"), rules.SignManifest(raw, key, "test"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// feedConfig writes a configuration with static ranges and one signed cidr
// feed served from a directory holding a first release.
func feedConfig(t *testing.T) (path string, key minisign.PrivateKey, feedDir string) {
	t.Helper()
	pub, key, err := minisign.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	feedDir = t.TempDir()
	writeRelease(t, feedDir, key, 100, "# lab ranges\n198.51.100.0/25\n198.51.100.128/25")

	dir := t.TempDir()
	path = writeConfig(t, dir, freePort(t), "203.0.113.0/24")
	extra := fmt.Sprintf(`
feeds:
  - {name: lab, source: "file://%s/manifest.json", format: cidr, minisign_keys: ["%s"], threshold: 1, refresh: 1m}
rules: {reserved_exempt: [198.51.100.0/24]}
`, feedDir, pub.String())
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(extra); err != nil {
		t.Fatal(err)
	}
	return path, key, feedDir
}

// runDaemon starts a daemon on path with comps and stops it at cleanup.
func runDaemon(t *testing.T, path string, comps ...Component) *Daemon {
	t.Helper()
	d, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(*Env) ([]Component, error) { return comps, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d
}

// TestSignedFeedReachesPolicy: a release signed with a trusted key becomes
// part of the admitted set of a new generation handed to every component
// that enforces ranges, and is enforced from the first generation after a
// restart. (Refusals of bad releases are the rules package's tests.)
func TestSignedFeedReachesPolicy(t *testing.T) {
	path, _, _ := feedConfig(t)
	a := &recorder{name: "a"}
	d := runDaemon(t, path, a)
	waitFor(t, "the feed in the admitted set", func() bool {
		p := d.Policy()
		return p != nil && p.Admitted.Contains(mustAddr("198.51.100.200")) && p.Admitted.Contains(mustAddr("203.0.113.1"))
	})
	if got := d.Policy().Admitted.V4; len(got) != 2 || got[0].String() != "198.51.100.0/24" {
		t.Errorf("admitted v4 = %v, want the feed aggregated beside static", got)
	}
	if a.last() != d.Policy().Generation {
		t.Errorf("component at generation %d, daemon at %d", a.last(), d.Policy().Generation)
	}
	// The release is persisted as last known good, just after the policy
	// was applied: a new daemon starts with it before fetching anything.
	waitFor(t, "a restarted daemon to enforce the last-known-good feed at once", func() bool {
		d2, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(*Env) ([]Component, error) { return nil, nil }})
		if err != nil {
			t.Fatal(err)
		}
		defer d2.close()
		return d2.current.Load().Admitted.Contains(mustAddr("198.51.100.7"))
	})
}

// blind is a recorder that declares it does not depend on the ranges.
type blind struct{ *recorder }

func (blind) RangeBlind() bool { return true }

// TestFeedUpdateSkipsRangeBlind: a feed update reaches the components that
// enforce ranges and leaves the others (proxies, certificates) on the
// generation they run, so their listeners are not rebuilt; a reload reaches
// all of them.
func TestFeedUpdateSkipsRangeBlind(t *testing.T) {
	path, _, _ := feedConfig(t)
	a, b := &recorder{name: "a"}, blind{&recorder{name: "b"}}
	d := runDaemon(t, path, a, b)
	var feedGen uint64
	waitFor(t, "the feed in force", func() bool {
		p := d.Policy()
		if p == nil {
			return false
		}
		feedGen = p.Generation
		return p.Admitted.Contains(mustAddr("198.51.100.200")) && a.last() == p.Generation
	})
	b.mu.Lock()
	seen := slices.Clone(b.seen)
	b.mu.Unlock()
	if len(seen) == 0 || slices.Contains(seen, feedGen) {
		t.Errorf("range-blind component saw generations %v; the feed update was %d", seen, feedGen)
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if g := d.Policy().Generation; a.last() != g || b.last() != g {
		t.Errorf("after a reload: a at %d, b at %d, daemon at %d", a.last(), b.last(), g)
	}
}

func TestOnlyRangesDiffer(t *testing.T) {
	base := &policy.Policy{Generation: 1, Listeners: []policy.Listener{{Name: "web", Port: 443}}}
	ranges := &policy.Policy{Generation: 2, Listeners: []policy.Listener{{Name: "web", Port: 443}},
		Admitted: policy.Admitted{V4: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}}
	moved := &policy.Policy{Generation: 2, Listeners: []policy.Listener{{Name: "web", Port: 8443}}}
	if !onlyRangesDiffer(ranges, base) {
		t.Error("a new admitted set alone: not seen as ranges only")
	}
	if onlyRangesDiffer(moved, base) {
		t.Error("a moved listener: seen as ranges only")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestFeedUpdateSeriesFollowReload scrapes /metrics: every configured feed
// has its gatehouse_feed_updates_total series from the start, at 0 for
// results that did not happen, and a reload that removes a feed removes
// its series while the others stay.
func TestFeedUpdateSeriesFollowReload(t *testing.T) {
	path, _, _ := feedConfig(t)
	base, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	withSecond := strings.Replace(string(base), "\nrules:",
		"\n  - {name: lab2, source: \"file:///nonexistent/manifest.json\", format: cidr, minisign_keys: [\""+
			regexp.MustCompile(`minisign_keys: \["([^"]+)"\]`).FindStringSubmatch(string(base))[1]+"\"], threshold: 1, refresh: 1h}\nrules:", 1)
	if err := os.WriteFile(path, []byte(withSecond), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics := regexp.MustCompile(`listen: "([^"]+)"`).FindStringSubmatch(withSecond)[1]
	d := runDaemon(t, path, &recorder{name: "a"})
	scrape := func() string { _, body := scrape(t, metrics); return body }
	series := func(feed, result string) string {
		return fmt.Sprintf(`gatehouse_feed_updates_total{feed=%q,result=%q} `, feed, result)
	}
	waitFor(t, "the metrics endpoint", func() bool { return scrape() != "" })
	body := scrape()
	for _, feed := range []string{"lab", "lab2"} {
		for _, r := range []string{"bad_signature", "hash_mismatch", "rollback", "quarantined"} {
			if !strings.Contains(body, series(feed, r)+"0\n") {
				t.Errorf("no %s0 at start", series(feed, r))
			}
		}
	}
	if err := os.WriteFile(path, base, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	body = scrape()
	if strings.Contains(body, `feed="lab2"`) {
		t.Errorf("series of feed lab2 left after a reload removed it:\n%s", grepLines(body, "lab2"))
	}
	if !strings.Contains(body, series("lab", "bad_signature")+"0\n") {
		t.Errorf("no %s0 after the reload", series("lab", "bad_signature"))
	}
}

func grepLines(body, s string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestFeedNameReserved: a feed named "static" would replace static_ranges
// in the admitted set (and "all" share the aggregate's metric series): the
// configuration is refused, by run and by check alike (both load it), with
// the key path. The reserved names are the daemon's source names.
func TestFeedNameReserved(t *testing.T) {
	for _, n := range []string{staticSource, allSources} {
		if _, ok := config.ReservedFeedNames[n]; !ok {
			t.Errorf("config.ReservedFeedNames lacks the daemon's source name %q", n)
		}
	}
	for _, name := range []string{"static", "all"} {
		path, _, _ := feedConfig(t)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(strings.Replace(string(b), "name: lab,", "name: "+name+",", 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		d, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(*Env) ([]Component, error) { return nil, nil }})
		if err == nil {
			p := d.current.Load()
			t.Errorf("feed named %q accepted; static 203.0.113.1 admitted: %v", name, p.Admitted.Contains(mustAddr("203.0.113.1")))
			continue
		}
		if !strings.Contains(err.Error(), `feeds[0].name`) || !strings.Contains(err.Error(), `"`+name+`" is reserved`) {
			t.Errorf("feed named %q: %v", name, err)
		}
	}
}

// scrape reads the metrics endpoint: status code and body ("" when it
// does not answer).
func scrape(t *testing.T, metrics string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
