package telnet

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// rig is a handler with a scripted host listener.
type rig struct {
	h      *Handler
	ss     *Sessions
	hostLn net.Listener
	log    *testkit.LogBuffer
}

// Limits is what a test sets on a rig: the session limits the policy
// gives (per tenant, here the same for every tenant), the handshake
// timeout, and the protocol bounds shrunk so a test reaches them.
type Limits struct {
	NegotiationTimeout   time.Duration
	MaxNegotiations      int
	MaxSubnegotiation    int
	StormBurst           int
	HandshakeTimeout     time.Duration
	IdleTimeout          time.Duration
	MaxSessionLength     time.Duration
	MaxSessionsPerTenant int
}

func (l Limits) config(c *Config) {
	c.HandshakeTimeout = cmp.Or(l.HandshakeTimeout, 10*time.Second)
	tl := policy.TelnetLimits{StreamLimits: policy.StreamLimits{IdleTimeout: l.IdleTimeout, MaxSession: l.MaxSessionLength},
		MaxSessionsPerTenant: l.MaxSessionsPerTenant}
	c.Limits = func(string) policy.TelnetLimits { return tl }
}

func (l Limits) shrink(h *Handler) {
	h.bounds.negotiationTimeout = cmp.Or(l.NegotiationTimeout, h.bounds.negotiationTimeout)
	h.bounds.maxNegotiations = cmp.Or(l.MaxNegotiations, h.bounds.maxNegotiations)
	h.bounds.maxSub = cmp.Or(l.MaxSubnegotiation, h.bounds.maxSub)
	if l.StormBurst > 0 {
		h.bounds.stormBurst = float64(l.StormBurst)
	}
}

func newRig(t *testing.T, proto policy.Protocol, r policy.Route, lim Limits) *rig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if r.Backend == "" {
		r.Backend = ln.Addr().String()
	}
	if r.Tenant == "" {
		r.Tenant = "acme"
	}
	rg := &rig{ss: NewSessions(), hostLn: ln, log: &testkit.LogBuffer{}}
	cfg := Config{Listener: "mf", Protocol: proto, Routes: []policy.Route{r},
		Sessions: rg.ss, SessionLog: slog.New(slog.NewJSONHandler(rg.log, nil))}
	lim.config(&cfg)
	rg.h, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lim.shrink(rg.h)
	return rg
}

