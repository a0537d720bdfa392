package tunnel

import (
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
)

// A connector whose listener is full refuses a stream before reading a
// byte (StatusBusy); the gateway offers the stream to the tenant's other
// connectors, each once, before the client hears a refusal. The full
// connector has two tunnels: the stream is not offered to it twice.
func TestBusyRefusalTriesAnotherConnector(t *testing.T) {
	r := newRig(t, nil)
	var fullCalls, roomCalls atomic.Int32
	var roomFull atomic.Bool
	busy := func(conn *Conn) error {
		conn.Close()
		return &RefusedError{Reason: "the connector's listener is full", Busy: true}
	}
	r.connector("acme", r.connCA["acme"], 2, func(c *ConnectorConfig) {
		c.Serve = func(conn *Conn) error { fullCalls.Add(1); return busy(conn) }
	})
	r.waitTunnels("acme", 2)
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) {
		c.Serve = func(conn *Conn) error {
			roomCalls.Add(1)
			if roomFull.Load() {
				return busy(conn)
			}
			b, err := io.ReadAll(conn)
			if err != nil {
				return err
			}
			_, err = conn.Write([]byte(strings.ToUpper(string(b))))
			return err
		}
	})
	r.waitTunnels("acme", 3)

	const n = 5
	for i := range n {
		got, err := r.roundTrip(r.header("acme"), "hello")
		if err != nil || got != "HELLO" {
			t.Fatalf("stream %d: %q %v, want it served by the connector with room\n%s", i, got, err, r.log.String())
		}
	}
	if f, c := fullCalls.Load(), roomCalls.Load(); f != n || c != n {
		t.Fatalf("full connector asked %d times, the other %d; want %d each (each stream offered to the full one first, once)", f, c, n)
	}
	if v := testutilCounter(r.gw.m.streams.WithLabelValues("gateway", "acme", "retried")); v != n {
		t.Errorf("retried streams = %v, want %d", v, n)
	}

	// Every connector full: the client hears the refusal, after each
	// connector was asked once.
	roomFull.Store(true)
	fullCalls.Store(0)
	roomCalls.Store(0)
	_, err := r.roundTrip(r.header("acme"), "hello")
	var refused *RefusedError
	if !errors.As(err, &refused) || !refused.Busy || !strings.Contains(refused.Reason, "full") {
		t.Fatalf("every connector full: %v, want the busy refusal", err)
	}
	if f, c := fullCalls.Load(), roomCalls.Load(); f != 1 || c != 1 {
		t.Fatalf("every connector full: asked %d and %d times, want once each", f, c)
	}
}
