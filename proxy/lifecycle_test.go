package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

func TestHTTP2Downstream(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()}))
	r := h.mustDo(h.client(h.pki.acme, true), "web", "POST", "", "/h2", nil, strings.NewReader("hello"))
	if r.status != 200 || r.resp.Proto != "HTTP/2.0" {
		t.Fatalf("status %d proto %s, want 200 over HTTP/2.0", r.status, r.resp.Proto)
	}
	if r.echo.Header.Get("X-Gatehouse-Tenant") != "acme" || r.echo.BodyLen != 5 {
		t.Errorf("backend saw tenant %q body %d", r.echo.Header.Get("X-Gatehouse-Tenant"), r.echo.BodyLen)
	}
	g := h.mustDo(h.client(h.pki.globex, true), "web", "GET", "", "/", nil, nil)
	if g.status != 403 {
		t.Errorf("globex over HTTP/2: status %d, want 403", g.status)
	}
}

// TestUpgradePassthrough upgrades with a WebSocket handshake to a backend
// that then echoes lines, and checks bytes flow both ways through the
// proxy.
func TestUpgradePassthrough(t *testing.T) {
	var upHits atomic.Int64
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upHits.Add(1)
		if r.Header.Get("Upgrade") != "websocket" || r.Header.Get("X-Gatehouse-Tenant") != "acme" || r.URL.Path == "/decline" {
			http.Error(w, "no upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		line, _ := brw.ReadString('\n')
		io.WriteString(c, "echo: "+line)
	})}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go up.Serve(ln)
	t.Cleanup(func() { up.Close() })
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: "http://" + ln.Addr().String(), WebSocket: true}))
	const handshake = "Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	c := h.rawTLS(h.pki.acme, "web")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\n"+handshake)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	io.WriteString(c, "Transfer-Encoding: chunked\r\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: Transfer-Encoding: chunked\r\n" {
		t.Fatalf("upgraded stream answered %q, %v", line, err)
	}

	// A declined upgrade ends the connection after the answer: the framing
	// guard stepped aside for it, so nothing may follow on it.
	c2 := h.rawTLS(h.pki.acme, "web")
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c2, "GET /decline HTTP/1.1\r\n"+handshake+
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	br2 := bufio.NewReader(c2)
	resp, err = http.ReadResponse(br2, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 400 || !resp.Close {
		t.Errorf("declined upgrade: status %d close %v, want 400 and close", resp.StatusCode, resp.Close)
	}
	if rest, _ := io.ReadAll(br2); len(rest) != 0 {
		t.Errorf("connection went on after a declined upgrade: %q", rest)
	}

	// The same when the proxy itself refuses the upgrade (no route).
	c4 := h.rawTLS(h.pki.globex, "web")
	c4.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c4, "GET /ws HTTP/1.1\r\n"+handshake)
	br4 := bufio.NewReader(c4)
	if resp, err := http.ReadResponse(br4, nil); err != nil || resp.StatusCode != 403 || !resp.Close {
		t.Errorf("upgrade without a route: %v %v, want 403 and close", resp, err)
	}

	// h2c would tunnel later requests past routing.
	c3 := h.rawTLS(h.pki.acme, "web")
	before := upHits.Load()
	if code, _ := rawExchange(t, c3, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"); code != 400 {
		t.Errorf("h2c upgrade: status %d, want 400", code)
	}
	if upHits.Load() != before {
		t.Error("h2c upgrade reached the backend")
	}
}