func (rg *rig) acceptHost(t *testing.T) net.Conn {
	t.Helper()
	rg.hostLn.(*net.TCPListener).SetDeadline(time.Now().Add(stepTimeout))
	c, err := rg.hostLn.Accept()
	if err != nil {
		t.Fatalf("host: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (rg *rig) serve(t *testing.T, ctx context.Context, c net.Conn, p certs.Peer) chan error {
	ch := make(chan error, 1)
	go func() { ch <- rg.h.Serve(ctx, c, p) }()
	return ch
}

func waitErr(t *testing.T, ch chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("session did not end")
		return nil
	}
}

func mustTokens(t testing.TB, s string) []byte {
	t.Helper()
	b, err := parseTokens(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func expectRead(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(stepTimeout))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read % x (%v), want % x", got, err, want)
	}
}

// negotiate runs a plain TN3270 negotiation and the first screen, leaving
// the session in the data phase.
func negotiate(t *testing.T, cli, host net.Conn) {
	t.Helper()
	for _, s := range []struct {
		from, to net.Conn
		tok      string
	}{
		{host, cli, `IAC DO TTYPE IAC SB TTYPE SEND IAC SE`},
		{cli, host, `IAC WILL TTYPE IAC SB TTYPE IS "IBM-3278-2-E@ACMELU01" IAC SE`},
		{host, cli, `0xF5 0xC3 "HELLO SECRET SCREEN" IAC EOR`},
	} {
		b := mustTokens(t, s.tok)
		if _, err := s.from.Write(b); err != nil {
			t.Fatal(err)
		}
		expectRead(t, s.to, b)
	}
}

func TestLimits(t *testing.T) {
	route := policy.Route{LUNames: []string{"ACMELU0*"}}
	t.Run("idle", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{IdleTimeout: 500 * time.Millisecond})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		negotiate(t, cli, rg.acceptHost(t))
		if err := waitErr(t, ch); !errors.Is(err, ErrIdle) {
			t.Fatalf("err %v, want idle", err)
		}
		if v := testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultTimeout)); v != 1 {
			t.Fatalf("timeout count %v", v)
		}
	})
	t.Run("session length", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{MaxSessionLength: time.Second, IdleTimeout: time.Hour})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		negotiate(t, cli, rg.acceptHost(t))
		if err := waitErr(t, ch); !errors.Is(err, ErrSessionLength) {
			t.Fatalf("err %v, want session length", err)
		}
	})
	t.Run("negotiation time", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{NegotiationTimeout: 100 * time.Millisecond})
		_, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		rg.acceptHost(t)
		if err := waitErr(t, ch); !errors.Is(err, ErrNegotiation) {
			t.Fatalf("err %v, want negotiation timeout", err)
		}
	})
	t.Run("negotiation count", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{MaxNegotiations: 4})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		rg.acceptHost(t)
		cli.Write(bytes.Repeat(mustTokens(t, `IAC WILL BINARY`), 5))
		if err := waitErr(t, ch); !errors.Is(err, ErrTooManyNego) {
			t.Fatalf("err %v", err)
		}
		if v := testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultLimit)); v != 1 {
			t.Fatalf("limit count %v", v)
		}
	})
	t.Run("keepalives after the data phase are not capped", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{MaxNegotiations: 4})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		host := rg.acceptHost(t)
		negotiate(t, cli, host)
		tm := bytes.Repeat(mustTokens(t, `IAC DO TIMING-MARK`), 20)
		host.Write(tm)
		expectRead(t, cli, tm)
		cli.Close()
		if err := waitErr(t, ch); err != nil {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("sub-negotiation length", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{MaxSubnegotiation: 32})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		rg.acceptHost(t)
		cli.Write(append(mustTokens(t, `IAC SB TTYPE IS`), bytes.Repeat([]byte("A"), 64)...))
		if err := waitErr(t, ch); !errors.Is(err, ErrSubTooLong) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("sessions per tenant", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{MaxSessionsPerTenant: 1})
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		rg.acceptHost(t)
		_, srv2 := testkit.TCPPair(t)
		if err := rg.h.Serve(context.Background(), srv2, testPeer()); !errors.Is(err, ErrSessionLimit) {
			t.Fatalf("second session: %v", err)
		}
		cli.Close()
		waitErr(t, ch)
		if n := rg.ss.Active("mf", "acme"); n != 0 {
			t.Fatalf("active %d", n)
		}
	})
	t.Run("no route", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{})
		_, srv := testkit.TCPPair(t)
		p := testPeer()
		p.Tenant = "other"
		if err := rg.h.Serve(context.Background(), srv, p); !errors.Is(err, ErrNoRoute) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("host unreachable", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		rg := newRig(t, policy.ProtoTN3270, policy.Route{Backend: addr}, Limits{})
		_, srv := testkit.TCPPair(t)
		if err := rg.h.Serve(context.Background(), srv, testPeer()); err == nil {
			t.Fatal("no error")
		}
		if v := testutil.ToFloat64(rg.ss.total.WithLabelValues("mf", "acme", "default", ResultBackend)); v != 1 {
			t.Fatalf("backend count %v", v)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		rg := newRig(t, policy.ProtoTN3270, route, Limits{})
		ctx, cancel := context.WithCancel(context.Background())
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, ctx, srv, testPeer())
		negotiate(t, cli, rg.acceptHost(t))
		cancel()
		if err := waitErr(t, ch); !errors.Is(err, ErrShutdown) {
			t.Fatalf("err %v", err)
		}
	})
}

