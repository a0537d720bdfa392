package daemon

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/rules"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// httpsMirror serves feed lab's release from dir over https; while gate
// is closed, every request waits for it to open. gets counts manifest
// requests.
type httpsMirror struct {
	srv  *httptest.Server
	ca   string
	mu   sync.Mutex
	gate chan struct{}
	gets int
}

func newHTTPSMirror(t *testing.T, dir string) *httpsMirror {
	t.Helper()
	m := &httpsMirror{gate: make(chan struct{})}
	close(m.gate)
	m.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		gate := m.gate
		if strings.HasSuffix(r.URL.Path, "/manifest.json") {
			m.gets++
		}
		m.mu.Unlock()
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		http.ServeFile(w, r, filepath.Join(dir, filepath.Base(r.URL.Path)))
	}))
	t.Cleanup(m.srv.Close)
	m.ca = filepath.Join(t.TempDir(), "mirror-ca.pem")
	if err := os.WriteFile(m.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *httpsMirror) hold() {
	m.mu.Lock()
	m.gate = make(chan struct{})
	m.mu.Unlock()
}

func (m *httpsMirror) release() {
	m.mu.Lock()
	close(m.gate)
	m.mu.Unlock()
}

func (m *httpsMirror) manifestGets() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gets
}

// httpsFeedConfig is feedConfig with the release served by an https
// mirror (refreshed every hour: only requests fetch).
func httpsFeedConfig(t *testing.T) (path string, m *httpsMirror) {
	t.Helper()
	path, _, feedDir := feedConfig(t)
	m = newHTTPSMirror(t, feedDir)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), `source: "file://`+feedDir+`/manifest.json"`,
		fmt.Sprintf(`source: "%s/feed/manifest.json", ca: %s`, m.srv.URL, m.ca), 1)
	cfg = strings.Replace(cfg, "refresh: 1m", "refresh: 1h", 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, m
}

// TestRefreshOutlivesItsClient: an admin's refresh whose client goes away
// (Ctrl-C, the CLI's time bound) returns at once; the round completes as
// the daemon's own and is not counted as a refusal of the feed.
func TestRefreshOutlivesItsClient(t *testing.T) {
	path, mirror := httpsFeedConfig(t)
	d := runDaemon(t, path, &recorder{name: "a"})
	waitFor(t, "the feed fetched at start", func() bool { st := d.feeds.Load().mgr.States(); return st[0].Verified })

	mirror.hold()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := d.RefreshFeeds(ctx, []string{"lab"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("refresh whose client gave up: %v", err)
	}
	mirror.release()
	metrics := regexpListen(t, path)
	waitFor(t, "the round to complete", func() bool {
		_, body := scrape(t, metrics)
		return strings.Contains(body, `gatehouse_feed_updates_total{feed="lab",result="unchanged"} 1`+"\n")
	})
	_, body := scrape(t, metrics)
	if !strings.Contains(body, `gatehouse_feed_updates_total{feed="lab",result="fetch_error"} 0`+"\n") {
		t.Errorf("an abandoned client counted as a fetch error:\n%s", grepLines(body, "fetch_error"))
	}
	if st := d.feeds.Load().mgr.States()[0]; st.LastResult != rules.ResultUnchanged {
		t.Errorf("the round after the client left: %q %q, want unchanged", st.LastResult, st.LastError)
	}
}

// TestRefreshDeduplicatedAndSpaced: ?feed=lab&feed=lab… fetches once;
// a refresh within the minimum gap answers the last outcome again, marked
// reused, without fetching; so does one asked while a round runs.
func TestRefreshDeduplicatedAndSpaced(t *testing.T) {
	path, mirror := httpsFeedConfig(t)
	d := runDaemon(t, path, &recorder{name: "a"})
	waitFor(t, "the feed fetched at start", func() bool { return d.feeds.Load().mgr.States()[0].Verified })
	before := mirror.manifestGets()

	out, err := d.RefreshFeeds(context.Background(), []string{"lab", "lab", "lab", "lab"})
	if err != nil || len(out) != 1 || out[0].Reused || out[0].Result != rules.ResultUnchanged {
		t.Fatalf("refresh of lab four times: %+v %v, want one fresh outcome", out, err)
	}
	if got := mirror.manifestGets() - before; got != 1 {
		t.Errorf("manifest fetched %d times for one request naming lab four times", got)
	}
	out, err = d.RefreshFeeds(context.Background(), nil)
	if err != nil || len(out) != 1 || !out[0].Reused || out[0].At.IsZero() {
		t.Fatalf("refresh right after: %+v %v, want the last outcome, reused", out, err)
	}
	if got := mirror.manifestGets() - before; got != 1 {
		t.Errorf("manifest fetched %d times, want 1: the second refresh came within the gap", got)
	}
}

// TestAdminSocketOnlyForRoot: with no grant to another user the admin
// socket is created 0600, and a request from another user is refused by
// its credentials, saying why, even when the socket's permissions were
// loosened.
func TestAdminSocketOnlyForRoot(t *testing.T) {
	netns.RequirePriv(t)
	curl := netns.RequireTool(t, "curl", "curl")
	d, dir, _, stop := start(t, &recorder{name: "a"})
	defer stop()
	sock := filepath.Join(dir, "admin.sock")
	waitFor(t, "the admin socket", func() bool { _, err := os.Stat(sock); return err == nil })
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v %v, want mode 0600", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".admin-") {
			t.Errorf("temporary directory %s left beside the socket", e.Name())
		}
	}
	// Loosened, as an admin's chmod or a bind mount might.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	ask := func(uid uint32) (string, error) {
		cmd := exec.Command(curl, "-sS", "-f", "--max-time", "5", "--unix-socket", sock, "http://gatehouse/status")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := ask(65534); err == nil || strings.Contains(out, "generation") || !strings.Contains(out, "403") {
		t.Errorf("uid 65534 on a loosened socket: %v\n%s", err, out)
	}
	if out, err := ask(0); err != nil || !strings.Contains(out, `"generation": 1`) {
		t.Errorf("root on the socket: %v\n%s", err, out)
	}
	_ = d
}

func regexpListen(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(b), `metrics: {listen: "`)
	rest := string(b)[i+len(`metrics: {listen: "`):]
	return rest[:strings.Index(rest, `"`)]
}

// TestAdminSocketOwnedOnce: a second daemon does not take over the admin
// socket of a running one, and a stale socket file is replaced.
func TestAdminSocketOwnedOnce(t *testing.T) {
	d, dir, _, stop := start(t, &recorder{name: "a"})
	defer stop()
	sock := filepath.Join(dir, "admin.sock")
	waitFor(t, "the admin socket", func() bool { _, err := os.Stat(sock); return err == nil })
	// Bounded: were the socket taken over, serveAdmin would serve until ctx ends.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	err := d.serveAdmin(ctx2, sock, false)
	if !errors.Is(err, ErrAdminSocketInUse) {
		t.Fatalf("second serveAdmin on a live socket = %v, want ErrAdminSocketInUse", err)
	}

	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody answers
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.serveAdmin(ctx, stale, false) }()
	waitFor(t, "the stale socket to be served again", func() bool {
		c, err := net.Dial("unix", stale)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serveAdmin over a stale socket: %v", err)
	}
}
