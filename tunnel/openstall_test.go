package tunnel

import (
	"crypto/tls"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// A stream whose open the connector never acknowledges (its accept loop
// is stuck) must not take the tunnel's other streams with it: yamux's own
// StreamOpenTimeout would close the whole session. The connector here is
// a real TLS and yamux peer that serves its first stream and then stops
// accepting.
func TestStuckOpenKeepsSiblingStreams(t *testing.T) {
	r := newRig(t, nil)
	leaf := r.connCA["acme"].Client(t, "acme-connector")
	tc, err := tls.Dial("tcp", r.gw.Addr().String(), &tls.Config{RootCAs: r.gwCA.Pool(), Certificates: []tls.Certificate{leaf.TLS},
		ServerName: "127.0.0.1", NextProtos: []string{ALPN}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	const keepalive, timeout = time.Second, time.Second
	sess, err := yamux.Client(tc, yamuxConfig(keepalive, timeout, slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	go func() {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		if _, err := ReadHeader(st); err != nil {
			return
		}
		_ = writeStatus(st, StatusOK, "")
		_, _ = io.Copy(st, st)
		// No further AcceptStream: every later open stays unacknowledged.
	}()
	r.waitTunnels("acme", 1)

	first, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	echo := func(msg string) {
		t.Helper()
		if _, err := first.Write([]byte(msg)); err != nil {
			t.Fatalf("write on the established stream: %v\n%s", err, r.log.String())
		}
		buf := make([]byte, len(msg))
		_ = first.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(first, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo on the established stream: %q, %v\n%s", buf, err, r.log.String())
		}
	}
	echo("before")

	stuck, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	// The session used to be closed StreamOpenTimeout (keepalive plus its
	// timeout) after the stuck open; wait past that.
	time.Sleep(keepalive + timeout + time.Second)
	if sess.IsClosed() {
		t.Fatalf("one unacknowledged open closed the tunnel\n%s", r.log.String())
	}
	echo("after")
	if n := r.gw.Tunnels()["acme"]; n != 1 {
		t.Fatalf("%d tunnels up, want 1", n)
	}
}
