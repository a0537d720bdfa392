package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestBackendTLSConfig(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert := write("c.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyFile := write("k.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	junk := write("junk.pem", []byte("not a certificate"))

	tc, err := BackendTLS(policy.Route{BackendCA: cert, BackendCert: cert, BackendKey: keyFile}, "db.internal")
	if err != nil {
		t.Fatal(err)
	}
	if tc.MinVersion != tls.VersionTLS12 || tc.ServerName != "db.internal" || tc.RootCAs == nil || len(tc.Certificates) != 1 {
		t.Errorf("config %+v", tc)
	}
	for name, r := range map[string]policy.Route{
		"cert without key": {BackendCert: cert},
		"key without cert": {BackendKey: keyFile},
		"missing ca":       {BackendCA: filepath.Join(dir, "nope.pem")},
		"ca without pem":   {BackendCA: junk},
		"key for no cert":  {BackendCert: junk, BackendKey: keyFile},
	} {
		if _, err := BackendTLS(r, "x"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := StreamBackendTLS(policy.Route{Backend: "10.0.0.1:23", BackendKey: keyFile}); err == nil {
		t.Error("a plain stream route with a backend key passed")
	}
	if tc, err := StreamBackendTLS(policy.Route{Backend: "10.0.0.1:23"}); tc != nil || err != nil {
		t.Errorf("a plain stream route: %v, %v", tc, err)
	}
	if tc, err := StreamBackendTLS(policy.Route{Backend: "db.internal:992", BackendTLS: true, BackendCA: cert}); err != nil || tc.ServerName != "db.internal" {
		t.Errorf("a TLS stream route: %+v, %v", tc, err)
	}
}

// TestCheckBackendTLSSchemeCase: an https backend whose scheme is written
// in capitals is TLS to the HTTP proxy (URL schemes are case-insensitive),
// so check loads its CA as run does and refuses a bad one.
func TestCheckBackendTLSSchemeCase(t *testing.T) {
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &policy.Policy{Listeners: []policy.Listener{{Name: "web", Protocol: policy.ProtoHTTPS,
		Routes: []policy.Route{{Tenant: "acme", Backend: "HTTPS://192.0.2.8", BackendCA: junk}}}}}
	if err := CheckBackendTLS(p); err == nil {
		t.Error("a CA without a certificate passed for an HTTPS:// backend")
	}
}
