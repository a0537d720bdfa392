package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// recorder is a component that remembers every generation it was given and
// refuses the ones it is told to.
type recorder struct {
	name   string
	mu     sync.Mutex
	seen   []uint64
	got    []*policy.Policy // what seen numbers
	refuse func(*policy.Policy) bool
	closed bool
}

func (r *recorder) Name() string { return r.name }
func (r *recorder) Apply(p *policy.Policy) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != nil && r.refuse(p) {
		return fmt.Errorf("%s refuses generation %d", r.name, p.Generation)
	}
	r.seen = append(r.seen, p.Generation)
	r.got = append(r.got, p)
	return nil
}
func (r *recorder) Close() error { r.closed = true; return nil }

// lastPolicy is the last generation taken, nil before any.
func (r *recorder) lastPolicy() *policy.Policy {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.got) == 0 {
		return nil
	}
	return r.got[len(r.got)-1]
}
func (r *recorder) last() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) == 0 {
		return 0
	}
	return r.seen[len(r.seen)-1]
}

// freePort returns an address for the daemon to listen on: a port the
// kernel just gave out, on a random address of 127/8. The daemon binds it
// itself a moment later. On 127.0.0.1 any other test or process on the
// machine asking for a port could be given the same one meanwhile; on an
// address of its own only a wildcard bind of that very port could.
//
// No port is handed out twice in one test binary: the configuration refuses
// two listeners on one port whatever their addresses, and two random
// addresses of 127/8 may well be given the same port by the kernel.
func freePort(t *testing.T) string {
	t.Helper()
	givenPorts.Lock()
	defer givenPorts.Unlock()
	for range 20 {
		addr := testkit.FreeLoopbackAddr(t)
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		if !givenPorts.m[ap.Port()] {
			givenPorts.m[ap.Port()] = true
			return addr
		}
	}
	t.Fatal("no loopback port not handed out before")
	return ""
}

var givenPorts = struct {
	sync.Mutex
	m map[uint16]bool
}{m: map[uint16]bool{}}

