package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// budgetWorld is a listener of each kind whose request bodies share a small
// budget: 256 KiB per listener, bodies read whole up to 64 KiB.
func budgetWorld(t *testing.T, backendURL string) *harness {
	lim := func(l policy.Listener) policy.Listener {
		l.Limits = policyLimits()
		l.Limits.HTTP.MaxBodyBytes = 4 << 20
		l.Limits.HTTP.BodyBufferBytes = 64 << 10
		l.Limits.HTTP.BodyBufferTotal = 256 << 10
		l.Limits.HTTP.BodyBufferTimeout = 30 * time.Second
		l.Limits.HTTP.BodyReadTimeout = 30 * time.Second
		return l
	}
	web := lim(listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: backendURL}))
	soap := lim(listener("services", policy.ProtoSOAP, policy.Route{Tenant: "acme", Backend: backendURL, SOAPActions: []string{"urn:acme:Get"}}))
	soap.Port = freePort(t)
	return newHarness(t, testLimits(), web, soap)
}

// stall sends a request head and the first part of its body, and leaves
// the connection open without the rest. The proxy may refuse it meanwhile
// (the budget is full) and close: then the write fails, as it may.
func stall(t *testing.T, h *harness, listenerName, head, part string) *tls.Conn {
	t.Helper()
	c := h.rawTLS(h.pki.acme, listenerName)
	io.WriteString(c, head+part)
	return c
}

// TestBodyBuffersHaveABudget: the request bodies a listener holds in
// memory (bodies read whole, SOAP envelopes) share the listener's
// body_buffer_total. Stalled bodies that fill it cannot take more: the
// next request that needs a buffer gets 503 at once, which the log says
// once, while the held bytes show in gatehouse_http_body_buffer_bytes; when
// they go, requests pass again. The review held 69 MiB with 64 stalled
// bodies, and up to 276 MiB per tenant were possible, for hours.
func TestBodyBuffersHaveABudget(t *testing.T) {
	b := newBackend(t, "a")
	h := budgetWorld(t, b.url())
	part := strings.Repeat("x", 60<<10) // two chunks of 32 KiB each
	head := "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n", len(part))
	var stalled []*tls.Conn
	for range 4 {
		stalled = append(stalled, stall(t, h, "web", head, part))
	}
	if !waitFor(func() bool { return h.metric("gatehouse_http_body_buffer_bytes", "web") == 256<<10 }) {
		t.Errorf("body buffer bytes %v, want 256 KiB held by the four stalled bodies", h.metric("gatehouse_http_body_buffer_bytes", "web"))
	}
	c := h.rawTLS(h.pki.acme, "web")
	code, answer := exchange(t, c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	if code != http.StatusServiceUnavailable || !strings.Contains(answer, "request body buffers full") {
		t.Errorf("a request past the budget: status %d %q, want 503", code, answer)
	}
	if h.access.WaitLines(`"reason":"request body buffers full"`) == nil {
		t.Error("no access log line with the reason")
	}
	// A request without a body needs no buffer.
	if code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
		t.Errorf("a request without a body beside full buffers: status %d, want 200", code)
	}
	// Another listener has its own budget.
	env := soapEnvelope("Get", "urn:acme")
	soap := fmt.Sprintf("POST /svc HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:acme:Get\"\r\nContent-Length: %d\r\n\r\n%s", len(env), env)
	if code, _ := exchange(t, h.rawTLS(h.pki.acme, "services"), soap); code != 200 {
		t.Errorf("a SOAP call on another listener: status %d, want 200", code)
	}
	if got := b.hits.Load(); got != 2 {
		t.Errorf("backend saw %d requests, want the two that passed", got)
	}
	for _, c := range stalled {
		c.Close()
	}
	if !waitFor(func() bool { return h.metric("gatehouse_http_body_buffer_bytes", "web") == 0 }) {
		t.Fatalf("body buffer bytes %v after the stalled clients left, want 0", h.metric("gatehouse_http_body_buffer_bytes", "web"))
	}
	if code, _ := exchange(t, h.rawTLS(h.pki.acme, "web"), "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"); code != 200 {
		t.Errorf("a request once the buffers are free: status %d, want 200", code)
	}
	if n := h.logs.Occurrences("request body buffers full"); n != 1 {
		t.Errorf("%d log lines for the budget filling up, want 1", n)
	}
	if h.logs.WaitLines("request body buffers available again") == nil {
		t.Error("no log line when the budget had room again")
	}

	// SOAP envelopes count too.
	envHead := "POST /svc HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:acme:Get\"\r\nTransfer-Encoding: chunked\r\n\r\n"
	open := `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><Get xmlns="urn:acme">` + strings.Repeat("<i>x</i>", 7000)
	for range 5 {
		stalled = append(stalled, stall(t, h, "services", envHead, fmt.Sprintf("%x\r\n%s\r\n", len(open), open)))
	}
	if !waitFor(func() bool { return h.metric("gatehouse_http_body_buffer_bytes", "services") >= 192<<10 }) {
		t.Fatalf("SOAP body buffer bytes %v, want the stalled envelopes' 192 KiB or more", h.metric("gatehouse_http_body_buffer_bytes", "services"))
	}
	if got := h.metric("gatehouse_http_body_buffer_bytes", "services"); got > 256<<10 {
		t.Errorf("SOAP body buffer bytes %v, over the budget", got)
	}
}

