package proxy_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// fakeHost is a terminal host that only records who connected and keeps
// the connection open.
func fakeHost(t *testing.T) (addr string, accepted chan net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			accepted <- c
		}
	}()
	return ln.Addr().String(), accepted
}

// startTLSClient runs the client side of Telnet START_TLS, then the TLS
// handshake with cert.
func startTLSClient(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	expect := func(want []byte) {
		got := make([]byte, len(want))
		if _, err := io.ReadFull(raw, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %v (%v), want %v", got, err, want)
		}
	}
	expect([]byte{255, 253, 46}) // IAC DO START_TLS
	raw.Write([]byte{255, 251, 46})
	expect([]byte{255, 250, 46, 1, 255, 240}) // IAC SB START_TLS FOLLOWS IAC SE
	raw.Write([]byte{255, 250, 46, 1, 255, 240})
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		return nil, err
	}
	// TLS 1.3: a refused client certificate shows on the first read.
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			return nil, err
		}
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, nil
}

func TestTelnetListeners(t *testing.T) {
	host, accepted := fakeHost(t)
	implicit := listener("tn3270", policy.ProtoTN3270, policy.Route{Tenant: "acme", Backend: host})
	starttls := policy.Listener{Name: "tn5250", Addr: loopback, Port: freePort(t), Protocol: policy.ProtoTN5250, StartTLS: true, Limits: testLimits(),
		Routes: []policy.Route{{Tenant: "acme", Backend: host}}}
	h := newHarness(t, testLimits(), implicit, starttls)

	// Implicit TLS: the session reaches the host.
	c := h.rawTLS(h.pki.acme, "tn3270")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte{255, 251, 24}) // IAC WILL TERMINAL-TYPE
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("implicit TLS session never reached the host")
	}

	// START_TLS: a stranger's certificate fails and reaches nothing.
	before := h.pki.src.failed.Load()
	if _, err := startTLSClient(t, h.addr("tn5250"), h.pki.clientTLS(h.pki.rogue, "localhost")); err == nil {
		t.Error("START_TLS with an untrusted certificate succeeded")
	}
	if !waitFor(func() bool { return h.pki.src.failed.Load() > before }) {
		t.Error("failed START_TLS handshake not reported")
	}
	select {
	case <-accepted:
		t.Fatal("untrusted START_TLS client reached the host")
	default:
	}

	// START_TLS with acme's certificate reaches the host; revoking the
	// certificate ends the session.
	sc, err := startTLSClient(t, h.addr("tn5250"), h.pki.clientTLS(h.pki.acme, "localhost"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("START_TLS session never reached the host")
	}
	h.pki.src.revoke(fingerprint(h.pki.acme))
	n := h.srv.Revalidate()
	if n != 2 {
		t.Errorf("Revalidate closed %d sessions, want 2 (implicit and START_TLS)", n)
	}
	if _, err := io.ReadAll(sc); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Error("revoked START_TLS session still open")
		}
	}
}
