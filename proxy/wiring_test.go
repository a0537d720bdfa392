package proxy_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// lineEcho is a tcp backend answering every line with itself.
func lineEcho(t testing.TB) string {
	return serveTCP(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, line)
		}
	})
}

// session is a client connection through a tcp listener.
type session struct {
	c  *tls.Conn
	br *bufio.Reader
}

// dialSession opens a tcp session; it reports an error when the proxy
// refused or closed it, which TLS 1.3 shows only at the first read.
func (h *harness) dialSession(cert tls.Certificate, name string) (*session, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", h.addr(name), h.pki.clientTLS(cert, "localhost"))
	if err != nil {
		return nil, err
	}
	h.t.Cleanup(func() { c.Close() })
	s := &session{c: c, br: bufio.NewReader(c)}
	return s, s.ping()
}

func (s *session) ping() error {
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s.c, "ping\n"); err != nil {
		return err
	}
	line, err := s.br.ReadString('\n')
	if err == nil && line != "ping\n" {
		err = errors.New("echo " + line)
	}
	return err
}

// ended waits for the proxy to close s, and fails the test if it does not
// within 10 s.
func (s *session) ended(t *testing.T, what string) {
	t.Helper()
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := s.br.ReadByte()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: session still open", what)
	}
}

// TestReloadLowersLimits: the proxy takes its limits from the policy
// generation it applies. A reload that lowers connections_per_tenant and
// the listener's connections refuses new connections over them at once,
// without a restart, and leaves the open ones alone.
func TestReloadLowersLimits(t *testing.T) {
	echo := lineEcho(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo}, policy.Route{Tenant: "globex", Backend: echo})
	h := newHarness(t, testLimits(), raw)
	var open []*session
	for range 3 {
		s, err := h.dialSession(h.pki.acme, "raw")
		if err != nil {
			t.Fatalf("acme session under the first limits: %v", err)
		}
		open = append(open, s)
	}

	lower := raw
	lower.Limits.MaxConnsPerTenant = 3
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{lower}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.dialSession(h.pki.acme, "raw"); err == nil {
		t.Error("a fourth acme session was served after connections_per_tenant became 3")
	}
	if _, err := h.dialSession(h.pki.globex, "raw"); err != nil {
		t.Errorf("globex refused under acme's limit: %v", err)
	}
	for i, s := range open {
		if err := s.ping(); err != nil {
			t.Errorf("open session %d lost by the reload: %v", i, err)
		}
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "tenant_limit"); v != 1 {
		t.Errorf("tenant_limit refusals %v, want 1", v)
	}

	// Now the listener: 4 connections are open, 4 is the new cap.
	lower.Limits.MaxConns, lower.Limits.MaxPreHandshake = 4, 1
	if err := h.srv.Apply(&policy.Policy{Generation: 3, Listeners: []policy.Listener{lower}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.dialSession(h.pki.globex, "raw"); err == nil {
		t.Error("a connection was served beyond the listener's lowered cap")
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "listener_full"); v != 1 {
		t.Errorf("listener_full refusals %v, want 1", v)
	}
	open[0].c.Close()
	if !waitFor(func() bool { _, err := h.dialSession(h.pki.globex, "raw"); return err == nil }) {
		t.Error("no slot after a connection closed")
	}
}

// TestTenantOverride: a tenant's limits apply to that tenant only.
func TestTenantOverride(t *testing.T) {
	echo := lineEcho(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo}, policy.Route{Tenant: "globex", Backend: echo})
	acme := raw.Limits
	acme.MaxConnsPerTenant = 1
	acme.TCP.IdleTimeout = 300 * time.Millisecond
	raw.TenantLimits = map[string]policy.Limits{"acme": acme}
	h := newHarness(t, testLimits(), raw)

	a, err := h.dialSession(h.pki.acme, "raw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.dialSession(h.pki.acme, "raw"); err == nil {
		t.Error("acme got a second connection over its own limit of 1")
	}
	g1, err1 := h.dialSession(h.pki.globex, "raw")
	g2, err2 := h.dialSession(h.pki.globex, "raw")
	if err1 != nil || err2 != nil {
		t.Fatalf("globex held to acme's limit: %v, %v", err1, err2)
	}
	a.ended(t, "acme's idle session under its 300ms idle timeout")
	if err := g1.ping(); err != nil {
		t.Errorf("globex's session ended with acme's idle timeout: %v", err)
	}
	g2.c.Close()
}

// TestTCPSessionTimeouts: tcp sessions end when idle for limits.tcp
// idle_timeout or older than max_session, and a reload that lowers the idle
// timeout reaches an open session.
func TestTCPSessionTimeouts(t *testing.T) {
	echo := lineEcho(t)
	t.Run("idle", func(t *testing.T) {
		raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
		raw.Limits.TCP.IdleTimeout = 500 * time.Millisecond
		h := newHarness(t, raw.Limits, raw)
		s, err := h.dialSession(h.pki.acme, "raw")
		if err != nil {
			t.Fatal(err)
		}
		for range 6 { // 6 × 200 ms of traffic: longer than the timeout, never idle
			time.Sleep(200 * time.Millisecond)
			if err := s.ping(); err != nil {
				t.Fatalf("busy session ended: %v", err)
			}
		}
		s.ended(t, "idle session")
		if end := h.tcpAccessLine(); end["reason"] != "session idle too long" {
			t.Errorf("session end line %v: want the idle timeout as reason", end)
		}
	})
	t.Run("max session", func(t *testing.T) {
		raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
		raw.Limits.TCP.MaxSession = time.Second
		h := newHarness(t, raw.Limits, raw)
		s, err := h.dialSession(h.pki.acme, "raw")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for time.Since(start) < 10*time.Second {
			if s.ping() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if time.Since(start) >= 10*time.Second {
			t.Fatal("busy session outlived its maximum length")
		}
	})
	t.Run("reload lowers idle", func(t *testing.T) {
		raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
		h := newHarness(t, testLimits(), raw)
		s, err := h.dialSession(h.pki.acme, "raw")
		if err != nil {
			t.Fatal(err)
		}
		raw.Limits.TCP.IdleTimeout = 300 * time.Millisecond
		if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{raw}}); err != nil {
			t.Fatal(err)
		}
		s.ended(t, "open session after a reload lowered the idle timeout")
	})
}

