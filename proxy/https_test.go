package proxy_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

// routedWorld is two tenants on one https listener with four backends.
type routedWorld struct {
	*harness
	a, a2, a3, g *backend
}

func newRoutedWorld(t *testing.T) *routedWorld {
	w := &routedWorld{a: newBackend(t, "a"), a2: newBackend(t, "a2"), a3: newBackend(t, "a3"), g: newBackend(t, "g")}
	w.harness = newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/", Backend: w.a.url()},
		policy.Route{Tenant: "acme", Path: "/api", Backend: w.a2.url()},
		policy.Route{Tenant: "acme", Host: "special.example", Path: "/", Backend: w.a3.url()},
		policy.Route{Tenant: "globex", Path: "/g", Backend: w.g.url()},
	))
	return w
}

func (w *routedWorld) hits() map[string]int64 {
	return map[string]int64{"a": w.a.hits.Load(), "a2": w.a2.hits.Load(), "a3": w.a3.hits.Load(), "g": w.g.hits.Load()}
}

func TestRouting(t *testing.T) {
	w := newRoutedWorld(t)
	acme := w.client(w.pki.acme, false)
	globex := w.client(w.pki.globex, false)
	tests := []struct {
		name    string
		client  *http.Client
		host    string
		path    string
		status  int
		backend string
	}{
		{"acme root", acme, "", "/", 200, "a"},
		{"acme longest prefix", acme, "", "/api/v1/orders", 200, "a2"},
		{"acme prefix exact", acme, "", "/api", 200, "a2"},
		{"acme prefix is per segment", acme, "", "/apix", 200, "a"},
		{"acme named host", acme, "special.example", "/x", 200, "a3"},
		{"acme named host with port", acme, "SPECIAL.example:443", "/x", 200, "a3"},
		{"acme longer prefix beats host", acme, "special.example", "/api/x", 200, "a2"},
		{"globex own route", globex, "", "/g/x", 200, "g"},
		{"globex no route", globex, "", "/", 403, ""},
		{"globex prefix is per segment", globex, "", "/gx", 403, ""},
		{"dot segments refused", acme, "", "/api/../admin", 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := w.hits()
			r := w.mustDo(tc.client, "web", "GET", tc.host, tc.path, nil, nil)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tc.status, r.body)
			}
			after := w.hits()
			for name, n := range after {
				want := before[name]
				if name == tc.backend {
					want++
				}
				if n != want {
					t.Errorf("backend %s hits %d, want %d", name, n, want)
				}
			}
			if tc.backend != "" && r.echo.Backend != tc.backend {
				t.Errorf("answered by %q, want %q", r.echo.Backend, tc.backend)
			}
			if tc.status == 403 && !strings.Contains(r.body, "no route") {
				t.Errorf("403 body %q", r.body)
			}
		})
	}
	// The access log says why each refused request was refused, and gives
	// no reason for those a backend answered.
	reasons := map[string]int{}
	for _, line := range w.access.WaitLines(`"reason":"bad request: path: dot segment"`) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["status"] == nil {
			continue
		}
		reason, _ := rec["reason"].(string)
		if (rec["status"] == float64(200)) != (reason == "") {
			t.Errorf("status %v with reason %q: %s", rec["status"], reason, line)
		}
		reasons[reason]++
	}
	if reasons["forbidden: no route"] != 2 || reasons["bad request: path: dot segment"] != 1 {
		t.Errorf("access log reasons %v, want 2 × no route and 1 × path", reasons)
	}
}

func TestCrossTenantNeverReachesOtherBackend(t *testing.T) {
	w := newRoutedWorld(t)
	globex := w.client(w.pki.globex, false)
	spoof := http.Header{
		"X-Gatehouse-Tenant":        {"acme"},
		"X_gatehouse_tenant":        {"acme"},
		"X-Client-Cert-Fingerprint": {fingerprint(w.pki.acme)},
		"X-Forwarded-Host":          {"special.example"},
		"Forwarded":                 {"for=127.0.0.1;host=special.example"},
	}
	for _, host := range []string{"", "special.example", "a.example", "localhost"} {
		for _, path := range []string{"/", "/api", "/api/v1", "//api", "/x"} {
			r := w.mustDo(globex, "web", "GET", host, path, spoof, nil)
			if r.status != http.StatusForbidden {
				t.Errorf("globex %s%s: status %d, want 403", host, path, r.status)
			}
		}
	}
	// An absolute-form request target names another host; the tenant is still globex.
	c := w.rawTLS(w.pki.globex, "web")
	if code, _ := rawExchange(t, c, "GET https://special.example/api HTTP/1.1\r\nHost: special.example\r\n\r\n"); code != 403 {
		t.Errorf("absolute-form: status %d, want 403", code)
	}
	for name, n := range w.hits() {
		if name != "g" && n != 0 {
			t.Errorf("acme backend %s reached %d times by globex", name, n)
		}
	}
}

func TestClientsWithoutTenantCertificateFailHandshake(t *testing.T) {
	w := newRoutedWorld(t)
	for name, cfg := range map[string]func() *http.Client{
		"no certificate":   func() *http.Client { return w.client(tlsZero, false) },
		"untrusted issuer": func() *http.Client { return w.client(w.pki.rogue, false) },
	} {
		t.Run(name, func(t *testing.T) {
			before := w.pki.src.failed.Load()
			if _, err := w.do(cfg(), "web", "GET", "", "/", nil, nil); err == nil {
				t.Fatal("request without a tenant certificate succeeded")
			}
			// The client may see the alert before the server has counted.
			if !waitFor(func() bool { return w.pki.src.failed.Load() > before }) {
				t.Error("HandshakeFailed not called")
			}
		})
	}
	for name, n := range w.hits() {
		if n != 0 {
			t.Errorf("backend %s reached %d times", name, n)
		}
	}
}

