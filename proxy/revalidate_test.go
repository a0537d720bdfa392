package proxy_test

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestRevalidateClosesRevokedConnections(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()},
		policy.Route{Tenant: "globex", Backend: b.url()}))
	c := h.rawTLS(h.pki.acme, "web")
	br := bufio.NewReader(c)
	get := func() error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	gc := h.client(h.pki.globex, false)
	h.mustDo(gc, "web", "GET", "", "/", nil, nil) // a globex connection that must survive
	if n := h.srv.Revalidate(); n != 0 {
		t.Fatalf("nothing revoked yet, Revalidate closed %d", n)
	}
	h.pki.src.revoke(fingerprint(h.pki.acme))
	if n := h.srv.Revalidate(); n != 1 {
		t.Fatalf("Revalidate closed %d connections, want 1", n)
	}
	if err := get(); err == nil {
		t.Fatal("revoked connection still answers")
	}
	if r := h.mustDo(gc, "web", "GET", "", "/", nil, nil); r.status != 200 {
		t.Errorf("globex after revalidation: status %d", r.status)
	}
	if _, err := h.do(h.client(h.pki.acme, false), "web", "GET", "", "/", nil, nil); err == nil {
		t.Error("revoked certificate accepted on a new connection")
	}
}

// TestRevalidateClosesRemappedConnections: a certificate that the TLS
// state now maps to another tenant loses its connections, whose routes were
// the old tenant's.
func TestRevalidateClosesRemappedConnections(t *testing.T) {
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: b.url()},
		policy.Route{Tenant: "globex", Backend: b.url()}))
	c := h.rawTLS(h.pki.acme, "web")
	if code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
		t.Fatalf("acme before the change: %d", code)
	}
	if n := h.srv.Revalidate(); n != 0 {
		t.Fatalf("nothing changed yet, Revalidate closed %d", n)
	}
	h.pki.src.remap(h.pki.acme, "globex")
	if n := h.srv.Revalidate(); n != 1 {
		t.Fatalf("Revalidate closed %d connections, want the remapped one", n)
	}
	if code, _ := rawExchange(t, c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 0 {
		t.Errorf("remapped connection still answers: %d", code)
	}
}
