package policy

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

	tc, err := Route{BackendCA: cert, BackendCert: cert, BackendKey: keyFile}.BackendTLSConfig("db.internal")
	if err != nil {
		t.Fatal(err)
	}
	if tc.MinVersion != tls.VersionTLS12 || tc.ServerName != "db.internal" || tc.RootCAs == nil || len(tc.Certificates) != 1 {
		t.Errorf("config %+v", tc)
	}
	for name, r := range map[string]Route{
		"cert without key": {BackendCert: cert},
		"key without cert": {BackendKey: keyFile},
		"missing ca":       {BackendCA: filepath.Join(dir, "nope.pem")},
		"ca without pem":   {BackendCA: junk},
		"key for no cert":  {BackendCert: junk, BackendKey: keyFile},
	} {
		if _, err := r.BackendTLSConfig("x"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := (Route{BackendKey: keyFile}).CheckPlainBackend(); err == nil {
		t.Error("a plain route with a backend key passed")
	}
	if err := (Route{}).CheckPlainBackend(); err != nil {
		t.Errorf("a plain route: %v", err)
	}
}
