package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// headerRecorder is a backend that keeps the header fields and trailers of
// every request as they arrived.
type headerRecorder struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []http.Header // header fields, with the trailers under "Trailer:" names
}

func newHeaderRecorder(t testing.TB) *headerRecorder {
	hr := &headerRecorder{}
	hr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // trailers arrive after the body
		h := r.Header.Clone()
		for k, v := range r.Trailer {
			h["Trailer:"+k] = v
		}
		hr.mu.Lock()
		hr.got = append(hr.got, h)
		hr.mu.Unlock()
	}))
	t.Cleanup(hr.srv.Close)
	return hr
}

func (hr *headerRecorder) all() []http.Header {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return slices.Clone(hr.got)
}

// TestHeaderNamesOutsideTokenDropped: a header name with '_' (or anything
// but letters, digits and '-') never reaches the backend, whatever the
// client and protocol, and the identity headers the proxy sets cannot be
// spoofed by any spelling, nor by a trailer. The drop is logged at debug.
func TestHeaderNamesOutsideTokenDropped(t *testing.T) {
	curl := netns.RequireTool(t, "curl", "curl")
	hr := newHeaderRecorder(t)
	logs := &testkit.LogBuffer{}
	h := &harness{t: t, pki: newPKI(t), access: &testkit.LogBuffer{}, logs: logs}
	srv, err := proxy.New(proxy.Config{
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TLS:    h.pki.src,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	t.Cleanup(func() { srv.Close() })
	if err := srv.Apply(&policy.Policy{Generation: 1, Listeners: []policy.Listener{
		listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: hr.srv.URL})}}); err != nil {
		t.Fatal(err)
	}
	spoof := http.Header{
		"X_Gatehouse_Tenant":        {"globex"},
		"X-Gatehouse_Tenant":        {"globex"},
		"X.Gatehouse.Tenant":        {"globex"},
		"X-Gatehouse-Tenant":        {"globex"},
		"X_client_cert_fingerprint": {"00ff"},
		"X_Custom":                  {"1"},
		"X~Tenant":                  {"globex"},
		"X-Ordinary":                {"kept"},
	}
	for _, h2 := range []bool{false, true} {
		req, _ := http.NewRequest("GET", "https://"+h.addr("web")+"/", nil)
		req.Header = spoof.Clone()
		resp, err := h.client(h.pki.acme, h2).Do(req)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		resp.Body.Close()
	}
	// HTTP/1.1 by hand: lower and upper case, and identity headers as
	// trailers of a chunked body.
	c := h.rawTLS(h.pki.acme, "web")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nx-gatehouse-tenant: globex\r\nX-GATEHOUSE-TENANT: globex\r\n"+
		"x_gatehouse_tenant: globex\r\nX-Ordinary: kept\r\nTrailer: X-Gatehouse-Tenant, X_Trailer\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"3\r\nabc\r\n0\r\nX-Gatehouse-Tenant: globex\r\nX_Trailer: globex\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("hand-written request: %v %v", resp, err)
	}
	// curl, over both protocols.
	dir := t.TempDir()
	cert, key := writePEM(t, dir, "acme", h.pki.acme)
	ca := writeCAPEM(t, dir, "server-ca", h.pki.serverCA)
	_, port, _ := net.SplitHostPort(h.addr("web"))
	for _, proto := range []string{"--http1.1", "--http2"} {
		out, err := exec.Command(curl, "--silent", "--show-error", "--max-time", "10", proto, "--cacert", ca,
			"--cert", cert, "--key", key, "--resolve", "a.example:"+port+":127.0.0.1", "-o", "/dev/null",
			"-H", "X_Gatehouse_Tenant: globex", "-H", "X-Gatehouse-Tenant: globex", "-H", "X-Ordinary: kept",
			"https://a.example:"+port+"/").CombinedOutput()
		if err != nil {
			t.Fatalf("curl %s: %v: %s", proto, err, out)
		}
	}
	got := hr.all()
	if len(got) != 5 {
		t.Fatalf("backend saw %d requests, want 5", len(got))
	}
	for i, hdr := range got {
		for name := range hdr {
			if strings.ContainsAny(name, "_.~") {
				t.Errorf("request %d: backend saw %q", i, name)
			}
			if strings.HasPrefix(name, "Trailer:") {
				t.Errorf("request %d: backend saw the trailer %q = %q", i, name, hdr[name])
			}
		}
		if v := hdr.Values("X-Gatehouse-Tenant"); !slices.Equal(v, []string{"acme"}) {
			t.Errorf("request %d: backend saw X-Gatehouse-Tenant %q, want [acme]", i, v)
		}
		if v := hdr.Values("X-Client-Cert-Fingerprint"); !slices.Equal(v, []string{fingerprint(h.pki.acme)}) {
			t.Errorf("request %d: backend saw X-Client-Cert-Fingerprint %q", i, v)
		}
		if v := hdr.Get("X-Ordinary"); v != "kept" {
			t.Errorf("request %d: an ordinary header was lost (%q)", i, v)
		}
	}
	var line string
	for _, l := range logs.WaitLines("request header fields dropped") {
		if strings.Contains(l, "request header fields dropped") {
			line = l
			break
		}
	}
	for _, want := range []string{"level=DEBUG", "listener=web", "tenant=acme", "count=6", "X_custom"} {
		if !strings.Contains(line, want) {
			t.Errorf("debug line %q lacks %q", line, want)
		}
	}
}