func TestApplyBindFailureKeepsOldState(t *testing.T) {
	old := newBackend(t, "old")
	next := newBackend(t, "next")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: old.url()}))
	webAddr := h.addr("web")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)
	bad := &policy.Policy{Generation: 2, Listeners: []policy.Listener{
		listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: next.url()}),
		{Name: "second", Addr: loopback, Port: busyPort, Protocol: policy.ProtoHTTPS, Limits: testLimits(),
			Routes: []policy.Route{{Tenant: "acme", Backend: next.url()}}},
	}}
	if err := h.srv.Apply(bad); err == nil {
		t.Fatal("Apply with an address in use succeeded")
	}
	if _, ok := h.srv.Addr("second"); ok {
		t.Error("the failed listener is running")
	}
	if h.addr("web") != webAddr {
		t.Error("web listener moved")
	}
	if r := h.mustDo(h.client(h.pki.acme, false), "web", "GET", "", "/", nil, nil); r.echo.Backend != "old" {
		t.Errorf("after a failed Apply requests go to %q, want old", r.echo.Backend)
	}

	// Bad routes and unsupported protocols are refused the same way.
	for name, p := range map[string]*policy.Policy{
		"bad backend": {Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: "ftp://x"})}},
		"missing ca": {Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS,
			policy.Route{Tenant: "acme", Backend: "https://127.0.0.1:1", BackendCA: filepath.Join(t.TempDir(), "none.pem")})}},
		"unknown protocol": {Listeners: []policy.Listener{listener("web", policy.Protocol("gopher"), policy.Route{Tenant: "acme", Backend: "127.0.0.1:70"})}},
		"bad tn3270 route": {Listeners: []policy.Listener{listener("web", policy.ProtoTN3270, policy.Route{Tenant: "acme", Backend: "no port"})}},
		"duplicate name":   {Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS), {Name: "web", Addr: loopback, Port: 1, Protocol: policy.ProtoHTTPS, Limits: testLimits()}}},
		"backend twice": {Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS,
			policy.Route{Tenant: "acme", Backend: next.url(), Backends: []string{next.url(), next.url()}})}},
		"two terminal routes of a tenant": {Listeners: []policy.Listener{listener("web", policy.ProtoTN3270,
			policy.Route{Tenant: "acme", Backend: "127.0.0.1:23"}, policy.Route{Tenant: "acme", Backend: "127.0.0.1:24"})}},
	} {
		if err := h.srv.Apply(p); err == nil {
			t.Errorf("%s: Apply succeeded", name)
		} else if name != "missing ca" && !errors.Is(err, policy.ErrListener) {
			t.Errorf("%s: %v, want policy.ErrListener (policy.CheckListeners judges routes)", name, err)
		} else if name == "unknown protocol" && !errors.Is(err, proxy.ErrUnsupported) {
			t.Errorf("unknown protocol: %v, want ErrUnsupported", err)
		}
	}
	if r := h.mustDo(h.client(h.pki.acme, false), "web", "GET", "", "/", nil, nil); r.echo.Backend != "old" {
		t.Errorf("after refused Applys requests go to %q, want old", r.echo.Backend)
	}

	// A good Apply swaps routes under a live keep-alive connection.
	keep := h.client(h.pki.acme, false)
	h.mustDo(keep, "web", "GET", "", "/", nil, nil)
	good := &policy.Policy{Generation: 3, Listeners: []policy.Listener{
		listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: next.url()})}}
	if err := h.srv.Apply(good); err != nil {
		t.Fatal(err)
	}
	if r := h.mustDo(keep, "web", "GET", "", "/", nil, nil); r.echo.Backend != "next" {
		t.Errorf("after Apply a kept connection reaches %q, want next", r.echo.Backend)
	}
}

func freePort(t testing.TB) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// slowBackend answers once release is closed, after signalling entered.
func slowBackend(t testing.TB) (url string, entered chan struct{}, release chan struct{}) {
	entered, release = make(chan struct{}, 8), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, "finished")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String(), entered, release
}

func TestApplyRemovesListenerAndShutdownDrains(t *testing.T) {
	slowURL, entered, release := slowBackend(t)
	b := newBackend(t, "b")
	slowL := policy.Listener{Name: "slow", Addr: loopback, Port: freePort(t), Protocol: policy.ProtoHTTPS, Limits: testLimits(),
		Routes: []policy.Route{{Tenant: "acme", Backend: slowURL}}}
	otherL := policy.Listener{Name: "other", Addr: loopback, Port: freePort(t), Protocol: policy.ProtoHTTPS, Limits: testLimits(),
		Routes: []policy.Route{{Tenant: "acme", Path: "/", Backend: b.url()}, {Tenant: "acme", Path: "/slow", Backend: slowURL}}}
	h := newHarness(t, testLimits(), slowL, otherL)
	slowAddr := h.addr("slow")

	done := make(chan result, 2)
	go func() {
		r, _ := h.do(h.client(h.pki.acme, false), "slow", "GET", "", "/", nil, nil)
		done <- r
	}()
	<-entered
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{otherL}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.srv.Addr("slow"); ok {
		t.Error("removed listener still reported")
	}
	if c, err := net.DialTimeout("tcp", slowAddr, 5*time.Second); err == nil {
		c.Close()
		t.Error("removed listener still accepts")
	}
	close(release)
	if r := <-done; r.status != 200 || r.body != "finished" {
		t.Errorf("request on the removed listener: status %d body %q, want it to finish", r.status, r.body)
	}

	// Shutdown lets a running request finish.
	go func() {
		r, _ := h.do(h.client(h.pki.acme, false), "other", "GET", "", "/slow", nil, nil)
		done <- r
	}()
	<-entered
	if err := h.srv.Shutdown(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if r := <-done; r.status != 200 {
		t.Errorf("request during Shutdown: status %d", r.status)
	}
	if err := h.srv.Apply(&policy.Policy{Listeners: []policy.Listener{otherL}}); !errors.Is(err, proxy.ErrClosed) {
		t.Errorf("Apply after Shutdown: %v, want ErrClosed", err)
	}
}

func TestShutdownClosesBusyConnectionsAtDeadline(t *testing.T) {
	slowURL, entered, release := slowBackend(t)
	defer close(release)
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: slowURL}))
	done := make(chan error, 1)
	go func() {
		_, err := h.do(h.client(h.pki.acme, false), "web", "GET", "", "/", nil, nil)
		done <- err
	}()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err == nil {
		t.Error("Shutdown with a stuck request reported a clean drain")
	}
	if err := <-done; err == nil {
		t.Error("stuck request finished normally after a forced shutdown")
	}
}

