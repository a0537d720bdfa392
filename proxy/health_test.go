package proxy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// deadURL is the address of a backend that is not there:
// connecting to it is refused.
func deadURL(t testing.TB) string {
	// A socket bound but never listening holds its port for the test: a
	// connection to it is refused, and no listener started meanwhile (this
	// test's or another's) can be given the port, as a closed one could.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// slammer accepts connections and closes them at once, counting them: a
// backend that is reachable but never answers.
type slammer struct {
	ln       net.Listener
	accepted atomic.Int64
}

func newSlammer(t testing.TB) *slammer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &slammer{ln: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return s
}

func (s *slammer) url() string { return "http://" + s.ln.Addr().String() }

// breaker reads a request's body completely, then drops the connection
// without an answer: the request reached it, whatever happened there.
type breaker struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newBreaker(t testing.TB) *breaker {
	b := &breaker{}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		buf := make([]byte, 4096)
		for {
			if _, err := r.Body.Read(buf); err != nil {
				break
			}
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	}))
	t.Cleanup(b.srv.Close)
	return b
}

// accessLines returns the access log's entries, decoded.
func (h *harness) accessEntries(want string) []map[string]any {
	h.t.Helper()
	var out []map[string]any
	for _, line := range h.access.WaitLines(want) {
		m := map[string]any{}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			h.t.Fatalf("access log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// backendUp reads gatehouse_backend_up for one backend; -1 when absent.
func backendUp(t testing.TB, reg *prometheus.Registry, route, index string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_backend_up" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route_index"] == route && labels["backend_index"] == index {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

func registry(t testing.TB, h *harness) *prometheus.Registry {
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(h.srv); err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestFailover sends requests to a route whose first backend refuses
// connections: every one is served by the second, bodies included (nothing
// of them was sent), the dead one is skipped afterwards and reported down.
func TestFailover(t *testing.T) {
	good := newBackend(t, "good")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backends: []string{deadURL(t), good.url()}},
		policy.Route{Tenant: "acme", Path: "/post", Backends: []string{deadURL(t), good.url()}}))
	reg := registry(t, h)
	if v := backendUp(t, reg, "0", "0"); v != 1 {
		t.Fatalf("backend 0 before any request: up %v, want 1", v)
	}
	acme := h.client(h.pki.acme, false)
	// A route's first request goes to its first backend: this body meets
	// the refused connection before it is sent to the second.
	body := strings.Repeat("order;", 1000)
	r := h.mustDo(acme, "web", "POST", "", "/post", nil, strings.NewReader(body))
	if r.status != 200 || r.echo.BodyLen != len(body) {
		t.Errorf("POST: %d, backend saw %d body bytes, want %d", r.status, r.echo.BodyLen, len(body))
	}
	for i := range 5 {
		if r := h.mustDo(acme, "web", "GET", "", "/x", nil, nil); r.status != 200 || r.echo.Backend != "good" {
			t.Fatalf("GET %d: %d from %q", i, r.status, r.echo.Backend)
		}
	}
	if good.hits.Load() != 6 {
		t.Errorf("good backend hits %d, want 6", good.hits.Load())
	}
	var entries []map[string]any
	waitFor(func() bool {
		entries = nil
		for _, e := range h.accessEntries(`"route":"/"`) {
			if e["route"] == "/" {
				entries = append(entries, e)
			}
		}
		return len(entries) == 5
	})
	attempts := 0
	for _, e := range entries {
		if e["backend"] != 1.0 {
			t.Errorf("access log names backend %v, want 1: %v", e["backend"], e)
		}
		attempts += int(e["attempts"].(float64))
	}
	// Only the first request found the dead backend up.
	if len(entries) != 5 || attempts != 6 {
		t.Errorf("%d attempts over %d requests, want 6", attempts, len(entries))
	}
	if v := backendUp(t, reg, "0", "0"); v != 0 {
		t.Errorf("dead backend: up %v, want 0", v)
	}
	if v := backendUp(t, reg, "0", "1"); v != 1 {
		t.Errorf("good backend: up %v, want 1", v)
	}
}

// TestNoRetryAfterSend: a request whose body reached a backend that then
// failed is answered 502, not sent again; a GET without a body is retried.
func TestNoRetryAfterSend(t *testing.T) {
	brk := newBreaker(t)
	brkGet := newBreaker(t)
	good := newBackend(t, "good")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/post", Backends: []string{brk.srv.URL, good.url()}},
		policy.Route{Tenant: "acme", Path: "/get", Backends: []string{brkGet.srv.URL, good.url()}}))
	acme := h.client(h.pki.acme, false)
	// Each route's first request goes to its first backend.
	r := h.mustDo(acme, "web", "POST", "", "/post", nil, strings.NewReader("debit account 42"))
	if r.status != http.StatusBadGateway {
		t.Errorf("POST whose body was sent: status %d, want 502", r.status)
	}
	if brk.hits.Load() != 1 || good.hits.Load() != 0 {
		t.Errorf("POST reached breaker %d times and the good backend %d times, want 1 and 0", brk.hits.Load(), good.hits.Load())
	}
	r = h.mustDo(acme, "web", "GET", "", "/get", nil, nil)
	if r.status != 200 || r.echo.Backend != "good" {
		t.Errorf("GET: %d from %q, want 200 from the good backend", r.status, r.echo.Backend)
	}
	if brkGet.hits.Load() != 1 {
		t.Errorf("GET reached its breaker %d times, want 1", brkGet.hits.Load())
	}
	// The breaker is skipped now: the next POST goes to the good backend.
	r = h.mustDo(acme, "web", "POST", "", "/post", nil, strings.NewReader("debit account 43"))
	if r.status != 200 || r.echo.Backend != "good" || brk.hits.Load() != 1 {
		t.Errorf("POST after the failure: %d from %q, breaker hits %d", r.status, r.echo.Backend, brk.hits.Load())
	}
}

