package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

// backend is a real HTTP server standing for an internal host. It answers
// with what it received, so tests can see exactly what crossed the proxy.
type backend struct {
	name string
	srv  *httptest.Server
	hits atomic.Int64

	mu       sync.Mutex
	last     *http.Request
	body     []byte
	complete atomic.Int64 // requests whose body was read to its end
}

type echo struct {
	Backend string      `json:"backend"`
	Path    string      `json:"path"`
	Query   string      `json:"query"`
	Header  http.Header `json:"header"`
	BodyLen int         `json:"body_len"`
	Proto   string      `json:"proto"`
}

func newBackend(t testing.TB, name string) *backend {
	b := &backend{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	body, err := io.ReadAll(r.Body)
	if err == nil {
		b.complete.Add(1)
	}
	b.mu.Lock()
	b.last = r
	b.body = body
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(echo{Backend: b.name, Path: r.URL.Path, Query: r.URL.RawQuery,
		Header: r.Header, BodyLen: len(body), Proto: r.Proto})
}

func (b *backend) url() string { return b.srv.URL }

func (b *backend) lastBody() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.body
}

type harness struct {
	t      testing.TB
	pki    *pki
	srv    *proxy.Server
	access *testkit.LogBuffer
	logs   *testkit.LogBuffer // the proxy's own log, as text
}

var loopback = netip.MustParseAddr("127.0.0.1")

// newHarness runs listeners on a new Server; limits replace the test
// limits of every listener that has them (as listener makes them).
func newHarness(t testing.TB, limits policy.Limits, listeners ...policy.Listener) *harness {
	t.Helper()
	h := &harness{t: t, pki: newPKI(t), access: &testkit.LogBuffer{}, logs: &testkit.LogBuffer{}}
	if _, bench := t.(*testing.B); bench {
		h.logs.Discard(true)
	}
	srv, err := proxy.New(proxy.Config{
		Logger:    slog.New(slog.NewTextHandler(h.logs, nil)),
		TLS:       h.pki.src,
		AccessLog: slog.New(slog.NewJSONHandler(h.access, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	t.Cleanup(func() { srv.Close() })
	for i := range listeners {
		if listeners[i].Limits == testLimits() {
			listeners[i].Limits = limits
		}
	}
	if err := srv.Apply(&policy.Policy{Generation: 1, Listeners: listeners}); err != nil {
		t.Fatal(err)
	}
	return h
}

func listener(name string, proto policy.Protocol, routes ...policy.Route) policy.Listener {
	return policy.Listener{Name: name, Addr: loopback, Port: 0, Protocol: proto, Routes: routes, Limits: testLimits()}
}

func (h *harness) addr(name string) string {
	h.t.Helper()
	a, ok := h.srv.Addr(name)
	if !ok {
		h.t.Fatalf("listener %q not running", name)
	}
	return a.String()
}

// client is an HTTPS client presenting cert, HTTP/2 when h2 is set.
func (h *harness) client(cert tls.Certificate, h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   h.pki.clientTLS(cert, "localhost"),
		ForceAttemptHTTP2: h2,
		DisableKeepAlives: false,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type result struct {
	status int
	body   string
	echo   echo
	resp   *http.Response
}

func (h *harness) do(c *http.Client, listenerName, method, host, path string, hdr http.Header, body io.Reader) (result, error) {
	req, err := http.NewRequest(method, "https://"+h.addr(listenerName)+path, body)
	if err != nil {
		return result{}, err
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return result{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := result{status: resp.StatusCode, body: string(b), resp: resp}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		json.Unmarshal(b, &r.echo)
	}
	return r, nil
}

func (h *harness) mustDo(c *http.Client, listenerName, method, host, path string, hdr http.Header, body io.Reader) result {
	h.t.Helper()
	r, err := h.do(c, listenerName, method, host, path, hdr, body)
	if err != nil {
		h.t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	return r
}

// rawTLS opens a TLS connection speaking HTTP/1.1 for hand-written requests.
func (h *harness) rawTLS(cert tls.Certificate, listenerName string) *tls.Conn {
	h.t.Helper()
	c, err := tls.Dial("tcp", h.addr(listenerName), h.pki.clientTLS(cert, "localhost", "http/1.1"))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// rawExchange writes req and returns the status of the first response, or
// 0 when the connection closed without one.
func rawExchange(t testing.TB, c *tls.Conn, req string) (int, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return 0, ""
	}
	var buf bytes.Buffer
	tmp := make([]byte, 4096)
	for {
		n, err := c.Read(tmp)
		buf.Write(tmp[:n])
		if i := bytes.Index(buf.Bytes(), []byte("\r\n\r\n")); i >= 0 {
			var code int
			fmt.Sscanf(buf.String(), "HTTP/1.1 %d", &code)
			return code, buf.String()
		}
		if err != nil {
			return 0, buf.String()
		}
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testLimits are the configuration's defaults, with the timeouts tests
// wait for made short.
func testLimits() policy.Limits {
	return policy.Limits{
		MaxConns:                 10_000,
		MaxPreHandshake:          1_000,
		MaxPreHandshakePerSource: 64,
		HandshakeTimeout:         2 * time.Second,
		DrainTimeout:             2 * time.Second,
		MaxConnsPerTenant:        2_000,
		HTTP: policy.HTTPLimits{
			MaxInFlight:       256,
			MaxHeaderBytes:    64 << 10,
			MaxBodyBytes:      32 << 20,
			BodyBufferBytes:   1 << 20,
			ReadHeaderTimeout: 300 * time.Millisecond,
			IdleTimeout:       120 * time.Second,
			BodyReadTimeout:   30 * time.Second,
			BackendTimeout:    60 * time.Second,
			Engine:            testEngine,
		},
		TCP: policy.StreamLimits{IdleTimeout: time.Hour, MaxSession: 24 * time.Hour},
		Telnet: policy.TelnetLimits{
			StreamLimits:         policy.StreamLimits{IdleTimeout: 30 * time.Minute, MaxSession: 12 * time.Hour},
			MaxSessionsPerTenant: 500,
		},
	}
}

// waitFor polls cond for up to five seconds, for effects that trail the
// client's view (logs, counters written after the response).
func waitFor(cond func() bool) bool {
	for range 500 {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}
