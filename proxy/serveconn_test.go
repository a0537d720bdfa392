package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

// handedIn is a connection whose handshake the test ran itself, outside
// the proxy's listeners, as a tunnel or a parent process would.
type handedIn struct {
	client *tls.Conn  // the client's end
	server *tls.Conn  // what the test hands to ServeConn
	peer   certs.Peer // what the TLS source made of the handshake
}

// handIn runs a real TLS handshake over a loopback TCP pair with the
// listener's own TLS configuration, cert as the client's certificate, and
// asks the TLS source for the Peer, as a source of connections would.
func (h *harness) handIn(t *testing.T, cert tls.Certificate, listenerName string, alpn ...string) handedIn {
	t.Helper()
	cr, sr := testkit.TCPPair(t)
	sc, err := h.pki.src.TLSConfig(listenerName)
	if err != nil {
		t.Fatal(err)
	}
	sc = sc.Clone()
	sc.NextProtos = alpn
	server := tls.Server(sr, sc)
	client := tls.Client(cr, h.pki.clientTLS(cert, "localhost", alpn...))
	errc := make(chan error, 1)
	go func() { errc <- client.HandshakeContext(ctxTimeout(t, 10*time.Second)) }()
	if err := server.HandshakeContext(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	peer, err := h.pki.src.HandshakeDone(listenerName, cr.LocalAddr().(*net.TCPAddr).AddrPort(), server.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	return handedIn{client: client, server: server, peer: peer}
}

// serve runs ServeConn for hi with peer, and returns its result.
func (h *harness) serve(hi handedIn, peer certs.Peer) <-chan error {
	done := make(chan error, 1)
	go func() { done <- h.srv.ServeConn(hi.server, peer) }()
	return done
}

func waitServed(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn did not return")
		return nil
	}
}

// TestServeConnRoutes: a connection handed in is routed by the tenant its
// certificate proves, over HTTP/1.1 and HTTP/2, exactly as the listener's
// own: each tenant reaches its own backend and no other tenant's route.
func TestServeConnRoutes(t *testing.T) {
	a, g := newBackend(t, "acme"), newBackend(t, "globex")
	web := listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Host: "a.example", Backend: a.url()},
		policy.Route{Tenant: "globex", Host: "g.example", Backend: g.url()})
	h := newHarness(t, testLimits(), web)

	// HTTP/1.1, hand-written.
	hi := h.handIn(t, h.pki.acme, "web", "http/1.1")
	done := h.serve(hi, hi.peer)
	code, resp := rawExchange(t, hi.client, "GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n")
	if code != http.StatusOK || !strings.Contains(resp, `"backend":"acme"`) {
		t.Fatalf("acme over a handed-in connection: %d\n%s", code, resp)
	}
	if !strings.Contains(resp, fingerprint(h.pki.acme)) {
		t.Errorf("backend did not see acme's fingerprint:\n%s", resp)
	}
	// Another tenant's host: no route, whatever the request names.
	code, _ = rawExchange(t, hi.client, "GET /x HTTP/1.1\r\nHost: g.example\r\n\r\n")
	if code != http.StatusForbidden || g.hits.Load() != 0 {
		t.Fatalf("acme asking for globex's host: %d, globex backend hits %d", code, g.hits.Load())
	}
	hi.client.Close()
	if err := waitServed(t, done); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}

	// HTTP/2 is refused (see ServeConn), and says so; HTTP/1.1 of
	// another tenant goes to its own backend.
	hi = h.handIn(t, h.pki.globex, "web", "h2")
	if err := waitServed(t, h.serve(hi, hi.peer)); err == nil || !strings.Contains(err.Error(), "HTTP/2") {
		t.Errorf("HTTP/2 handed in: ServeConn = %v, want a refusal", err)
	}
	hi = h.handIn(t, h.pki.globex, "web", "http/1.1")
	done = h.serve(hi, hi.peer)
	code, resp = rawExchange(t, hi.client, "GET /y HTTP/1.1\r\nHost: g.example\r\nConnection: close\r\n\r\n")
	if code != http.StatusOK || !strings.Contains(resp, `"backend":"globex"`) {
		t.Fatalf("globex over a handed-in connection: %d\n%s", code, resp)
	}
	if err := waitServed(t, done); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	var line string
	for _, l := range h.access.WaitLines(`"tenant":"globex"`) {
		if strings.Contains(l, `"tenant":"globex"`) {
			line = l
		}
	}
	if !strings.Contains(line, `"listener":"web"`) || !strings.Contains(line, `"source":"`+hi.peer.Source.String()+`"`) {
		t.Errorf("access log line of the handed-in request: %q", line)
	}
}

