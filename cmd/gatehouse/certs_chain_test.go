package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// TestCertsIntermediateHowTo follows the README's how-to for a tenant with
// a root and an issuing intermediate: check accepts the root in client_ca
// and the intermediate in intermediates, refuses the intermediate in
// client_ca, and once the root revokes the intermediate a client sending
// its leaf alone is refused in a real handshake, as OpenSSL refuses it.
func TestCertsIntermediateHowTo(t *testing.T) {
	needOpenSSL(t)
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	pkiRun(t, "init-ca", "--dir", p("root"), "--cn", "acme root CA", "--path-len", "1")
	pkiRun(t, "init-ca", "--dir", p("issuing"), "--cn", "acme issuing CA", "--parent", p("root"))
	pkiRun(t, "issue", "--ca", p("issuing"), "--client", "--tenant", "acme", "--uri", "spiffe://acme/cloud", "--out", p("client"))
	pkiRun(t, "init-ca", "--dir", p("server-ca"), "--cn", "gateway CA")
	pkiRun(t, "issue", "--ca", p("server-ca"), "--server", "--dns", "gw.example", "--out", p("server"))
	publish := func() {
		t.Helper()
		pkiRun(t, "crl", "--ca", p("root"), "--days", "90", "--out", p("root.crl"))
		pkiRun(t, "crl", "--ca", p("issuing"), "--out", p("issuing.crl"))
		both := append(readAll(t, p("root.crl")), readAll(t, p("issuing.crl"))...)
		if err := certs.WriteFile(p("acme.crl"), both, 0o644, true); err != nil {
			t.Fatal(err)
		}
	}
	publish()
	writeConfig := func(name, clientCA string) string {
		t.Helper()
		yaml := fmt.Sprintf(`state_dir: /var/lib/gatehouse
enforcement: {xdp: "off", nftables: false}
tenants:
  - id: acme
    client_ca: %[1]s
    intermediates: %[2]s/issuing/ca.pem
    crl: %[2]s/acme.crl
listeners:
  - name: web
    listen: "127.0.0.1:8443"
    protocol: tcp
    server_cert: %[2]s/server.pem
    server_key: %[2]s/server.key
    routes: [{tenant: acme, backend: "192.0.2.5:443"}]
`, clientCA, d)
		path := p(name)
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := writeConfig("good.yaml", p("root/ca.pem"))
	out, _, err := runCLI("check", "-c", good)
	if err != nil || !strings.Contains(out, "issued by an intermediate in "+p("issuing/ca.pem")) {
		t.Fatalf("check with the root in client_ca: %v\n%s", err, out)
	}
	_, _, err = runCLI("check", "-c", writeConfig("bad.yaml", p("issuing/ca.pem")))
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "tenants[].intermediates") {
		t.Fatalf("check with the intermediate in client_ca: want exit 1 saying where intermediates go, got %v", err)
	}

	m := loadManager(t, good)
	if err := handshakeAlone(t, m, p); err != nil {
		t.Fatalf("leaf alone before the revocation: %v", err)
	}
	openssl(t, d, "verify", "-crl_check_all", "-CAfile", "root/ca.pem", "-untrusted", "issuing/ca.pem", "-CRLfile", "acme.crl", "client.pem")

	pkiRun(t, "revoke", "--ca", p("root"), "--cert", p("issuing/ca.pem"), "--reason", "cACompromise")
	publish()
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := handshakeAlone(t, m, p); certs.ResultOf(err) != certs.ResultRevoked {
		t.Fatalf("leaf alone under the revoked intermediate: %v, want revoked", err)
	}
	if out, err := osslTry(d, "verify", "-crl_check_all", "-CAfile", "root/ca.pem", "-untrusted", "issuing/ca.pem", "-CRLfile", "acme.crl", "client.pem"); err == nil {
		t.Errorf("openssl verifies the leaf under a revoked intermediate:\n%s", out)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loadManager builds the certificate manager of a configuration, as run
// does, without a state directory.
func loadManager(t *testing.T, path string) *certs.Manager {
	t.Helper()
	cfg, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	pol := cfg.Policy()
	pol.StateDir = ""
	m, err := certs.New(certs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Apply(pol); err != nil {
		t.Fatal(err)
	}
	return m
}

// handshakeAlone runs a TLS handshake on loopback against the listener web,
// the client presenting client.pem (its leaf alone), and returns the
// server's error.
func handshakeAlone(t *testing.T, m *certs.Manager, p func(string) string) error {
	t.Helper()
	srv, err := m.TLSConfig("web")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(p("client.pem"), p("client.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(readAll(t, p("server-ca/ca.pem")))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: "gw.example", Certificates: []tls.Certificate{cert}})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if tc.Handshake() == nil {
			io.Copy(io.Discard, tc) // until the server closes
		}
	}()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	sc := tls.Server(raw, srv)
	sc.SetDeadline(time.Now().Add(10 * time.Second))
	return sc.Handshake()
}
