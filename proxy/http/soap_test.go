package httpproxy_test

import (
	"bytes"
	"encoding/xml"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// recorder is a backend that keeps the exact bytes it was sent.
type recorder struct {
	srv  *httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	body []byte
	hdr  http.Header
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.body, r.hdr = b, req.Header.Clone()
		r.mu.Unlock()
		w.Header().Set("Content-Type", "text/xml")
		io.WriteString(w, "<ok/>")
	}))
	t.Cleanup(r.srv.Close)
	return r
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var testXMLLimits = httpproxy.XMLLimits{MaxBytes: 64 << 10, MaxDepth: 32, MaxElements: 500, MaxAttrs: 8, MaxNameLen: 64, MaxTextLen: 1024}

// soapFront serves h as tenant would reach it after the TLS layer.
func soapFront(t *testing.T, h http.Handler, tenant string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(httpproxy.WithPeer(r.Context(), certs.Peer{Tenant: tenant, FingerprintSHA256: "ab12"})))
	}))
	t.Cleanup(s.Close)
	return s
}

func fixture(t *testing.T, name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func nested(depth int) []byte {
	return []byte(`<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><GetOrder xmlns="urn:acme">` +
		strings.Repeat("<a>", depth) + strings.Repeat("</a>", depth) + `</GetOrder></soap:Body></soap:Envelope>`)
}

func envelope11(inner string) []byte {
	return []byte(`<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><GetOrder xmlns="urn:acme">` +
		inner + `</GetOrder></soap:Body></soap:Envelope>`)
}

const (
	ct11 = "text/xml; charset=utf-8"
	ct12 = "application/soap+xml; charset=utf-8"
)

// engines are the HTTP engines every proxying test runs under.
var engines = []string{httpproxy.EngineStd, httpproxy.EngineFast}

func TestSOAP(t *testing.T) {
	for _, e := range engines {
		t.Run(e, func(t *testing.T) { testSOAP(t, e) })
	}
}

func testSOAP(t *testing.T, engine string) {
	be := newRecorder(t)
	metrics := httpproxy.NewMetrics()
	logs := &logBuf{}
	h, err := httpproxy.New(httpproxy.Config{
		Listener: policy.Listener{Name: "services", Protocol: policy.ProtoSOAP, Routes: []policy.Route{
			{Tenant: "acme", Path: "/", Backend: be.srv.URL, SOAPActions: []string{"urn:acme:GetOrder", "urn:acme:PutOrder"}},
			{Tenant: "acme", Path: "/meta", Backend: be.srv.URL, AllowWSDL: true},
			{Tenant: "globex", Path: "/empty", Backend: be.srv.URL},
		}, Limits: policy.Limits{HTTP: policy.HTTPLimits{Engine: engine}}},
		Metrics: metrics,
		Logger:  slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	acme := soapFront(t, h, "acme")
	globex := soapFront(t, h, "globex")
	tests := []struct {
		name    string
		front   *httptest.Server
		method  string
		path    string
		ct      string
		action  string // SOAPAction header, "-" for none
		body    []byte
		status  int
		reason  string // expected refusal; "" means forwarded
		version httpproxy.SOAPVersion
	}{
		{"1.1 good", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, fixture(t, "soap11-getorder.xml"), 200, "", 11},
		{"1.2 good with action parameter", acme, "POST", "/svc", ct12 + `; action="urn:acme:GetOrder"`, "-", fixture(t, "soap12-getorder.xml"), 200, "", 12},
		{"1.2 good with wsa:Action", acme, "POST", "/svc", ct12, "-", fixture(t, "soap12-wsa-putorder.xml"), 200, "", 12},
		{"forged SOAPAction", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, fixture(t, "soap11-deleteorder.xml"), 500, httpproxy.ReasonOperation, 11},
		{"operation not allowed", acme, "POST", "/svc", ct11, `"urn:acme:DeleteOrder"`, fixture(t, "soap11-deleteorder.xml"), 500, httpproxy.ReasonNotAllowed, 11},
		{"no action", acme, "POST", "/svc", ct11, "-", fixture(t, "soap11-getorder.xml"), 500, httpproxy.ReasonActionMissing, 11},
		{"empty SOAPAction", acme, "POST", "/svc", ct11, `""`, fixture(t, "soap11-getorder.xml"), 500, httpproxy.ReasonActionMissing, 11},
		{"action parameter disagrees with wsa:Action", acme, "POST", "/svc", ct12 + `; action="urn:acme:GetOrder"`, "-", fixture(t, "soap12-wsa-putorder.xml"), 400, httpproxy.ReasonActionMismatch, 12},
		{"1.2 envelope as text/xml", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, fixture(t, "soap12-getorder.xml"), 500, httpproxy.ReasonVersionMismatch, 11},
		{"1.1 envelope as soap+xml", acme, "POST", "/svc", ct12 + `; action="urn:acme:GetOrder"`, "-", fixture(t, "soap11-getorder.xml"), 400, httpproxy.ReasonVersionMismatch, 12},
		{"json content type", acme, "POST", "/svc", "application/json", `"urn:acme:GetOrder"`, fixture(t, "soap11-getorder.xml"), 500, httpproxy.ReasonContentType, 11},
		{"latin-1 charset", acme, "POST", "/svc", "text/xml; charset=iso-8859-1", `"urn:acme:GetOrder"`, fixture(t, "soap11-getorder.xml"), 500, httpproxy.ReasonContentType, 11},
		{"GET", acme, "GET", "/svc", ct11, `"urn:acme:GetOrder"`, nil, 500, httpproxy.ReasonMethod, 11},
		{"billion laughs", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, fixture(t, "billion-laughs.xml"), 500, httpproxy.ReasonDoctype, 11},
		{"external entity", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, fixture(t, "xxe.xml"), 500, httpproxy.ReasonDoctype, 11},
		// The handler's XML limits are the documented defaults.
		{"deep nesting", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, nested(httpproxy.DefaultMaxXMLDepth), 500, httpproxy.ReasonDepth, 11},
		{"many elements", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, envelope11(strings.Repeat("<i/>", httpproxy.DefaultMaxXMLElements)), 500, httpproxy.ReasonElements, 11},
		{"many attributes", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, envelope11("<i" + strings.Repeat(` a="1"`, httpproxy.DefaultMaxXMLAttrs+1) + "/>"), 500, httpproxy.ReasonAttrs, 11},
		{"long name", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, envelope11("<" + strings.Repeat("n", httpproxy.DefaultMaxXMLNameLen+1) + "/>"), 500, httpproxy.ReasonNameLen, 11},
		{"long text", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, envelope11(strings.Repeat("t", httpproxy.DefaultMaxXMLTextBytes+1)), 500, httpproxy.ReasonTextLen, 11},
		{"too large", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, envelope11(strings.Repeat("<i>"+strings.Repeat("0", 100_000)+"</i>", httpproxy.DefaultMaxSOAPBytes/100_000+1)), 500, httpproxy.ReasonTooLarge, 11},
		{"two operations", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, fixture(t, "two-operations.xml"), 500, httpproxy.ReasonBodyParts, 11},
		{"processing instruction", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, envelope11("<?php echo 1; ?>"), 500, httpproxy.ReasonProcInst, 11},
		{"declared latin-1", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, append([]byte(`<?xml version="1.0" encoding="ISO-8859-1"?>`), envelope11("")...), 500, httpproxy.ReasonMalformed, 11},
		{"not xml", acme, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, []byte("GetOrder please"), 500, httpproxy.ReasonMalformed, 11},
		{"wsdl refused", acme, "GET", "/svc?wsdl", "", "-", nil, 500, httpproxy.ReasonWSDL, 11},
		{"singleWsdl refused", acme, "GET", "/svc?SingleWSDL", "", "-", nil, 500, httpproxy.ReasonWSDL, 11},
		{"xsd refused", acme, "GET", "/svc?xsd=xsd0", "", "-", nil, 500, httpproxy.ReasonWSDL, 11},
		{"wsdl behind ';' refused", acme, "GET", "/svc?x=1;wsdl", "", "-", nil, 500, httpproxy.ReasonWSDL, 11},
		{"wsdl allowed on its route", acme, "GET", "/meta?wsdl", "", "-", nil, 200, "", 11},
		{"empty allow-list denies", globex, "POST", "/empty", ct11, `"urn:acme:GetOrder"`, fixture(t, "soap11-getorder.xml"), 500, httpproxy.ReasonNotAllowed, 11},
		{"no route", globex, "POST", "/svc", ct11, `"urn:acme:GetOrder"`, fixture(t, "soap11-getorder.xml"), 403, "", 11},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := be.hits.Load()
			var reasonBefore float64
			if tc.reason != "" {
				reasonBefore = testutil.ToFloat64(httpproxy.MetricsRejections(metrics, tenantOf(tc.front, acme), tc.reason))
			}
			req, _ := http.NewRequest(tc.method, tc.front.URL+tc.path, bytes.NewReader(tc.body))
			if tc.ct != "" {
				req.Header.Set("Content-Type", tc.ct)
			}
			if tc.action != "-" {
				req.Header.Set("SOAPAction", tc.action)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, got)
			}
			if tc.reason == "" {
				if tc.status == 200 {
					if be.hits.Load() != before+1 {
						t.Fatal("request did not reach the backend")
					}
					be.mu.Lock()
					same := bytes.Equal(be.body, tc.body)
					be.mu.Unlock()
					if !same {
						t.Error("backend did not get the original bytes")
					}
				} else if be.hits.Load() != before {
					t.Error("refused request reached the backend")
				}
				return
			}
			if be.hits.Load() != before {
				t.Error("refused request reached the backend")
			}
			checkFault(t, resp, got, tc.version, tc.reason)
			id := resp.Header.Get("X-Correlation-Id")
			if !strings.Contains(logs.String(), `"id":"`+id+`"`) {
				t.Errorf("correlation id %s not in the log", id)
			}
			if n := testutil.ToFloat64(httpproxy.MetricsRejections(metrics, tenantOf(tc.front, acme), tc.reason)); n != reasonBefore+1 {
				t.Errorf("soap_rejections_total{reason=%q} = %v, want %v", tc.reason, n, reasonBefore+1)
			}
		})
	}
}

