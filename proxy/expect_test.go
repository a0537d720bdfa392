package proxy_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestExpectContinueEndsWhereTheBodyIsRead: curl asks "Expect:
// 100-continue" before a large body. When gatehouse reads the body before
// the backend sees the request (a buffered body, a SOAP envelope), it does
// not ask the backend for a 100 again: a backend that never sends one made
// each such request wait the transport's second. A body too large to buffer
// streams to the backend, which still gets to refuse it before it comes.
func TestExpectContinueEndsWhereTheBodyIsRead(t *testing.T) {
	curl := netns.RequireTool(t, "curl", "curl")
	hr := newHeaderRecorder(t)
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: hr.srv.URL})
	web.Limits = testLimits()
	web.Limits.HTTP.BodyBufferBytes = 256 << 10
	web.Port = freePort(t)
	h := newHarness(t, testLimits(), web, listener("services", policy.ProtoSOAP,
		policy.Route{Tenant: "acme", Backend: hr.srv.URL, SOAPActions: []string{"urn:acme:Get"}}))
	dir := t.TempDir()
	cert, key := writePEM(t, dir, "acme", h.pki.acme)
	ca := writeCAPEM(t, dir, "server-ca", h.pki.serverCA)
	file := func(name string, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	small := file("small", strings.Repeat("x", 100<<10))
	large := file("large", strings.Repeat("x", 512<<10))
	env := file("env.xml", `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">`+
		`<s:Body><Get xmlns="urn:acme">`+strings.Repeat("<x>y</x>", 4<<10)+`</Get></s:Body></s:Envelope>`)
	post := func(listenerName, path, body string, extra ...string) {
		t.Helper()
		_, port, _ := net.SplitHostPort(h.addr(listenerName))
		args := append([]string{"--silent", "--show-error", "--max-time", "10", "--http1.1", "--cacert", ca,
			"--cert", cert, "--key", key, "--resolve", "a.example:" + port + ":127.0.0.1", "-o", "/dev/null", "-w", "%{http_code}",
			"-H", "Expect: 100-continue", "--data-binary", "@" + body}, extra...)
		out, err := exec.Command(curl, append(args, "https://a.example:"+port+path)...).CombinedOutput()
		if err != nil || string(out) != "200" {
			t.Fatalf("curl POST %s: %q %v", filepath.Base(body), out, err)
		}
	}
	post("web", "/", small)
	post("services", "/svc", env, "-H", "Content-Type: text/xml", "-H", `SOAPAction: "urn:acme:Get"`)
	post("web", "/", large)
	got := hr.all()
	if len(got) != 3 {
		t.Fatalf("backend saw %d requests, want 3", len(got))
	}
	for i, name := range []string{"buffered body", "SOAP envelope"} {
		if e := got[i].Get("Expect"); e != "" {
			t.Errorf("%s: backend was asked %q after gatehouse read the whole body", name, e)
		}
	}
	if e := got[2].Get("Expect"); !strings.EqualFold(e, "100-continue") {
		t.Errorf("streamed body: backend saw Expect %q, want 100-continue", e)
	}
}