// TestTelnetLimitsFromPolicy: terminal sessions take limits.telnet, a
// tenant's override included, through the proxy and across a reload.
func TestTelnetLimitsFromPolicy(t *testing.T) {
	host, accepted := fakeHost(t)
	mf := listener("mf", policy.ProtoTN3270, policy.Route{Tenant: "acme", Backend: host}, policy.Route{Tenant: "globex", Backend: host})
	acme := mf.Limits
	acme.Telnet.MaxSessionsPerTenant = 1
	mf.TenantLimits = map[string]policy.Limits{"acme": acme}
	h := newHarness(t, testLimits(), mf)
	open := func(cert tls.Certificate) *tls.Conn {
		c := h.rawTLS(cert, "mf")
		c.Write([]byte{255, 251, 24}) // IAC WILL TERMINAL-TYPE
		return c
	}
	reached := func() bool {
		select {
		case <-accepted:
			return true
		case <-time.After(10 * time.Second):
			return false
		}
	}
	first := open(h.pki.acme)
	if !reached() {
		t.Fatal("acme's first session never reached the host")
	}
	open(h.pki.acme)
	if !waitFor(func() bool { return h.metric("gatehouse_telnet_sessions_total", "default", "mf", "limit", "acme") == 1 }) {
		t.Error("acme's second session was not refused at its override of 1")
	}
	select {
	case <-accepted:
		t.Error("acme's second session reached the host")
	default:
	}
	open(h.pki.globex)
	if !reached() {
		t.Error("globex held to acme's session limit")
	}

	mf.TenantLimits = nil
	mf.Limits.Telnet.IdleTimeout = 300 * time.Millisecond
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{mf}}); err != nil {
		t.Fatal(err)
	}
	first.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(first)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("open terminal session kept after a reload lowered its idle timeout")
	}
	if !waitFor(func() bool {
		return h.metric("gatehouse_telnet_sessions_total", "default", "mf", "timeout", "acme") == 1
	}) {
		t.Error("the idle end was not counted as a timeout")
	}
}

// TestReloadChangesHTTPServerLimits: the HTTP server's own limits (header
// size, idle timeout) follow the generation: new connections get the new
// ones, and an open keep-alive connection is closed once idle, so its
// client reconnects under them.
func TestReloadChangesHTTPServerLimits(t *testing.T) {
	b := newBackend(t, "a")
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()})
	h := newHarness(t, testLimits(), web)
	old := h.rawTLS(h.pki.acme, "web")
	if code, _ := rawExchange(t, old, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
		t.Fatalf("status %d", code)
	}
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 20<<10) + "\r\n\r\n"
	if code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"), big); code != 200 {
		t.Fatalf("20 KiB header under a 64 KiB limit: status %d", code)
	}

	web.Limits.HTTP.MaxHeaderBytes = 4096
	web.Limits.HTTP.IdleTimeout = 300 * time.Millisecond
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{web}}); err != nil {
		t.Fatal(err)
	}
	if code, _ := rawExchange(t, h.rawTLS(h.pki.acme, "web"), big); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("20 KiB header after the reload lowered the limit to 4 KiB: status %d, want 431", code)
	}
	old.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(old); err != nil {
		t.Errorf("idle keep-alive connection of the old settings not closed: %v", err)
	}
	fresh := h.rawTLS(h.pki.acme, "web")
	if code, _ := rawExchange(t, fresh, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); code != 200 {
		t.Fatalf("status %d", code)
	}
	fresh.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(fresh); err != nil {
		t.Errorf("idle connection not closed by the new 300ms idle timeout: %v", err)
	}
}

// tcpAccessLine returns the last "tcp session ended" line of the access
// log, waiting for it a little: it is written after the connection closed.
func (h *harness) tcpAccessLine() map[string]any {
	var end map[string]any
	for _, l := range h.access.WaitLines("tcp session ended") {
		if strings.Contains(l, "tcp session ended") {
			json.Unmarshal([]byte(l), &end)
		}
	}
	return end
}

// TestTCPSessionAccessLog: a tcp session has its line in the access log,
// as an HTTP request and a terminal session have theirs.
func TestTCPSessionAccessLog(t *testing.T) {
	echo := lineEcho(t)
	h := newHarness(t, testLimits(), listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo}))
	s, err := h.dialSession(h.pki.acme, "raw")
	if err != nil {
		t.Fatal(err)
	}
	s.c.Close()
	end := h.tcpAccessLine()
	for k, want := range map[string]any{"listener": "raw", "tenant": "acme", "fingerprint": fingerprint(h.pki.acme),
		"backend": echo, "reason": "closed", "bytes_in": nil, "bytes_out": nil, "duration": nil} {
		if got, ok := end[k]; !ok || want != nil && got != want {
			t.Errorf("access log line of the session: %s = %v, want %v (line %v)", k, got, want, end)
		}
	}
	if !strings.HasPrefix(fmt.Sprint(end["source"]), "127.0.0.1:") {
		t.Errorf("access log line of the session without its source: %v", end)
	}
}