func TestIdentityHeadersOverwritten(t *testing.T) {
	w := newRoutedWorld(t)
	acme := w.client(w.pki.acme, false)
	spoof := http.Header{
		"X-Forwarded-For":           {"198.51.100.7"},
		"X-Forwarded-Proto":         {"http"},
		"X-Real-Ip":                 {"198.51.100.7"},
		"Forwarded":                 {"for=198.51.100.7"},
		"X-Gatehouse-Tenant":        {"globex"},
		"X_Gatehouse_Tenant":        {"globex"},
		"X-Client-Cert-Fingerprint": {"00ff"},
		"X-Client-Cert-Subject":     {"CN=admin"},
		"X_client_cert_subject":     {"CN=admin"},
		"X-Gatehouse-Request-Id":    {"forged"},
		"Connection":                {"keep-alive, TE"}, // naming other fields is refused: TestConnectionCannotStripCheckedHeaders
		"Keep-Alive":                {"timeout=5"},
		"Proxy-Authorization":       {"Basic Zm9vOmJhcg=="},
		"Te":                        {"trailers, deflate"},
		"X-Ordinary":                {"kept"},
		"X-Forwarded-Prefix":        {"/admin"},
		"X-Original-Url":            {"/admin/delete"},
		"X-Rewrite-Url":             {"/admin/delete"},
		"True-Client-Ip":            {"198.51.100.7"},
		"X-Client-Ip":               {"198.51.100.7"},
		"X-Cluster-Client-Ip":       {"198.51.100.7"},
	}
	r := w.mustDo(acme, "web", "GET", "", "/api/h?secret=1", spoof, nil)
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	h := r.echo.Header
	want := map[string]string{
		"X-Forwarded-For":           "127.0.0.1",
		"X-Forwarded-Proto":         "https",
		"X-Gatehouse-Tenant":        "acme",
		"X-Client-Cert-Fingerprint": fingerprint(w.pki.acme),
		"X-Client-Cert-Subject":     "CN=acme-cloud",
		"X-Ordinary":                "kept",
	}
	for k, v := range want {
		if got := h.Values(k); !slices.Equal(got, []string{v}) {
			t.Errorf("backend saw %s = %q, want [%q]", k, got, v)
		}
	}
	for _, k := range []string{"X-Real-Ip", "Forwarded", "X_Gatehouse_Tenant", "X_client_cert_subject",
		"Keep-Alive", "Proxy-Authorization", "Connection",
		"X-Forwarded-Prefix", "X-Original-Url", "X-Rewrite-Url", "True-Client-Ip", "X-Client-Ip", "X-Cluster-Client-Ip"} {
		if v, ok := h[k]; ok {
			t.Errorf("backend saw %s = %q", k, v)
		}
	}
	if te := h.Get("Te"); te != "" && te != "trailers" {
		t.Errorf("hop-by-hop TE passed as %q", te)
	}
	if r.echo.Query != "secret=1" {
		t.Errorf("query %q not forwarded", r.echo.Query)
	}
	// The access log names tenant and route but never the query string.
	var found bool
	for _, line := range w.access.WaitLines(`"route":"/api"`) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("access log line is not JSON: %q", line)
		}
		if strings.Contains(line, "secret") {
			t.Errorf("access log leaks the query: %s", line)
		}
		if rec["route"] == "/api" {
			found = true
			for _, k := range []string{"time", "listener", "tenant", "fingerprint", "source", "method", "status", "bytes_in", "bytes_out", "duration_ms"} {
				if _, ok := rec[k]; !ok {
					t.Errorf("access log lacks %q: %s", k, line)
				}
			}
			if rec["id"] != h.Get("X-Gatehouse-Request-Id") {
				t.Errorf("access log id %v, backend saw request id %q", rec["id"], h.Get("X-Gatehouse-Request-Id"))
			}
			if rec["tenant"] != "acme" || rec["fingerprint"] != fingerprint(w.pki.acme) || rec["status"] != float64(200) {
				t.Errorf("access log line %s", line)
			}
		}
	}
	if !found {
		t.Errorf("no access log line for the request: %q", w.access.WaitLines(""))
	}
}

// TestChainVerifiedInVerifyConnection runs with a TLS source that asks for
// any certificate and verifies the chain itself, as the certificate manager
// does.
func TestChainVerifiedInVerifyConnection(t *testing.T) {
	b := newBackend(t, "a")
	p := newPKI(t)
	p.src.anyCert = true
	srv, err := proxy.New(proxy.Config{TLS: p.src})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if err := srv.Apply(&policy.Policy{Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()})}}); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, pki: p, srv: srv, access: &testkit.LogBuffer{}}
	if r := h.mustDo(h.client(p.acme, true), "web", "GET", "", "/", nil, nil); r.status != 200 {
		t.Errorf("acme: status %d", r.status)
	}
	for name, cert := range map[string]tls.Certificate{"rogue": p.rogue, "none": tlsZero} {
		if _, err := h.do(h.client(cert, false), "web", "GET", "", "/", nil, nil); err == nil {
			t.Errorf("%s certificate accepted", name)
		}
	}
	if b.hits.Load() != 1 {
		t.Errorf("backend hits %d, want 1", b.hits.Load())
	}
}
