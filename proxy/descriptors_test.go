package proxy_test

import (
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// lowerFileLimit sets this process's RLIMIT_NOFILE to what is open now
// plus room, and restores it when the test ends. The tests of this
// package run one at a time, so nothing else shares the lowered limit.
func lowerFileLimit(t *testing.T, room int) int {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	limit := len(ents) + room
	if uint64(limit) > old.Cur {
		t.Fatalf("the descriptor limit %d is too low for this test", old.Cur)
	}
	lowered := syscall.Rlimit{Cur: uint64(limit), Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	})
	return limit
}

// TestDescriptorReserve: with every descriptor the clients may take taken,
// the proxy closes new connections at once, says so once, and the
// control plane can still open its files.
func TestDescriptorReserve(t *testing.T) {
	echo := lineEcho(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	h := newHarness(t, testLimits(), raw)
	lowerFileLimit(t, 500)

	// Each session holds four descriptors of this process: the client,
	// the proxy's two, and the echo backend's.
	var sessions []*session
	for {
		s, err := h.dialSession(h.pki.acme, "raw")
		if err != nil {
			break
		}
		sessions = append(sessions, s)
		if len(sessions) > 500 {
			t.Fatal("the proxy never stopped taking connections")
		}
	}
	if len(sessions) < 50 {
		t.Fatalf("only %d sessions before the reserve: the reserve is larger than it should be", len(sessions))
	}
	for range 5 {
		if _, err := h.dialSession(h.pki.acme, "raw"); err == nil {
			t.Fatal("a connection was served within the reserve")
		}
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "descriptors"); v != 6 {
		t.Errorf("refusals for descriptors %v, want 6", v)
	}
	// The control plane: a certificate reload, an nftables batch, a feed
	// download need a few descriptors each.
	var files []*os.File
	for i := range 32 {
		f, err := os.Open("/proc/self/status")
		if err != nil {
			t.Fatalf("control-plane file %d could not be opened while clients hold everything they may: %v", i, err)
		}
		files = append(files, f)
	}
	for _, f := range files {
		f.Close()
	}
	if n := strings.Count(h.logs.String(), "descriptor reserve reached"); n != 1 {
		t.Errorf("%d lines say the reserve was reached, want 1:\n%s", n, h.logs.String())
	}
	// Sessions ending free the reserve again.
	for _, s := range sessions[:20] {
		s.c.Close()
	}
	if !waitFor(func() bool { _, err := h.dialSession(h.pki.acme, "raw"); return err == nil }) {
		t.Error("no connection served after sessions freed their descriptors")
	}
	if !strings.Contains(h.logs.String(), "descriptor reserve left") {
		t.Error("no line saying the reserve was left")
	}
	for i, s := range sessions[20:] {
		if err := s.ping(); err != nil {
			t.Errorf("session %d lost: %v", 20+i, err)
		}
	}
}

// TestAcceptErrorsRateLimited: when accept itself fails (every descriptor
// taken, here by files), the error is logged at most once in two seconds,
// with the count of lines held back, not once per retry.
func TestAcceptErrorsRateLimited(t *testing.T) {
	echo := lineEcho(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	h := newHarness(t, testLimits(), raw)
	lowerFileLimit(t, 100)
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for {
		f, err := os.Open("/dev/null")
		if err != nil {
			break
		}
		files = append(files, f)
	}
	// One descriptor for the client's socket; none for the proxy's accept.
	files[len(files)-1].Close()
	files = files[:len(files)-1]
	c, err := net.Dial("tcp", h.addr("raw"))
	if err != nil {
		t.Fatalf("dial with the last descriptor: %v", err)
	}
	defer c.Close()
	// The accept loop retries with backoff meanwhile; the log limiter
	// (0.5 lines a second, burst 1) writes the first error at once and the
	// next one, with the count of those it held back, two seconds later.
	start := time.Now()
	var logs string
	for deadline := start.Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if logs = h.logs.String(); strings.Contains(logs, "similar_lines_suppressed=") {
			break
		}
	}
	took := time.Since(start)
	for _, f := range files {
		f.Close()
	}
	files = nil
	n := strings.Count(logs, "accept failed")
	if n == 0 {
		t.Fatalf("no accept error logged:\n%s", logs)
	}
	if most := 2 + int(took.Seconds()*0.5); n > most {
		t.Errorf("%d accept error lines in %s, want at most %d (0.5 a second, burst 1):\n%s", n, took.Round(time.Millisecond), most, logs)
	}
	if !strings.Contains(logs, "similar_lines_suppressed=") {
		t.Errorf("no count of the lines held back:\n%s", logs)
	}
}

// TestDescriptorReserveBackends: one HTTP/2 connection can ask for a
// backend connection per stream. Within the descriptor reserve those are
// refused too, with 503 saying why, so that however many requests an
// identified client sends, the control plane can still open its files;
// the requests that got a backend are answered once it answers.
func TestDescriptorReserveBackends(t *testing.T) {
	addr, held, release := startHoldingBackend(t)
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: "http://" + addr})
	h := newHarness(t, testLimits(), web) // in_flight_per_tenant 256
	cl := h.client(h.pki.acme, true)
	if r := h.mustDo(cl, "web", "GET", "", "/warm", nil, nil); r.status != 200 || r.resp.Proto != "HTTP/2.0" {
		t.Fatalf("warm-up: %d %s", r.status, r.resp.Proto)
	}
	limit := lowerFileLimit(t, 200)

	const requests = 240
	type outcome struct {
		status int
		err    error
	}
	done := make(chan outcome, requests)
	for range requests {
		go func() {
			r, err := h.do(cl, "web", "GET", "", "/hold", nil, nil)
			done <- outcome{r.status, err}
		}()
	}
	var outcomes []outcome
	holding := 0
	deadline := time.After(30 * time.Second)
	for holding+len(outcomes) < requests {
		select {
		case <-held:
			holding++
		case o := <-done:
			outcomes = append(outcomes, o)
		case <-deadline:
			t.Fatalf("after 30s: %d requests held by the backend, %d answered, of %d", holding, len(outcomes), requests)
		}
	}
	// Every request now holds a backend connection or was answered.
	var files []*os.File
	for i := range 32 {
		f, err := os.Open("/proc/self/status")
		if err != nil {
			t.Errorf("control-plane file %d could not be opened while one client's requests hold what they may (limit %d): %v", i, limit, err)
			break
		}
		files = append(files, f)
	}
	for _, f := range files {
		f.Close()
	}
	release()
	for len(outcomes) < requests {
		outcomes = append(outcomes, <-done)
	}
	count := map[int]int{}
	for _, o := range outcomes {
		if o.err != nil {
			t.Errorf("request failed: %v", o.err)
			continue
		}
		count[o.status]++
	}
	t.Logf("limit %d: %d held by the backend; answers %v", limit, holding, count)
	if count[200] != holding || count[200]+count[503] != requests {
		t.Errorf("answers %v: want %d × 200 (those the backend held) and the rest 503", count, holding)
	}
	if count[503] == 0 {
		t.Error("no request was refused: the reserve was never reached")
	}
	if h.access.WaitLines(`"reason":"service unavailable: descriptor reserve reached"`) == nil {
		t.Error("no access log line gives the descriptor reserve as the reason")
	}
	if !strings.Contains(h.logs.String(), "descriptor reserve reached") {
		t.Error("no line saying the reserve was reached")
	}
}

