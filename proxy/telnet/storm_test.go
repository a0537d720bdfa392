package telnet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// countNegotiations reads c until it ends and counts the option
// negotiations in it.
func countNegotiations(c net.Conn) chan int {
	ch := make(chan int, 1)
	go func() {
		var p Parser
		n := 0
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			k, err := c.Read(buf)
			p.Feed(buf[:k], func(t Token) error {
				if t.Kind == Negotiation {
					n++
				}
				return nil
			})
			if err != nil {
				ch <- n
				return
			}
		}
	}()
	return ch
}

// countCommands reads c until it ends and counts the commands cmd in it.
func countCommands(c net.Conn, cmd byte) chan int {
	ch := make(chan int, 1)
	go func() {
		var p Parser
		n := 0
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			k, err := c.Read(buf)
			p.Feed(buf[:k], func(t Token) error {
				if t.Kind == Command && t.Cmd == cmd {
					n++
				}
				return nil
			})
			if err != nil {
				ch <- n
				return
			}
		}
	}()
	return ch
}

// TestNegotiationStorm: after the data phase a client may still negotiate
// (a TIMING-MARK answer, say) and send commands (Attn as IAC IP, say) but
// not flood the host: a burst over StormBurst ends the session with result
// limit and a reason in the session log, and the host saw at most the
// burst. Data records (IAC EOR), NOP and GA are not counted.
func TestNegotiationStorm(t *testing.T) {
	route := policy.Route{LUNames: []string{"ACMELU0*"}}
	t.Run("a terminal's negotiations pass", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		host := rg.acceptHost(t)
		negotiate(t, cli, host)
		answers := bytes.Repeat(mustTokens(t, `IAC WILL TIMING-MARK IAC WONT TIMING-MARK`), StormBurst/4)
		cli.Write(answers)
		expectRead(t, host, answers)
		cli.Close()
		if err := waitErr(t, ch); err != nil {
			t.Fatalf("session ended with %v", err)
		}
	})
	t.Run("a storm ends the session", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		host := rg.acceptHost(t)
		negotiate(t, cli, host)
		seen := countNegotiations(host)
		go cli.Write(bytes.Repeat(mustTokens(t, `IAC WILL BINARY IAC WONT BINARY`), 40_000))
		if err := waitErr(t, ch); !errors.Is(err, ErrNegotiationStorm) {
			t.Fatalf("err %v, want a negotiation storm", err)
		}
		if n := <-seen; n > StormBurst+StormRate*20 {
			t.Errorf("the host saw %d negotiations of the storm", n)
		}
		if v := testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultLimit)); v != 1 {
			t.Errorf("limit count %v", v)
		}
		lines := strings.Split(strings.TrimSpace(rg.log.String()), "\n")
		var end map[string]any
		json.Unmarshal([]byte(lines[len(lines)-1]), &end)
		if end["result"] != ResultLimit || !strings.Contains(fmt.Sprint(end["reason"]), "negotiation storm") {
			t.Errorf("session end line %v: want result limit and the storm as reason", end)
		}
	})
	t.Run("a storm of commands ends the session", func(t *testing.T) {
		for _, cmd := range []string{"AYT", "IP", "AO", "BRK", "DM"} {
			t.Run(cmd, func(t *testing.T) {
				rg := newRig(t, policy.ProtoTN3270, route, Limits{})
				cli, srv := testkit.TCPPair(t)
				ch := rg.serve(t, context.Background(), srv, testPeer())
				host := rg.acceptHost(t)
				negotiate(t, cli, host)
				one := mustTokens(t, "IAC "+cmd)
				seen := countCommands(host, one[1])
				go cli.Write(bytes.Repeat(one, 40_000))
				if err := waitErr(t, ch); !errors.Is(err, ErrNegotiationStorm) {
					t.Fatalf("err %v, want a negotiation storm", err)
				}
				if n := <-seen; n > StormBurst+StormRate*20 {
					t.Errorf("the host saw %d IAC %s of the storm", n, cmd)
				}
			})
		}
	})
	t.Run("record ends and keepalives are not counted", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		host := rg.acceptHost(t)
		negotiate(t, cli, host)
		records := bytes.Repeat(mustTokens(t, `0x7D 0x40 0x40 IAC EOR IAC NOP IAC GA`), 2*StormBurst)
		cli.Write(records)
		expectRead(t, host, records)
		cli.Close()
		if err := waitErr(t, ch); err != nil {
			t.Fatalf("session ended with %v", err)
		}
	})
	t.Run("host keepalives are not counted", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		host := rg.acceptHost(t)
		negotiate(t, cli, host)
		tm := bytes.Repeat(mustTokens(t, `IAC DO TIMING-MARK`), 2*StormBurst)
		host.Write(tm)
		expectRead(t, cli, tm)
		cli.Close()
		if err := waitErr(t, ch); err != nil {
			t.Fatalf("session ended with %v", err)
		}
	})
}

