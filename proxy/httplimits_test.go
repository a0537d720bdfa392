package proxy_test

import (
	"bytes"
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
