package proxy_test

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// wsAccept is the Sec-WebSocket-Accept answer to key (RFC 6455).
func wsAccept(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// wsBackend accepts WebSocket upgrades and then echoes every line with its
// name and the tenant the proxy named. gate, when set, is waited on before
// the 101 is sent (entered reports the request first).
type wsBackend struct {
	url     string
	entered chan struct{}
	gate    chan struct{}
	mu      sync.Mutex
	conns   []net.Conn
	ended   chan struct{} // one per tunnel the backend saw end
}

func newWSBackend(t testing.TB, name string, gated bool) *wsBackend {
	ws := &wsBackend{entered: make(chan struct{}, 8), ended: make(chan struct{}, 16)}
	if gated {
		ws.gate = make(chan struct{})
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenant := r.Header.Get("X-Gatehouse-Tenant")
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || tenant == "" {
			http.Error(w, "not an upgrade", http.StatusBadRequest)
			return
		}
		ws.entered <- struct{}{}
		if ws.gate != nil {
			<-ws.gate
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		ws.mu.Lock()
		ws.conns = append(ws.conns, c)
		ws.mu.Unlock()
		defer func() { c.Close(); ws.ended <- struct{}{} }()
		fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
			wsAccept(r.Header.Get("Sec-WebSocket-Key")))
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s:%s:%s", name, tenant, line)
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		ws.mu.Lock()
		for _, c := range ws.conns {
			c.Close() // hijacked: the server no longer knows them
		}
		ws.mu.Unlock()
	})
	ws.url = "http://" + ln.Addr().String()
	return ws
}

// wsTunnel is the client side of an upgraded connection through the proxy.
type wsTunnel struct {
	c  *tls.Conn
	br *bufio.Reader
}

// wsRequest sends a WebSocket upgrade request on a new connection and
// returns the answer. It may run outside the test's goroutine.
func (h *harness) wsRequest(cert tls.Certificate, listenerName, path string) (*wsTunnel, *http.Response, error) {
	a, ok := h.srv.Addr(listenerName)
	if !ok {
		return nil, nil, fmt.Errorf("listener %q not running", listenerName)
	}
	c, err := tls.Dial("tcp", a.String(), h.pki.clientTLS(cert, "localhost", "http/1.1"))
	if err != nil {
		return nil, nil, err
	}
	h.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", path, key)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("upgrade %s: %w", path, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		return nil, nil, fmt.Errorf("upgrade %s: Sec-WebSocket-Accept %q", path, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	c.SetDeadline(time.Time{})
	return &wsTunnel{c: c, br: br}, resp, nil
}

// wsOpen upgrades and fails the test unless the switch happened.
func (h *harness) wsOpen(t testing.TB, cert tls.Certificate, listenerName, path string) *wsTunnel {
	t.Helper()
	ws, resp, err := h.wsRequest(cert, listenerName, path)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade %s: status %d, want 101", path, resp.StatusCode)
	}
	return ws
}

// waitEnded waits for the backend to see a tunnel end.
func (ws *wsBackend) waitEnded(t testing.TB) {
	t.Helper()
	select {
	case <-ws.ended:
	case <-time.After(10 * time.Second):
		t.Error("the backend's side of the tunnel still open after 10s")
	}
}

// say sends a line and returns the echo.
func (ws *wsTunnel) say(line string) (string, error) {
	ws.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(ws.c, line+"\n"); err != nil {
		return "", err
	}
	return ws.br.ReadString('\n')
}

// waitClosed waits for the proxy to end the tunnel; only a broken test
// waits the full ten seconds.
func (ws *wsTunnel) waitClosed() error {
	ws.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, ws.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("still open after 10s")
	}
	return nil
}