func TestMetrics(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()}))
	acme := h.client(h.pki.acme, false)
	h.mustDo(acme, "web", "GET", "", "/", nil, nil)
	h.mustDo(h.client(h.pki.globex, false), "web", "GET", "", "/", nil, nil)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(h.srv); err != nil {
		t.Fatal(err)
	}
	h.access.WaitLines(`"tenant":"globex"`) // both requests done and counted
	want := `
# HELP gatehouse_http_requests_total HTTP requests answered, by listener, tenant, environment and status code.
# TYPE gatehouse_http_requests_total counter
gatehouse_http_requests_total{code="200",environment="default",listener="web",tenant="acme"} 1
gatehouse_http_requests_total{code="403",environment="default",listener="web",tenant="globex"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "gatehouse_http_requests_total"); err != nil {
		t.Error(err)
	}
	if n := activeGauge(t, reg, "acme"); n != 1 {
		t.Errorf("acme active connections %v, want 1", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"gatehouse_proxy_connections_active", "gatehouse_proxy_bytes_total", "gatehouse_http_request_duration_seconds"} {
		if !names[n] {
			t.Errorf("metric %s missing", n)
		}
	}
}

func activeGauge(t testing.TB, reg *prometheus.Registry, tenant string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_proxy_connections_active" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" && l.GetValue() == tenant {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// TestApplyUnderLoad swaps routes back and forth while a client keeps
// sending: every request is answered by one of the two backends, none is
// refused or lost in between.
func TestApplyUnderLoad(t *testing.T) {
	one, two := newBackend(t, "one"), newBackend(t, "two")
	gen := func(n uint64, b *backend) *policy.Policy {
		return &policy.Policy{Generation: n, Listeners: []policy.Listener{
			listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()})}}
	}
	h := newHarness(t, testLimits(), gen(1, one).Listeners...)
	stop := make(chan struct{})
	errs := make(chan string, 1)
	done := make(chan int)
	go func() {
		c := h.client(h.pki.acme, false)
		n := 0
		defer func() { done <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := h.do(c, "web", "GET", "", "/", nil, nil)
			if err != nil || r.status != 200 || (r.echo.Backend != "one" && r.echo.Backend != "two") {
				select {
				case errs <- fmt.Sprintf("request %d: %v status %d backend %q", n, err, r.status, r.echo.Backend):
				default:
				}
				return
			}
			n++
		}
	}()
	for i := range 20 {
		b := one
		if i%2 == 0 {
			b = two
		}
		if err := h.srv.Apply(gen(uint64(i+2), b)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	n := <-done
	select {
	case e := <-errs:
		t.Fatal(e)
	default:
	}
	if n == 0 {
		t.Fatal("no request completed")
	}
}

// TestStreamedResponseIsNotHeldBack: a response without a length (a
// stream, a long poll) reaches the client chunk by chunk, each as the
// backend flushes it, over HTTP/1.1 and HTTP/2.
func TestStreamedResponseIsNotHeldBack(t *testing.T) {
	release := make(chan struct{})
	backend := serveTCP(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
		io.WriteString(c, "6\r\nfirst\n\r\n")
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(c, "7\r\nsecond\n\r\n0\r\n\r\n")
	})
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: "http://" + backend}))
	for _, h2 := range []bool{false, true} {
		resp, err := h.client(h.pki.acme, h2).Get("https://" + h.addr("web") + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		first := make(chan string, 1)
		br := bufio.NewReader(resp.Body)
		go func() { line, _ := br.ReadString('\n'); first <- line }()
		select {
		case line := <-first:
			if line != "first\n" {
				t.Errorf("h2=%v: first chunk %q", h2, line)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("h2=%v: the first chunk was held back while the backend waited", h2)
		}
		release <- struct{}{}
		if rest, _ := io.ReadAll(br); string(rest) != "second\n" {
			t.Errorf("h2=%v: rest %q", h2, rest)
		}
		resp.Body.Close()
	}
}