// TestAllBackendsDown: once every backend failed, requests get 502 without
// any backend being contacted until the back-off ends.
func TestAllBackendsDown(t *testing.T) {
	a, b := newSlammer(t), newSlammer(t)
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backends: []string{a.url(), b.url()}}))
	acme := h.client(h.pki.acme, false)
	if r := h.mustDo(acme, "web", "GET", "", "/", nil, nil); r.status != http.StatusBadGateway {
		t.Fatalf("first request: status %d, want 502", r.status)
	}
	if a.accepted.Load() != 1 || b.accepted.Load() != 1 {
		t.Fatalf("first request tried a %d and b %d times, want once each", a.accepted.Load(), b.accepted.Load())
	}
	for range 3 {
		r := h.mustDo(acme, "web", "GET", "", "/", nil, nil)
		if r.status != http.StatusBadGateway || !strings.Contains(r.body, "no backend available") {
			t.Errorf("with all down: %d %q", r.status, r.body)
		}
	}
	if a.accepted.Load() != 1 || b.accepted.Load() != 1 {
		t.Errorf("backends contacted while down: a %d, b %d", a.accepted.Load(), b.accepted.Load())
	}
	last := h.accessEntries(`"attempts":0`)
	if len(last) != 4 || last[3]["backend"] != -1.0 {
		t.Errorf("access log: %v", last)
	}
}

// TestActiveHealth: a backend failing its health path is skipped though it
// would answer requests, and taken again once the check passes.
func TestActiveHealth(t *testing.T) {
	var sick atomic.Bool
	var checks atomic.Int64
	mk := func(name string, sickOK bool) (*httptest.Server, *atomic.Int64) {
		var hits atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" {
				checks.Add(1)
				if sickOK && sick.Load() {
					http.Error(w, "draining", http.StatusServiceUnavailable)
				}
				return
			}
			hits.Add(1)
			w.Write([]byte(name))
		}))
		t.Cleanup(srv.Close)
		return srv, &hits
	}
	a, aHits := mk("a", true)
	b, _ := mk("b", false)
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backends: []string{a.URL, b.URL}, HealthPath: "/healthz", HealthInterval: 20 * time.Millisecond}))
	reg := registry(t, h)
	acme := h.client(h.pki.acme, false)
	if !waitFor(func() bool { return checks.Load() >= 4 }) {
		t.Fatal("no health checks")
	}
	sick.Store(true)
	if !waitFor(func() bool { return backendUp(t, reg, "0", "0") == 0 }) {
		t.Fatal("failing health check did not mark backend 0 down")
	}
	before := aHits.Load()
	for range 6 {
		if r := h.mustDo(acme, "web", "GET", "", "/", nil, nil); r.status != 200 || r.body != "b" {
			t.Fatalf("while a is down: %d %q", r.status, r.body)
		}
	}
	if aHits.Load() != before {
		t.Errorf("backend a served %d requests while its health check failed", aHits.Load()-before)
	}
	sick.Store(false)
	if !waitFor(func() bool { return backendUp(t, reg, "0", "0") == 1 }) {
		t.Fatal("passing health check did not bring backend 0 back")
	}
	for range 6 {
		if r := h.mustDo(acme, "web", "GET", "", "/", nil, nil); r.status != 200 {
			t.Fatalf("after recovery: %d %q", r.status, r.body)
		}
	}
	if aHits.Load() == before {
		t.Error("backend a not used again after its health check passed")
	}
}

