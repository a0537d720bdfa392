package rules

import (
	"bytes"
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
)

// syncBuffer is a log sink the test reads while the manager writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

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
	var logs syncBuffer
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

	for _, tc := range []struct{ name, data string }{
		{"same length, other ranges", strings.Replace(string(r1.Files["ranges.txt"]), "198.51.100.0/24", "198.51.100.0/23", 1)},
		{"truncated", string(r1.Files["ranges.txt"][:20])},
		{"longer", string(r1.Files["ranges.txt"]) + "203.0.113.0/24\n"},
	} {
		mustWrite(t, filepath.Join(pub, "ranges.txt"), []byte(tc.data))
		clk.set(clk.now().Add(time.Minute))
		if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != "mirror_mismatch" {
			t.Errorf("%s: Cycle = %v, want mirror_mismatch", tc.name, err)
		}
	}
	if got := counter(t, m, "test", "mirror_mismatch"); got != 3 {
		t.Errorf("updates_total{result=mirror_mismatch} = %v, want 3", got)
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
	// One download to apply the release, one to check the mirror without
	// validators yet; afterwards the mirror answers 304.
	if gets > 2 {
		t.Errorf("feed file downloaded %d times in 4 refreshes of an unchanged release", gets)
	}

	mu.Lock()
	files["ranges.txt"] = []byte("# test feed\n0.0.0.0/1\n")
	fileETag = `"f2"`
	mu.Unlock()
	if err := m.Cycle(ctx, "test", u.apply); ReasonOf(err) != "mirror_mismatch" {
		t.Fatalf("changed file under the manifest in force: %v, want mirror_mismatch", err)
	}
	if got := counter(t, m, "test", "mirror_mismatch"); got != 1 {
		t.Errorf("updates_total{result=mirror_mismatch} = %v, want 1", got)
	}
	if u.count() != 1 || len(m.Current()["test"]) != 3 {
		t.Errorf("the release in force changed: %d updates, %v", u.count(), m.Current()["test"])
	}
}