// TestUpgradedConnectionEndsWithItsRoute: a WebSocket tunnel lives on the
// route it was opened on. A reload that changes another route leaves it
// running; one that changes or removes its own route ends it, as tcp
// sessions end. An open tunnel does not hold its tenant's in-flight slot.
func TestUpgradedConnectionEndsWithItsRoute(t *testing.T) {
	one, two := newWSBackend(t, "one", false), newWSBackend(t, "two", false)
	plain, plain2 := newBackend(t, "plain"), newBackend(t, "plain2")
	gen := func(n uint64, routes ...policy.Route) *policy.Policy {
		l := listener("web", policy.ProtoHTTPS, routes...)
		l.Limits = policyLimits()
		l.Limits.HTTP.MaxInFlight = 1
		return &policy.Policy{Generation: n, Listeners: []policy.Listener{l}}
	}
	acmeWS := policy.Route{Tenant: "acme", Path: "/ws", Backend: one.url, WebSocket: true}
	h := newHarness(t, testLimits())
	if err := h.srv.Apply(gen(1, acmeWS,
		policy.Route{Tenant: "acme", Path: "/", Backend: plain.url()},
		policy.Route{Tenant: "globex", Path: "/ws", Backend: one.url, WebSocket: true})); err != nil {
		t.Fatal(err)
	}
	a := h.wsOpen(t, h.pki.acme, "web", "/ws")
	g := h.wsOpen(t, h.pki.globex, "web", "/ws")
	if got, err := a.say("hi"); got != "one:acme:hi\n" {
		t.Fatalf("acme's tunnel: %q %v", got, err)
	}
	if got, err := g.say("hi"); got != "one:globex:hi\n" {
		t.Fatalf("globex's tunnel: %q %v", got, err)
	}
	// acme may have one request in flight; the open tunnel is not one.
	if r := h.mustDo(h.client(h.pki.acme, false), "web", "GET", "", "/x", nil, nil); r.status != 200 {
		t.Errorf("acme request beside its tunnel: status %d, want 200", r.status)
	}

	// Generation 2 moves acme's "/" and globex's "/ws" elsewhere.
	if err := h.srv.Apply(gen(2, acmeWS,
		policy.Route{Tenant: "acme", Path: "/", Backend: plain2.url()},
		policy.Route{Tenant: "globex", Path: "/ws", Backend: two.url, WebSocket: true})); err != nil {
		t.Fatal(err)
	}
	if got, err := a.say("still"); got != "one:acme:still\n" {
		t.Errorf("acme's tunnel ended by a reload that changed another route: %q %v", got, err)
	}
	if err := g.waitClosed(); err != nil {
		t.Errorf("globex's tunnel on its changed route: %v", err)
	}
	one.waitEnded(t) // the backend's side of globex's old tunnel ended too
	if got, err := h.wsOpen(t, h.pki.globex, "web", "/ws").say("hi"); got != "two:globex:hi\n" {
		t.Errorf("globex's new tunnel: %q %v, want the new backend", got, err)
	}

	// Generation 3 removes acme's "/ws".
	if err := h.srv.Apply(gen(3,
		policy.Route{Tenant: "acme", Path: "/", Backend: plain2.url()},
		policy.Route{Tenant: "globex", Path: "/ws", Backend: two.url, WebSocket: true})); err != nil {
		t.Fatal(err)
	}
	if err := a.waitClosed(); err != nil {
		t.Errorf("acme's tunnel on its removed route: %v", err)
	}
	one.waitEnded(t)
	for _, g := range []string{"generation=2", "generation=3"} {
		var line string
		for _, l := range h.logs.WaitLines(g) {
			if strings.Contains(l, "listeners applied") && strings.Contains(l, g) {
				line = l
			}
		}
		if !strings.Contains(line, "sessions_ended=1") {
			t.Errorf("apply line %q, want sessions_ended=1", line)
		}
	}
	if n := h.logs.Occurrences("session closed: its route was removed or changed by a reload"); n != 2 {
		t.Errorf("%d lines for sessions closed by a reload, want 2", n)
	}
}

// TestUpgradeRefusedWhenRouteChangedMeanwhile: when a reload removes the
// route while the backend is still answering the upgrade, its 101 opens no
// tunnel: the client gets 503 and the backend's connection is closed.
func TestUpgradeRefusedWhenRouteChangedMeanwhile(t *testing.T) {
	ws := newWSBackend(t, "one", true)
	other := newBackend(t, "other")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/ws", Backend: ws.url, WebSocket: true}))
	type answer struct {
		tun  *wsTunnel
		resp *http.Response
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		tun, resp, err := h.wsRequest(h.pki.acme, "web", "/ws")
		done <- answer{tun, resp, err}
	}()
	<-ws.entered
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/", Backend: other.url()})}}); err != nil {
		t.Fatal(err)
	}
	close(ws.gate)
	a := <-done
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.resp.StatusCode != http.StatusServiceUnavailable || !a.resp.Close {
		t.Fatalf("upgrade answered after its route was removed: status %d close %v, want 503 and close", a.resp.StatusCode, a.resp.Close)
	}
	if err := a.tun.waitClosed(); err != nil {
		t.Errorf("client connection: %v", err)
	}
	ws.waitEnded(t) // the backend's side is closed
	if h.access.WaitLines(`"reason":"upgrade refused: route changed by a reload"`) == nil {
		t.Error("no access log line with the reason")
	}
}

