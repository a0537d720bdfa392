package httpproxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// TestFastEngineClosesIdleBackendConnections: the fast engine keeps a
// backend connection for the next request, and closes it once it has been
// idle for the idle timeout, as net/http's Transport does, so a quiet
// backend does not hold the proxy's descriptors for ever.
func TestFastEngineClosesIdleBackendConnections(t *testing.T) {
	defer httpproxy.SetDirectIdleTimeout(300 * time.Millisecond)()
	states := make(chan http.ConnState, 16)
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	be.Config.ConnState = func(_ net.Conn, s http.ConnState) { states <- s }
	be.Start()
	t.Cleanup(be.Close)
	h, err := httpproxy.New(httpproxy.Config{Listener: policy.Listener{Name: "web", Protocol: policy.ProtoHTTPS,
		Routes: []policy.Route{{Tenant: "acme", Path: "/", Backend: be.URL}},
		Limits: policy.Limits{HTTP: policy.HTTPLimits{Engine: httpproxy.EngineFast}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	get := func() {
		r := httptest.NewRequest("GET", "https://localhost/", nil)
		r = r.WithContext(httpproxy.WithPeer(r.Context(), certs.Peer{Tenant: "acme", Environment: "default"}))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("status %d", w.Code)
		}
	}
	get()
	get() // on the same connection
	var seen []http.ConnState
	for len(seen) == 0 || seen[len(seen)-1] != http.StateClosed {
		select {
		case s := <-states:
			seen = append(seen, s)
		case <-time.After(10 * time.Second):
			t.Fatalf("backend connection states %v: not closed 10 s after the idle timeout", seen)
		}
	}
	want := []http.ConnState{http.StateNew, http.StateActive, http.StateIdle, http.StateActive, http.StateIdle, http.StateClosed}
	if len(seen) != len(want) {
		t.Fatalf("backend connection states %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("backend connection states %v, want %v", seen, want)
		}
	}
}

// TestEnginesRefuseOversizeResponseHead: a backend whose response head
// never ends within net/http's response header limit (10 MiB) gets a 502
// on both engines; the fast engine used to read any head whole, so one
// backend could make the proxy hold as much memory as it sent.
func TestEnginesRefuseOversizeResponseHead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	line := "X-Pad: " + strings.Repeat("a", 1000) + "\r\n"
	head := "HTTP/1.1 200 OK\r\n" + strings.Repeat(line, (11<<20)/len(line)) + "Content-Length: 2\r\n\r\nok"
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, head) // ends early when the proxy gives up
			}()
		}
	}()
	for _, engine := range []string{httpproxy.EngineStd, httpproxy.EngineFast} {
		t.Run(engine, func(t *testing.T) {
			h, err := httpproxy.New(httpproxy.Config{Listener: policy.Listener{Name: "web", Protocol: policy.ProtoHTTPS,
				Routes: []policy.Route{{Tenant: "acme", Path: "/", Backend: "http://" + ln.Addr().String()}},
				Limits: policy.Limits{HTTP: policy.HTTPLimits{Engine: engine, BackendTimeout: time.Minute}}}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(h.Close)
			r := httptest.NewRequest("GET", "https://localhost/", nil)
			r = r.WithContext(httpproxy.WithPeer(r.Context(), certs.Peer{Tenant: "acme", Environment: "default"}))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != http.StatusBadGateway {
				t.Fatalf("status %d with %d header fields, want 502", w.Code, len(w.Header()["X-Pad"]))
			}
		})
	}
}