// TestHealthChecksStopOnApply re-applies a listener with health checks many
// times: the goroutines (checkers and their backend connections) of each
// replaced generation end, and a policy without health paths stops all
// checking.
func TestHealthChecksStopOnApply(t *testing.T) {
	var checks atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			checks.Add(1)
		}
	}))
	t.Cleanup(srv.Close)
	other := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(other.Close)
	withHealth := func(gen uint64) *policy.Policy {
		return &policy.Policy{Generation: gen, Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS,
			policy.Route{Tenant: "acme", Backends: []string{srv.URL, other.URL}, HealthPath: "/healthz", HealthInterval: 10 * time.Millisecond})}}
	}
	h := newHarness(t, testLimits(), withHealth(1).Listeners...)
	if !waitFor(func() bool { return checks.Load() >= 3 }) {
		t.Fatal("no health checks")
	}
	settle := func() int {
		// Let connections the previous generation closed finish ending.
		n := runtime.NumGoroutine()
		for range 100 {
			time.Sleep(10 * time.Millisecond)
			m := runtime.NumGoroutine()
			if m == n {
				return n
			}
			n = m
		}
		return n
	}
	base := settle()
	for gen := uint64(2); gen < 22; gen++ {
		n := checks.Load()
		if err := h.srv.Apply(withHealth(gen)); err != nil {
			t.Fatal(err)
		}
		// Let this generation check and keep its connection idle.
		if !waitFor(func() bool { return checks.Load() >= n+2 }) {
			t.Fatal("new generation does not check")
		}
	}
	// Twenty generations leaking two checkers each would be 40 more, and
	// their idle backend connections 3 goroutines each (both ends).
	if !waitFor(func() bool { return runtime.NumGoroutine() <= base+4 }) {
		t.Errorf("goroutines %d after 20 reloads, %d before", runtime.NumGoroutine(), base)
	}
	if err := h.srv.Apply(&policy.Policy{Generation: 30, Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backends: []string{srv.URL, other.URL}})}}); err != nil {
		t.Fatal(err)
	}
	// Apply returns after the old generation's checkers ended; the last
	// check of each may still be on its way to the backend (its client
	// gave up, the request was sent), so one may arrive afterwards.
	// Checkers still running would make ten in ten intervals.
	n := checks.Load()
	time.Sleep(100 * time.Millisecond) // ten intervals
	if got := checks.Load(); got > n+1 {
		t.Errorf("%d health checks after a policy without health paths", got-n)
	}
}

// TestHealthSurvivesReload: a reload of the same listener keeps a failed
// backend out instead of trying it again at once.
func TestHealthSurvivesReload(t *testing.T) {
	dead := newSlammer(t)
	good := newBackend(t, "good")
	l := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backends: []string{dead.url(), good.url()}})
	h := newHarness(t, testLimits(), l)
	acme := h.client(h.pki.acme, false)
	if r := h.mustDo(acme, "web", "GET", "", "/", nil, nil); r.status != 200 || dead.accepted.Load() != 1 {
		t.Fatalf("first request: %d, dead backend contacted %d times", r.status, dead.accepted.Load())
	}
	for gen := uint64(2); gen < 5; gen++ {
		if err := h.srv.Apply(&policy.Policy{Generation: gen, Listeners: []policy.Listener{l}}); err != nil {
			t.Fatal(err)
		}
		// Round robin would pick the first backend now and then.
		for range 2 {
			if r := h.mustDo(acme, "web", "GET", "", "/", nil, nil); r.status != 200 {
				t.Fatalf("after reload %d: %d", gen, r.status)
			}
		}
	}
	if n := dead.accepted.Load(); n != 1 {
		t.Errorf("failed backend contacted %d times across reloads, want 1", n)
	}
	if v := backendUp(t, registry(t, h), "0", "0"); v != 0 {
		t.Errorf("failed backend after reloads: up %v, want 0", v)
	}
}

// TestReusedConnectionFailure: a backend dropping a kept-alive connection
// with a request on it (as one does when its idle timeout strikes as the
// request goes out) answers 502 for that request, which was sent and is not
// retried, but is not marked down: its next new connection works.
func TestReusedConnectionFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if i > 0 {
						return // the second request on a connection is dropped
					}
					served.Add(1)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\ndropper")
				}
			}()
		}
	}()
	good := newBackend(t, "good")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backends: []string{"http://" + ln.Addr().String(), good.url()}}))
	acme := h.client(h.pki.acme, false)
	post := func() result {
		return h.mustDo(acme, "web", "POST", "", "/", nil, strings.NewReader("payload"))
	}
	if r := post(); r.status != 200 || r.body != "dropper" {
		t.Fatalf("first: %d %q", r.status, r.body)
	}
	if r := post(); r.status != 200 || r.echo.Backend != "good" {
		t.Fatalf("second: %d %q", r.status, r.body)
	}
	if r := post(); r.status != http.StatusBadGateway || good.hits.Load() != 1 {
		t.Fatalf("third (dropped on the kept-alive connection): %d, good backend hits %d", r.status, good.hits.Load())
	}
	if r := post(); r.status != 200 || r.echo.Backend != "good" {
		t.Fatalf("fourth: %d %q", r.status, r.body)
	}
	if r := post(); r.status != 200 || r.body != "dropper" || served.Load() != 2 {
		t.Errorf("fifth: %d %q, dropper served %d, want its second new connection", r.status, r.body, served.Load())
	}
}