// TestBufferedBodyMustArriveInTime: a body read whole must arrive within
// body_buffer_timeout in all, or the request gets 408 and reaches no
// backend; a client sending a byte well within body_read_timeout each time
// cannot hold its buffer beyond that. A streamed body keeps only the idle
// bound, and its buffered start goes back to the budget once forwarded.
func TestBufferedBodyMustArriveInTime(t *testing.T) {
	read := make(chan int, 64)
	var once sync.Once
	release := make(chan struct{})
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.CopyN(io.Discard, r.Body, 100<<10)
		read <- int(n)
		<-release
		io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(be.Close)
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	lim := policyLimits()
	lim.HTTP.MaxBodyBytes = 4 << 20
	lim.HTTP.BodyBufferBytes = 64 << 10
	lim.HTTP.BodyBufferTotal = 8 << 20
	lim.HTTP.BodyBufferTimeout = time.Second
	lim.HTTP.BodyReadTimeout = 10 * time.Second
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: be.URL})
	web.Limits = lim
	soap := listener("services", policy.ProtoSOAP, policy.Route{Tenant: "acme", Backend: be.URL, SOAPActions: []string{"urn:acme:Get"}})
	soap.Limits = lim
	soap.Port = freePort(t)
	h := newHarness(t, testLimits(), web, soap)

	trickle := func(listenerName, head, body string) int {
		c := h.rawTLS(h.pki.acme, listenerName)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, head)
		done := make(chan struct{})
		defer close(done)
		go func() {
			// A byte every 100 ms for up to 5 s, then the rest: never idle
			// long, and whole in the end.
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := 0; i < len(body); i++ {
				if i == 50 {
					io.WriteString(c, body[i:])
					return
				}
				if _, err := io.WriteString(c, body[i:i+1]); err != nil {
					return
				}
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		}()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", listenerName, err)
		}
		return resp.StatusCode
	}
	body := strings.Repeat("x", 200)
	if code := trickle("web", fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", len(body)), body); code != http.StatusRequestTimeout {
		t.Errorf("a trickled body: status %d, want 408", code)
	}
	env := soapEnvelope("Get", "urn:acme") + strings.Repeat(" ", 100)
	if code := trickle("services", fmt.Sprintf("POST /svc HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:acme:Get\"\r\nContent-Length: %d\r\n\r\n", len(env)), env); code != http.StatusRequestTimeout {
		t.Errorf("a trickled SOAP envelope: status %d, want 408", code)
	}
	if h.access.WaitLines(`"reason":"request body timed out"`) == nil {
		t.Error("no access log line with the reason")
	}

	// A streamed body: its first 64 KiB are read whole, then it goes on as
	// it comes; once the backend has read past them, they are given back
	// while the request goes on.
	c := h.rawTLS(h.pki.acme, "web")
	c.SetDeadline(time.Now().Add(20 * time.Second))
	big := strings.Repeat("y", 150<<10)
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 1<<20, big)
	select {
	case n := <-read:
		if n != 100<<10 {
			t.Fatalf("backend read %d bytes", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the streamed body did not reach the backend")
	}
	if !waitFor(func() bool { return h.metric("gatehouse_http_body_buffer_bytes", "web") == 0 }) {
		t.Errorf("body buffer bytes %v while the streamed body goes on, want 0: its start was forwarded", h.metric("gatehouse_http_body_buffer_bytes", "web"))
	}
	once.Do(func() { close(release) })
	c.Close()
}
