package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestSmugglingAttempts(t *testing.T) {
	tests := []struct {
		name string
		req  string
		// status is what the proxy answers; hits is how many requests the
		// backend may see start: a bad chunk is found only while the body
		// streams, and the backend then sees the body end in an error.
		status int
		hits   int64
	}{
		{"obs-fold header", "POST /ok HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400, 0},
		{"space before colon", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc", 400, 0},
		{"two different Content-Length", "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, 0},
		{"Content-Length list", "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", 400, 0},
		{"transfer-coding other than chunked", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, 0},
		{"two Transfer-Encoding", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400, 0},
		{"bad chunk size", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400, 1},
		{"chunk longer than its size", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n", 400, 1},
		{"Content-Length and chunked", "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n", 400, 0},
		{"chunked and Content-Length", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400, 0},
		{"obs-fold in Transfer-Encoding", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\nabc", 400, 0},
		{"obs-fold in trailer", "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: a\r\n b\r\n\r\n", 400, 1},
		{"HTTP/1.0 with chunked", "POST /ok HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n", 400, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, "a")
			h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
				policy.Route{Tenant: "acme", Path: "/ok", Backend: b.url()}))
			before := b.hits.Load()
			code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"), tc.req)
			if code != tc.status {
				t.Errorf("status %d, want %d", code, tc.status)
			}
			if got := b.hits.Load() - before; got > tc.hits {
				t.Errorf("backend saw %d requests, at most %d allowed", got, tc.hits)
			}
			if b.complete.Load() != 0 {
				t.Errorf("backend read a complete body of a malformed request")
			}
		})
	}
}

// TestFramingRefusalIsLogged: net/http answers a refused head with 400
// and says nothing; the proxy's log names the listener, tenant, source
// and what was ambiguous.
func TestFramingRefusalIsLogged(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/ok", Backend: b.url()}))
	req := "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
	if code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"), req); code != 400 {
		t.Fatalf("status %d, want 400", code)
	}
	var line string
	for _, l := range h.logs.WaitLines("HTTP request refused") {
		if strings.Contains(l, "HTTP request refused") {
			line = l
		}
	}
	for _, want := range []string{"listener=web", "tenant=acme", "source=127.0.0.1:", "ambiguous HTTP/1 request framing: content-length with transfer-encoding"} {
		if !strings.Contains(line, want) {
			t.Errorf("refusal line %q lacks %q", line, want)
		}
	}
}

// TestPipelinedSmugglingAfterGoodRequest sends a good request and, on the
// same connection, an ambiguous one: the first is answered, the second
// refused before anything of it reaches the backend.
func TestPipelinedSmugglingAfterGoodRequest(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/ok", Backend: b.url()}))
	c := h.rawTLS(h.pki.acme, "web")
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
	first, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, first.Body)
	if first.StatusCode != 200 || string(b.lastBody()) != "abc" {
		t.Fatalf("good request: status %d, backend body %q", first.StatusCode, b.lastBody())
	}
	io.WriteString(c, "POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	second, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.StatusCode != http.StatusBadRequest {
		t.Errorf("ambiguous request: status %d, want 400", second.StatusCode)
	}
	if b.hits.Load() != 1 {
		t.Errorf("backend saw %d requests, want 1", b.hits.Load())
	}
}

func TestSlowClientHeaderTimeout(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()}))
	c := h.rawTLS(h.pki.acme, "web")
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	// The server must end the connection on its own (ReadHeaderTimeout is
	// 300ms in testLimits); the 10s deadline only stops a broken test.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("server kept a connection with incomplete headers open")
	}
	if b.hits.Load() != 0 {
		t.Error("incomplete request reached the backend")
	}
}

