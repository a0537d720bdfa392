package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// TestRevokedAdminCertificate: an admin certificate the admin CA's CRL
// revokes is refused, in the handshake and on a connection opened before
// the CRL changed; the refusal is audited; other certificates keep
// working. The CRL file changing at runtime is enough; a stale CRL refuses
// every certificate of its CA (tls.crl_stale: fail).
func TestRevokedAdminCertificate(t *testing.T) {
	l := startAdminLab(t)
	acme := l.certs["acme-admin"]
	kept := l.client(acme) // its connection stays open across the CRL change
	if code, body, err := l.do(t, kept, "GET", "/status"); err != nil || code != 200 {
		t.Fatalf("acme-admin before its revocation: %d %v %s", code, err, body)
	}
	// Revoked in the CRL file, at runtime.
	l.adminCA.CRL(t, l.crl, time.Now().Add(time.Hour), acme)
	waitFor(t, "a new handshake of the revoked certificate to fail", func() bool {
		_, _, err := l.do(t, l.client(acme), "GET", "/status")
		return err != nil
	})
	code, body, err := l.do(t, kept, "POST", "/sessions/kill?scope=tenant:acme")
	if err != nil || code != 403 || !strings.Contains(body, "revoked") {
		t.Errorf("kill on a connection opened before the revocation: %d %v %s, want 403 naming the revocation", code, err, body)
	}
	l.cut.mu.Lock()
	if len(l.cut.killed) != 0 {
		t.Errorf("a revoked certificate killed sessions: %v", l.cut.killed)
	}
	l.cut.mu.Unlock()
	ops := l.client(l.certs["ops-admin"])
	if code, body, err := l.do(t, ops, "GET", "/status"); err != nil || code != 200 {
		t.Errorf("ops-admin, not revoked: %d %v %s", code, err, body)
	}
	audited := false
	for _, e := range l.audit(t) {
		if e["action"] == "handshake" && e["result"] == "refused" && e["subject"] == "CN=acme-admin" &&
			strings.Contains(e["reason"].(string), "revoked") {
			audited = true
		}
	}
	if !audited {
		t.Error("no audit line of the refused handshake of the revoked certificate")
	}

	// A CRL past its nextUpdate vouches for nothing: every certificate of
	// the CA is refused.
	l.adminCA.CRL(t, l.crl, time.Now().Add(-30*time.Second))
	waitFor(t, "the stale CRL to refuse ops-admin", func() bool {
		_, _, err := l.do(t, l.client(l.certs["ops-admin"]), "GET", "/status")
		return err != nil
	})
	// A fresh CRL without acme-admin lets both in again.
	l.adminCA.CRL(t, l.crl, time.Now().Add(time.Hour))
	waitFor(t, "the fresh CRL to admit acme-admin", func() bool {
		code, _, err := l.do(t, l.client(acme), "GET", "/status")
		return err == nil && code == 200
	})
}

// TestAdminCRLReload: a reload re-reads the admin CRL; a CRL that another
// CA (same name, other key) signed is refused by the reload and by
// gatehouse check (CheckAccess), and the CRL in force stays.
func TestAdminCRLReload(t *testing.T) {
	l := startAdminLab(t)
	path := filepath.Join(l.dir, "gatehouse.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	forger := certstest.NewCA(t, "admin ca")
	forged := forger.CRL(t, filepath.Join(l.dir, "forged.crl"), time.Now().Add(time.Hour))
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(b), l.crl, forged)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.d.Reload(); err == nil || !strings.Contains(err.Error(), "not signed by any CA of client_ca") {
		t.Errorf("reload with a forged admin CRL: %v", err)
	}
	cfg, err := config.Load(path, os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckAccess(cfg); err == nil || !strings.Contains(err.Error(), "crl") {
		t.Errorf("check with a forged admin CRL: %v", err)
	}
	if code, _, err := l.do(t, l.client(l.certs["ops-admin"]), "GET", "/status"); err != nil || code != 200 {
		t.Errorf("ops-admin after the refused reload: %d %v", code, err)
	}
	// The good configuration again, with a CRL revoking ops-admin written
	// to a new file: the reload reads it.
	revoking := l.adminCA.CRL(t, filepath.Join(l.dir, "revoking.crl"), time.Now().Add(time.Hour), l.certs["ops-admin"])
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(b), l.crl, revoking)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.d.Reload(); err != nil {
		t.Fatalf("reload with the revoking CRL: %v", err)
	}
	if _, _, err := l.do(t, l.client(l.certs["ops-admin"]), "GET", "/status"); err == nil {
		t.Error("ops-admin revoked by the reloaded CRL still completes a handshake")
	}
	if code, _, err := l.do(t, l.client(l.certs["acme-admin"]), "GET", "/status"); err != nil || code != 200 {
		t.Errorf("acme-admin after the reload: %d %v", code, err)
	}
}
