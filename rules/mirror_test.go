package rules

import (
	"context"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
)

// TestMirrorChangedFileUnderSameManifest: a file:// mirror keeps serving
// the manifest in force while the feed file beside it changes (a corrupted
// disk, a tampered copy). That is not "unchanged": it is refused as
// mirror_mismatch, logged at error, the feed's last success stays where it
// was and the release in force stays enforced. Once the mirror is repaired
// the feed is unchanged again.
func TestMirrorChangedFileUnderSameManifest(t *testing.T) {
	k := newTestKey(t)
	pub := t.TempDir()
	fc := testFeedConfig(1, k)
	fc.Source = "file://" + filepath.Join(pub, ManifestName)
	clk := &clock{t: testNow}
	var logs testkit.LogBuffer
	m, err := NewManager(ManagerConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil)), StateDir: t.TempDir(),
		Feeds: []FeedConfig{fc}, Guards: docGuards, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u := &updates{}
	r1 := newRelease(100, k).build(t)
	publish(t, pub, r1)
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatal(err)
	}
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatalf("same release again: %v", err)
	}
	success := m.feeds[0].lastSuccess

	for i, tc := range []struct{ name, data string }{
		{"same length, other ranges", strings.Replace(string(r1.Files["ranges.txt"]), "198.51.100.0/24", "198.51.100.0/23", 1)},
		{"truncated", string(r1.Files["ranges.txt"][:20])},
		{"longer", string(r1.Files["ranges.txt"]) + "203.0.113.0/24\n"},
	} {
		mustWrite(t, filepath.Join(pub, "ranges.txt"), []byte(tc.data))
		clk.set(clk.now().Add(time.Minute))
		// The first check in a row may be a publish in progress; the
		// second is a mismatch.
		want := Reason("mirror_mismatch")
		if i == 0 {
			want = "mirror_unsettled"
		}
		if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != want {
			t.Errorf("%s: Cycle = %v, want %s", tc.name, err, want)
		}
	}
	if got := counter(t, m, "test", "mirror_mismatch"); got != 2 {
		t.Errorf("updates_total{result=mirror_mismatch} = %v, want 2", got)
	}
	if got := counter(t, m, "test", "mirror_unsettled"); got != 1 {
		t.Errorf("updates_total{result=mirror_unsettled} = %v, want 1", got)
	}
	if got := counter(t, m, "test", "unchanged"); got != 1 {
		t.Errorf("updates_total{result=unchanged} = %v, want 1: a changed file is not a success", got)
	}
	if got := m.feeds[0].lastSuccess; !got.Equal(success) {
		t.Errorf("last success moved from %v to %v while the mirror served a changed file", success, got)
	}
	if u.count() != 1 || len(m.Current()["test"]) != 3 {
		t.Errorf("the release in force changed: %d updates, %v", u.count(), m.Current()["test"])
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "file ranges.txt") {
		t.Errorf("no error log naming the file:\n%s", logs.String())
	}

	publish(t, pub, r1) // the mirror repaired
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatalf("repaired mirror: %v", err)
	}
	if got := counter(t, m, "test", "unchanged"); got != 2 {
		t.Errorf("updates_total{result=unchanged} after the repair = %v, want 2", got)
	}
}

