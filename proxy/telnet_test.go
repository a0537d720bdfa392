package proxy_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
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

// TestStartTLSEvictionNotCounted: a START_TLS connection the gate evicts
// while it negotiates, and those a shutdown ends, are not terminal
// sessions that failed: the eviction is counted once, as
// connections_refused_total, and telnet_sessions_total counts nothing.
func TestStartTLSEvictionNotCounted(t *testing.T) {
	host, _ := fakeHost(t)
	st := listener("st", policy.ProtoTN5250, policy.Route{Tenant: "acme", Backend: host})
	st.StartTLS, st.Port = true, freePort(t)
	st.Limits.MaxPreHandshakePerSource = 2
	st.Limits.HandshakeTimeout = time.Minute // only eviction or shutdown ends them
	h := newHarness(t, st.Limits, st)
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", h.addr("st"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, 3)
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte{255, 253, 46}) {
			t.Fatalf("read %v (%v), want IAC DO START_TLS", got, err)
		}
		conns = append(conns, c)
	}
	if !closedWithin10s(conns[0]) {
		t.Fatal("the oldest negotiation of the source was not evicted")
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "st", "pre_handshake_source"); v != 1 {
		t.Errorf("evictions %v, want 1", v)
	}
	h.srv.Close() // waits for every handler, the evicted one's included
	for _, r := range []string{"protocol", "refused"} {
		if v := h.metric("gatehouse_telnet_sessions_total", "unknown", "st", r, "unknown"); v != 0 {
			t.Errorf("telnet_sessions_total{result=%q,tenant=unknown} = %v after one eviction and a shutdown, want 0", r, v)
		}
	}
}

// TestStartTLSRefusalsRateLimited: START_TLS clients refused after their
// handshake (here: the tenant at connections_per_tenant) are logged
// through the refusal lines' rate limit, as clients of implicit TLS are,
// and counted as refused.
func TestStartTLSRefusalsRateLimited(t *testing.T) {
	host, accepted := fakeHost(t)
	st := listener("st", policy.ProtoTN5250, policy.Route{Tenant: "acme", Backend: host})
	st.StartTLS, st.Port = true, freePort(t)
	st.Limits.MaxConnsPerTenant = 1
	h := newHarness(t, st.Limits, st)
	proxy.SetRefusalLogLimit(h.srv, 0, 2)
	if _, err := startTLSClient(t, h.addr("st"), h.pki.clientTLS(h.pki.acme, "localhost")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("the first START_TLS session never reached the host")
	}
	const refused = 6
	for i := range refused {
		if _, err := startTLSClient(t, h.addr("st"), h.pki.clientTLS(h.pki.acme, "localhost")); err == nil {
			t.Fatalf("START_TLS session %d over connections_per_tenant 1 was served", i+2)
		}
	}
	if !waitFor(func() bool {
		return h.metric("gatehouse_telnet_sessions_total", "unknown", "st", "refused", "unknown") == refused
	}) {
		t.Errorf("refused START_TLS sessions counted %v, want %d", h.metric("gatehouse_telnet_sessions_total", "unknown", "st", "refused", "unknown"), refused)
	}
	if n := h.logs.Occurrences(proxy.ErrConnLimit.Error()); n != 2 {
		t.Errorf("%d log lines for %d refusals under a limit of 2 lines:\n%s", n, refused, h.logs)
	}
}
