package telnet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// requireS3270 skips without the emulator, unless GATEHOUSE_REQUIRE_PRIV=1
// says every test must run.
func requireS3270(t *testing.T) string {
	t.Helper()
	return netns.RequireTool(t, "s3270", "s3270")
}

// ebcdic encodes upper-case letters, digits and spaces (code page 037).
func ebcdic(s string) []byte {
	var b []byte
	for _, c := range s {
		switch {
		case c >= 'A' && c <= 'I':
			b = append(b, 0xC1+byte(c-'A'))
		case c >= 'J' && c <= 'R':
			b = append(b, 0xD1+byte(c-'J'))
		case c >= 'S' && c <= 'Z':
			b = append(b, 0xE2+byte(c-'S'))
		case c >= '0' && c <= '9':
			b = append(b, 0xF0+byte(c-'0'))
		default:
			b = append(b, 0x40)
		}
	}
	return b
}

// tn3270Host plays a small TN3270 host on c: TERMINAL-TYPE, EOR and
// BINARY both ways, then one Erase/Write screen; it reads until the end.
func tn3270Host(c net.Conn, text string) {
	defer c.Close()
	c.Write([]byte{cmdIAC, cmdDO, optTTYPE})
	want := map[[2]byte]bool{{cmdWILL, optEOR}: true, {cmdDO, optEOR}: true, {cmdWILL, optBinary}: true, {cmdDO, optBinary}: true}
	var p Parser
	sent := false
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		p.Feed(buf[:n], func(t Token) error {
			switch {
			case t.Kind == Negotiation && t.Cmd == cmdWILL && t.Opt == optTTYPE:
				c.Write([]byte{cmdIAC, cmdSB, optTTYPE, ttypeSEND, cmdIAC, cmdSE})
			case t.Kind == Sub && t.Opt == optTTYPE:
				c.Write([]byte{cmdIAC, cmdDO, optEOR, cmdIAC, cmdWILL, optEOR, cmdIAC, cmdDO, optBinary, cmdIAC, cmdWILL, optBinary})
			case t.Kind == Negotiation:
				delete(want, [2]byte{t.Cmd, t.Opt})
			}
			return nil
		})
		if len(want) == 0 && !sent {
			sent = true
			screen := []byte{0xF5, 0xC3, 0x11, 0x40, 0x40} // Erase/Write, WCC, SBA row 1 col 1
			screen = append(screen, ebcdic(text)...)
			c.Write(append(screen, cmdIAC, cmdEOR))
		}
		if err != nil {
			return
		}
	}
}

// s3270 drives the emulator through its stdin/stdout script interface.
type s3270 struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startS3270(t *testing.T, path string, pki *testPKI) *s3270 {
	cmd := exec.Command(path, "-cafile", pki.ca.CertFile, "-certfile", pki.client.CertFile,
		"-keyfile", pki.client.KeyFile, "-model", "3278-2-E")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return &s3270{cmd: cmd, in: in, out: bufio.NewReader(out)}
}

// do runs one action and returns its data lines and whether it succeeded.
func (s *s3270) do(t *testing.T, action string) ([]string, bool) {
	t.Helper()
	if _, err := fmt.Fprintln(s.in, action); err != nil {
		t.Fatalf("%s: %v", action, err)
	}
	var data []string
	for {
		line, err := s.out.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: s3270 output: %v", action, err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "ok":
			return data, true
		case line == "error":
			return data, false
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		}
	}
}

// TestS3270 connects the real emulator over TLS with the tenant's client
// certificate, through the handler, to a scripted TN3270 host and reads the
// host's first screen; then it asks for a foreign LU and is refused.
func TestS3270(t *testing.T) {
	path := requireS3270(t)
	pki := newPKI(t)
	rg := newRig(t, policy.ProtoTN3270, policy.Route{LUNames: []string{"ACMELU0*"}, TerminalTypes: []string{"IBM-327*"}}, Limits{})
	go func() {
		for {
			c, err := rg.hostLn.Accept()
			if err != nil {
				return
			}
			go tn3270Host(c, "HELLO FROM THE MAINFRAME")
		}
	}()
	port := rg.listenTLS(t, pki)
	em := startS3270(t, path, pki)
	screen, ok := em.connect(t, fmt.Sprintf("L:ACMELU01@localhost:%d", port), "HELLO FROM THE MAINFRAME")
	if !ok {
		t.Fatalf("host screen not shown; s3270 sees:\n%s", screen)
	}
	em.do(t, "Disconnect()")

	// A foreign LU is refused: the emulator never reaches 3270 mode.
	em.do(t, fmt.Sprintf("Connect(L:OTHERLU1@localhost:%d)", port))
	em.do(t, "Wait(3,3270Mode)")
	deadline := time.Now().Add(stepTimeout)
	for testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultRefused)) != 1 ||
		testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultOK)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("want one session ended ok and the foreign LU refused")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("screen through the proxy:\n%s", screen)
}

