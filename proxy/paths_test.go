package proxy_test

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"sync"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// uriRecorder is a backend that keeps the request target exactly as it
// arrived.
type uriRecorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	uris []string
}

func newURIRecorder(t testing.TB) *uriRecorder {
	u := &uriRecorder{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.uris = append(u.uris, r.RequestURI)
		u.mu.Unlock()
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *uriRecorder) got() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.uris...)
}

// pathWorld: acme may reach /api on one backend and /j (a servlet
// container that takes ;jsessionid) on another; nothing else.
func pathWorld(t *testing.T) (*harness, *uriRecorder, *uriRecorder) {
	api, servlet := newURIRecorder(t), newURIRecorder(t)
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/api", Backend: api.srv.URL},
		policy.Route{Tenant: "acme", Path: "/j", Backend: servlet.srv.URL, PathParams: true}))
	return h, api, servlet
}

// TestTrickyPaths: a request is routed on its decoded, normalised path,
// and a path a backend could resolve to somewhere else is refused with 400
// and its reason before any backend sees it; ordinary paths and query
// strings reach the backend byte for byte, and a path with characters a
// URL path may not hold raw reaches it re-encoded as the README says.
func TestTrickyPaths(t *testing.T) {
	h, api, servlet := pathWorld(t)
	tests := []struct {
		target  string
		status  int
		reason  string
		servlet bool // reaches the /j backend instead of /api
	}{
		{"/api/orders/42?x=1&y=a;b&z=%2f..%2f", 200, "", false},
		{"/api/caf%C3%A9/a%20b?q=%252e", 200, "", false},
		{"/api/file%2ejson", 200, "", false},
		{"//api//x", 200, "", false},
		{"/j/shop;jsessionid=0123ABC/cart?x=1", 200, "", true},
		{"/j/x;v=2", 200, "", true},
		{"/api/..;/secret", 400, "bad request: path: dot segment", false},
		{"/api/%2e%2e;/secret", 400, "bad request: path: dot segment", false},
		{"/api/%2E%2E/secret", 400, "bad request: path: dot segment", false},
		{"/api/.%2e/secret", 400, "bad request: path: dot segment", false},
		{"/j/..;jsessionid=1/secret", 400, "bad request: path: dot segment", false},
		{"/api;/x", 400, "bad request: path: ;parameter on a route without path_params", false},
		{"/api/x;jsessionid=1", 400, "bad request: path: ;parameter on a route without path_params", false},
		{"/api%2f..%2fsecret", 400, "bad request: path: backslash or encoded slash or semicolon", false},
		{"/api/x%2F..%2F..%2Fsecret", 400, "bad request: path: backslash or encoded slash or semicolon", false},
		{"/api/x%5c..%5csecret", 400, "bad request: path: backslash or encoded slash or semicolon", false},
		{"/api/x%3b/..", 400, "bad request: path: dot segment", false},
		{"/api%3b/x", 400, "bad request: path: backslash or encoded slash or semicolon", false},
		{"/j/x;%2f..%2f..%2fsecret", 400, "bad request: path: backslash or encoded slash or semicolon", false},
		{"/api/%252e%252e/secret", 400, "bad request: path: double percent-encoding", false},
		{"/api/%252f", 400, "bad request: path: double percent-encoding", false},
		{"/api/%255c", 400, "bad request: path: double percent-encoding", false},
		{"/api/%00.json", 400, "bad request: path: control character", false},
		{"/api/%0d%0aX-Gatehouse-Tenant:%20globex", 400, "bad request: path: control character", false},
		{"/api/%c0%ae%c0%ae/secret", 400, "bad request: path: not UTF-8", false},
		{"/api/%c0%af..%c0%afsecret", 400, "bad request: path: not UTF-8", false},
		{"/api/..%3f/secret", 400, "bad request: path: encoded '?' or '#'", false},
		{"/api/..%23/secret", 400, "bad request: path: encoded '?' or '#'", false},
		{"/api/..%20/secret", 400, "bad request: path: dot segment", false},
		{"/api/.../secret", 400, "bad request: path: dot segment", false},
		{"/api/%ef%bc%8e%ef%bc%8e/secret", 400, "bad request: path: dot segment", false},
		{"/api/x%ef%bc%8f..%ef%bc%8fsecret", 400, "bad request: path: backslash or encoded slash or semicolon", false},
		{"/api/x./y", 200, "", false},
		{"/api/x#frag", 400, "bad request: path: encoded '?' or '#'", false}, // would go on as %23
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			apiBefore, jBefore := len(api.got()), len(servlet.got())
			code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"), "GET "+tc.target+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if code != tc.status {
				t.Fatalf("status %d, want %d", code, tc.status)
			}
			apiGot, jGot := api.got()[apiBefore:], servlet.got()[jBefore:]
			want, other := apiGot, jGot
			if tc.servlet {
				want, other = jGot, apiGot
			}
			switch {
			case len(other) != 0:
				t.Errorf("the other backend saw %q", other)
			case tc.status != 200 && len(want) != 0:
				t.Errorf("a refused path reached the backend as %q", want)
			case tc.status == 200 && (len(want) != 1 || want[0] != tc.target):
				t.Errorf("backend saw %q, want %q unchanged", want, tc.target)
			}
			if tc.reason == "" {
				return
			}
			var found bool
			for _, line := range h.access.WaitLines(tc.reason) {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) == nil && rec["reason"] == tc.reason && rec["status"] == float64(400) {
					found = true
				}
			}
			if !found {
				t.Errorf("no access log line with status 400 and reason %q", tc.reason)
			}
		})
	}
}

