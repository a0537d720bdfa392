package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// New credentials on a running connector: a gateway CA that still
// verifies the gateway keeps the tunnels and their streams, and new
// tunnels present the new certificate; a CA that no longer verifies it
// closes the tunnels, and none comes up again under it. Incomplete
// credentials are refused and the old stay.
func TestConnectorSetTLS(t *testing.T) {
	r := newRig(t, nil)
	c, _ := r.connector("acme", r.connCA["acme"], 2, func(c *ConnectorConfig) {
		c.Serve = func(conn *Conn) error {
			buf := make([]byte, 1)
			for {
				if _, err := conn.Read(buf); err != nil {
					return err
				}
				if _, err := conn.Write(buf); err != nil {
					return err
				}
			}
		}
	})
	r.waitTunnels("acme", 2)
	st, err := r.gw.Open(r.header("acme"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	echo := func() error {
		if _, err := st.Write([]byte("x")); err != nil {
			return err
		}
		_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadFull(st, make([]byte, 1))
		return err
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}

	if _, err := c.SetTLS(&tls.Config{RootCAs: r.gwCA.Pool()}); err == nil {
		t.Fatal("credentials without a certificate accepted")
	}
	// A new certificate, the same gateway CA: tunnels and stream stay.
	renewed := r.connCA["acme"].Client(t, "acme-connector-renewed")
	closed, err := c.SetTLS(&tls.Config{RootCAs: r.gwCA.Pool(), Certificates: []tls.Certificate{renewed.TLS}})
	if err != nil || closed != 0 {
		t.Fatalf("renewed certificate: %d closed, %v", closed, err)
	}
	if err := echo(); err != nil {
		t.Fatalf("the stream after a renewal under the same CA: %v", err)
	}
	// New tunnels present the renewed certificate: close the gateway's
	// side of the tunnels and see what comes back.
	r.gw.mu.Lock()
	old := append([]*gwTunnel(nil), r.gw.pools["acme"].tunnels...)
	r.gw.mu.Unlock()
	for _, tu := range old {
		tu.sess.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.gw.mu.Lock()
		n := 0
		for _, tu := range r.gw.pools["acme"].tunnels {
			if tu.fp == fingerprint(tls.ConnectionState{PeerCertificates: []*x509.Certificate{renewed.Cert}}) {
				n++
			}
		}
		r.gw.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tunnels with the renewed certificate, want 2\n%s", n, r.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A gateway CA that does not sign the gateway's certificate: the
	// tunnels close, and none comes up under it.
	other := certstest.NewCA(t, "another gateway CA")
	closed, err = c.SetTLS(&tls.Config{RootCAs: other.Pool(), Certificates: []tls.Certificate{renewed.TLS}})
	if err != nil || closed != 2 {
		t.Fatalf("untrusted gateway: %d closed, %v; want 2", closed, err)
	}
	r.waitTunnels("acme", 0)
	deadline = time.Now().Add(10 * time.Second)
	for len(c.Up()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("tunnels up under a CA that does not sign the gateway: %v", c.Up())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The dials under it fail their handshake: the log says so.
	deadline = time.Now().Add(10 * time.Second)
	for r.log.Occurrences("certificate signed by unknown authority") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no refused dial under the new CA:\n%s", r.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := r.gw.Tunnels()["acme"]; n != 0 {
		t.Fatalf("%d tunnels up under a CA that does not sign the gateway", n)
	}
}
