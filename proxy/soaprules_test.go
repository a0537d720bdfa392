package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

func soapEnvelope(op, ns string) string {
	return `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><` + op +
		` xmlns="` + ns + `"/></s:Body></s:Envelope>`
}

// TestConnectionCannotStripCheckedHeaders: a Connection header naming
// anything but close, keep-alive, te or upgrade is refused with 400 before
// any backend sees the request. Hop-by-hop removal would otherwise take
// from the backend the SOAPAction and Content-Type the SOAP rules judged
// (the review saw SOAPAction="" and Content-Type="" reach it with 200).
func TestConnectionCannotStripCheckedHeaders(t *testing.T) {
	curl := netns.RequireTool(t, "curl", "curl")
	hr := newHeaderRecorder(t)
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: hr.srv.URL})
	web.Port = freePort(t)
	h := newHarness(t, testLimits(), web, listener("services", policy.ProtoSOAP,
		policy.Route{Tenant: "acme", Backend: hr.srv.URL, SOAPActions: []string{"urn:acme:Get"}}))
	env := soapEnvelope("Get", "urn:acme")
	soap := func(connection string) string {
		return fmt.Sprintf("POST /svc HTTP/1.1\r\nHost: x\r\nConnection: %s\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:acme:Get\"\r\nContent-Length: %d\r\n\r\n%s",
			connection, len(env), env)
	}
	tests := []struct {
		listener, req string
		status        int
	}{
		{"services", soap("SOAPAction, Content-Type"), 400},
		{"services", soap("keep-alive, SOAPAction"), 400},
		{"services", soap("Content-Length"), 400},
		{"web", "GET / HTTP/1.1\r\nHost: x\r\nConnection: X-Forwarded-For\r\n\r\n", 400},
		{"web", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Authorization\r\nAuthorization: Basic eDp5\r\n\r\n", 400},
		{"web", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: Cookie\r\n\r\n", 400},
		// What real clients send goes on.
		{"services", soap("keep-alive"), 200},
		{"services", soap("close"), 200},
		{"web", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n", 200},
		{"web", "GET / HTTP/1.1\r\nHost: x\r\nConnection: TE, close\r\nTE: deflate,gzip;q=0.3\r\n\r\n", 200},
	}
	for _, tc := range tests {
		before := len(hr.all())
		code, _ := rawExchange(t, h.rawTLS(h.pki.acme, tc.listener), tc.req)
		if code != tc.status {
			t.Errorf("%q: status %d, want %d", tc.req, code, tc.status)
		}
		if got := hr.all()[before:]; tc.status != 200 && len(got) != 0 {
			t.Errorf("%q: refused, but the backend saw %v", tc.req, got)
		}
	}
	for _, got := range hr.all() {
		if got.Get("X-Gatehouse-Tenant") != "acme" {
			t.Errorf("backend saw tenant %q", got.Get("X-Gatehouse-Tenant"))
		}
		if got.Get("Content-Type") == "text/xml" && got.Get("SOAPAction") != `"urn:acme:Get"` {
			t.Errorf("a SOAP request reached the backend without its SOAPAction: %v", got)
		}
	}
	if t.Failed() {
		return
	}

	// curl puts the same header on the wire.
	dir := t.TempDir()
	cert, key := writePEM(t, dir, "acme", h.pki.acme)
	ca := writeCAPEM(t, dir, "server-ca", h.pki.serverCA)
	_, port, _ := net.SplitHostPort(h.addr("services"))
	before := len(hr.all())
	out, err := exec.Command(curl, "--silent", "--show-error", "--max-time", "10", "--http1.1", "--cacert", ca,
		"--cert", cert, "--key", key, "--resolve", "a.example:"+port+":127.0.0.1", "-o", "/dev/null", "-w", "%{http_code}",
		"-H", "Content-Type: text/xml", "-H", `SOAPAction: "urn:acme:Get"`, "-H", "Connection: SOAPAction, Content-Type",
		"--data-binary", env, "https://a.example:"+port+"/svc").CombinedOutput()
	if err != nil || string(out) != "400" {
		t.Errorf("curl with Connection: SOAPAction, Content-Type: %q %v, want 400", out, err)
	}
	if got := hr.all()[before:]; len(got) != 0 {
		t.Errorf("the backend saw curl's request: %v", got)
	}
	if line := h.access.WaitLines("Connection header names"); line == nil {
		t.Error("no access log line with the reason")
	}
}

// TestSOAPOperationByFullName: the Body element must be the operation the
// allowed action names, namespace included. {urn:admin}Get was let through
// for the allowed action urn:acme:Get, and a backend that dispatches on
// the Body element (CXF, JAX-WS) would run it. An entry may name the Body
// element itself, for stacks whose actions do not carry the namespace.
func TestSOAPOperationByFullName(t *testing.T) {
	b := newBackend(t, "soap")
	h := newHarness(t, testLimits(), listener("services", policy.ProtoSOAP,
		policy.Route{Tenant: "acme", Backend: b.url(), SOAPActions: []string{
			"urn:acme:Get",
			"http://tempuri.org/IOrders/GetOrder",
			"http://tempuri.org/PutOrder",
			"urn:getStock {http://service.acme.example}getStock",
			"http://sap.example/xi/soap1.1 {urn:sap:orders}OrderCreate",
			"http://sap.example/xi/soap1.1 {urn:sap:orders}OrderRead",
		}}))
	c := h.client(h.pki.acme, false)
	tests := []struct {
		action, op, ns string
		status         int
	}{
		{"urn:acme:Get", "Get", "urn:acme", 200},
		{"urn:acme:Get", "Get", "urn:admin", 500},
		{"urn:acme:Get", "Get", "urn:acme:admin", 500},
		{"urn:acme:Get", "Get", "urn:a", 500},
		{"urn:acme:Get", "Get", "", 500},
		{"http://tempuri.org/IOrders/GetOrder", "GetOrder", "http://tempuri.org/", 200},
		{"http://tempuri.org/IOrders/GetOrder", "GetOrder", "http://tempuri.org/IOrders", 200},
		{"http://tempuri.org/IOrders/GetOrder", "GetOrder", "http://evil.example/", 500},
		{"http://tempuri.org/PutOrder", "PutOrder", "http://tempuri.org/", 200},
		{"http://tempuri.org/PutOrder", "PutOrder", "http://tempuri.org/admin", 500},
		{"urn:getStock", "getStock", "http://service.acme.example", 200},
		{"urn:getStock", "getStock", "urn:getStock", 500},
		{"http://sap.example/xi/soap1.1", "OrderCreate", "urn:sap:orders", 200},
		{"http://sap.example/xi/soap1.1", "OrderRead", "urn:sap:orders", 200},
		{"http://sap.example/xi/soap1.1", "OrderDelete", "urn:sap:orders", 500},
	}
	for _, tc := range tests {
		before := b.hits.Load()
		hdr := http.Header{"Content-Type": {"text/xml; charset=utf-8"}, "Soapaction": {`"` + tc.action + `"`}}
		r := h.mustDo(c, "services", "POST", "", "/svc", hdr, strings.NewReader(soapEnvelope(tc.op, tc.ns)))
		if r.status != tc.status {
			t.Errorf("action %s, body {%s}%s: status %d, want %d", tc.action, tc.ns, tc.op, r.status, tc.status)
		}
		reached := b.hits.Load() != before
		if reached != (tc.status == 200) {
			t.Errorf("action %s, body {%s}%s: reached the backend %v", tc.action, tc.ns, tc.op, reached)
		}
		if tc.status != 200 && !strings.Contains(r.body, "operation_mismatch") {
			t.Errorf("action %s, body {%s}%s: fault %s, want operation_mismatch", tc.action, tc.ns, tc.op, r.body)
		}
	}
}

// TestSOAPMetadataRequests: a route with allow_wsdl lets through a GET or
// HEAD whose query asks for metadata and nothing else, without a body.
// The review sent "?op=DeleteAll;wsdl" and "?wsdl&method=DeleteAll", each
// with an envelope body, and both reached the backend whole (200):
// neither the body nor the other parameters were inspected.
func TestSOAPMetadataRequests(t *testing.T) {
	b := newBackend(t, "soap")
	h := newHarness(t, testLimits(), listener("services", policy.ProtoSOAP,
		policy.Route{Tenant: "acme", Path: "/svc", Backend: b.url(), SOAPActions: []string{"urn:acme:Get"}, AllowWSDL: true},
		policy.Route{Tenant: "acme", Path: "/closed", Backend: b.url(), SOAPActions: []string{"urn:acme:Get"}}))
	env := soapEnvelope("DeleteAll", "urn:acme")
	withBody := func(method, target string) string {
		return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:acme:DeleteAll\"\r\nContent-Length: %d\r\n\r\n%s", method, target, len(env), env)
	}
	chunked := func(target string) string {
		return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", target, len(env), env)
	}
	plain := func(method, target string) string { return method + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n" }
	tests := []struct {
		req    string
		status int
		reason string // in the fault; "" when the backend answers
	}{
		{plain("GET", "/svc?wsdl"), 200, ""},
		{plain("GET", "/svc?WSDL"), 200, ""},
		{plain("HEAD", "/svc?wsdl"), 200, ""},
		{plain("GET", "/svc?singleWsdl"), 200, ""},
		{plain("GET", "/svc?xsd=xsd0"), 200, ""},
		{plain("GET", "/svc?wsdl=OrderService_schema1.wsdl"), 200, ""},
		{withBody("GET", "/svc?wsdl"), 500, "wsdl"},
		{chunked("/svc?wsdl"), 500, "wsdl"},
		{withBody("GET", "/svc?op=DeleteAll;wsdl"), 500, "wsdl"},
		{plain("GET", "/svc?op=DeleteAll;wsdl"), 500, "wsdl"},
		{plain("GET", "/svc?wsdl;op=DeleteAll"), 500, "wsdl"},
		{withBody("GET", "/svc?wsdl&method=DeleteAll"), 500, "wsdl"},
		{plain("GET", "/svc?wsdl&method=DeleteAll"), 500, "wsdl"},
		{plain("GET", "/svc?wsdl&"), 500, "wsdl"},
		{plain("GET", "/svc?xsd=../conf/axis2.xml"), 500, "wsdl"},
		{plain("GET", "/svc?xsd=..%2fconf%2faxis2.xml"), 500, "wsdl"},
		{plain("GET", "/svc?xsd=%2e%2e"), 500, "wsdl"},
		{withBody("POST", "/svc?wsdl"), 500, "method"},
		{plain("GET", "/closed?wsdl"), 500, "wsdl"},
		{plain("GET", "/closed?x;wsdl"), 500, "wsdl"},
		{plain("GET", "/svc"), 500, "method"},
	}
	for _, tc := range tests {
		before := b.hits.Load()
		code, answer := exchange(t, h.rawTLS(h.pki.acme, "services"), tc.req)
		first, _, _ := strings.Cut(tc.req, "\r\n")
		if code != tc.status {
			t.Errorf("%s: status %d, want %d", first, code, tc.status)
		}
		reached := b.hits.Load() != before
		if reached != (tc.reason == "") {
			t.Errorf("%s: reached the backend %v", first, reached)
		}
		if tc.reason != "" && !strings.Contains(answer, "request refused: "+tc.reason) {
			t.Errorf("%s: answer %q, want a fault for %s", first, answer, tc.reason)
		}
	}
}

// exchange writes a hand-written request and returns the status and body
// of the answer.
func exchange(t *testing.T, c *tls.Conn, req string) (int, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
