package proxy_test

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// closedByServer reports whether the server closed c (EOF or reset)
// within the deadline; false when c is still open.
func closedByServer(c net.Conn, within time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestPreHandshakeEviction: connections that never start their handshake
// hold at most pre_handshake_per_source slots of one source and
// pre_handshake of the listener; a new connection evicts the oldest, so a
// tenant's connection from the same source still gets in, and the
// identified connections are never touched.
func TestPreHandshakeEviction(t *testing.T) {
	echo := lineEcho(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	raw.Limits.MaxConns, raw.Limits.MaxPreHandshake, raw.Limits.MaxPreHandshakePerSource = 12, 6, 4
	raw.Limits.HandshakeTimeout = time.Minute // only eviction can end them here
	h := newHarness(t, raw.Limits, raw)

	var identified []*session
	for range 5 {
		s, err := h.dialSession(h.pki.acme, "raw")
		if err != nil {
			t.Fatal(err)
		}
		identified = append(identified, s)
	}
	var silent []net.Conn
	for range 10 {
		c, err := net.Dial("tcp", h.addr("raw"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		silent = append(silent, c)
	}
	// All from 127.0.0.1: one source. The six oldest make room for the
	// four newest.
	for i, c := range silent[:6] {
		if !closedByServer(c, 10*time.Second) {
			t.Errorf("silent connection %d (of the oldest) not evicted", i)
		}
	}
	for i, c := range silent[6:] {
		if closedByServer(c, 100*time.Millisecond) {
			t.Errorf("silent connection %d (of the newest 4) closed", 6+i)
		}
	}
	if v := h.metric("gatehouse_proxy_handshakes_pending", "raw"); v != 4 {
		t.Errorf("pending handshakes %v, want 4", v)
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake_source"); v != 6 {
		t.Errorf("evicted per source %v, want 6", v)
	}
	// 5 identified + 4 pending of 12. A tenant's connection from the same
	// source takes the place of that source's oldest silent one.
	if _, err := h.dialSession(h.pki.acme, "raw"); err != nil {
		t.Fatalf("tenant connection beside the silent ones: %v", err)
	}
	if !closedByServer(silent[6], 10*time.Second) {
		t.Error("the oldest silent connection of the source not evicted for the tenant's")
	}
	// 6 identified + 3 pending. Six more tenant connections fill the
	// listener: the last three each evict the oldest unfinished handshake.
	for i := range 6 {
		if _, err := h.dialSession(h.pki.acme, "raw"); err != nil {
			t.Fatalf("tenant connection %d into a listener of unfinished handshakes: %v", i, err)
		}
	}
	if v := h.metric("gatehouse_proxy_handshakes_pending", "raw"); v != 0 {
		t.Errorf("pending handshakes %v after tenants took the listener's room, want 0", v)
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake"); v != 3 {
		t.Errorf("evicted for the listener's room %v, want 3", v)
	}
	for i, c := range silent {
		if !closedByServer(c, 10*time.Second) {
			t.Errorf("silent connection %d still open", i)
		}
	}
	// Now 12 identified connections: the listener is full, and a new
	// connection is refused, whoever it is.
	if _, err := h.dialSession(h.pki.acme, "raw"); err == nil {
		t.Error("a connection beyond 12 identified ones was served")
	}
	if v := h.metric("gatehouse_proxy_connections_refused_total", "raw", "listener_full"); v != 1 {
		t.Errorf("listener_full refusals %v, want 1", v)
	}
	for i, s := range identified {
		if err := s.ping(); err != nil {
			t.Errorf("identified session %d lost: %v", i, err)
		}
	}
}

// TestEvictionLinesLeaveRefusalLines: a flood's eviction lines have a rate
// limit of their own, so that after hundreds of evictions a refused
// handshake is still logged with its certificate, and the evictions are
// summed up in few lines.
func TestEvictionLinesLeaveRefusalLines(t *testing.T) {
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: lineEcho(t)})
	raw.Limits.MaxPreHandshakePerSource = 1
	raw.Limits.HandshakeTimeout = time.Minute // only eviction ends them here
	h := newHarness(t, raw.Limits, raw)
	const flood = 300
	for range flood + 1 {
		c, err := net.Dial("tcp", h.addr("raw"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	if !waitFor(func() bool {
		return h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake_source") == flood
	}) {
		t.Fatalf("%v evictions, want %d", h.metric("gatehouse_proxy_connections_refused_total", "raw", "pre_handshake_source"), flood)
	}
	c, err := tls.Dial("tcp", h.addr("raw"), h.pki.clientTLS(h.pki.rogue, "localhost"))
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1)) // TLS 1.3: the refusal arrives after the client's Finished
		c.Close()
	}
	if h.logs.WaitLines("TLS handshake refused") == nil {
		t.Errorf("no refusal line after %d eviction lines", flood)
	}
	if n := h.logs.Occurrences("unfinished handshake closed"); n > flood/10 {
		t.Errorf("%d eviction lines for %d evictions: not rate-limited", n, flood)
	}
}