// TestOneHeaderOverTheLimit: a request whose head is over max_header_size
// gets 431 over HTTP/1.1 and HTTP/2, from Go's client and curl, also when
// one field alone is over the limit, and reaches no backend. Within 4 KiB
// past the limit the handler answers, with an access log line; further
// past it, over HTTP/1.1, the framing guard (TestHeadEndedPastTheLimit).
func TestOneHeaderOverTheLimit(t *testing.T) {
	curl := netns.RequireTool(t, "curl", "curl")
	b := newBackend(t, "a")
	l := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()})
	l.Limits = policyLimits() // max_header_size 16 KiB
	h := newHarness(t, testLimits(), l)
	dir := t.TempDir()
	cert, key := writePEM(t, dir, "acme", h.pki.acme)
	ca := writeCAPEM(t, dir, "server-ca", h.pki.serverCA)
	_, port, _ := net.SplitHostPort(h.addr("web"))
	many := http.Header{}
	for i := range 9 {
		many.Set(fmt.Sprintf("X-Many-%d", i), strings.Repeat("m", 2000))
	}
	tests := []struct {
		name   string
		hdr    http.Header
		status int
	}{
		{"under the limit", http.Header{"X-Big": {strings.Repeat("b", 12<<10)}}, 200},
		{"one field over the limit", http.Header{"X-Big": {strings.Repeat("b", 18<<10)}}, 431},
		{"many fields over the limit", many, 431},
	}
	for _, tc := range tests {
		for _, h2 := range []bool{false, true} {
			r, err := h.do(h.client(h.pki.acme, h2), "web", "GET", "", "/", tc.hdr, nil)
			if err != nil || r.status != tc.status {
				t.Errorf("Go client, h2=%v, %s: status %d, %v; want %d", h2, tc.name, r.status, err, tc.status)
			}
		}
		for _, proto := range []string{"--http1.1", "--http2"} {
			args := []string{"--silent", "--show-error", "--max-time", "10", proto, "--cacert", ca, "--cert", cert, "--key", key,
				"--resolve", "a.example:" + port + ":127.0.0.1", "-o", "/dev/null", "-w", "%{http_code}"}
			for k, v := range tc.hdr {
				args = append(args, "-H", k+": "+v[0])
			}
			out, err := exec.Command(curl, append(args, "https://a.example:"+port+"/")...).CombinedOutput()
			if err != nil || string(out) != fmt.Sprint(tc.status) {
				t.Errorf("curl %s, %s: %q %v, want %d", proto, tc.name, out, err, tc.status)
			}
		}
	}
	// Over HTTP/1.1, far past the limit too (the framing guard answers it).
	if r, err := h.do(h.client(h.pki.acme, false), "web", "GET", "", "/", http.Header{"X-Big": {strings.Repeat("b", 70<<10)}}, nil); err != nil || r.status != 431 {
		t.Errorf("HTTP/1.1, one 70 KiB field: status %d, %v; want 431", r.status, err)
	}
	// With the default limit of 64 KiB, a field longer than a line the
	// framing guard once allowed.
	def := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()}))
	for _, size := range []int{100 << 10, 200 << 10} {
		if r, err := def.do(def.client(def.pki.acme, false), "web", "GET", "", "/", http.Header{"X-Big": {strings.Repeat("b", size)}}, nil); err != nil || r.status != 431 {
			t.Errorf("HTTP/1.1, limit 64 KiB, one %d KiB field: status %d, %v; want 431", size>>10, r.status, err)
		}
	}
	if got := b.hits.Load(); got != 4 {
		t.Errorf("backend saw %d requests, want only the 4 under the limit", got)
	}
	if n := h.access.Occurrences(`"status":431,`); n < 8 || n != h.access.Occurrences(`"reason":"request header fields too large"`) {
		t.Errorf("access log: %d lines with status 431, want 8 or more, each with its reason", n)
	}
}