// listenLoopbacks listens on 127.0.0.1 and, where it exists, ::1 on the
// same port, since s3270 resolves localhost itself and checks the
// certificate by that name; serve runs per connection.
func listenLoopbacks(t *testing.T, serve func(net.Conn)) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	lns := []net.Listener{ln}
	if ln6, err := net.Listen("tcp", fmt.Sprintf("[::1]:%d", port)); err == nil {
		t.Cleanup(func() { ln6.Close() })
		lns = append(lns, ln6)
	}
	for _, l := range lns {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go serve(c)
			}
		}()
	}
	return port
}

// listenTLS serves rg's handler on the loopbacks (see listenLoopbacks):
// each connection gets a TLS handshake with pki's server config and, as
// the tenant acme, a session.
func (rg *rig) listenTLS(t *testing.T, pki *testPKI) int {
	return listenLoopbacks(t, func(c net.Conn) {
		defer c.Close()
		tc := tls.Server(c, pki.serverTLS)
		if tc.Handshake() != nil {
			return
		}
		if peer, err := admitAcme(tc.ConnectionState()); err == nil {
			rg.h.Serve(context.Background(), tc, peer)
		}
	})
}

// connect connects the emulator with target ("L:LU@host:port" for TLS)
// and waits for a screen showing text; it returns what the screen shows
// last and whether text appeared.
func (s *s3270) connect(t *testing.T, target, text string) (string, bool) {
	t.Helper()
	if out, ok := s.do(t, "Connect("+target+")"); !ok {
		t.Fatalf("connect failed: %q", out)
	}
	var screen string
	for range 20 {
		out, ok := s.do(t, "Ascii()")
		screen = strings.Join(out, "\n")
		if ok && strings.Contains(screen, text) {
			return screen, true
		}
		s.do(t, "Wait(1,Output)")
	}
	return screen, false
}

// TestS3270StartTLS has the emulator connect in plain Telnet to a
// `starttls: true` listener: the proxy asks for START_TLS, s3270 answers
// the FOLLOWS exchange and the handshake with the tenant certificate, and
// only then does the session reach the host.
func TestS3270StartTLS(t *testing.T) {
	path := requireS3270(t)
	pki := newPKI(t)
	rg := newRig(t, policy.ProtoTN3270, policy.Route{LUNames: []string{"ACMELU0*"}}, Limits{})
	go func() {
		for {
			c, err := rg.hostLn.Accept()
			if err != nil {
				return
			}
			go tn3270Host(c, "STARTTLS WORKS")
		}
	}()
	port := listenLoopbacks(t, func(c net.Conn) {
		rg.h.ServeStartTLS(context.Background(), c, pki.serverTLS, admitAcme)
	})
	em := startS3270(t, path, pki)
	if screen, ok := em.connect(t, fmt.Sprintf("ACMELU01@localhost:%d", port), "STARTTLS WORKS"); !ok {
		t.Fatalf("host screen not shown; s3270 sees:\n%s", screen)
	}
	if out, _ := em.do(t, "Query(Tls)"); len(out) == 0 || !strings.HasPrefix(out[0], "secure") {
		t.Fatalf("s3270 says the session is not secured: %q", out)
	}
}

