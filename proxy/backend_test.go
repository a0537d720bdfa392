package proxy_test

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestReencryptToBackend proxies to an HTTPS backend that only trusts the
// proxy's own client certificate, verifying the backend against its CA.
func TestReencryptToBackend(t *testing.T) {
	internalCA := newCA(t, "internal ca")
	proxyCA := newCA(t, "proxy client ca")
	dir := t.TempDir()
	caFile := writeCAPEM(t, dir, "internal-ca", internalCA)
	certFile, keyFile := writePEM(t, dir, "proxy-client", proxyCA.issue(t, "gatehouse-proxy", false))
	otherCAFile := writeCAPEM(t, dir, "other-ca", newCA(t, "other"))

	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "backend saw "+r.TLS.PeerCertificates[0].Subject.CommonName+" for "+r.Header.Get("X-Gatehouse-Tenant"))
	}))
	be.TLS = &tls.Config{
		Certificates: []tls.Certificate{internalCA.issue(t, "backend", true, "127.0.0.1")},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    proxyCA.pool(),
	}
	be.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
	be.StartTLS()
	t.Cleanup(be.Close)

	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/", Backend: be.URL, BackendCA: caFile, BackendCert: certFile, BackendKey: keyFile},
		policy.Route{Tenant: "acme", Path: "/nocert", Backend: be.URL, BackendCA: caFile},
		policy.Route{Tenant: "acme", Path: "/wrongca", Backend: be.URL, BackendCA: otherCAFile, BackendCert: certFile, BackendKey: keyFile},
	))
	acme := h.client(h.pki.acme, false)
	if r := h.mustDo(acme, "web", "GET", "", "/x", nil, nil); r.status != 200 || r.body != "backend saw gatehouse-proxy for acme" {
		t.Errorf("re-encrypted request: %d %q", r.status, r.body)
	}
	for _, p := range []string{"/nocert", "/wrongca"} {
		if r := h.mustDo(acme, "web", "GET", "", p, nil, nil); r.status != http.StatusBadGateway {
			t.Errorf("%s: status %d, want 502", p, r.status)
		}
	}
}

func TestTimeoutsAndHeaderLimit(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	b := newBackend(t, "a")
	lim := testLimits()
	lim.HTTP.BackendTimeout = 200 * time.Millisecond
	lim.HTTP.IdleTimeout = 200 * time.Millisecond
	lim.HTTP.MaxHeaderBytes = 4096 // net/http allows 4 KiB of slack on top
	h := newHarness(t, lim, listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/", Backend: b.url()},
		policy.Route{Tenant: "acme", Path: "/slow", Backend: slow.URL}))
	acme := h.client(h.pki.acme, false)
	if r := h.mustDo(acme, "web", "GET", "", "/slow", nil, nil); r.status != http.StatusGatewayTimeout {
		t.Errorf("backend over its timeout: status %d, want 504", r.status)
	}
	big := http.Header{"X-Big": {strings.Repeat("b", 20000)}}
	if r := h.mustDo(acme, "web", "GET", "", "/", big, nil); r.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversize header: status %d, want 431", r.status)
	}
	if b.hits.Load() != 0 {
		t.Error("oversize header reached the backend")
	}
	// An idle keep-alive connection is closed by the server.
	c := h.rawTLS(h.pki.acme, "web")
	if code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
		t.Fatalf("status %d", code)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Error("idle connection not closed by the server")
	}
}
