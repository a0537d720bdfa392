package proxy_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// vipSession plays a TNVIP client on c: it offers TERMINAL-TYPE and names
// ttype (a host that asks first changes nothing for the proxy's policy).
func vipSession(t *testing.T, c net.Conn, ttype string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	is := append([]byte{255, 250, 24, 0}, ttype...)
	is = append(is, 255, 240)
	if _, err := c.Write(append([]byte{255, 251, 24}, is...)); err != nil {
		t.Fatal(err)
	}
}

// hostReads reads exactly want from the host side, or fails.
func hostReads(t *testing.T, h net.Conn, want []byte) {
	t.Helper()
	h.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(h, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("host read % x (%v), want % x", got[:n], err, want)
	}
}

func nextHost(t *testing.T, accepted chan net.Conn) net.Conn {
	t.Helper()
	select {
	case h := <-accepted:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("the session never reached the host")
	}
	return nil
}

// TestTNVIPListeners: a tnvip listener, with implicit TLS and with Telnet
// START_TLS, carries a tenant's VIP terminal to its host after a real mTLS
// handshake, refuses a terminal type that is not a VIP model before the
// host sees it, and counts both in gatehouse_telnet_sessions_total, whose
// series exist from the start.
func TestTNVIPListeners(t *testing.T) {
	host, accepted := fakeHost(t)
	implicit := listener("gcos", policy.ProtoTNVIP, policy.Route{Tenant: "acme", Backend: host})
	starttls := policy.Listener{Name: "gcos-st", Addr: loopback, Port: freePort(t), Protocol: policy.ProtoTNVIP, StartTLS: true,
		Limits: testLimits(), Routes: []policy.Route{{Tenant: "acme", Backend: host}}}
	h := newHarness(t, testLimits(), implicit, starttls)
	for _, l := range []string{"gcos", "gcos-st"} {
		for _, r := range []string{"ok", "refused", "limit"} {
			if v := h.metric("gatehouse_telnet_sessions_total", "default", l, r, "acme"); v != 0 {
				t.Errorf("telnet_sessions_total{%s,%s,acme} = %v right after Apply, want 0", l, r, v)
			}
		}
	}

	wantIS := []byte{255, 251, 24, 255, 250, 24, 0, 'V', 'I', 'P', '7', '8', '0', '1', 255, 240}
	for _, tc := range []struct {
		listener string
		dial     func() net.Conn
	}{
		{"gcos", func() net.Conn { return h.rawTLS(h.pki.acme, "gcos") }},
		{"gcos-st", func() net.Conn {
			c, err := startTLSClient(t, h.addr("gcos-st"), h.pki.clientTLS(h.pki.acme, "localhost"))
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
	} {
		// A VIP7801 reaches the host, and the host's record reaches it.
		c := tc.dial()
		vipSession(t, c, "VIP7801")
		hc := nextHost(t, accepted)
		hostReads(t, hc, wantIS)
		record := []byte{0x02, 'R', 'E', 'A', 'D', 'Y', 0x03, 255, 239}
		hc.Write(record)
		got := make([]byte, len(record))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, record) {
			t.Fatalf("%s: client read % x (%v), want % x", tc.listener, got, err, record)
		}
		c.Close()
		if !waitFor(func() bool {
			return h.metric("gatehouse_telnet_sessions_total", "default", tc.listener, "ok", "acme") == 1
		}) {
			t.Errorf("%s: the VIP7801 session was not counted ok", tc.listener)
		}

		// A VT100 is refused: the host sees the offer, never the type.
		c = tc.dial()
		vipSession(t, c, "VT100")
		hc = nextHost(t, accepted)
		hostReads(t, hc, []byte{255, 251, 24})
		hc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if rest, _ := io.ReadAll(hc); len(rest) > 0 {
			t.Errorf("%s: the host received % x of a refused terminal", tc.listener, rest)
		}
		if !waitFor(func() bool {
			return h.metric("gatehouse_telnet_sessions_total", "default", tc.listener, "refused", "acme") == 1
		}) {
			t.Errorf("%s: the VT100 session was not counted refused", tc.listener)
		}
	}
}