// writeConfig writes a minimal valid configuration and returns its path.
func writeConfig(t *testing.T, dir, metrics, static string) string {
	t.Helper()
	for _, f := range []string{"ca.pem", "server.pem", "server.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s
metrics: {listen: "%[2]s"}
shutdown_grace: 1s
admin_socket: %[1]s/admin.sock
static_ranges: [%[3]s]
tenants: [{id: acme, client_ca: %[1]s/ca.pem}]
listeners:
  - {name: web, listen: "127.0.0.1:1443", protocol: https, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key,
     routes: [{tenant: acme, backend: "http://127.0.0.1:1"}]}
`, dir, metrics, static)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func start(t *testing.T, comps ...Component) (*Daemon, string, string, func() error) {
	t.Helper()
	dir := t.TempDir()
	metrics := freePort(t)
	path := writeConfig(t, dir, metrics, "203.0.113.0/24")
	d, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(*Env) ([]Component, error) { return comps, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	waitReady(t, metrics)
	return d, dir, metrics, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("daemon did not stop")
		}
	}
}

func waitReady(t *testing.T, metrics string) {
	t.Helper()
	waitFor(t, "the daemon to be ready", func() bool {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func TestReloadBadConfigKeepsOldState(t *testing.T) {
	a := &recorder{name: "a"}
	d, dir, metrics, stop := start(t, a)
	if a.last() != 1 {
		t.Fatalf("first generation not applied: %v", a.seen)
	}
	// A good reload moves every component to generation 2.
	writeConfig(t, dir, metrics, "198.51.100.0/24")
	if err := d.Reload(); err != nil {
		t.Fatalf("good reload: %v", err)
	}
	if a.last() != 2 || !d.Policy().Admitted.Contains(mustAddr("198.51.100.9")) {
		t.Fatalf("good reload not in force: seen %v", a.seen)
	}
	// A broken file is refused: nothing reaches the components.
	if err := os.WriteFile(filepath.Join(dir, "gatehouse.yaml"), []byte("tenants: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(); err == nil {
		t.Fatal("broken config reloaded")
	}
	if a.last() != 2 || d.Policy().Generation != 2 {
		t.Errorf("broken reload changed state: seen %v, generation %d", a.seen, d.Policy().Generation)
	}
	if got := testutil.ToFloat64(d.m.reloads.WithLabelValues("error")); got != 1 {
		t.Errorf("config_reloads_total{result=error} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(d.m.reloads.WithLabelValues("ok")); got != 1 {
		t.Errorf("config_reloads_total{result=ok} = %v, want 1", got)
	}
	// Still serving.
	resp, err := http.Get("http://" + metrics + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("not ready after refused reload: %v", err)
	}
	if err := stop(); err != nil {
		t.Errorf("Run returned %v after cancel, want nil", err)
	}
	if !a.closed {
		t.Error("component not closed on stop")
	}
}

func TestReloadRollsBackEarlierLayers(t *testing.T) {
	a := &recorder{name: "a"}
	b := &recorder{name: "b", refuse: func(p *policy.Policy) bool { return p.Admitted.Contains(mustAddr("192.0.2.1")) }}
	d, dir, metrics, stop := start(t, a, b)
	defer stop()
	writeConfig(t, dir, metrics, "192.0.2.0/24")
	err := d.Reload()
	if err == nil || !strings.Contains(err.Error(), "to b") {
		t.Fatalf("reload refused by b should fail naming b, got %v", err)
	}
	// a took generation 2, then was given generation 1 back.
	if got := a.seen; len(got) != 3 || got[1] != 2 || got[2] != 1 {
		t.Errorf("a saw %v, want [1 2 1]", got)
	}
	if b.last() != 1 || d.Policy().Generation != 1 {
		t.Errorf("b at %d, daemon at %d; want 1", b.last(), d.Policy().Generation)
	}
}

// TestFailedRollbackIsNotReady: when a layer that took the new generation
// cannot be given the previous one back, the daemon does not claim the old
// generation holds: /readyz fails and the error says the layers are split,
// until a configuration applies to every layer again.
// splitLayers starts a daemon with two components and leaves them split: a
// reload that a takes and b refuses, and a refuses to roll back.
// aRefusesOld.Store(false) lets a take any generation again.
func splitLayers(t *testing.T) (d *Daemon, a blind, b *recorder, aRefusesOld *atomic.Bool, dir, metrics string) {
	t.Helper()
	wide := func(p *policy.Policy) bool { return p.Admitted.Contains(mustAddr("192.0.2.1")) }
	aRefusesOld = new(atomic.Bool)
	a = blind{&recorder{name: "a", refuse: func(p *policy.Policy) bool { return aRefusesOld.Load() && !wide(p) }}}
	b = &recorder{name: "b", refuse: wide}
	d, dir, metrics, stop := start(t, a, b)
	t.Cleanup(func() { stop() })
	aRefusesOld.Store(true)
	writeConfig(t, dir, metrics, "192.0.2.0/24")
	if err := d.Reload(); !errors.Is(err, errSplit) {
		t.Fatalf("reload whose rollback failed: %v, want errSplit", err)
	}
	return d, a, b, aRefusesOld, dir, metrics
}

func TestFailedRollbackIsNotReady(t *testing.T) {
	d, _, _, aRefusesOld, dir, metrics := splitLayers(t)
	readyz := func() int {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := readyz(); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with split layers: %d, want 503", code)
	}
	aRefusesOld.Store(false)
	writeConfig(t, dir, metrics, "198.51.100.0/24")
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if code := readyz(); code != http.StatusOK {
		t.Errorf("/readyz after a reload that applied to every layer: %d, want 200", code)
	}
}

// TestFeedUpdateRealignsSplitLayers: while layers are left on different
// generations, a feed update goes to every layer, the range-blind ones
// included, so that readiness comes back only when all agree.
func TestFeedUpdateRealignsSplitLayers(t *testing.T) {
	d, a, b, aRefusesOld, _, _ := splitLayers(t)
	aRefusesOld.Store(false)
	p := *d.current.Load()
	p.Generation += 100
	p.Admitted = policy.Admitted{V4: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}
	if err := d.applyRanges(plan{p: &p}, d.current.Load()); err != nil {
		t.Fatal(err)
	}
	if a.last() != p.Generation || b.last() != p.Generation {
		t.Errorf("after a feed update on split layers: a at %d, b at %d, want %d", a.last(), b.last(), p.Generation)
	}
	if d.split.Load() {
		t.Error("still split after every layer took the generation")
	}
}

func TestFirstApplyFailureIsFatal(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, freePort(t), "203.0.113.0/24")
	bad := &recorder{name: "xdp", refuse: func(*policy.Policy) bool { return true }}
	d, err := New(Options{ConfigPath: path, Logger: quietLogger(), Build: func(*Env) ([]Component, error) { return []Component{bad}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "xdp refuses") {
		t.Fatalf("Run = %v, want the refusal", err)
	}
	if d.Policy() != nil {
		t.Error("a policy is reported in force although none was applied")
	}
}

func TestMetricsExposition(t *testing.T) {
	_, _, metrics, stop := start(t, &recorder{name: "a"})
	defer stop()
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`gatehouse_admitted_prefixes{family="ipv4",feed="static"} 1`,
		`gatehouse_config_reloads_total{result="error"} 0`,
		`gatehouse_policy_apply_seconds_count{layer="a"} 1`,
		"go_goroutines", "process_open_fds",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
	problems, err := promlint.New(strings.NewReader(string(body))).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestRealComponentsExposition builds the real certificate and proxy
// components (the kernel layers need root and have their own tests) and
// lints everything they register together: a clash of metric names panics
// here instead of at the daemon's start.
func TestRealComponentsExposition(t *testing.T) {
	ca := certstest.NewCA(t, "acme")
	srv := ca.Server(t, "localhost")
	dir := t.TempDir()
	cfg := fmt.Sprintf(`
enforcement: {xdp: "off", nftables: false}
state_dir: %[1]s
metrics: {listen: "%[2]s"}
tenants: [{id: acme, client_ca: %[3]s}]
listeners:
  - {name: web, listen: "%[4]s", protocol: https, server_cert: %[5]s, server_key: %[6]s,
     routes: [{tenant: acme, backend: "http://127.0.0.1:1"}]}
`, dir, freePort(t), ca.CertFile, freePort(t), srv.CertFile, srv.KeyFile)
	path := filepath.Join(dir, "gatehouse.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{ConfigPath: path, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	if err := d.apply(plan{p: d.current.Load()}, nil); err != nil {
		t.Fatal(err)
	}
	mfs, err := d.Gatherer().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"gatehouse_cert_expiry_timestamp_seconds", "gatehouse_policy_apply_seconds", "gatehouse_config_reloads_total"} {
		if !names[want] {
			t.Errorf("real components do not expose %s", want)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestSystemdNotify listens where systemd would and checks the sequence:
// READY=1 once the first policy is in force, WATCHDOG=1 while running,
// STOPPING=1 on the way out.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	path := writeConfig(t, dir, freePort(t), "203.0.113.0/24")
	d, err := New(Options{ConfigPath: path, Logger: quietLogger(), NotifySocket: sock, WatchdogUSec: "100000",
		Build: func(*Env) ([]Component, error) { return []Component{&recorder{name: "a"}}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	read := func() string {
		buf := make([]byte, 512)
		ln.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	if msg := read(); !strings.HasPrefix(msg, "READY=1") {
		t.Fatalf("first notification %q, want READY=1", msg)
	}
	if d.Policy() == nil {
		t.Error("READY=1 sent before the policy was in force")
	}
	if msg := read(); msg != "WATCHDOG=1" {
		t.Errorf("second notification %q, want WATCHDOG=1", msg)
	}
	cancel()
	for {
		if msg := read(); msg == "STOPPING=1" {
			break
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
	}{{"", "", 0}, {"30000000", "", 15 * time.Second}, {"30000000", "1", 0}, {"x", "", 0}, {"-5", "", 0}} {
		if got := watchdogInterval(tc.usec, tc.pid, 42); got != tc.want {
			t.Errorf("watchdogInterval(%q, %q) = %v, want %v", tc.usec, tc.pid, got, tc.want)
		}
	}
}

func TestReloadRefusesRestartOnlyKeys(t *testing.T) {
	a := &recorder{name: "a"}
	d, dir, _, stop := start(t, a)
	defer stop()
	path := filepath.Join(dir, "gatehouse.yaml")
	b, _ := os.ReadFile(path)
	moved := regexp.MustCompile(`metrics: \{listen: "[^"]+"\}`).ReplaceAllString(string(b), `metrics: {listen: "127.0.0.2:9477"}`)
	if err := os.WriteFile(path, []byte(moved), 0o600); err != nil {
		t.Fatal(err)
	}
	err := d.Reload()
	if !errors.Is(err, ErrNeedsRestart) || !strings.Contains(err.Error(), "metrics.listen") {
		t.Fatalf("Reload = %v, want ErrNeedsRestart naming metrics.listen", err)
	}
	if a.last() != 1 {
		t.Errorf("a refused reload reached a component: %v", a.seen)
	}
}
