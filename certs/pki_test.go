package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

func runOpenSSL(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

const osslCAConf = `[ca]
default_ca = gh
[gh]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = 2
certificate = ca.pem
private_key = ca.key
`

// TestAcceptsOpenSSLPKI: a CA, client certificates, a CRL and a PKCS#12
// file made by OpenSSL work in gatehouse: as a tenant's CA and CRL in real
// handshakes, as a CA directory to issue from, and as an import.
func TestAcceptsOpenSSLPKI(t *testing.T) {
	netns.RequireTool(t, "openssl", "openssl")
	d := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(d, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.cnf", osslCAConf)
	write("index.txt", "")
	write("crlnumber", "01\n")
	write("client.ext", "extendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://acme/cloud\n")
	write("pw", "pass word\n")
	runOpenSSL(t, d, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key") // SEC 1 "EC PRIVATE KEY"
	runOpenSSL(t, d, "req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/O=Acme/CN=OpenSSL CA",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	for _, n := range []string{"good", "bad"} {
		runOpenSSL(t, d, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
			"-keyout", n+".key", "-out", n+".csr", "-subj", "/CN="+n)
		runOpenSSL(t, d, "x509", "-req", "-in", n+".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
			"-days", "5", "-extfile", "client.ext", "-out", n+".pem")
	}
	runOpenSSL(t, d, "ca", "-config", "ca.cnf", "-revoke", "bad.pem")
	runOpenSSL(t, d, "ca", "-config", "ca.cnf", "-gencrl", "-out", "ca.crl")
	runOpenSSL(t, d, "crl", "-in", "ca.crl", "-outform", "DER", "-out", "ca.crl.der")
	runOpenSSL(t, d, "pkcs12", "-export", "-in", "good.pem", "-inkey", "good.key", "-certfile", "ca.pem",
		"-out", "good.p12", "-passout", "file:pw")

	load := func(name string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(filepath.Join(d, name+".pem"), filepath.Join(d, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	srvCA := certstest.NewCA(t, "server CA")
	srv := srvCA.Server(t, "gw.example")
	for _, crl := range []string{"ca.crl", "ca.crl.der"} {
		t.Run(crl, func(t *testing.T) {
			p := &policy.Policy{
				Tenants: []policy.Tenant{{ID: "acme", ClientCA: filepath.Join(d, "ca.pem"), CRL: filepath.Join(d, crl),
					Identities: policy.Identities{URISAN: []string{"spiffe://acme/*"}}}},
				Listeners: []policy.Listener{{Name: "web", ServerCert: srv.CertFile, ServerKey: srv.KeyFile}},
			}
			m := newManager(t, Config{}, p)
			conf, _ := m.TLSConfig("web")
			for _, tc := range []struct {
				name string
				want Result
			}{{"good", ResultOK}, {"bad", ResultRevoked}} {
				cc := &tls.Config{RootCAs: srvCA.Pool(), ServerName: "gw.example", Certificates: []tls.Certificate{load(tc.name)}}
				r := handshake(t, conf, cc, false)
				if got := ResultOf(r.serverErr); got != tc.want {
					t.Errorf("%s: %s (%v), want %s", tc.name, got, r.serverErr, tc.want)
				}
			}
		})
	}

	// The OpenSSL CA directory issues certificates through gatehouse.
	ca, err := OpenCA(d)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://acme/gh")
	der, key, err := ca.Issue(Profile{Client: true, Tenant: "acme", URIs: []*url.URL{u}}, "")
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(ca.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate from the OpenSSL CA does not verify: %v", err)
	}
	if !publicKeyEqual(leaf.PublicKey, key.Public()) {
		t.Fatal("issued certificate is not for the new key")
	}

	// The OpenSSL p12 (PBES2, AES-256, SHA-256 MAC by default in 3.x).
	data, _ := os.ReadFile(filepath.Join(d, "good.p12"))
	k, cert, chain, err := DecodeP12(data, "pass word")
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "good" || len(chain) != 1 || !publicKeyEqual(cert.PublicKey, k.Public()) {
		t.Fatalf("p12: %s, chain %d", cert.Subject, len(chain))
	}
	if _, _, _, err := DecodeP12(data, "wrong"); err == nil {
		t.Fatal("p12 opened with a wrong password")
	}

	// inspect reads every OpenSSL artefact.
	for _, f := range []string{"ca.pem", "good.csr", "ca.crl", "ca.crl.der", "ca.key", "good.key"} {
		b, _ := os.ReadFile(filepath.Join(d, f))
		if out, err := Inspect(b, time.Now()); err != nil || strings.Contains(out, "BEGIN") {
			t.Errorf("inspect %s: %v\n%s", f, err, out)
		}
	}
	if _, err := Inspect(data, time.Now()); !errors.Is(err, ErrUnknownFormat) || !strings.Contains(err.Error(), "PKCS#12") {
		t.Errorf("inspect of a p12: %v", err)
	}
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func TestRevokeAndCRLNumbers(t *testing.T) {
	ca, err := InitCA(CAOptions{Dir: t.TempDir(), CommonName: "CA"})
	if err != nil {
		t.Fatal(err)
	}
	der, _, err := ca.Issue(Profile{Client: true, CommonName: "c"}, "")
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	for i := 0; i < 2; i++ { // twice: idempotent
		if err := ca.Revoke(leaf.SerialNumber, Reasons["keyCompromise"]); err != nil {
			t.Fatal(err)
		}
	}
	list, err := ca.Revoked()
	if err != nil || len(list) != 1 || list[0].Serial.Cmp(leaf.SerialNumber) != 0 || list[0].Reason != 1 {
		t.Fatalf("index %+v %v", list, err)
	}
	for want := int64(1); want <= 2; want++ {
		b, err := ca.CRL(time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		crl, err := ParseCRL(b)
		if err != nil {
			t.Fatal(err)
		}
		if crl.Number.Int64() != want || len(crl.RevokedCertificateEntries) != 1 ||
			crl.RevokedCertificateEntries[0].ReasonCode != 1 || crl.CheckSignatureFrom(ca.Cert) != nil {
			t.Fatalf("CRL %d: number %v entries %d", want, crl.Number, len(crl.RevokedCertificateEntries))
		}
	}
	if _, err := InitCA(CAOptions{Dir: ca.Dir, CommonName: "again"}); !errors.Is(err, ErrExists) {
		t.Fatalf("second InitCA in the same dir: %v", err)
	}
}

func TestParseKeyForms(t *testing.T) {
	ca := certstest.NewCA(t, "k")
	pk8, _ := os.ReadFile(ca.KeyFile)
	k, err := ParseKeyPEM(pk8)
	if err != nil || !publicKeyEqual(ca.Cert.PublicKey, k.Public()) {
		t.Fatalf("PKCS#8: %v", err)
	}
	if _, err := ParseKeyPEM([]byte("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")); !errors.Is(err, ErrNoKey) {
		t.Fatalf("no key: %v", err)
	}
	for _, kt := range []KeyType{KeyECDSAP256, KeyEd25519} {
		k, err := GenerateKey(kt)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := MarshalKeyPEM(k)
		back, err := ParseKeyPEM(b)
		if err != nil || !publicKeyEqual(k.Public(), back.Public()) {
			t.Fatalf("%s round trip: %v", kt, err)
		}
	}
	if _, err := GenerateKey("dsa"); !errors.Is(err, ErrUnknownKeyType) {
		t.Fatal(err)
	}
}

func TestParseCSRRejectsBadSignature(t *testing.T) {
	k, _ := GenerateKey("")
	der, err := CreateCSR(k, CSROptions{CommonName: "x"})
	if err != nil {
		t.Fatal(err)
	}
	der[len(der)-3] ^= 0xff // inside the signature
	if _, err := ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})); err == nil {
		t.Fatal("tampered CSR accepted")
	}
}

// FuzzInspect: inspect reads whatever file an operator points it at.
func FuzzInspect(f *testing.F) {
	ca := certstest.NewCA(f, "fuzz")
	b, _ := os.ReadFile(ca.CertFile)
	f.Add(b)
	f.Add(ca.Cert.Raw)
	f.Add([]byte("-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := Inspect(data, time.Unix(1e9, 0))
		if err == nil && out == "" {
			t.Fatal("no error and no output")
		}
	})
}

func TestInspectBundleAndReasons(t *testing.T) {
	var bundle []byte
	for _, n := range []string{"a", "b", "c", "d"} {
		b, _ := os.ReadFile(certstest.NewCA(t, n).CertFile)
		bundle = append(bundle, b...)
	}
	out, err := Inspect(bundle, time.Now())
	if err != nil || !strings.HasPrefix(out, "Bundle of 4 certificates") || strings.Count(out, "\n") != 5 {
		t.Fatalf("bundle: %v\n%s", err, out)
	}
	ca, err := InitCA(CAOptions{Dir: t.TempDir(), CommonName: "CA"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Revoke(parseSerialMust(t, "0a"), Reasons["superseded"]); err != nil {
		t.Fatal(err)
	}
	der, err := ca.CRL(0)
	if err != nil {
		t.Fatal(err)
	}
	out, err = Inspect(der, time.Now())
	if err != nil || !strings.Contains(out, "0a  ") || !strings.Contains(out, "superseded") {
		t.Fatalf("CRL: %v\n%s", err, out)
	}
}

func parseSerialMust(t *testing.T, s string) *big.Int {
	t.Helper()
	n, err := ParseSerial(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
