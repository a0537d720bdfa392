package rules

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLostLastKnownGoodKeepsTheFloor: with the last known good (101) lost,
// the previous release (100) is enforced, says so in a metric, and a mirror
// replaying 100 is a rollback below the floor, not "unchanged": the feed's
// last success does not advance. 101 from the mirror is applied again.
func TestLostLastKnownGoodKeepsTheFloor(t *testing.T) {
	mcfg, clk, dir, pub, k := lkgFixtureMirror(t)
	if _, err := os.Stat(filepath.Join(dir, "test.floor.json")); err != nil {
		t.Fatalf("no rollback floor written beside the releases: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "test.lkg.json")); err != nil {
		t.Fatal(err)
	}
	m, _ := restart(t, mcfg)
	if st := m.States()[0]; st.Serial != 100 || !st.Previous {
		t.Fatalf("after the last known good was lost: %+v, want the previous release 100, flagged", st)
	}
	if err := testutil.CollectAndCompare(m, strings.NewReader(`
# HELP gatehouse_feed_previous_release 1 when the feed release in force is the previous one: its last known good file was lost or unusable.
# TYPE gatehouse_feed_previous_release gauge
gatehouse_feed_previous_release{feed="test"} 1
`), "gatehouse_feed_previous_release"); err != nil {
		t.Error(err)
	}

	publish(t, pub, newRelease(100, k).build(t)) // the mirror replays 100
	clk.set(testNow.Add(time.Minute))
	u := &updates{}
	if err := m.Cycle(context.Background(), "test", u.apply); ReasonOf(err) != ReasonRollback {
		t.Errorf("mirror replaying the previous release: %v, want a rollback refusal", err)
	}
	if st := m.States()[0]; !st.LastSuccess.IsZero() {
		t.Errorf("a replay below the floor counted as a success at %v", st.LastSuccess)
	}

	publish(t, pub, newRelease(101, k).setFile([]byte("192.0.2.0/24\n198.51.100.128/25\n2001:db8:1::/48\n")).build(t))
	if err := m.Cycle(context.Background(), "test", u.apply); err != nil {
		t.Fatalf("the release at the floor: %v", err)
	}
	if st := m.States()[0]; st.Serial != 101 || st.Previous || st.Problem != "" {
		t.Errorf("after 101 again: %+v", st)
	}
}

// TestLostReleasesKeepTheFloor: with both release files gone but the
// floor left, a mirror serving an older signed release is refused as a
// rollback; with the floor gone too, nothing is left to tell.
func TestLostReleasesKeepTheFloor(t *testing.T) {
	mcfg, _, dir, pub, k := lkgFixtureMirror(t)
	for _, f := range []string{"test.lkg.json", "test.prev.json"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, pub, newRelease(100, k).build(t))
	m, _ := restart(t, mcfg)
	u := &updates{}
	if err := m.Cycle(context.Background(), "test", u.apply); ReasonOf(err) != ReasonRollback || u.count() != 0 {
		t.Errorf("older release after both release files were lost: %v (%d applied), want a rollback refusal", err, u.count())
	}
	// At the floor with another manifest: a serial reuse.
	publish(t, pub, newRelease(101, k).build(t))
	if err := m.Cycle(context.Background(), "test", u.apply); ReasonOf(err) != ReasonSerialReuse {
		t.Errorf("serial 101 with another manifest: %v, want serial_reuse", err)
	}
}

// TestOlderReleaseOverLastKnownGood: an older signed release copied over
// the last known good file (it verifies; were it expired, that would be
// ignored for the release in force) is not enforced: it lies below the
// floor. The release the last known good replaced is used instead, and the
// floor stays.
func TestOlderReleaseOverLastKnownGood(t *testing.T) {
	mcfg, _, dir, pub, k := lkgFixtureMirror(t)
	m, _ := restart(t, mcfg)
	publish(t, pub, newRelease(102, k).setFile([]byte("192.0.2.0/24\n198.51.100.64/26\n198.51.100.128/25\n2001:db8:1::/48\n")).build(t))
	if err := m.Cycle(context.Background(), "test", (&updates{}).apply); err != nil {
		t.Fatal(err)
	}
	// The store holds 102, 101 beside it; 100 goes over 102.
	old := newRelease(100, k).build(t)
	if err := m.store.Save("test", 100, old); err != nil {
		t.Fatal(err)
	}
	m, logs := restart(t, mcfg)
	if st := m.States()[0]; st.Serial != 101 || !st.Previous {
		t.Fatalf("an older release copied over the last known good: %+v, want it refused and the previous release 101 in force", st)
	}
	if !strings.Contains(logs.String(), "lower than 102") || !strings.Contains(logs.String(), filepath.Join(dir, "test.lkg.json")) {
		t.Errorf("the log does not say why the last known good was refused:\n%s", logs.String())
	}
	if fl, err := m.store.LoadFloor("test"); err != nil || fl.Serial != 102 {
		t.Errorf("floor after the refused file: %+v %v, want 102", fl, err)
	}
}

// TestFloorInitialisedAndRebuilt: a state directory from before the floor
// (none written) gets one from the last known good at start; a damaged one
// is logged at error and rebuilt the same way.
func TestFloorInitialisedAndRebuilt(t *testing.T) {
	mcfg, _, dir := lkgFixture(t)
	floor := filepath.Join(dir, "test.floor.json")
	for _, damage := range []func() error{
		func() error { return os.Remove(floor) },
		func() error { return os.WriteFile(floor, []byte(`{"version":1,"serial":"x"}`), 0o600) },
	} {
		if err := damage(); err != nil {
			t.Fatal(err)
		}
		m, logs := restart(t, mcfg)
		if fl, err := m.store.LoadFloor("test"); err != nil || fl.Serial != 101 {
			t.Errorf("floor after restart: %+v %v, want 101 from the last known good\n%s", fl, err, logs.String())
		}
	}
}

// TestDeferredReleaseNotCommitted: a release the daemon took but could not
// put in force in the kernel (ErrDeferred) is neither the release in force
// nor saved as last known good; status shows it as deferred. Once the
// daemon applies a generation with it (another feed's update returns nil),
// it is committed.
func TestDeferredReleaseNotCommitted(t *testing.T) {
	k := newTestKey(t)
	pub, pub2, state := t.TempDir(), t.TempDir(), t.TempDir()
	a, b := testFeedConfig(1, k), testFeedConfig(1, k)
	a.Source = "file://" + filepath.Join(pub, ManifestName)
	b.Name, b.Source = "other", "file://"+filepath.Join(pub2, ManifestName)
	mcfg := ManagerConfig{Logger: testLogger(t), StateDir: state, Feeds: []FeedConfig{a, b}, Guards: docGuards,
		Now: func() time.Time { return testNow }}
	m, err := NewManager(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, pub, newRelease(100, k).build(t))
	other := newRelease(7, k)
	other.m.Source = "other"
	publish(t, pub2, other.build(t))

	defer_ := func(Update) error { return ErrDeferred }
	o, _ := m.Refresh(context.Background(), "test", defer_)
	if o.Result != ResultDeferred || o.Serial != 100 || o.OK() {
		t.Errorf("outcome of a deferred release: %+v", o)
	}
	if st := m.States()[0]; st.Verified || st.Deferred != 100 {
		t.Errorf("state of a deferred release: %+v, want not in force, deferred 100", st)
	}
	if _, err := m.store.loadBundle("test", lkgSuffix); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a deferred release was saved as last known good: %v", err)
	}
	if got := counter(t, m, "test", "deferred"); got != 1 {
		t.Errorf("updates_total{result=deferred} = %v, want 1", got)
	}
	if len(m.Current()) != 0 {
		t.Errorf("current: %v", m.Current())
	}

	u := &updates{}
	if err := m.Cycle(context.Background(), "other", u.apply); err != nil {
		t.Fatal(err)
	}
	if st := m.States()[0]; !st.Verified || st.Serial != 100 || st.Deferred != 0 {
		t.Errorf("the deferred release after a generation in force: %+v, want committed", st)
	}
	if _, err := m.store.loadBundle("test", lkgSuffix); err != nil {
		t.Errorf("the deferred release was not saved once in force: %v", err)
	}
}

// TestAbandonedRoundNotCounted: a round cut short because its context
// ended (the daemon stopping) is not a refusal of the feed: no fetch_error,
// and the latest result stays what it was.
func TestAbandonedRoundNotCounted(t *testing.T) {
	k := newTestKey(t)
	pub := t.TempDir()
	fc := testFeedConfig(1, k)
	fc.Source = "file://" + filepath.Join(pub, ManifestName)
	m, err := NewManager(ManagerConfig{Logger: testLogger(t), StateDir: t.TempDir(), Feeds: []FeedConfig{fc}, Guards: docGuards,
		Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A file:// mirror does not look at the context; the missing manifest
	// fails the round as an unreachable mirror would.
	o, _ := m.Refresh(ctx, "test", (&updates{}).apply)
	if o.OK() || o.Result != "" {
		t.Errorf("abandoned round: %+v", o)
	}
	if got := counter(t, m, "test", "fetch_error"); got != 0 {
		t.Errorf("updates_total{result=fetch_error} = %v for an abandoned round, want 0", got)
	}
	if st := m.States()[0]; st.LastResult != "" {
		t.Errorf("latest result %q after an abandoned round, want none", st.LastResult)
	}
}
