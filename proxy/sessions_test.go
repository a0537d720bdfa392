package proxy_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// keepAlive is an HTTP/1.1 client connection the test drives request by
// request.
type keepAlive struct {
	c  *tls.Conn
	br *bufio.Reader
}

func (h *harness) keepAlive(cert tls.Certificate) *keepAlive {
	c := h.rawTLS(cert, "web")
	return &keepAlive{c: c, br: bufio.NewReader(c)}
}

func (k *keepAlive) send(t *testing.T, path string) {
	t.Helper()
	k.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(k.c, "GET "+path+" HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
		t.Fatalf("send %s: %v", path, err)
	}
}

// read returns the next response, its body read, or the error of a
// connection that ended.
func (k *keepAlive) read() (*http.Response, error) {
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, err
}

func (k *keepAlive) get(t *testing.T, path string) (*http.Response, error) {
	k.send(t, path)
	return k.read()
}

// TestKillOnlyItsTenant: killing a tenant's sessions cuts its open
// connections at once, and no other tenant's.
func TestKillOnlyItsTenant(t *testing.T) {
	b := newBackend(t, "b")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()}, policy.Route{Tenant: "globex", Backend: b.url()}))
	acme, globex := h.keepAlive(h.pki.acme), h.keepAlive(h.pki.globex)
	for _, k := range []*keepAlive{acme, globex} {
		if r, err := k.get(t, "/"); err != nil || r.StatusCode != 200 {
			t.Fatalf("first request: %v %v", r, err)
		}
	}
	if n := h.srv.Kill("acme", ""); n != 1 {
		t.Errorf("Kill(acme) = %d sessions, want 1", n)
	}
	if r, err := acme.get(t, "/"); err == nil {
		t.Errorf("acme's killed connection answered %d", r.StatusCode)
	}
	if r, err := globex.get(t, "/"); err != nil || r.StatusCode != 200 {
		t.Errorf("globex's connection after acme's kill: %v %v", r, err)
	}
	if n := h.srv.Kill("acme", "prod"); n != 0 {
		t.Errorf("Kill(acme/prod) with no such sessions = %d", n)
	}
	if n := h.srv.Kill("globex", "default"); n != 1 {
		t.Errorf("Kill(globex/default) = %d, want 1 (connections without environments are in default)", n)
	}
}

// TestDrainAtRequestBoundary: a drained tenant's idle keep-alive
// connection is closed at once; a busy one finishes its request, and its
// next response says Connection: close and ends it. Another tenant is
// untouched.
func TestDrainAtRequestBoundary(t *testing.T) {
	slowURL, entered, release := slowBackend(t)
	b := newBackend(t, "b")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/", Backend: b.url()}, policy.Route{Tenant: "acme", Path: "/slow", Backend: slowURL},
		policy.Route{Tenant: "globex", Backend: b.url()}))
	idle, busy, other := h.keepAlive(h.pki.acme), h.keepAlive(h.pki.acme), h.keepAlive(h.pki.globex)
	for _, k := range []*keepAlive{idle, busy, other} {
		if r, err := k.get(t, "/"); err != nil || r.StatusCode != 200 {
			t.Fatalf("first request: %v %v", r, err)
		}
	}
	busy.send(t, "/slow")
	<-entered
	if n := h.srv.Drain("acme", "", time.Minute); n != 2 {
		t.Errorf("Drain(acme) found %d sessions, want 2", n)
	}
	if _, err := idle.read(); err == nil {
		t.Error("the idle connection was not closed by the drain")
	}
	close(release)
	if r, err := busy.read(); err != nil || r.StatusCode != 200 {
		t.Fatalf("the request in progress during the drain: %v %v, want it to finish", r, err)
	}
	r, err := busy.get(t, "/")
	if err != nil || r.StatusCode != 200 || !r.Close {
		t.Fatalf("the next request of the drained connection: %v %v, want 200 with Connection: close", r, err)
	}
	if _, err := busy.read(); err == nil {
		t.Error("the drained connection stayed open after its Connection: close response")
	}
	if r, err := other.get(t, "/"); err != nil || r.StatusCode != 200 || r.Close {
		t.Errorf("globex during acme's drain: %v %v", r, err)
	}
}

// TestDrainGraceEndsTheRest: what a drain's grace leaves open is closed.
func TestDrainGraceEndsTheRest(t *testing.T) {
	slowURL, entered, release := slowBackend(t)
	defer close(release)
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: slowURL}))
	busy := h.keepAlive(h.pki.acme)
	busy.send(t, "/")
	<-entered
	if n := h.srv.Drain("acme", "", 10*time.Millisecond); n != 1 {
		t.Errorf("Drain = %d", n)
	}
	if r, err := busy.read(); err == nil {
		t.Errorf("a request stuck past the drain's grace answered %d", r.StatusCode)
	}
}
