package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// policyLimits are limits as the configuration resolves them: every key
// set, with small HTTP values for tests.
func policyLimits() policy.Limits {
	return policy.Limits{
		MaxConns: 100, MaxPreHandshake: 50, MaxPreHandshakePerSource: 50,
		HandshakeTimeout: 2 * time.Second, DrainTimeout: 2 * time.Second, MaxConnsPerTenant: 50,
		HTTP: policy.HTTPLimits{
			MaxInFlight: 64, MaxHeaderBytes: 16 << 10, MaxBodyBytes: 4096, BodyBufferBytes: 1024,
			ReadHeaderTimeout: 2 * time.Second, IdleTimeout: 10 * time.Second,
			BodyReadTimeout: 10 * time.Second, BackendTimeout: 10 * time.Second,
		},
		Telnet: policy.TelnetLimits{MaxSessionsPerTenant: 50},
	}
}

// blockingBackend holds every request until the test ends (or the request
// is cancelled) and reports each arrival on entered.
func blockingBackend(t testing.TB) (url string, entered chan struct{}) {
	entered = make(chan struct{}, 16)
	block := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { close(block); srv.Close() })
	return "http://" + ln.Addr().String(), entered
}

// TestHTTPLimitsPerTenant: the per-request limits come from the listener's
// compiled policy, and a tenant's override applies to that tenant only.
func TestHTTPLimitsPerTenant(t *testing.T) {
	b := newBackend(t, "a")
	slow, entered := blockingBackend(t)
	l := listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/", Backend: b.url()},
		policy.Route{Tenant: "globex", Path: "/", Backend: b.url()},
		policy.Route{Tenant: "globex", Path: "/slow", Backend: slow})
	l.Limits = policyLimits()
	g := policyLimits()
	g.HTTP.MaxBodyBytes = 1024
	g.HTTP.BodyBufferBytes = 512
	g.HTTP.BackendTimeout = 200 * time.Millisecond
	g.HTTP.BodyReadTimeout = 300 * time.Millisecond
	g.HTTP.MaxInFlight = 1
	l.TenantLimits = map[string]policy.Limits{"globex": g}
	h := newHarness(t, testLimits(), l)
	acme, globex := h.client(h.pki.acme, false), h.client(h.pki.globex, false)

	if r := h.mustDo(acme, "web", "POST", "", "/", nil, bytes.NewReader(make([]byte, 2048))); r.status != 200 || r.echo.BodyLen != 2048 {
		t.Errorf("acme, 2 KiB body under its 4 KiB limit: status %d, backend got %d bytes", r.status, r.echo.BodyLen)
	}
	if r := h.mustDo(acme, "web", "POST", "", "/", nil, bytes.NewReader(make([]byte, 4097))); r.status != 413 {
		t.Errorf("acme, body over the listener's max_body_size: status %d, want 413", r.status)
	}
	hits := b.hits.Load()
	if r := h.mustDo(globex, "web", "POST", "", "/", nil, bytes.NewReader(make([]byte, 2048))); r.status != 413 {
		t.Errorf("globex, 2 KiB body over its own 1 KiB limit: status %d, want 413", r.status)
	}
	if b.hits.Load() != hits {
		t.Error("globex's oversize body reached the backend")
	}
	if r := h.mustDo(globex, "web", "GET", "", "/slow", nil, nil); r.status != http.StatusGatewayTimeout {
		t.Errorf("globex, backend slower than its backend_timeout: status %d, want 504", r.status)
	}
	<-entered
	code, _ := rawExchange(t, h.rawTLS(h.pki.globex, "web"),
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"+strings.Repeat("x", 50))
	if code != http.StatusRequestTimeout {
		t.Errorf("globex, body stalled past its body_read_timeout: status %d, want 408", code)
	}

	// globex may have one request in flight; acme is not held by it.
	done := make(chan result, 1)
	go func() {
		r, _ := h.do(h.client(h.pki.globex, false), "web", "GET", "", "/slow/held", nil, nil)
		done <- r
	}()
	<-entered
	if r := h.mustDo(globex, "web", "GET", "", "/", nil, nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("globex over its in_flight_per_tenant of 1: status %d, want 503", r.status)
	}
	if r := h.mustDo(acme, "web", "GET", "", "/", nil, nil); r.status != 200 {
		t.Errorf("acme while globex is at its in-flight limit: status %d, want 200", r.status)
	}
	if r := <-done; r.status != http.StatusGatewayTimeout {
		t.Errorf("held globex request: status %d, want 504", r.status)
	}
}