// TestUpgradedConnectionLimits: limits.tcp bounds upgraded connections,
// resolved for the tenant: an idle tunnel is closed after idle_timeout, a
// busy one after max_session, and a tunnel without such limits stays.
func TestUpgradedConnectionLimits(t *testing.T) {
	ws := newWSBackend(t, "one", false)
	web := listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: ws.url, WebSocket: true},
		policy.Route{Tenant: "globex", Backend: ws.url, WebSocket: true})
	web.Limits = policyLimits() // no tcp limits
	idle := policyLimits()
	idle.TCP.IdleTimeout = 300 * time.Millisecond
	web.TenantLimits = map[string]policy.Limits{"acme": idle}
	short := listener("short", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: ws.url, WebSocket: true})
	short.Limits = policyLimits()
	short.Limits.TCP.MaxSession = 500 * time.Millisecond
	short.Port = freePort(t)
	h := newHarness(t, testLimits(), web, short)

	g := h.wsOpen(t, h.pki.globex, "web", "/")
	a := h.wsOpen(t, h.pki.acme, "web", "/")
	if got, err := a.say("hi"); got != "one:acme:hi\n" {
		t.Fatalf("acme's tunnel: %q %v", got, err)
	}
	if err := a.waitClosed(); err != nil {
		t.Errorf("acme's idle tunnel: %v", err)
	}
	if got, err := g.say("hi"); got != "one:globex:hi\n" {
		t.Errorf("globex's tunnel, without an idle timeout, after acme's was closed: %q %v", got, err)
	}

	// Busy all along: ended by max_session all the same.
	b := h.wsOpen(t, h.pki.acme, "short", "/")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := b.say("busy"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("busy tunnel still open after 10s, past its max_session")
		}
	}
	for _, want := range []string{
		"upgraded connection closed: idle timeout",
		"upgraded connection closed: maximum session length",
	} {
		var line string
		for _, l := range h.logs.WaitLines(want) {
			if strings.Contains(l, want) {
				line = l
			}
		}
		if !strings.Contains(line, "tenant=acme") || !strings.Contains(line, "source=127.0.0.1:") {
			t.Errorf("log line %q: want %q with tenant and source", line, want)
		}
	}
	if h.access.WaitLines(`"tunnel_end":"idle timeout"`) == nil || h.access.WaitLines(`"tunnel_end":"maximum session length"`) == nil {
		t.Error("access log lines of the tunnels lack tunnel_end")
	}
}

// TestUpgradedConnectionRearmedByReload: a reload that lowers limits.tcp
// reaches open upgraded connections at once, as it reaches tcp sessions:
// an idle tunnel opened without limits ends under the new idle timeout,
// and one of a tenant whose override is now past its max_session ends
// at once.
func TestUpgradedConnectionRearmedByReload(t *testing.T) {
	ws := newWSBackend(t, "one", false)
	web := listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: ws.url, WebSocket: true},
		policy.Route{Tenant: "globex", Backend: ws.url, WebSocket: true})
	web.Limits = policyLimits() // no tcp limits
	h := newHarness(t, testLimits(), web)
	a := h.wsOpen(t, h.pki.acme, "web", "/")
	g := h.wsOpen(t, h.pki.globex, "web", "/")
	for _, ws := range []*wsTunnel{a, g} {
		if _, err := ws.say("hi"); err != nil {
			t.Fatalf("tunnel before the reload: %v", err)
		}
	}
	web.Limits.TCP.IdleTimeout = 300 * time.Millisecond
	short := policyLimits()
	short.TCP.MaxSession = time.Nanosecond
	web.TenantLimits = map[string]policy.Limits{"globex": short}
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{web}}); err != nil {
		t.Fatal(err)
	}
	if err := a.waitClosed(); err != nil {
		t.Errorf("acme's idle tunnel under the reloaded idle_timeout: %v", err)
	}
	if err := g.waitClosed(); err != nil {
		t.Errorf("globex's tunnel past its reloaded max_session: %v", err)
	}
	for tenant, end := range map[string]string{"acme": "idle timeout", "globex": "maximum session length"} {
		want := `"tenant":"` + tenant + `"`
		var line string
		for _, l := range h.access.WaitLines(want) {
			if strings.Contains(l, want) && strings.Contains(l, `"tunnel_end"`) {
				line = l
			}
		}
		if !strings.Contains(line, `"tunnel_end":"`+end+`"`) {
			t.Errorf("%s's access log line %q: want tunnel_end %q", tenant, line, end)
		}
	}
}