// TestSessionLog wants a start and an end line with the session's facts
// and none of the screen's contents.
func TestSessionLog(t *testing.T) {
	rg := newRig(t, policy.ProtoTN3270, policy.Route{LUNames: []string{"ACMELU0*"}}, Limits{})
	cli, srv := testkit.TCPPair(t)
	ch := rg.serve(t, context.Background(), srv, testPeer())
	negotiate(t, cli, rg.acceptHost(t))
	cli.Close()
	if err := waitErr(t, ch); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rg.log.String(), "SECRET") {
		t.Fatal("screen contents in the session log")
	}
	lines := strings.Split(strings.TrimSpace(rg.log.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", lines)
	}
	var end map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &end); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"msg": "telnet session ended", "tenant": "acme", "fingerprint": "ab12",
		"source": "192.0.2.10:40000", "lu": "ACMELU01", "terminal_type": "IBM-3278-2-E", "result": "ok",
		"reason": "client closed", "listener": "mf"} {
		if end[k] != want {
			t.Errorf("%s = %v, want %v", k, end[k], want)
		}
	}
	if end["bytes_in"].(float64) < 30 || end["bytes_out"].(float64) < 30 || end["duration"] == "" {
		t.Errorf("bytes or duration missing: %v", end)
	}
}

// TestDataPassesUnchanged streams random 3270 data both ways through
// several sessions at once, cut into random writes large enough to switch
// the sessions to their bulk buffers and back, and wants every byte on the
// other side as it was sent.
func TestDataPassesUnchanged(t *testing.T) {
	rg := newRig(t, policy.ProtoTN3270, policy.Route{LUNames: []string{"ACMELU0*"}}, Limits{})
	stream := func(seed uint64) []byte {
		rnd := mrand.New(mrand.NewPCG(seed, 2))
		var b []byte
		for len(b) < 512<<10 {
			rec := make([]byte, rnd.IntN(6000))
			for i := range rec {
				rec[i] = byte(rnd.UintN(256))
			}
			b = appendEscaped(b, rec)
			b = append(b, cmdIAC, cmdEOR)
			if rnd.IntN(8) == 0 {
				b = append(b, cmdIAC, cmdNOP)
			}
		}
		return b
	}
	send := func(c net.Conn, b []byte, seed uint64) error {
		rnd := mrand.New(mrand.NewPCG(seed, 3))
		for len(b) > 0 {
			n := min(len(b), 1+rnd.IntN(40000))
			if _, err := c.Write(b[:n]); err != nil {
				return err
			}
			b = b[n:]
		}
		return nil
	}
	recv := func(c net.Conn, n int) ([]byte, error) {
		b := make([]byte, n)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := io.ReadFull(c, b)
		return b, err
	}
	const sessions = 4
	var wg sync.WaitGroup
	errs := make(chan error, 5*sessions)
	for i := range sessions {
		cli, srv := testkit.TCPPair(t)
		ch := rg.serve(t, context.Background(), srv, testPeer())
		host := rg.acceptHost(t)
		negotiate(t, cli, host)
		up, down := stream(uint64(2*i)), stream(uint64(2*i+1))
		check := func(c net.Conn, want []byte, what string) error {
			b, err := recv(c, len(want))
			if err == nil && !bytes.Equal(b, want) {
				err = fmt.Errorf("session %d: %s data changed", i, what)
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var inner sync.WaitGroup
			inner.Add(4)
			go func() { defer inner.Done(); errs <- send(cli, up, uint64(i)) }()
			go func() { defer inner.Done(); errs <- send(host, down, uint64(i+100)) }()
			go func() { defer inner.Done(); errs <- check(host, up, "client-to-host") }()
			go func() { defer inner.Done(); errs <- check(cli, down, "host-to-client") }()
			inner.Wait()
			cli.Close()
			select {
			case err := <-ch:
				errs <- err
			case <-time.After(10 * time.Second):
				errs <- fmt.Errorf("session %d did not end", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
