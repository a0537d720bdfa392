package rules

import (
	"context"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// publish writes a release into dir the way an admin's mirror holds it.
func publish(t testing.TB, dir string, b Bundle) {
	t.Helper()
	mustWrite(t, filepath.Join(dir, ManifestName), b.Manifest)
	for i := 1; i <= MaxSignatures; i++ {
		os.Remove(filepath.Join(dir, SignatureName(i)))
	}
	for i, s := range b.Signatures {
		mustWrite(t, filepath.Join(dir, SignatureName(i+1)), s)
	}
	for name, data := range b.Files {
		mustWrite(t, filepath.Join(dir, name), data)
	}
}

// updates records what the daemon was handed; fail makes it refuse.
type updates struct {
	mu   sync.Mutex
	got  map[string][]netip.Prefix
	n    int
	fail error
}

func (u *updates) apply(up Update) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.fail != nil {
		return u.fail
	}
	if u.got == nil {
		u.got = map[string][]netip.Prefix{}
	}
	u.got[up.Feed] = up.Prefixes
	u.n++
	return nil
}

func (u *updates) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func counter(t testing.TB, m *Manager, feed, result string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_feed_updates_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["feed"] == feed && labels["result"] == result {
				return mt.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestManagerLifecycle(t *testing.T) {
	ctx := context.Background()
	k := newTestKey(t)
	pub, state := t.TempDir(), t.TempDir()
	clk := &clock{t: testNow}
	fc := testFeedConfig(1, k)
	fc.Source = "file://" + filepath.Join(pub, ManifestName)
	mcfg := ManagerConfig{Logger: testLogger(t), StateDir: state, Feeds: []FeedConfig{fc}, Guards: docGuards, Now: clk.now}
	m, err := NewManager(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Current()) != 0 {
		t.Fatalf("current before any release: %v", m.Current())
	}
	u := &updates{}

	// Nothing published yet: a fetch error, nothing applied.
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonFetch {
		t.Fatalf("empty mirror: %v", err)
	}

	// First release: applied and persisted.
	r1 := newRelease(100, k).build(t)
	publish(t, pub, r1)
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatal(err)
	}
	if u.count() != 1 || len(m.Current()["test"]) != 3 {
		t.Fatalf("after release 100: %d updates, current %v", u.count(), m.Current())
	}
	if b, err := m.store.loadBundle("test", lkgSuffix); err != nil || sha256.Sum256(b.Manifest) != r1.Digest() {
		t.Fatalf("release 100 not persisted: %v", err)
	}

	// Same release again: unchanged, no update.
	if err := m.Cycle(ctx, "test", u.apply); err != nil || u.count() != 1 {
		t.Fatalf("unchanged: %v, %d updates", err, u.count())
	}

	// The daemon fails to apply release 101: nothing persisted, 100 stays.
	r101 := newRelease(101, k).setFile([]byte("192.0.2.0/24\n198.51.100.0/25\n198.51.100.128/25\n2001:db8:1::/48\n")).build(t)
	publish(t, pub, r101)
	u.fail = errors.New("nft: busy")
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonApply {
		t.Fatalf("apply failure: %v", err)
	}
	if b, _ := m.store.loadBundle("test", lkgSuffix); sha256.Sum256(b.Manifest) != r1.Digest() {
		t.Fatal("a release the daemon did not apply was persisted")
	}
	u.fail = nil
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatalf("retry of 101: %v", err)
	}

	// A rollback to 100 is refused.
	publish(t, pub, r1)
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonRollback {
		t.Fatalf("rollback: %v", err)
	}

	// Release 102 loses half the IPv4 space: quarantined until accepted.
	r102 := newRelease(102, k).setFile([]byte("192.0.2.0/24\n2001:db8:1::/48\n")).build(t)
	publish(t, pub, r102)
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonQuarantined {
		t.Fatalf("shrink: %v", err)
	}
	if q, err := m.store.LoadQuarantine("test"); err != nil || sha256.Sum256(q.Manifest) != r102.Digest() {
		t.Fatalf("quarantined release not recorded: %v", err)
	}
	if got := m.Current()["test"]; len(got) != 3 {
		t.Fatalf("quarantine changed the set in force: %v", got)
	}
	if err := m.Accept("nope"); !errors.Is(err, ErrUnknownFeed) {
		t.Errorf("accept unknown feed: %v", err)
	}
	if err := m.Accept("test"); err != nil {
		t.Fatal(err)
	}
	if !m.acceptPending(m.feeds[0], u.apply) {
		t.Fatal("accepted release not applied")
	}
	if got := m.Current()["test"]; len(got) != 2 {
		t.Fatalf("after accept: %v", got)
	}
	if _, err := m.store.LoadQuarantine("test"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("quarantine not cleared: %v", err)
	}
	if err := m.Accept("test"); !errors.Is(err, ErrNothingQuarantined) {
		t.Errorf("second accept: %v", err)
	}

	// Restart with the mirror gone and the release expired: the last known
	// good release is enforced, re-verified, flagged expired.
	os.RemoveAll(pub)
	clk.set(testNow.Add(48 * time.Hour))
	m2, err := NewManager(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.Current()["test"]; len(got) != 2 {
		t.Fatalf("after restart: %v", got)
	}
	if err := m2.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonFetch {
		t.Errorf("restart without mirror: %v", err)
	}
	want := `
# HELP gatehouse_feed_expired 1 when the feed release in force has expired (it stays enforced).
# TYPE gatehouse_feed_expired gauge
gatehouse_feed_expired{feed="test"} 1
# HELP gatehouse_feed_refresh_seconds The feed's configured refresh interval: nodes on the same feed agree on its serial within one.
# TYPE gatehouse_feed_refresh_seconds gauge
gatehouse_feed_refresh_seconds{feed="test"} %v
# HELP gatehouse_feed_serial Serial of the feed release in force.
# TYPE gatehouse_feed_serial gauge
gatehouse_feed_serial{feed="test"} 102
`
	want = fmt.Sprintf(want, refreshOf(mcfg, "test").Seconds())
	if err := testutil.CollectAndCompare(m2, strings.NewReader(want),
		"gatehouse_feed_expired", "gatehouse_feed_serial", "gatehouse_feed_refresh_seconds"); err != nil {
		t.Error(err)
	}
	for _, r := range UpdateResults() {
		want := 0.0
		if r == string(ReasonFetch) {
			want = 1
		}
		if got := counter(t, m2, "test", r); got != want {
			t.Errorf("restarted manager: updates_total{result=%q} = %v, want %v", r, got, want)
		}
	}
	for result, n := range map[string]float64{"fetch_error": 1, "applied": 2, "unchanged": 1, "apply_failed": 1, "rollback": 1, "quarantined": 1, "accepted": 1} {
		if got := counter(t, m, "test", result); got != n {
			t.Errorf("updates_total{result=%q} = %v, want %v", result, got, n)
		}
	}

	// A tampered last-known-good file is not enforced.
	b, _ := m.store.loadBundle("test", lkgSuffix)
	b.Files["ranges.txt"] = []byte("192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n")
	if err := m.store.Save("test", 102, b); err != nil {
		t.Fatal(err)
	}
	m3, err := NewManager(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(m3.Current()) != 0 {
		t.Errorf("tampered last known good enforced: %v", m3.Current())
	}
}

// TestManagerAcceptFromMarker: the CLI writes the acceptance into the
// store; the running manager picks it up.
func TestManagerAcceptFromMarker(t *testing.T) {
	k := newTestKey(t)
	pub, state := t.TempDir(), t.TempDir()
	fc := testFeedConfig(1, k)
	fc.Source = "file://" + filepath.Join(pub, ManifestName)
	fc.Refresh = time.Hour
	m, err := NewManager(ManagerConfig{Logger: testLogger(t), StateDir: state, Feeds: []FeedConfig{fc}, Guards: docGuards,
		Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	u := &updates{}
	publish(t, pub, newRelease(100, k).build(t))
	if err := m.Cycle(context.Background(), "test", u.apply); err != nil {
		t.Fatal(err)
	}
	grown := newRelease(101, k).setFile([]byte("192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n2001:db8:1::/48\n")).build(t)
	publish(t, pub, grown)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, u.apply) }()
	waitFor(t, func() bool { _, err := m.store.LoadQuarantine("test"); return err == nil })
	st, err := OpenStore(state) // as `gatehouse feed accept` does
	if err != nil {
		t.Fatal(err)
	}
	q, _ := st.LoadQuarantine("test")
	if err := st.WriteAccept("test", q.Digest()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(m.Current()["test"]) == 4 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if u.count() != 2 {
		t.Errorf("updates = %d, want 2", u.count())
	}
}

// TestAcceptExpiredQuarantine: a release that expired while it waited in
// quarantine is not accepted, neither by Accept nor by a consent the CLI
// wrote earlier; it is discarded and the release in force stays.
func TestAcceptExpiredQuarantine(t *testing.T) {
	k := newTestKey(t)
	pub, state := t.TempDir(), t.TempDir()
	fc := testFeedConfig(1, k)
	fc.Source = "file://" + filepath.Join(pub, ManifestName)
	clk := &clock{t: testNow}
	m, err := NewManager(ManagerConfig{Logger: testLogger(t), StateDir: state, Feeds: []FeedConfig{fc}, Guards: docGuards, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	u := &updates{}
	ctx := context.Background()
	publish(t, pub, newRelease(100, k).build(t))
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatal(err)
	}
	grown := newRelease(101, k).setFile([]byte("192.0.2.0/24\n198.51.100.0/24\n203.0.113.0/24\n2001:db8:1::/48\n")).build(t)
	publish(t, pub, grown)
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonQuarantined {
		t.Fatalf("grown release: %v, want quarantined", err)
	}
	q, err := m.store.LoadQuarantine("test")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.store.WriteAccept("test", q.Digest()); err != nil { // consent given in time
		t.Fatal(err)
	}
	clk.set(testNow.Add(48 * time.Hour)) // then the release expires
	if err := m.Accept("test"); ReasonOf(err) != ReasonExpired {
		t.Errorf("Accept of an expired release: %v, want expired", err)
	}
	if m.acceptPending(m.feeds[0], u.apply) {
		t.Fatal("expired release applied on an earlier consent")
	}
	if u.count() != 1 || len(m.Current()["test"]) != 3 {
		t.Errorf("after the expired consent: %d updates, in force %v", u.count(), m.Current()["test"])
	}
	if _, err := m.store.LoadQuarantine("test"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expired quarantine not discarded: %v", err)
	}
	if got := counter(t, m, "test", "expired"); got != 1 {
		t.Errorf("updates_total{result=expired} = %v, want 1", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestManagerHTTPS: pinned CA, conditional requests, size cap, and what a
// broken mirror serves.
func TestManagerHTTPS(t *testing.T) {
	k := newTestKey(t)
	var (
		mu       sync.Mutex
		files    = map[string][]byte{}
		etag     = `"r1"`
		sawINM   int
		override = map[string][]byte{}
	)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		name := strings.TrimPrefix(r.URL.Path, "/feeds/aws/")
		if name == ManifestName {
			if r.Header.Get("If-None-Match") == etag {
				sawINM++
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Header().Set("ETag", etag)
		}
		data, ok := override[name]
		if !ok {
			data, ok = files[name]
		}
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(data)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	mustWrite(t, caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	set := func(b Bundle, tag string) {
		mu.Lock()
		defer mu.Unlock()
		files = map[string][]byte{ManifestName: b.Manifest}
		for i, s := range b.Signatures {
			files[SignatureName(i+1)] = s
		}
		for n, d := range b.Files {
			files[n] = d
		}
		etag = tag
	}
	set(newRelease(100, k).build(t), `"r1"`)

	fc := testFeedConfig(1, k)
	fc.Source = srv.URL + "/feeds/aws/" + ManifestName
	newM := func(ca string) *Manager {
		fc := fc
		fc.CAFile = ca
		m, err := NewManager(ManagerConfig{Logger: testLogger(t), StateDir: t.TempDir(), Feeds: []FeedConfig{fc}, Guards: docGuards,
			Now: func() time.Time { return testNow }})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ctx := context.Background()
	u := &updates{}

	// Without the pinned CA the server's certificate is not trusted.
	if err := newM("").Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonFetch {
		t.Fatalf("untrusted server: %v", err)
	}
	m := newM(caFile)
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatal(err)
	}
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatal(err)
	}
	if sawINM != 1 || counter(t, m, "test", "unchanged") != 1 {
		t.Errorf("conditional request: server saw %d If-None-Match hits, unchanged = %v", sawINM, counter(t, m, "test", "unchanged"))
	}

	r2 := newRelease(101, k).build(t)
	set(r2, `"r2"`)
	tests := []struct {
		name     string
		override map[string][]byte
		want     Reason
	}{
		{"html error page instead of manifest", map[string][]byte{ManifestName: []byte("<html><body>502 Bad Gateway</body></html>")}, ReasonBadSignature},
		{"empty manifest", map[string][]byte{ManifestName: {}}, ReasonBadSignature},
		{"html error page instead of feed file", map[string][]byte{"ranges.txt": []byte("<html><body>502</body></html>")}, ReasonHashMismatch},
		{"empty feed file", map[string][]byte{"ranges.txt": {}}, ReasonHashMismatch},
		{"feed file longer than manifest says", map[string][]byte{"ranges.txt": append(append([]byte{}, r2.Files["ranges.txt"]...), strings.Repeat("#", 1000)...)}, ReasonHashMismatch},
		{"manifest over the size cap", map[string][]byte{ManifestName: []byte(strings.Repeat(" ", MaxManifestSize+1))}, ReasonTooLarge},
		{"signature missing", map[string][]byte{SignatureName(1): nil}, ReasonBadSignature},
	}
	for _, tt := range tests {
		mu.Lock()
		override = tt.override
		if tt.name == "signature missing" {
			delete(files, SignatureName(1))
			override = nil
		}
		mu.Unlock()
		if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != tt.want {
			t.Errorf("%s: %v, want %s", tt.name, err, tt.want)
		}
		set(r2, `"r2"`)
	}
	mu.Lock()
	override = nil
	mu.Unlock()
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatalf("good release after the broken ones: %v", err)
	}
	if got := m.Current()["test"]; len(got) != 3 || u.count() != 2 {
		t.Errorf("current %v, %d updates", got, u.count())
	}

	// A release the daemon failed to apply is fetched in full again, not
	// answered 304 from the cache validators.
	set(newRelease(102, k).build(t), `"r3"`)
	u.fail = errors.New("apply failed")
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonApply {
		t.Fatalf("apply failure: %v", err)
	}
	u.fail = nil
	if err := m.Cycle(ctx, "test", u.apply); err != nil || u.count() != 3 {
		t.Fatalf("retry after apply failure: %v, %d updates", err, u.count())
	}
	if err := m.Cycle(ctx, "test", u.apply); err != nil || sawINM != 2 {
		t.Errorf("after the retry: %v, %d conditional hits", err, sawINM)
	}
}

// refreshOf is the refresh interval a feed of cfg runs on.
func refreshOf(cfg ManagerConfig, name string) time.Duration {
	for _, fc := range cfg.Feeds {
		if fc.Name == name && fc.Refresh > 0 {
			return fc.Refresh
		}
	}
	return DefaultRefresh
}