func TestBodyLimit(t *testing.T) {
	b := newBackend(t, "a")
	lim := testLimits()
	lim.HTTP.MaxBodyBytes = 1024
	h := newHarness(t, lim, listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()}))
	acme := h.client(h.pki.acme, false)
	if r := h.mustDo(acme, "web", "POST", "", "/", nil, bytes.NewReader(make([]byte, 1024))); r.status != 200 || r.echo.BodyLen != 1024 {
		t.Fatalf("body at the limit: status %d, backend got %d bytes", r.status, r.echo.BodyLen)
	}
	hits := b.hits.Load()
	if r := h.mustDo(acme, "web", "POST", "", "/", nil, bytes.NewReader(make([]byte, 1025))); r.status != 413 {
		t.Errorf("declared oversize body: status %d, want 413", r.status)
	}
	if b.hits.Load() != hits {
		t.Error("declared oversize body reached the backend")
	}
	// Chunked: the size is only known while streaming.
	code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"),
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"+strings.Repeat("x", 0x800)+"\r\n0\r\n\r\n")
	if code != 413 {
		t.Errorf("chunked oversize body: status %d, want 413", code)
	}
	if n := len(b.lastBody()); n > 1024 {
		t.Errorf("backend received %d body bytes, over the limit", n)
	}
}

func TestBackendDownIs502(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: dead}))
	r := h.mustDo(h.client(h.pki.acme, false), "web", "GET", "", "/", nil, nil)
	if r.status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", r.status)
	}
	if strings.Contains(r.body, "127.0.0.1") {
		t.Errorf("502 body reveals the backend: %q", r.body)
	}
}

func TestInFlightLimitPerTenant(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	slow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	})}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go slow.Serve(ln)
	t.Cleanup(func() { slow.Close() })
	g := newBackend(t, "g")
	lim := testLimits()
	lim.HTTP.MaxInFlight = 1
	h := newHarness(t, lim, listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: "http://" + ln.Addr().String()},
		policy.Route{Tenant: "globex", Backend: g.url()}))
	acme := h.client(h.pki.acme, false)
	done := make(chan result, 1)
	go func() {
		r, _ := h.do(acme, "web", "GET", "", "/", nil, nil)
		done <- r
	}()
	<-entered
	if r := h.mustDo(h.client(h.pki.acme, false), "web", "GET", "", "/", nil, nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("acme over its in-flight limit: status %d, want 503", r.status)
	}
	if r := h.mustDo(h.client(h.pki.globex, false), "web", "GET", "", "/", nil, nil); r.status != 200 {
		t.Errorf("globex starved by acme: status %d", r.status)
	}
	close(release)
	if r := <-done; r.status != 200 {
		t.Errorf("first acme request: status %d", r.status)
	}
}

func TestConnectionLimitPerTenant(t *testing.T) {
	b := newBackend(t, "a")
	lim := testLimits()
	lim.MaxConnsPerTenant = 1
	h := newHarness(t, lim, listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()},
		policy.Route{Tenant: "globex", Backend: b.url()}))
	first := h.rawTLS(h.pki.acme, "web")
	if code, _ := rawExchange(t, first, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
		t.Fatalf("first acme connection: %d", code)
	}
	second := h.rawTLS(h.pki.acme, "web")
	if code, _ := rawExchange(t, second, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 0 {
		t.Errorf("second acme connection answered %d, want it closed", code)
	}
	other := h.rawTLS(h.pki.globex, "web")
	if code, _ := rawExchange(t, other, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
		t.Errorf("globex connection answered %d while acme is at its limit", code)
	}
	// Closing the first frees the slot.
	first.Close()
	if !waitFor(func() bool {
		c, err := tls.Dial("tcp", h.addr("web"), h.pki.clientTLS(h.pki.acme, "localhost", "http/1.1"))
		if err != nil {
			return false
		}
		defer c.Close()
		code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		return code == 200
	}) {
		t.Error("acme slot not freed after its connection closed")
	}
}

func TestSOAPThroughTLS(t *testing.T) {
	b := newBackend(t, "soap")
	h := newHarness(t, testLimits(), listener("services", policy.ProtoSOAP,
		policy.Route{Tenant: "acme", Backend: b.url(), SOAPActions: []string{"urn:acme:GetOrder"}}))
	env := `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetOrder xmlns="urn:acme"/></s:Body></s:Envelope>`
	for _, h2 := range []bool{false, true} {
		c := h.client(h.pki.acme, h2)
		hdr := http.Header{"Content-Type": {"text/xml; charset=utf-8"}, "Soapaction": {`"urn:acme:GetOrder"`}}
		if r := h.mustDo(c, "services", "POST", "", "/svc", hdr, strings.NewReader(env)); r.status != 200 || string(b.lastBody()) != env {
			t.Errorf("h2=%v good request: status %d, backend body %q", h2, r.status, b.lastBody())
		}
		hdr.Set("Soapaction", `"urn:acme:DeleteOrder"`)
		if r := h.mustDo(c, "services", "POST", "", "/svc", hdr, strings.NewReader(env)); r.status != 500 || !strings.Contains(r.body, "soap:Client") {
			t.Errorf("h2=%v forged action: status %d body %q", h2, r.status, r.body)
		}
	}
	if b.hits.Load() != 2 {
		t.Errorf("backend hits %d, want 2", b.hits.Load())
	}
}