// ibmiHost plays a host that asks for the environment first, as IBM i
// does, then TERMINAL-TYPE, EOR and BINARY, shows a screen and sends
// keepalives (DO TIMING-MARK) after it. environ receives the payload of
// every NEW-ENVIRON sub-negotiation it gets.
func ibmiHost(c net.Conn, text string, environ chan<- []byte, keepalives int) {
	defer c.Close()
	c.Write([]byte{cmdIAC, cmdDO, optNewEnviron})
	want := map[[2]byte]bool{{cmdWILL, optEOR}: true, {cmdDO, optEOR}: true, {cmdWILL, optBinary}: true, {cmdDO, optBinary}: true}
	var p Parser
	sent := false
	askType := func() { c.Write([]byte{cmdIAC, cmdDO, optTTYPE}) }
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		p.Feed(buf[:n], func(t Token) error {
			switch {
			case t.Kind == Negotiation && t.Opt == optNewEnviron && t.Cmd == cmdWILL:
				c.Write([]byte{cmdIAC, cmdSB, optNewEnviron, 1, envVAR, envUSERVAR, cmdIAC, cmdSE})
			case t.Kind == Negotiation && t.Opt == optNewEnviron && t.Cmd == cmdWONT:
				askType()
			case t.Kind == Sub && t.Opt == optNewEnviron:
				environ <- bytes.Clone(t.Payload)
				askType()
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
			screen := append([]byte{0xF5, 0xC3, 0x11, 0x40, 0x40}, ebcdic(text)...)
			c.Write(append(screen, cmdIAC, cmdEOR))
			go func() {
				for range keepalives {
					if _, err := c.Write([]byte{cmdIAC, cmdDO, 6}); err != nil { // TIMING-MARK
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}
		if err != nil {
			return
		}
	}
}

// TestS3270EnvironAndKeepalives runs the real emulator against a host
// that asks for NEW-ENVIRON before the terminal type and sends keepalives
// after the first screen: the host learns nothing of the client's
// environment before the terminal is accepted, the session reaches its
// screen, and the emulator's answers to the keepalives are not a storm.
func TestS3270EnvironAndKeepalives(t *testing.T) {
	path := requireS3270(t)
	pki := newPKI(t)
	rg := newRig(t, policy.ProtoTN3270, policy.Route{LUNames: []string{"ACMELU0*"}, TerminalTypes: []string{"IBM-327*"}}, Limits{})
	environ := make(chan []byte, 4)
	var sessions atomic.Int32
	go func() {
		for {
			c, err := rg.hostLn.Accept()
			if err != nil {
				return
			}
			sessions.Add(1)
			go ibmiHost(c, "ENVIRON HELD BACK", environ, 100)
		}
	}()
	port := rg.listenTLS(t, pki)
	em := startS3270(t, path, pki)
	if screen, ok := em.connect(t, fmt.Sprintf("L:ACMELU01@localhost:%d", port), "ENVIRON HELD BACK"); !ok {
		t.Fatalf("host screen not shown; s3270 sees:\n%s\nsession log:\n%s", screen, rg.log)
	}
	select {
	case p := <-environ:
		if !bytes.Equal(p, []byte{envIS}) {
			t.Errorf("the host got NEW-ENVIRON % x before the terminal was accepted, want an empty IS", p)
		}
	default:
		t.Log("s3270 declined NEW-ENVIRON")
	}
	// Let the keepalives run, then the session must still be up.
	time.Sleep(1500 * time.Millisecond)
	if out, ok := em.do(t, "Query(ConnectionState)"); !ok || len(out) == 0 || !strings.Contains(out[0], "3270") {
		t.Fatalf("session no longer connected after the host's keepalives: %q; log:\n%s", out, rg.log)
	}
	em.do(t, "Disconnect()")
	deadline := time.Now().Add(stepTimeout)
	for testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultOK)) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("session did not end ok; log:\n%s", rg.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultLimit)); v != 0 {
		t.Errorf("a real terminal hit a limit (%v)", v)
	}
}
