package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// holdRelay forwards TCP to a target; hold stops the bytes from the
// dialling side (the connector) at the relay until release, so a frame
// the connector sends can be made to cross one the gateway sends.
type holdRelay struct {
	ln       net.Listener
	mu       sync.Mutex
	held     bool
	gate     chan struct{}
	gotHeld  chan struct{} // closed at the first bytes held back
	gotOnce  sync.Once
	conns    []net.Conn
	target   string
	released bool
}

func newHoldRelay(t *testing.T, target string) *holdRelay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &holdRelay{ln: ln, target: target, gate: make(chan struct{}), gotHeld: make(chan struct{})}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			h.mu.Lock()
			h.conns = append(h.conns, c, u)
			h.mu.Unlock()
			go h.pipe(u, c, true)
			go h.pipe(c, u, false)
		}
	}()
	t.Cleanup(func() {
		h.release()
		ln.Close()
		h.mu.Lock()
		for _, c := range h.conns {
			c.Close()
		}
		h.mu.Unlock()
	})
	return h
}

func (h *holdRelay) addr() string { return h.ln.Addr().String() }

func (h *holdRelay) hold() { h.mu.Lock(); h.held = true; h.mu.Unlock() }

func (h *holdRelay) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.released {
		h.released = true
		close(h.gate)
	}
}

func (h *holdRelay) pipe(dst, src net.Conn, holdable bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		h.mu.Lock()
		held := holdable && h.held
		h.mu.Unlock()
		if held {
			h.gotOnce.Do(func() { close(h.gotHeld) })
			<-h.gate
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// TestStreamRetriedWhenConnectorDrains: a connector starts draining (its
// GoAway is on the way) just as the gateway opens a stream on its tunnel;
// its multiplexer resets the stream unread, and the gateway sends the
// stream, with the client's bytes already written, down the tenant's
// other tunnel instead of failing the session.
func TestStreamRetriedWhenConnectorDrains(t *testing.T) {
	r := newRig(t, nil)
	relay := newHoldRelay(t, r.gw.Addr().String())
	leaf := r.connCA["acme"].Client(t, "acme-connector-a")
	var drainingServed sync.Mutex
	servedByDraining := 0
	a, err := NewConnector(ConnectorConfig{
		Logger: slog.New(slog.NewTextHandler(r.log, nil)), Tenant: "acme", Gateways: []string{relay.addr()},
		TLS:     &tls.Config{RootCAs: r.gwCA.Pool(), Certificates: []tls.Certificate{leaf.TLS}},
		Tunnels: 1,
		// No pings: the only frame the draining connector sends is its GoAway.
		Keepalive: time.Hour, KeepaliveTimeout: 5 * time.Second,
		Serve: func(c *Conn) error {
			drainingServed.Lock()
			servedByDraining++
			drainingServed.Unlock()
			_, err := io.Copy(io.Discard, c)
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); a.Run(ctx) }()
	defer func() { cancel(); a.Close(); <-ran }()
	r.waitTunnels("acme", 1)
	// The second connector comes up later: the first is the pool's first
	// choice while both are idle.
	_, served := r.connector("acme", r.connCA["acme"], 1, nil)
	r.waitTunnels("acme", 2)

	relay.hold()
	cancel() // connector a drains: it sends GoAway, held at the relay
	select {
	case <-relay.gotHeld:
	case <-time.After(10 * time.Second):
		t.Fatal("the draining connector sent no GoAway")
	}
	st, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte("request sent before the answer")); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	relay.release() // the GoAway, then the reset of the stream
	got, err := io.ReadAll(st)
	if err != nil || string(got) != "REQUEST SENT BEFORE THE ANSWER" {
		t.Fatalf("session across the drain: %q, %v\n%s", got, err, r.log.String())
	}
	served.mu.Lock()
	n := len(served.headers)
	served.mu.Unlock()
	drainingServed.Lock()
	defer drainingServed.Unlock()
	if n != 1 || servedByDraining != 0 {
		t.Fatalf("served by the other connector %d times, by the draining one %d times; want 1 and 0", n, servedByDraining)
	}
	if v := testutil.ToFloat64(r.gw.m.streams.WithLabelValues("gateway", "acme", "retried")); v != 1 {
		t.Fatalf("retried streams: %v, want 1", v)
	}
}

// TestShutdownWaitsForUnansweredStream: a stream the connector's
// multiplexer took before its GoAway, but whose header is still on the
// way, is answered and served by a draining connector: Shutdown does not
// close the tunnel under it (the gateway could not send it elsewhere).
func TestShutdownWaitsForUnansweredStream(t *testing.T) {
	r := newRig(t, nil)
	leaf := r.connCA["acme"].Client(t, "acme-connector")
	c, err := NewConnector(ConnectorConfig{
		Logger: slog.New(slog.NewTextHandler(r.log, nil)), Tenant: "acme", Gateways: []string{r.gw.Addr().String()},
		TLS:     &tls.Config{RootCAs: r.gwCA.Pool(), Certificates: []tls.Certificate{leaf.TLS}},
		Tunnels: 1, Keepalive: time.Second, KeepaliveTimeout: 5 * time.Second,
		Serve: func(conn *Conn) error {
			b, err := io.ReadAll(conn)
			if err != nil {
				return err
			}
			_, err = conn.Write([]byte(strings.ToUpper(string(b))))
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); c.Run(ctx) }()
	defer func() { cancel(); c.Close(); <-ran }()
	r.waitTunnels("acme", 1)

	// A stream opened, its header not yet written.
	r.gw.mu.Lock()
	sess := r.gw.pools["acme"].tunnels[0].sess
	r.gw.mu.Unlock()
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		n := 0
		for s := range c.sessions {
			n += s.NumStreams()
		}
		c.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the connector never took the stream")
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	shut := make(chan error, 1)
	go func() { shut <- c.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Logf("Shutdown returned with a stream unanswered: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := WriteHeader(st, r.header("acme")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("late header")); err != nil {
		t.Fatal(err)
	}
	st.Close()
	br := bufio.NewReader(st)
	if err := readStatus(br); err != nil {
		t.Fatalf("the draining connector's answer: %v", err)
	}
	got, err := io.ReadAll(br)
	if err != nil || string(got) != "LATE HEADER" {
		t.Fatalf("the stream taken before the drain: %q, %v", got, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