func TestSlowBody(t *testing.T) {
	b := newBackend(t, "a")
	lim := testLimits()
	lim.HTTP.BodyReadTimeout = 300 * time.Millisecond
	h := newHarness(t, lim, listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()}))
	c := h.rawTLS(h.pki.acme, "web")
	// Half the promised body, then nothing: the proxy must give up by
	// itself (the 10 s deadline in rawExchange only stops a broken test).
	code, _ := rawExchange(t, c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"+strings.Repeat("x", 50))
	if code != http.StatusRequestTimeout {
		t.Errorf("stalled body: status %d, want 408", code)
	}
	if b.complete.Load() != 0 {
		t.Error("backend read a complete body")
	}
}

// TestRefusedBodyIsNotDrained: a refused request whose body never comes
// must not keep its connection waiting for it.
func TestRefusedBodyIsNotDrained(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/ok", Backend: b.url()}))
	c := h.rawTLS(h.pki.acme, "web")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"+strings.Repeat("x", 50))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 403 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	_, err = io.ReadAll(br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Error("connection kept waiting for the body of a refused request")
	}
}

// TestUpgradeWithoutConnectionTokenEndsConnection: the framing guard stops
// reading a connection once a request carries Upgrade, so such a request's
// connection must end after its answer even when Connection does not name
// upgrade (the proxy refuses it: no WebSocket handshake); a request
// pipelined behind it never reaches the backend.
func TestUpgradeWithoutConnectionTokenEndsConnection(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/ok", Backend: b.url()}))
	c := h.rawTLS(h.pki.acme, "web")
	before := b.hits.Load()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ok HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\n\r\n"+
		"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	br := bufio.NewReader(c)
	first, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, first.Body)
	first.Body.Close()
	if second, err := http.ReadResponse(br, nil); err == nil {
		t.Errorf("a second response (%d) came on the connection of an Upgrade request", second.StatusCode)
	}
	if first.StatusCode != 400 || !first.Close {
		t.Errorf("upgrade without Connection: upgrade: status %d close %v, want 400 and close", first.StatusCode, first.Close)
	}
	if got := b.hits.Load() - before; got != 0 {
		t.Errorf("backend saw %d requests, want none", got)
	}
}

// TestConnectionLimitPerTenantAcrossRename: connections_per_tenant counts a
// tenant's connections on the listener's address, so renaming the
// listener in a reload does not give the tenant a second share beside its
// open keep-alive connections.
func TestConnectionLimitPerTenantAcrossRename(t *testing.T) {
	b := newBackend(t, "a")
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()})
	web.Port = freePort(t)
	web.Limits.MaxConnsPerTenant = 2
	h := newHarness(t, web.Limits, web)
	var open []*tls.Conn
	for i := range 2 {
		c := h.rawTLS(h.pki.acme, "web")
		if code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
			t.Fatalf("acme connection %d: %d", i, code)
		}
		open = append(open, c)
	}
	web.Name = "portal"
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{web}}); err != nil {
		t.Fatal(err)
	}
	c := h.rawTLS(h.pki.acme, "portal")
	if code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 0 {
		t.Errorf("a third acme connection after the rename answered %d, want it closed at connections_per_tenant 2", code)
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "portal", "tenant_limit"); v != 1 {
		t.Errorf("tenant_limit refusals %v, want 1", v)
	}
	for _, c := range open {
		if code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
			t.Errorf("open keep-alive connection after the rename: %d", code)
		}
	}
	open[0].Close()
	if !waitFor(func() bool {
		c, err := tls.Dial("tcp", h.addr("portal"), h.pki.clientTLS(h.pki.acme, "localhost", "http/1.1"))
		if err != nil {
			return false
		}
		defer c.Close()
		code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		return code == 200
	}) {
		t.Error("acme slot not freed after one of its connections closed")
	}
}