func tenantOf(front, acme *httptest.Server) string {
	if front == acme {
		return "acme"
	}
	return "globex"
}

// checkFault parses the Fault and checks its version, code and correlation id.
func checkFault(t *testing.T, resp *http.Response, body []byte, v httpproxy.SOAPVersion, reason string) {
	t.Helper()
	var f struct {
		XMLName xml.Name
		Body    struct {
			Fault struct {
				XMLName     xml.Name
				FaultCode   string `xml:"faultcode"`
				FaultString string `xml:"faultstring"`
				Code        string `xml:"Code>Value"`
				Reason      string `xml:"Reason>Text"`
				Correlation string `xml:",any"`
			} `xml:"Fault"`
		} `xml:"Body"`
	}
	if err := xml.Unmarshal(body, &f); err != nil {
		t.Fatalf("fault is not XML: %v: %s", err, body)
	}
	id := resp.Header.Get("X-Correlation-Id")
	if id == "" || !bytes.Contains(body, []byte(">"+id+"<")) {
		t.Errorf("correlation id %q not in the fault %s", id, body)
	}
	switch v {
	case httpproxy.SOAP11:
		if f.XMLName.Space != httpproxy.NSSOAP11 || f.Body.Fault.FaultCode != "soap:Client" ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/xml") || !strings.Contains(f.Body.Fault.FaultString, reason) {
			t.Errorf("not a SOAP 1.1 client fault for %s: %s", reason, body)
		}
	case httpproxy.SOAP12:
		if f.XMLName.Space != httpproxy.NSSOAP12 || f.Body.Fault.Code != "env:Sender" ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/soap+xml") || !strings.Contains(f.Body.Fault.Reason, reason) {
			t.Errorf("not a SOAP 1.2 sender fault for %s: %s", reason, body)
		}
	}
}

func readFixture(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join("testdata", name))
}
