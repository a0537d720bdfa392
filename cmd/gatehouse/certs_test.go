package main

import (
	"bytes"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// pkiRun runs `gatehouse certs ARGS…` on its own command tree.
func pkiRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := pkiTry(args...)
	if err != nil {
		t.Fatalf("certs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Fatalf("certs %s printed key material:\n%s", args[0], out)
	}
	return out
}

func pkiTry(args ...string) (string, error) {
	c := newCertsCmd()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetArgs(args)
	err := c.Execute()
	return out.String(), err
}

func needOpenSSL(t *testing.T) {
	t.Helper()
	netns.RequireTool(t, "openssl", "openssl")
}

// openssl runs openssl in dir and fails the test unless it exits 0.
func openssl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := osslTry(dir, args...)
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func osslTry(dir string, args ...string) (string, error) {
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestCertsCommandsWithOpenSSL walks the whole PKI through the commands and
// has OpenSSL check every artefact.
func TestCertsCommandsWithOpenSSL(t *testing.T) {
	needOpenSSL(t)
	for _, kt := range []string{"ecdsa-p256", "rsa-3072", "ed25519"} {
		t.Run(kt, func(t *testing.T) {
			d := t.TempDir()
			p := func(name string) string { return filepath.Join(d, name) }
			out := pkiRun(t, "init-ca", "--dir", p("ca"), "--cn", "Acme Tenant CA", "--org", "Acme", "--key-type", kt)
			if !strings.Contains(out, "CA certificate (self-signed)") {
				t.Errorf("init-ca summary:\n%s", out)
			}
			if m := mode(t, p("ca/ca.key")); m != 0o600 {
				t.Errorf("ca.key mode %v", m)
			}
			if _, err := pkiTry("init-ca", "--dir", p("ca"), "--cn", "again"); err == nil {
				t.Error("init-ca over an existing CA succeeded without --force")
			}
			pkiRun(t, "issue", "--ca", p("ca"), "--client", "--tenant", "acme", "--uri", "spiffe://acme/cloud",
				"--key-type", kt, "--out", p("client"))
			pkiRun(t, "issue", "--ca", p("ca"), "--server", "--dns", "gw.example", "--ip", "127.0.0.1",
				"--key-type", kt, "--out", p("server"))
			if m := mode(t, p("client.key")); m != 0o600 {
				t.Errorf("client.key mode %v", m)
			}
			openssl(t, d, "verify", "-CAfile", "ca/ca.pem", "-purpose", "sslclient", "client.pem")
			openssl(t, d, "verify", "-CAfile", "ca/ca.pem", "-purpose", "sslserver", "server.pem")
			if _, err := osslTry(d, "verify", "-CAfile", "ca/ca.pem", "-purpose", "sslserver", "client.pem"); err == nil {
				t.Error("openssl accepts the client certificate as a server certificate")
			}
			text := openssl(t, d, "x509", "-in", "client.pem", "-noout", "-text")
			for _, w := range []string{"URI:spiffe://acme/cloud", "OU = acme", "TLS Web Client Authentication"} {
				if !strings.Contains(text, w) {
					t.Errorf("client certificate lacks %q:\n%s", w, text)
				}
			}

			// CSR: the key stays here, openssl checks the request, the CA signs it.
			pkiRun(t, "csr", "--key", p("req.key"), "--key-type", kt, "--cn", "batch", "--ou", "acme",
				"--uri", "spiffe://acme/batch", "--out", p("req.csr"))
			if m := mode(t, p("req.key")); m != 0o600 {
				t.Errorf("req.key mode %v", m)
			}
			openssl(t, d, "req", "-verify", "-in", "req.csr", "-noout")
			pkiRun(t, "sign-csr", "--ca", p("ca"), "--csr", p("req.csr"), "--client", "--out", p("req.pem"))
			openssl(t, d, "verify", "-CAfile", "ca/ca.pem", "-purpose", "sslclient", "req.pem")
			if !strings.Contains(openssl(t, d, "x509", "-in", "req.pem", "-noout", "-text"), "URI:spiffe://acme/batch") {
				t.Error("signed CSR lost its URI")
			}
			if !keysMatch(t, p("req.pem"), p("req.key")) {
				t.Error("signed certificate is not for the CSR's key")
			}

			// Revocation and CRL.
			pkiRun(t, "revoke", "--ca", p("ca"), "--cert", p("client.pem"), "--reason", "keyCompromise")
			pkiRun(t, "crl", "--ca", p("ca"), "--out", p("ca.crl"), "--days", "2")
			if out := openssl(t, d, "crl", "-in", "ca.crl", "-CAfile", "ca/ca.pem", "-noout"); !strings.Contains(out, "verify OK") {
				t.Errorf("openssl crl: %s", out)
			}
			if out, err := osslTry(d, "verify", "-crl_check", "-CAfile", "ca/ca.pem", "-CRLfile", "ca.crl", "client.pem"); err == nil ||
				!strings.Contains(out, "revoked") {
				t.Errorf("openssl verify of the revoked client: %v %s", err, out)
			}
			openssl(t, d, "verify", "-crl_check", "-CAfile", "ca/ca.pem", "-CRLfile", "ca.crl", "server.pem")
			// A reissued CRL replaces the file by rename (a watching daemon
			// never reads a half-written one): a new inode, not the old one
			// truncated, and nothing left beside it.
			before := inode(t, p("ca.crl"))
			pkiRun(t, "crl", "--ca", p("ca"), "--out", p("ca.crl"), "--days", "2")
			if inode(t, p("ca.crl")) == before {
				t.Error("CRL rewritten in place, not replaced")
			}
			if left, _ := filepath.Glob(p(".ca.crl*")); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
			openssl(t, d, "crl", "-in", "ca.crl", "-CAfile", "ca/ca.pem", "-noout")
			pkiRun(t, "crl", "--ca", p("ca"), "--out", p("ca.der"), "--der")
			if out := openssl(t, d, "crl", "-inform", "DER", "-in", "ca.der", "-noout", "-crlnumber"); !strings.Contains(out, "crlNumber=0x03") {
				t.Errorf("third CRL number: %s", out)
			}

			// PKCS#12 out to OpenSSL and back in from OpenSSL.
			if err := os.WriteFile(p("pw"), []byte("s3cret pass\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			pkiRun(t, "export-p12", "--cert", p("client.pem"), "--key", p("client.key"), "--chain", p("ca/ca.pem"),
				"--out", p("client.p12"), "--password-file", p("pw"))
			if m := mode(t, p("client.p12")); m != 0o600 {
				t.Errorf("client.p12 mode %v", m)
			}
			openssl(t, d, "pkcs12", "-in", "client.p12", "-passin", "file:pw", "-noout")
			certsOut := openssl(t, d, "pkcs12", "-in", "client.p12", "-passin", "file:pw", "-nokeys")
			if strings.Count(certsOut, "BEGIN CERTIFICATE") != 2 {
				t.Errorf("openssl found %d certificates in our p12", strings.Count(certsOut, "BEGIN CERTIFICATE"))
			}
			if _, err := osslTry(d, "pkcs12", "-in", "client.p12", "-passin", "pass:wrong", "-noout"); err == nil {
				t.Error("openssl opened our p12 with a wrong password")
			}
			openssl(t, d, "pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca/ca.pem",
				"-out", "ossl.p12", "-passout", "file:pw")
			out = pkiRun(t, "import-p12", "--in", p("ossl.p12"), "--out", p("imported"), "--password-file", p("pw"))
			if !strings.Contains(out, "2 certificates") {
				t.Errorf("import-p12: %s", out)
			}
			if !sameFirstCert(t, p("imported.pem"), p("server.pem")) || !keysMatch(t, p("imported.pem"), p("imported.key")) {
				t.Error("imported p12 differs from what openssl bundled")
			}
			if m := mode(t, p("imported.key")); m != 0o600 {
				t.Errorf("imported.key mode %v", m)
			}

			// inspect understands everything written above.
			out = pkiRun(t, "inspect", p("client.pem"), p("req.csr"), p("ca.crl"), p("ca.der"), p("imported.pem"), p("client.key"))
			for _, w := range []string{"Certificate request (PKCS#10)", "CRL", "Revoked:     1", "URI:spiffe://acme/cloud",
				"Private key:", "(not shown)", "CA certificate (self-signed)"} {
				if !strings.Contains(out, w) {
					t.Errorf("inspect lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestCertsCommandErrors(t *testing.T) {
	d := t.TempDir()
	pkiRun(t, "init-ca", "--dir", filepath.Join(d, "ca"), "--cn", "CA")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"issue needs a usage", []string{"issue", "--ca", filepath.Join(d, "ca"), "--cn", "x", "--out", filepath.Join(d, "x")}, "--server or --client"},
		{"issue both usages", []string{"issue", "--ca", filepath.Join(d, "ca"), "--server", "--client", "--dns", "a", "--out", filepath.Join(d, "x")}, "--server or --client"},
		{"server without names", []string{"issue", "--ca", filepath.Join(d, "ca"), "--server", "--out", filepath.Join(d, "x")}, "DNS name or IP"},
		{"bad ip", []string{"issue", "--ca", filepath.Join(d, "ca"), "--server", "--ip", "999.1.1.1", "--out", filepath.Join(d, "x")}, "not an IP"},
		{"bad uri", []string{"issue", "--ca", filepath.Join(d, "ca"), "--client", "--uri", "acme", "--cn", "a", "--out", filepath.Join(d, "x")}, "absolute URI"},
		{"bad key type", []string{"init-ca", "--dir", filepath.Join(d, "ca2"), "--cn", "x", "--key-type", "dsa"}, "unknown key type"},
		{"no CA", []string{"issue", "--ca", filepath.Join(d, "none"), "--client", "--cn", "a", "--out", filepath.Join(d, "x")}, "ca.pem"},
		{"missing flag", []string{"crl", "--ca", filepath.Join(d, "ca")}, "out"},
		{"bad reason", []string{"revoke", "--ca", filepath.Join(d, "ca"), "--serial", "01", "--reason", "bored"}, "unknown revocation reason"},
		{"bad serial", []string{"revoke", "--ca", filepath.Join(d, "ca"), "--serial", "xyz"}, "bad serial"},
		{"p12 without password", []string{"import-p12", "--in", filepath.Join(d, "x.p12"), "--out", filepath.Join(d, "y")}, "no password"},
		{"inspect missing", []string{"inspect", filepath.Join(d, "ca", "revoked.txt")}, "no such file"},
		{"inspect garbage", []string{"inspect", filepath.Join(d, "garbage")}, "not a certificate"},
	}
	if err := os.WriteFile(filepath.Join(d, "garbage"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(pkiPasswordEnv, "")
	os.Unsetenv(pkiPasswordEnv)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := pkiTry(tc.args...)
			if err == nil {
				t.Fatalf("succeeded:\n%s", out)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	// A revoked certificate of another CA is refused.
	pkiRun(t, "init-ca", "--dir", filepath.Join(d, "other"), "--cn", "Other")
	pkiRun(t, "issue", "--ca", filepath.Join(d, "other"), "--client", "--cn", "z", "--out", filepath.Join(d, "z"))
	if _, err := pkiTry("revoke", "--ca", filepath.Join(d, "ca"), "--cert", filepath.Join(d, "z.pem")); err == nil {
		t.Error("revoked a certificate of another CA")
	}
	// An existing key is never overwritten without --force.
	pkiRun(t, "issue", "--ca", filepath.Join(d, "ca"), "--client", "--cn", "k", "--out", filepath.Join(d, "k"))
	before, _ := os.ReadFile(filepath.Join(d, "k.key"))
	if _, err := pkiTry("issue", "--ca", filepath.Join(d, "ca"), "--client", "--cn", "k", "--out", filepath.Join(d, "k")); err == nil {
		t.Error("issue replaced an existing key without --force")
	}
	after, _ := os.ReadFile(filepath.Join(d, "k.key"))
	if !bytes.Equal(before, after) {
		t.Error("key changed")
	}
}

func keysMatch(t *testing.T, certPath, keyPath string) bool {
	t.Helper()
	list, err := certs.ReadCertsFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	key, err := certs.ReadKeyFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	der1, _ := x509.MarshalPKIXPublicKey(list[0].PublicKey)
	der2, _ := x509.MarshalPKIXPublicKey(key.Public())
	return bytes.Equal(der1, der2)
}

func sameFirstCert(t *testing.T, a, b string) bool {
	t.Helper()
	la, err := certs.ReadCertsFile(a)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := certs.ReadCertsFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return la[0].Equal(lb[0])
}

// TestCertsIntermediateCA: a root that allows one level, an intermediate
// under it, a client certificate with its chain; OpenSSL verifies it to the
// root. A root without room for an intermediate refuses to sign one.
func TestCertsIntermediateCA(t *testing.T) {
	needOpenSSL(t)
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	pkiRun(t, "init-ca", "--dir", p("root"), "--cn", "Corp Root", "--path-len", "1")
	out := pkiRun(t, "init-ca", "--dir", p("inter"), "--cn", "Corp Issuing", "--parent", p("root"))
	if !strings.Contains(out, "Issuer:     CN=Corp Root") || !strings.Contains(out, "path length 0") {
		t.Errorf("intermediate summary:\n%s", out)
	}
	pkiRun(t, "issue", "--ca", p("inter"), "--client", "--tenant", "corp", "--chain", "--out", p("client"))
	list, err := certs.ReadCertsFile(p("client.pem"))
	if err != nil || len(list) != 3 {
		t.Fatalf("client.pem holds %d certificates, want leaf, intermediate, root (%v)", len(list), err)
	}
	openssl(t, d, "verify", "-CAfile", "root/ca.pem", "-untrusted", "inter/ca.pem", "-purpose", "sslclient", "client.pem")

	pkiRun(t, "init-ca", "--dir", p("flat"), "--cn", "Flat Root")
	if _, err := pkiTry("init-ca", "--dir", p("sub"), "--cn", "Sub", "--parent", p("flat")); err == nil ||
		!strings.Contains(err.Error(), "path length") {
		t.Errorf("intermediate under a path-length-0 root: %v", err)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