// TestDescriptorsNeeded: the descriptors the listeners may hold count the
// backends' side too: one per tcp or terminal session, and on HTTPS and
// SOAP listeners one per upgraded connection, one per request in flight
// of each tenant (its own in_flight_per_tenant) and the idle connections
// of each backend.
func TestDescriptorsNeeded(t *testing.T) {
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: "127.0.0.1:9"})
	raw.Limits.MaxConns = 100
	web := listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/a", Backend: "http://127.0.0.1:9"},
		policy.Route{Tenant: "acme", Path: "/b", Backends: []string{"http://127.0.0.1:9", "http://127.0.0.1:10"}},
		policy.Route{Tenant: "globex", Backend: "http://127.0.0.1:9"})
	web.Limits.MaxConns, web.Limits.HTTP.MaxInFlight = 50, 20
	globex := web.Limits
	globex.HTTP.MaxInFlight = 5
	web.TenantLimits = map[string]policy.Limits{"globex": globex}
	got := proxy.DescriptorsNeeded(&policy.Policy{Listeners: []policy.Listener{raw, web}})
	want := 2*100 + 2*50 + 20 + 5 + httpproxy.MaxIdlePerBackend*(1+2+1)
	if got != want {
		t.Errorf("DescriptorsNeeded = %d, want %d", got, want)
	}
}
