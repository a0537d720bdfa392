package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// gatedTLSHost is an internal host behind TLS that holds each connection
// before its handshake until release is closed, so that the proxy's
// backend dial (TCP and TLS) lasts as long as a test needs; entered hears
// of each connection. Past the handshake it echoes lines.
func gatedTLSHost(t *testing.T) (addr, caFile string, entered chan struct{}, release chan struct{}) {
	ca := newCA(t, "internal ca")
	caFile = writeCAPEM(t, t.TempDir(), "internal-ca", ca)
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.issue(t, "host", true, "127.0.0.1")}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	entered, release = make(chan struct{}, 8), make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			entered <- struct{}{}
			go func() {
				<-release
				tc := tls.Server(c, cfg)
				br := bufio.NewReader(tc)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(tc, line)
				}
			}()
		}
	}()
	return ln.Addr().String(), caFile, entered, release
}

func waitEntered(t *testing.T, entered chan struct{}) {
	t.Helper()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy never dialled the host")
	}
}

// closedWithin10s reads c until the proxy closes it; false if it is
// still open after ten seconds.
func closedWithin10s(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestReloadDuringBackendDial: a tcp session whose backend dial is under
// way while a reload lowers limits.tcp takes the new limits, not those
// of the generation it was admitted under.
func TestReloadDuringBackendDial(t *testing.T) {
	host, caFile, entered, release := gatedTLSHost(t)
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: host, BackendTLS: true, BackendCA: caFile})
	h := newHarness(t, testLimits(), raw) // tcp.idle_timeout 1h
	c := h.rawTLS(h.pki.acme, "raw")
	waitEntered(t, entered)
	raw.Limits.TCP.IdleTimeout = 300 * time.Millisecond
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{raw}}); err != nil {
		t.Fatal(err)
	}
	close(release)
	s := &session{c: c, br: bufio.NewReader(c)}
	if err := s.ping(); err != nil {
		t.Fatalf("session after the dial: %v", err)
	}
	s.ended(t, "a session dialled during the reload, idle past the new idle_timeout")
	if line := h.tcpAccessLine(); line["reason"] != "session idle too long" {
		t.Errorf("access log line %v: want reason %q", line, "session idle too long")
	}
}

// TestTelnetReloadDuringSetup: terminal sessions being set up while a
// reload lowers limits.telnet take the new limits: an implicit-TLS session
// whose host dial is under way, and a START_TLS session still
// negotiating, which runs on the handler of the generation it was
// accepted under.
func TestTelnetReloadDuringSetup(t *testing.T) {
	host, caFile, entered, release := gatedTLSHost(t)
	fake, accepted := fakeHost(t)
	mf := listener("mf", policy.ProtoTN3270, policy.Route{Tenant: "acme", Backend: host, BackendTLS: true, BackendCA: caFile})
	st := listener("st", policy.ProtoTN5250, policy.Route{Tenant: "acme", Backend: fake})
	st.StartTLS, st.Port = true, freePort(t)
	h := newHarness(t, testLimits(), mf, st) // telnet.idle_timeout 30m

	c := h.rawTLS(h.pki.acme, "mf")
	c.Write([]byte{255, 251, 24}) // IAC WILL TERMINAL-TYPE
	waitEntered(t, entered)
	raw, err := net.Dial("tcp", h.addr("st"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	expect := func(want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(raw, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %v (%v), want %v", got, err, want)
		}
	}
	expect([]byte{255, 253, 46}) // IAC DO START_TLS: negotiating

	for _, l := range []*policy.Listener{&mf, &st} {
		l.Limits.Telnet.IdleTimeout = 300 * time.Millisecond
	}
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{mf, st}}); err != nil {
		t.Fatal(err)
	}
	close(release)
	raw.Write([]byte{255, 251, 46})
	expect([]byte{255, 250, 46, 1, 255, 240})
	raw.Write([]byte{255, 250, 46, 1, 255, 240})
	sc := tls.Client(raw, h.pki.clientTLS(h.pki.acme, "localhost"))
	if err := sc.Handshake(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("the START_TLS session never reached its host")
	}
	if !closedWithin10s(c) {
		t.Error("implicit-TLS session dialled during the reload still open 10s past the new idle_timeout")
	}
	if !closedWithin10s(sc) {
		t.Error("START_TLS session negotiating during the reload still open 10s past the new idle_timeout")
	}
	for _, l := range []string{"mf", "st"} {
		if !waitFor(func() bool { return h.metric("gatehouse_telnet_sessions_total", "default", l, "timeout", "acme") == 1 }) {
			t.Errorf("listener %s: the idle end was not counted as a timeout", l)
		}
	}
}
