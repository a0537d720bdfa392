package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime/pprof"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// TestFastEngineExchangeOnRequestGoroutine holds a backend's answer and
// looks at every goroutine meanwhile: under the fast engine no backend
// connection has a read or write loop of its own (net/http's Transport
// runs two per connection, which std still shows), and the answer and the
// next request on the kept-alive backend connection arrive as before.
func TestFastEngineExchangeOnRequestGoroutine(t *testing.T) {
	for _, engine := range []string{httpproxy.EngineStd, httpproxy.EngineFast} {
		t.Run(engine, func(t *testing.T) {
			held, release := make(chan struct{}), make(chan struct{})
			be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/hold" {
					held <- struct{}{}
					<-release
				}
				io.WriteString(w, "ok "+r.Header.Get("X-Gatehouse-Tenant"))
			}))
			t.Cleanup(be.Close)
			lim := testLimits()
			lim.HTTP.Engine = engine
			h := newHarness(t, lim, listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Path: "/", Backend: be.URL}))
			// Raw TLS clients: an http.Client would run Transport loops of
			// its own in this process.
			get := func(path string) (int, string) {
				return rawExchange(t, h.rawTLS(h.pki.acme, "web"), "GET "+path+" HTTP/1.1\r\nHost: localhost\r\n\r\n")
			}
			if code, _ := get("/warm"); code != 200 { // a kept-alive backend connection
				t.Fatalf("warm-up: %d", code)
			}
			done := make(chan string, 1)
			go func() {
				code, resp := get("/hold")
				done <- fmt.Sprint(code, " ", resp)
			}()
			<-held
			var dump bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&dump, 1)
			close(release)
			loops := bytes.Contains(dump.Bytes(), []byte("net/http.(*persistConn).readLoop")) ||
				bytes.Contains(dump.Bytes(), []byte("net/http.(*persistConn).writeLoop"))
			if want := engine == httpproxy.EngineStd; loops != want {
				t.Errorf("Transport loops running during the exchange: %v, want %v", loops, want)
			}
			if r := <-done; !strings.HasPrefix(r, "200 ") {
				t.Errorf("held request: %q", r)
			}
			if code, _ := get("/again"); code != 200 {
				t.Errorf("next request: %d", code)
			}
		})
	}
}