// tn3270eHost plays a TN3270E host (RFC 2355): DEVICE-TYPE, an empty
// FUNCTIONS set, then one screen behind a 3270-DATA header. A client that
// declines TN3270E falls back to TERMINAL-TYPE, EOR and BINARY.
func tn3270eHost(c net.Conn, text string, requests *atomic.Int32) {
	defer c.Close()
	screen := append([]byte{0xF5, 0xC3, 0x11, 0x40, 0x40}, ebcdic(text)...)
	screen = append(screen, cmdIAC, cmdEOR)
	c.Write([]byte{cmdIAC, cmdDO, optTN3270E})
	var p Parser
	buf := make([]byte, 4096)
	basic := map[[2]byte]bool{{cmdWILL, optEOR}: true, {cmdDO, optEOR}: true, {cmdWILL, optBinary}: true, {cmdDO, optBinary}: true}
	fallback, sent := false, false
	for {
		n, err := c.Read(buf)
		p.Feed(buf[:n], func(t Token) error {
			switch {
			case t.Kind == Negotiation && t.Opt == optTN3270E && t.Cmd == cmdWILL:
				c.Write([]byte{cmdIAC, cmdSB, optTN3270E, 8, tnDeviceType, cmdIAC, cmdSE})
			case t.Kind == Negotiation && t.Opt == optTN3270E && t.Cmd == cmdWONT:
				fallback = true
				c.Write([]byte{cmdIAC, cmdDO, optTTYPE})
			case t.Kind == Negotiation && t.Cmd == cmdWILL && t.Opt == optTTYPE:
				c.Write([]byte{cmdIAC, cmdSB, optTTYPE, ttypeSEND, cmdIAC, cmdSE})
			case t.Kind == Sub && t.Opt == optTTYPE:
				c.Write([]byte{cmdIAC, cmdDO, optEOR, cmdIAC, cmdWILL, optEOR, cmdIAC, cmdDO, optBinary, cmdIAC, cmdWILL, optBinary})
			case t.Kind == Negotiation:
				delete(basic, [2]byte{t.Cmd, t.Opt})
			case t.Kind == Sub && t.Opt == optTN3270E && len(t.Payload) > 2 && t.Payload[0] == tnDeviceType && t.Payload[1] == tnRequest:
				requests.Add(1)
				typ, lu, _ := bytes.Cut(t.Payload[2:], []byte{tnConnect})
				if len(lu) == 0 {
					lu = []byte("POOL0001")
				}
				is := append([]byte{tnDeviceType, tnIS}, typ...)
				is = append(append(is, tnConnect), lu...)
				c.Write(appendSub(nil, optTN3270E, is))
			case t.Kind == Sub && t.Opt == optTN3270E && len(t.Payload) > 1 && t.Payload[0] == 3 && t.Payload[1] == tnRequest:
				c.Write(appendSub(nil, optTN3270E, []byte{3, tnIS}))
				if !sent {
					sent = true
					c.Write(append([]byte{0, 0, 0, 0, 0}, screen...))
				}
			}
			return nil
		})
		if fallback && len(basic) == 0 && !sent {
			sent = true
			c.Write(screen)
		}
		if err != nil {
			return
		}
	}
}

// TestS3270TN3270E runs the emulator in TN3270E: an allowed LU reaches the
// host's screen through DEVICE-TYPE REQUEST; a foreign LU is rejected by
// the proxy, and whatever the emulator tries next (retry or fallback to
// TERMINAL-TYPE "type@LU") never gets a session.
func TestS3270TN3270E(t *testing.T) {
	path := requireS3270(t)
	pki := newPKI(t)
	rg := newRig(t, policy.ProtoTN3270, policy.Route{LUNames: []string{"ACMELU0*"}}, Limits{})
	var requests atomic.Int32
	go func() {
		for {
			c, err := rg.hostLn.Accept()
			if err != nil {
				return
			}
			go tn3270eHost(c, "TN3270E SESSION", &requests)
		}
	}()
	port := rg.listenTLS(t, pki)
	em := startS3270(t, path, pki)
	if screen, ok := em.connect(t, fmt.Sprintf("L:ACMELU03@localhost:%d", port), "TN3270E SESSION"); !ok {
		t.Fatalf("host screen not shown; s3270 sees:\n%s", screen)
	}
	if requests.Load() != 1 {
		t.Fatalf("the host saw %d DEVICE-TYPE REQUESTs, want 1", requests.Load())
	}
	em.do(t, "Disconnect()")

	em.do(t, fmt.Sprintf("Connect(L:OTHERLU1@localhost:%d)", port))
	em.do(t, "Wait(3,3270Mode)")
	out, _ := em.do(t, "Ascii()")
	if strings.Contains(strings.Join(out, "\n"), "TN3270E SESSION") {
		t.Fatal("a foreign LU got the host's screen")
	}
	deadline := time.Now().Add(stepTimeout)
	for testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultRefused)) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("foreign LU was not refused; session log:\n%s", rg.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if requests.Load() != 1 {
		t.Fatalf("a rejected DEVICE-TYPE REQUEST reached the host")
	}
	// s3270 answers the REJECT by falling back to TN3270 and naming the LU
	// in TERMINAL-TYPE: the second check is the one that ends it.
	if !strings.Contains(rg.log.String(), `refused: LU \"OTHERLU1\" not allowed`) {
		t.Errorf("the fallback was not what refused the session:\n%s", rg.log)
	}
}