// TestMirrorChangedFileHTTPS: an https mirror answers 304 for the manifest
// in force and serves a changed feed file: refused as mirror_mismatch. A
// file the mirror answers 304 for (its ETag unchanged) is not downloaded
// again on every refresh.
func TestMirrorChangedFileHTTPS(t *testing.T) {
	k := newTestKey(t)
	r1 := newRelease(100, k).build(t)
	var (
		mu        sync.Mutex
		files     = map[string][]byte{ManifestName: r1.Manifest, SignatureName(1): r1.Signatures[0], "ranges.txt": r1.Files["ranges.txt"]}
		fileGets  int
		fileETag  = `"f1"`
		manifestE = `"m1"`
	)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		name := strings.TrimPrefix(r.URL.Path, "/feed/")
		etag := ""
		switch name {
		case ManifestName:
			etag = manifestE
		case "ranges.txt":
			etag = fileETag
		}
		if etag != "" {
			if r.Header.Get("If-None-Match") == etag {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Header().Set("ETag", etag)
		}
		data, ok := files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if name == "ranges.txt" {
			fileGets++
		}
		w.Write(data)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	mustWrite(t, caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	fc := testFeedConfig(1, k)
	fc.Source, fc.CAFile = srv.URL+"/feed/"+ManifestName, caFile
	m, err := NewManager(ManagerConfig{Logger: testLogger(t), StateDir: t.TempDir(), Feeds: []FeedConfig{fc}, Guards: docGuards,
		Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u := &updates{}
	for i := 0; i < 4; i++ {
		if err := m.Cycle(ctx, "test", u.apply); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	mu.Lock()
	gets := fileGets
	mu.Unlock()
	// One download to apply the release; the checks reuse its validators
	// and the mirror answers 304.
	if gets != 1 {
		t.Errorf("feed file downloaded %d times in 4 refreshes of an unchanged release, want 1", gets)
	}

	mu.Lock()
	files["ranges.txt"] = []byte("# test feed\n0.0.0.0/1\n")
	fileETag = `"f2"`
	mu.Unlock()
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != "mirror_unsettled" {
		t.Fatalf("changed file under the manifest in force, first check: %v, want mirror_unsettled", err)
	}
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != "mirror_mismatch" {
		t.Fatalf("changed file under the manifest in force, second check in a row: %v, want mirror_mismatch", err)
	}
	if got := counter(t, m, "test", "mirror_mismatch"); got != 1 {
		t.Errorf("updates_total{result=mirror_mismatch} = %v, want 1", got)
	}
	if u.count() != 1 || len(m.Current()["test"]) != 3 {
		t.Errorf("the release in force changed: %d updates, %v", u.count(), m.Current()["test"])
	}
}

// TestMirrorPublishInProgress: a publisher that uploads the files before
// the manifest (the order that keeps a mirror consistent for readers that
// fetch the manifest first) is not a corrupted mirror. While only the
// files are new, the check says mirror_unsettled (no mirror_mismatch, no
// error log); once the manifest lands the release is applied. A manifest
// that lands while the files are being checked is taken at once.
func TestMirrorPublishInProgress(t *testing.T) {
	k := newTestKey(t)
	r1 := newRelease(100, k).build(t)
	r2 := newRelease(101, k).setFile([]byte("192.0.2.0/24\n198.51.100.0/24\n198.51.100.128/25\n2001:db8:1::/48\n")).build(t)
	r3 := newRelease(102, k).setFile([]byte("192.0.2.0/24\n198.51.100.0/25\n198.51.100.128/25\n2001:db8:1::/48\n")).build(t)
	var (
		mu    sync.Mutex
		files = map[string][]byte{}
		// onFile, when set, runs as the mirror serves ranges.txt: the
		// publisher's next upload lands then.
		onFile func()
	)
	put := func(b Bundle, manifest bool) {
		for n, d := range b.Files {
			files[n] = d
		}
		if manifest {
			files[ManifestName], files[SignatureName(1)] = b.Manifest, b.Signatures[0]
		}
	}
	put(r1, true)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		name := strings.TrimPrefix(r.URL.Path, "/feed/")
		data, ok := files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if name == "ranges.txt" && onFile != nil {
			onFile()
			onFile = nil
		}
		w.Write(data)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	mustWrite(t, caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	fc := testFeedConfig(1, k)
	fc.Source, fc.CAFile = srv.URL+"/feed/"+ManifestName, caFile
	var logs testkit.LogBuffer
	m, err := NewManager(ManagerConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil)), StateDir: t.TempDir(),
		Feeds: []FeedConfig{fc}, Guards: docGuards, Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u := &updates{}
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatal(err)
	}

	// Files first: the manifest in force, a file of the next release.
	mu.Lock()
	put(r2, false)
	mu.Unlock()
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != ReasonMirrorUnsettled {
		t.Fatalf("files uploaded before the manifest: %v, want mirror_unsettled", err)
	}
	mu.Lock()
	put(r2, true)
	mu.Unlock()
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatalf("the manifest uploaded after its files: %v, want applied", err)
	}
	if st := m.States()[0]; st.Serial != 101 {
		t.Errorf("serial in force %d, want 101", st.Serial)
	}

	// The manifest lands while the check reads the new file: taken at once.
	mu.Lock()
	put(r3, false)
	onFile = func() { put(r3, true) }
	mu.Unlock()
	if err := m.Cycle(ctx, "test", u.apply); err != nil {
		t.Fatalf("manifest published during the check: %v, want applied", err)
	}
	if st := m.States()[0]; st.Serial != 102 {
		t.Errorf("serial in force %d, want 102", st.Serial)
	}
	if got := counter(t, m, "test", "mirror_mismatch"); got != 0 {
		t.Errorf("updates_total{result=mirror_mismatch} = %v after a normal publish, want 0", got)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a normal publish logged at error:\n%s", logs.String())
	}
}