// TestBodyBuffering: a body up to body_buffer_size is read whole before
// the backend sees anything of the request, so one that breaks off, stalls
// or goes over the limit never half-arrives; a longer one streams, and
// when it goes over max_body_size on the way the backend never gets a
// request that looks complete.
func TestBodyBuffering(t *testing.T) {
	world := func(t *testing.T) (*harness, *backend) {
		b := newBackend(t, "a")
		l := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()})
		l.Limits = policyLimits()
		l.Limits.HTTP.MaxBodyBytes = 64 << 10
		l.Limits.HTTP.BodyBufferBytes = 1024
		l.Limits.HTTP.BodyReadTimeout = 300 * time.Millisecond
		return newHarness(t, testLimits(), l), b
	}
	chunked := func(parts ...string) string {
		var s strings.Builder
		for _, p := range parts {
			fmt.Fprintf(&s, "%x\r\n%s\r\n", len(p), p)
		}
		return s.String()
	}
	x := func(n int) string { return strings.Repeat("x", n) }
	big := x(16 << 10)
	tests := []struct {
		name   string
		req    string
		close  bool // the client closes its side after req
		status int
		// hits is how many requests the backend may see start; whole,
		// whether it must get the whole body, and chunkedTo whether it
		// came chunked (else with its length).
		hits      int64
		whole     bool
		chunkedTo bool
	}{
		{"buffered chunked body", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(x(300), x(300)) + "0\r\n\r\n", false, 200, 1, true, false},
		{"buffered body with length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n" + x(1024), false, 200, 1, true, false},
		{"streamed chunked body", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(big, big, big) + "0\r\n\r\n", false, 200, 1, true, true},
		{"streamed body with length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 49152\r\n\r\n" + big + big + big, false, 200, 1, true, false},
		{"bad chunk within the buffer", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(x(300)) + "zz\r\n" + x(100), false, 400, 0, false, false},
		{"stalled within the buffer", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 800\r\n\r\n" + x(400), false, 408, 0, false, false},
		{"cut off within the buffer", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 800\r\n\r\n" + x(400), true, 0, 0, false, false},
		{"declared length over max_body_size", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n", false, 413, 0, false, false},
		{"chunked over max_body_size while streaming", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(big, big, big, big, big) + "0\r\n\r\n", false, 413, 1, false, false},
		{"stalled while streaming", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 49152\r\n\r\n" + big, false, 408, 1, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, b := world(t)
			c := h.rawTLS(h.pki.acme, "web")
			if tc.close {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, tc.req)
				c.CloseWrite()
				io.ReadAll(c)
			} else if code, _ := rawExchange(t, c, tc.req); code != tc.status {
				t.Fatalf("status %d, want %d", code, tc.status)
			}
			// The access log line comes once the proxy is done with the
			// request; closing the backend then waits for whatever of it
			// reached the backend, so the counts below are final.
			if !waitFor(func() bool { return h.access.Occurrences(`"msg":"request"`) == 1 }) {
				t.Fatal("no access log line for the request")
			}
			b.srv.Close()
			if got := b.hits.Load(); got > tc.hits || tc.whole && got != 1 {
				t.Errorf("backend saw %d requests start, want at most %d", got, tc.hits)
			}
			if got := b.complete.Load(); got != 0 != tc.whole {
				t.Errorf("backend read %d complete bodies, want whole=%v", got, tc.whole)
			}
			if !tc.whole {
				return
			}
			b.mu.Lock()
			te, cl := b.last.TransferEncoding, b.last.ContentLength
			b.mu.Unlock()
			if chunkedTo := len(te) > 0; chunkedTo != tc.chunkedTo || !chunkedTo && cl != int64(len(b.lastBody())) {
				t.Errorf("backend got Transfer-Encoding %q, Content-Length %d for %d bytes", te, cl, len(b.lastBody()))
			}
		})
	}
}