// TestPathsAsForwarded pins what the README says reaches the backend: the
// query as sent, the path as sent when it is a valid URL path, otherwise
// decoded and percent-encoded again as a whole.
func TestPathsAsForwarded(t *testing.T) {
	h, api, _ := pathWorld(t)
	for target, want := range map[string]string{
		"/api/a!b%41[c]?q=a|b{c}#f": "/api/a!b%41[c]?q=a|b{c}#f",
		"/api/{x}":                  "/api/%7Bx%7D",
		"/api/a|b":                  "/api/a%7Cb",
		"/api/%41|b":                "/api/A%7Cb",
		"/api/a!b|c":                "/api/a%21b%7Cc",
		"/api/caf\xc3\xa9":          "/api/caf%C3%A9",
	} {
		before := len(api.got())
		if code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"), "GET "+target+" HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
			t.Errorf("%q: status %d", target, code)
			continue
		}
		if got := api.got()[before:]; len(got) != 1 || got[0] != want {
			t.Errorf("%q reached the backend as %q, want %q", target, got, want)
		}
	}
}

// TestTrickyPathsWithCurl sends the paths of the attack with curl
// --path-as-is, as a real client would put them on the wire.
func TestTrickyPathsWithCurl(t *testing.T) {
	curl := netns.RequireTool(t, "curl", "curl")
	h, api, servlet := pathWorld(t)
	dir := t.TempDir()
	cert, key := writePEM(t, dir, "acme", h.pki.acme)
	ca := writeCAPEM(t, dir, "server-ca", h.pki.serverCA)
	_, port, _ := net.SplitHostPort(h.addr("web"))
	for target, want := range map[string]string{
		"/api/..;/secret":           "400",
		"/api/%2e%2e;/secret":       "400",
		"/api;/x":                   "400",
		"/api/a%2fb":                "400",
		"/api/a%5cb":                "400",
		"/api/%252e%252e/x":         "400",
		"/api/%c0%ae%c0%ae/x":       "400",
		"/api/..%3f/x":              "400",
		"/api/..%23/x":              "400",
		"/api/..%20/x":              "400",
		"/api/.../x":                "400",
		"/api/%ef%bc%8e%ef%bc%8e/x": "400",
		"/api/x%ef%bc%8f..":         "400",
		"/api/x?y=1":                "200",
	} {
		for _, proto := range []string{"--http1.1", "--http2"} {
			out, err := exec.Command(curl, "--silent", "--show-error", "--max-time", "10", proto, "--path-as-is",
				"--cacert", ca, "--cert", cert, "--key", key, "--resolve", "a.example:"+port+":127.0.0.1",
				"-o", "/dev/null", "-w", "%{http_code}", "https://a.example:"+port+target).CombinedOutput()
			if err != nil || string(out) != want {
				t.Errorf("curl %s %s: %q %v, want %s", proto, target, out, err, want)
			}
		}
	}
	if got := api.got(); len(got) != 2 || got[0] != "/api/x?y=1" || got[1] != "/api/x?y=1" {
		t.Errorf("the /api backend saw %q, want only the ordinary path, twice", got)
	}
	if got := servlet.got(); len(got) != 0 {
		t.Errorf("the /j backend saw %q", got)
	}
}
