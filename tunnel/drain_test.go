package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// TestConnectorDrain: a connector told to stop takes no new stream (the
// gateway sees its tunnel draining) while an open session runs on to its
// end; only then does Shutdown return and the tunnel close.
func TestConnectorDrain(t *testing.T) {
	r := newRig(t, nil)
	leaf := r.connCA["acme"].Client(t, "acme-connector")
	c, err := NewConnector(ConnectorConfig{
		Logger: r.gw.log, Tenant: "acme", Gateways: []string{r.gw.Addr().String()},
		TLS:     &tls.Config{RootCAs: r.gwCA.Pool(), Certificates: []tls.Certificate{leaf.TLS}},
		Tunnels: 1, Keepalive: time.Second, KeepaliveTimeout: time.Second,
		// An interactive session: each line is answered upper-cased.
		Serve: func(conn *Conn) error {
			sc := bufio.NewScanner(conn)
			for sc.Scan() {
				if _, err := io.WriteString(conn, strings.ToUpper(sc.Text())+"\n"); err != nil {
					return err
				}
			}
			return sc.Err()
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

	st, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	br := bufio.NewReader(st)
	line := func(s string) string {
		t.Helper()
		if _, err := io.WriteString(st, s+"\n"); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("session line %q: %v", s, err)
		}
		return strings.TrimSpace(got)
	}
	if got := line("before"); got != "BEFORE" {
		t.Fatalf("got %q", got)
	}

	cancel() // SIGTERM: stop taking streams
	shut := make(chan error, 1)
	go func() { shut <- c.Shutdown(context.Background()) }()
	// The gateway learns of the drain at its next Open: no new stream
	// goes to the draining tunnel.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := r.gw.Open(r.header("acme"))
		if errors.Is(err, ErrNoTunnel) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a new stream on a draining connector: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := line("during the drain"); got != "DURING THE DRAIN" {
		t.Fatalf("the open session during the drain: %q", got)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a session open", err)
	default:
	}
	st.CloseWrite()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	r.waitTunnels("acme", 0)
}
