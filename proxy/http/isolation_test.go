package httpproxy_test

import (
	"bytes"
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// FuzzTenantIsolation sends globex requests with arbitrary host, path,
// method and one arbitrary header to a listener where acme has routes on
// every host and path. acme's backend must never be reached, and what
// reaches globex's backend must carry globex's identity only.
func FuzzTenantIsolation(f *testing.F) {
	var acmeHits atomic.Int64
	acme := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { acmeHits.Add(1) }))
	f.Cleanup(acme.Close)
	var bad atomic.Value
	globex := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Values("X-Gatehouse-Tenant"); len(got) != 1 || got[0] != "globex" {
			bad.Store("tenant header " + strings.Join(got, ","))
		}
		if got := r.Header.Values("X-Client-Cert-Fingerprint"); len(got) != 1 || got[0] != "gg" {
			bad.Store("fingerprint header " + strings.Join(got, ","))
		}
		if got := r.Header.Values("X-Gatehouse-Environment"); len(got) != 1 || got[0] != "default" {
			bad.Store("environment header " + strings.Join(got, ","))
		}
		for k := range r.Header {
			if n := strings.ToLower(strings.ReplaceAll(k, "_", "-")); strings.HasPrefix(n, "x-gatehouse-") && k != "X-Gatehouse-Tenant" && k != "X-Gatehouse-Environment" && k != "X-Gatehouse-Request-Id" {
				bad.Store("extra identity header " + k)
			}
		}
	}))
	f.Cleanup(globex.Close)
	// One handler per engine; every input goes through each.
	var handlers []*httpproxy.Handler
	for _, e := range engines {
		h, err := httpproxy.New(httpproxy.Config{Listener: policy.Listener{Name: "web", Protocol: policy.ProtoHTTPS, Routes: []policy.Route{
			{Tenant: "acme", Path: "/", Backend: acme.URL},
			{Tenant: "acme", Host: "acme.example", Path: "/", Backend: acme.URL},
			{Tenant: "acme", Path: "/admin", Backend: acme.URL},
			{Tenant: "globex", Path: "/g", Backend: globex.URL},
		}, Limits: policy.Limits{HTTP: policy.HTTPLimits{Engine: e}}}})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(h.Close)
		handlers = append(handlers, h)
	}
	f.Add("GET", "acme.example", "/", "X-Gatehouse-Tenant", "acme")
	f.Add("POST", "", "/g/../admin", "X_Gatehouse_Tenant", "acme")
	f.Add("GET", "ACME.example.", "/g%2f..%2fadmin", "Forwarded", "host=acme.example")
	f.Add("GET", "x", "/g/x", "x-client-cert-fingerprint", "aa")
	f.Add("GET", "x", "/g/x", "X-Gatehouse-Environment", "production")
	f.Add("CONNECT", "acme.example:443", "/admin", "Host", "acme.example")
	f.Fuzz(func(t *testing.T, method, host, path, hk, hv string) {
		u, err := url.Parse(path)
		if err != nil || method == "" || strings.ContainsAny(method, " \t\r\n") {
			return
		}
		for i, h := range handlers {
			r := &http.Request{Method: method, URL: u, Host: host, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{}, Body: http.NoBody, RemoteAddr: "192.0.2.1:1234"}
			r.Header[hk] = []string{hv}
			r = r.WithContext(httpproxy.WithPeer(r.Context(), certs.Peer{Tenant: "globex", FingerprintSHA256: "gg"}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if acmeHits.Load() != 0 {
				t.Fatalf("%s engine: globex reached acme's backend: %s %q %q %q=%q", engines[i], method, host, path, hk, hv)
			}
			if v := bad.Load(); v != nil {
				t.Fatalf("%s engine: globex's backend saw %v", engines[i], v)
			}
		}
	})
}

// BenchmarkInspect is the SOAP inspector's throughput on a 64 KiB envelope.
func BenchmarkInspect(b *testing.B) {
	var body bytes.Buffer
	body.WriteString(`<?xml version="1.0"?><s:Envelope xmlns:s="` + httpproxy.NSSOAP11 + `"><s:Body><PutOrder xmlns="urn:acme">`)
	for body.Len() < 64<<10 {
		body.WriteString(`<line sku="A-1001" qty="3"><text>`)
		xml.EscapeText(&body, []byte("Bolts & nuts, 3 boxes"))
		body.WriteString(`</text></line>`)
	}
	body.WriteString(`</PutOrder></s:Body></s:Envelope>`)
	doc := body.Bytes()
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for range b.N {
		if _, _, err := httpproxy.Inspect(bytes.NewReader(doc), httpproxy.SOAP11, httpproxy.XMLLimits{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*float64(len(doc))/(1<<20)/b.Elapsed().Seconds(), "MiB/s")
}
