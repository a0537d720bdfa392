package tunnel

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// TestServeRefusesBeforeFirstByte: a connector's Serve that judges the
// client's certificate (here against a revocation list of its own) and
// returns before reading or writing refuses the stream; the gateway hears
// the reason, not a close, so it can answer the client in its protocol.
// A Serve that reads serves as before.
func TestServeRefusesBeforeFirstByte(t *testing.T) {
	r := newRig(t, nil)
	h := r.header("acme")
	revoked := string(h.Chain[0])
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) {
		c.Serve = func(conn *Conn) error {
			cs := conn.ConnectionState()
			if string(cs.PeerCertificates[0].Raw) == revoked {
				// As the proxy does: close, then say why.
				conn.Close()
				return &RefusedError{Reason: "client certificate refused (revoked)", Err: errors.New("serial 2a on the CRL")}
			}
			if conn.Header().Listener == "silent" {
				conn.Close()
				return errors.New("listener full")
			}
			b, err := io.ReadAll(conn)
			if err != nil {
				return err
			}
			_, err = conn.Write([]byte(strings.ToUpper(string(b))))
			return err
		}
	})
	r.waitTunnels("acme", 1)

	st, err := r.gw.Open(h)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	var refused *RefusedError
	if err := st.Accepted(); !errors.As(err, &refused) || refused.Reason != "client certificate refused (revoked)" {
		t.Fatalf("a client the connector's CRL revokes: %v, want the connector's refusal with its reason", err)
	}
	st.Close()
	if strings.Contains(refused.Reason, "serial") {
		t.Errorf("the connector's detail reached the gateway: %q", refused.Reason)
	}

	// A refusal without a reason of its own: a generic one, still a refusal.
	silent := r.header("acme")
	silent.Listener = "silent"
	if _, err := r.roundTrip(silent, "x"); !errors.As(err, &refused) || !strings.Contains(refused.Reason, "before serving") {
		t.Fatalf("a Serve that closed unread: %v, want a refusal", err)
	}

	// Another client of the tenant is served.
	if got, err := r.roundTrip(r.header("acme"), "hello"); err != nil || got != "HELLO" {
		t.Fatalf("a client in good standing: %q %v", got, err)
	}
	if v := testutilCounter(r.gw.m.streams.WithLabelValues("gateway", "acme", "refused")); v != 2 {
		t.Errorf("gateway refused streams = %v, want 2", v)
	}
	if n := r.log.Occurrences("stream refused"); n < 2 {
		t.Errorf("%d refusal lines on the connector, want 2:\n%s", n, r.log.String())
	}
	if !strings.Contains(r.log.String(), "serial 2a on the CRL") {
		t.Errorf("the connector's log does not name the cause:\n%s", r.log.String())
	}
}
