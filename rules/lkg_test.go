package rules

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// lkgFixture applies releases 100 and then 101 of feed "test" through a
// manager, so that the store holds 101 as last known good and 100 beside
// it; it returns the manager's configuration for restarts.
func lkgFixture(t *testing.T) (ManagerConfig, *clock, string) {
	t.Helper()
	mcfg, clk, dir, _, _ := lkgFixtureMirror(t)
	return mcfg, clk, dir
}

// lkgFixtureMirror is lkgFixture that also returns the mirror directory
// and the key, to publish again.
func lkgFixtureMirror(t *testing.T) (mcfg ManagerConfig, clk *clock, dir, pub string, k testKey) {
	t.Helper()
	k = newTestKey(t)
	pub, state := t.TempDir(), t.TempDir()
	fc := testFeedConfig(1, k)
	fc.Source = "file://" + filepath.Join(pub, ManifestName)
	clk = &clock{t: testNow}
	mcfg = ManagerConfig{Logger: testLogger(t), StateDir: state, Feeds: []FeedConfig{fc}, Guards: docGuards, Now: clk.now}
	m, err := NewManager(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	u := &updates{}
	publish(t, pub, newRelease(100, k).build(t))
	if err := m.Cycle(context.Background(), "test", u.apply); err != nil {
		t.Fatal(err)
	}
	// 101 drops 198.51.100.0/25 (within the default shrink bound).
	publish(t, pub, newRelease(101, k).setFile([]byte("192.0.2.0/24\n198.51.100.128/25\n2001:db8:1::/48\n")).build(t))
	if err := m.Cycle(context.Background(), "test", u.apply); err != nil {
		t.Fatal(err)
	}
	return mcfg, clk, filepath.Join(state, "feeds"), pub, k
}

// restart builds a manager on mcfg, logging into the returned buffer.
func restart(t *testing.T, mcfg ManagerConfig) (*Manager, *testkit.LogBuffer) {
	t.Helper()
	logs := &testkit.LogBuffer{}
	mcfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	m, err := NewManager(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	return m, logs
}

// TestDamagedLastKnownGoodFallsBackToPrevious: a truncated last-known-good
// file does not lose the feed: the release it replaced, kept beside it, is
// verified again and enforced, and the log says so at error with the path
// of the damaged file.
func TestDamagedLastKnownGoodFallsBackToPrevious(t *testing.T) {
	mcfg, _, dir := lkgFixture(t)
	lkg := filepath.Join(dir, "test.lkg.json")
	data, err := os.ReadFile(lkg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lkg, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	m, logs := restart(t, mcfg)
	got := m.Current()["test"]
	if len(got) != 3 || got[1].String() != "198.51.100.0/24" {
		t.Fatalf("in force after a truncated last known good: %v, want release 100 (192.0.2.0/24 198.51.100.0/24 2001:db8:1::/48)", got)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), lkg) {
		t.Errorf("no error log naming %s:\n%s", lkg, logs.String())
	}
	if !strings.Contains(logs.String(), "previous release") {
		t.Errorf("the log does not say the previous release is in force:\n%s", logs.String())
	}
}

// TestPreviousReleaseExpiryHonoured: the previous release is a superseded
// one; past its expiry it is not enforced again, and the feed has no
// verified release (status says why, naming both files).
func TestPreviousReleaseExpiryHonoured(t *testing.T) {
	mcfg, clk, dir := lkgFixture(t)
	if err := os.WriteFile(filepath.Join(dir, "test.lkg.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.set(testNow.Add(48 * time.Hour))
	m, _ := restart(t, mcfg)
	if got := m.Current(); len(got) != 0 {
		t.Fatalf("an expired previous release is enforced: %v", got)
	}
	st := m.States()
	if len(st) != 1 || st[0].Verified {
		t.Fatalf("states: %+v, want test without a verified release", st)
	}
	for _, want := range []string{"test.lkg.json", "test.prev.json", "expired"} {
		if !strings.Contains(st[0].Problem, want) {
			t.Errorf("problem %q does not name %q", st[0].Problem, want)
		}
	}
}

// TestStatesSayWhy: a feed with a good last known good is verified and has
// no problem; one whose files are all gone says where it looked.
func TestStatesSayWhy(t *testing.T) {
	mcfg, _, dir := lkgFixture(t)
	m, _ := restart(t, mcfg)
	if st := m.States(); len(st) != 1 || !st[0].Verified || st[0].Serial != 101 || st[0].Problem != "" {
		t.Errorf("healthy store: %+v", st)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	m, _ = restart(t, mcfg)
	st := m.States()
	if len(st) != 1 || st[0].Verified || !strings.Contains(st[0].Problem, filepath.Join(dir, "test.lkg.json")) {
		t.Errorf("lost store: %+v", st)
	}
}

// TestCarryReleaseInForce: a manager that replaces another (a reload)
// keeps the release in force of each feed, verified again under its own
// configuration, without reading the store (which may not hold it yet: the
// daemon commits a release after applying it). Under a key that no longer
// verifies it, the feed has no release, and States says why.
func TestCarryReleaseInForce(t *testing.T) {
	mcfg, _, dir := lkgFixture(t)
	old, _ := restart(t, mcfg)
	for _, f := range []string{"test.lkg.json", "test.prev.json"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	next := mcfg
	next.Carry = old
	m, _ := restart(t, next)
	if st := m.States()[0]; !st.Verified || st.Serial != 101 {
		t.Errorf("carried over: %+v, want 101 in force", st)
	}

	rotated := mcfg
	rotated.Carry = old
	rotated.Feeds = []FeedConfig{testFeedConfig(1, newTestKey(t))}
	rotated.Feeds[0].Source = mcfg.Feeds[0].Source
	m, _ = restart(t, rotated)
	if st := m.States()[0]; st.Verified || !strings.Contains(st.Problem, "serial 101") || !strings.Contains(st.Problem, "bad_signature") {
		t.Errorf("carried over under another key: %+v, want no release and why", st)
	}
}