// TestServeConnForged: a Peer the certificate does not prove is refused
// before anything is routed: another tenant's name, another certificate's
// fingerprint, a revoked certificate, a listener that does not exist, a
// connection without a finished handshake.
func TestServeConnForged(t *testing.T) {
	a, g := newBackend(t, "acme"), newBackend(t, "globex")
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: a.url()}, policy.Route{Tenant: "globex", Backend: g.url()})
	h := newHarness(t, testLimits(), web)

	for name, forge := range map[string]func(p certs.Peer) certs.Peer{
		"other tenant":      func(p certs.Peer) certs.Peer { p.Tenant = "globex"; return p },
		"other fingerprint": func(p certs.Peer) certs.Peer { p.FingerprintSHA256 = fingerprint(h.pki.globex); return p },
		"no tenant":         func(p certs.Peer) certs.Peer { p.Tenant = ""; return p },
		// A request without a Host is routed by the Peer's server name.
		"other server name": func(p certs.Peer) certs.Peer { p.ServerName = "other.example"; return p },
	} {
		hi := h.handIn(t, h.pki.acme, "web", "http/1.1")
		done := h.serve(hi, forge(hi.peer))
		if err := waitServed(t, done); !errors.Is(err, proxy.ErrUnverified) {
			t.Errorf("%s: ServeConn = %v, want ErrUnverified", name, err)
		}
		if code, _ := rawExchange(t, hi.client, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"); code != 0 {
			t.Errorf("%s: answered %d on a refused connection", name, code)
		}
	}
	hi := h.handIn(t, h.pki.acme, "web", "http/1.1")
	p := hi.peer
	p.Listener = "nope"
	if err := waitServed(t, h.serve(hi, p)); !errors.Is(err, proxy.ErrNoListener) {
		t.Errorf("unknown listener: ServeConn = %v, want ErrNoListener", err)
	}
	hi = h.handIn(t, h.pki.acme, "web", "http/1.1")
	h.pki.src.revoke(fingerprint(h.pki.acme)) // after the handshake, before the handover
	if err := waitServed(t, h.serve(hi, hi.peer)); !errors.Is(err, proxy.ErrUnverified) {
		t.Errorf("revoked: ServeConn = %v, want ErrUnverified", err)
	}
	// A plain connection claiming globex.
	cr, sr := testkit.TCPPair(t)
	if err := h.srv.ServeConn(sr, certs.Peer{Tenant: "globex", Listener: "web"}); !errors.Is(err, proxy.ErrUnverified) {
		t.Errorf("plain connection: ServeConn = %v, want ErrUnverified", err)
	}
	cr.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := cr.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("plain connection left open: %d, %v", n, err)
	}
	if a.hits.Load() != 0 || g.hits.Load() != 0 {
		t.Errorf("backends reached: acme %d, globex %d", a.hits.Load(), g.hits.Load())
	}
	if !strings.Contains(h.logs.String(), "handed-in connection refused") {
		t.Errorf("no refusal logged:\n%s", h.logs.String())
	}
}

// TestServeConnLimits: a connection handed in counts against the same
// per-tenant budget as the listener's own, is revalidated with them, and
// drained with its listener.
func TestServeConnLimits(t *testing.T) {
	echo := lineEcho(t)
	lim := testLimits()
	lim.MaxConnsPerTenant = 1
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo}, policy.Route{Tenant: "globex", Backend: echo})
	raw.Limits = lim
	h := newHarness(t, lim, raw)

	hi := h.handIn(t, h.pki.acme, "raw")
	done := h.serve(hi, hi.peer)
	br := bufio.NewReader(hi.client)
	ping := func() error {
		hi.client.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(hi.client, "ping\n"); err != nil {
			return err
		}
		line, err := br.ReadString('\n')
		if err == nil && line != "ping\n" {
			err = errors.New("echo " + line)
		}
		return err
	}
	if err := ping(); err != nil {
		t.Fatalf("handed-in tcp session: %v", err)
	}
	// The tenant's one connection is taken: the listener's own refuses.
	if _, err := h.dialSession(h.pki.acme, "raw"); err == nil {
		t.Fatal("second acme connection through the listener served over connections_per_tenant 1")
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "tenant_limit"); v != 1 {
		t.Errorf("tenant_limit refusals %v, want 1", v)
	}
	// Another handed-in one is refused the same way; another tenant not.
	hi2 := h.handIn(t, h.pki.acme, "raw")
	if err := waitServed(t, h.serve(hi2, hi2.peer)); !errors.Is(err, proxy.ErrConnLimit) {
		t.Errorf("ServeConn over the tenant limit = %v, want ErrConnLimit", err)
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "tenant_limit"); v != 2 {
		t.Errorf("tenant_limit refusals %v, want 2", v)
	}
	if s, err := h.dialSession(h.pki.globex, "raw"); err != nil {
		t.Fatalf("globex refused: %v", err)
	} else {
		s.c.Close()
	}
	if v := h.metric("gatehouse_proxy_connections_active", "default", "raw", "acme"); v != 1 {
		t.Errorf("active acme connections %v, want 1", v)
	}
	// A revoked certificate ends the handed-in session as any other.
	h.pki.src.revoke(fingerprint(h.pki.acme))
	if n := h.srv.Revalidate(); n != 1 {
		t.Errorf("Revalidate closed %d, want 1", n)
	}
	if err := waitServed(t, done); err != nil {
		t.Errorf("ServeConn: %v", err)
	}
	if err := ping(); err == nil {
		t.Error("revoked handed-in session still relays")
	}
	// The budget is free again, and Shutdown waits for what is handed in.
	h.pki.src.mu.Lock()
	delete(h.pki.src.revoked, fingerprint(h.pki.acme))
	h.pki.src.mu.Unlock()
	hi3 := h.handIn(t, h.pki.acme, "raw")
	done = h.serve(hi3, hi3.peer)
	if _, err := io.WriteString(hi3.client, "ping\n"); err != nil {
		t.Fatal(err)
	}
	hi3.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(hi3.client).ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("handed-in session after the budget was freed: %q, %v", line, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.srv.Shutdown(ctx); err == nil {
		t.Error("Shutdown closed a busy handed-in session and reported nothing")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeConn: %v", err)
		}
	default:
		t.Error("Shutdown returned before the handed-in session ended")
	}
	if err := h.srv.ServeConn(hi3.server, hi3.peer); !errors.Is(err, proxy.ErrClosed) {
		t.Errorf("ServeConn after Shutdown = %v, want ErrClosed", err)
	}
}
