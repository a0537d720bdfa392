package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckRefusesSharedRootMixedIntermediates: check refuses what run
// refuses: two tenants on one root, one listing its issuing CA and one
// listing none, which would take the first one's leaves.
func TestCheckRefusesSharedRootMixedIntermediates(t *testing.T) {
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	pkiRun(t, "init-ca", "--dir", p("root"), "--cn", "shared root CA", "--path-len", "1")
	pkiRun(t, "init-ca", "--dir", p("issuing-b"), "--cn", "b issuing CA", "--parent", p("root"))
	pkiRun(t, "init-ca", "--dir", p("server-ca"), "--cn", "gateway CA")
	pkiRun(t, "issue", "--ca", p("server-ca"), "--server", "--dns", "gw.example", "--out", p("server"))
	check := func(aIntermediates string) error {
		t.Helper()
		yaml := fmt.Sprintf(`state_dir: /var/lib/gatehouse
enforcement: {xdp: "off", nftables: false}
tenants:
  - {id: a, client_ca: %[1]s/root/ca.pem, %[2]s identities: {uri_san: ["spiffe://a/*"]}}
  - {id: b, client_ca: %[1]s/root/ca.pem, intermediates: %[1]s/issuing-b/ca.pem, identities: {uri_san: ["spiffe://b/*"]}}
listeners:
  - {name: web, listen: "127.0.0.1:8443", protocol: tcp, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key,
     routes: [{tenant: a, backend: "192.0.2.5:443"}, {tenant: b, backend: "192.0.2.6:443"}]}
`, d, aIntermediates)
		path := p("gatehouse.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := runCLI("check", "-c", path)
		return err
	}
	var ee exitError
	if err := check(""); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, `tenants "a" and "b" share the root`) {
		t.Fatalf("check with a lacking intermediates on b's root: want exit 1 naming both, got %v", err)
	}
	pkiRun(t, "init-ca", "--dir", p("issuing-a"), "--cn", "a issuing CA", "--parent", p("root"))
	if err := check("intermediates: " + p("issuing-a/ca.pem") + ","); err != nil {
		t.Fatalf("check with both listing their intermediates: %v", err)
	}
}

// TestCheckSummaryShowsTLS: the summary says what the tls: keys do.
func TestCheckSummaryShowsTLS(t *testing.T) {
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	pkiRun(t, "init-ca", "--dir", p("ca"), "--cn", "acme CA")
	pkiRun(t, "init-ca", "--dir", p("server-ca"), "--cn", "gateway CA")
	pkiRun(t, "issue", "--ca", p("server-ca"), "--server", "--dns", "gw.example", "--out", p("server"))
	for _, tc := range []struct {
		tls  string
		want []string
	}{
		{"", []string{"crl_stale        fail: a CRL past its nextUpdate refuses", "session_tickets  on, each listener's key replaced every 6h: a ticket resumes for at most 18h"}},
		{"tls: {crl_stale: warn, session_tickets: false}", []string{"crl_stale        warn: a CRL past its nextUpdate is logged once", "session_tickets  off: every handshake is a full one"}},
		{"tls: {ticket_rotation: 1h}", []string{"key replaced every 1h: a ticket resumes for at most 3h"}},
	} {
		yaml := fmt.Sprintf(`state_dir: /var/lib/gatehouse
enforcement: {xdp: "off", nftables: false}
tenants: [{id: acme, client_ca: %[1]s/ca/ca.pem}]
listeners:
  - {name: web, listen: "127.0.0.1:8443", protocol: tcp, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key,
     routes: [{tenant: acme, backend: "192.0.2.5:443"}]}
%[2]s
`, d, tc.tls)
		path := p("gatehouse.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		out, _, err := runCLI("check", "-c", path)
		if err != nil {
			t.Fatalf("check %q: %v", tc.tls, err)
		}
		_, tlsPart, ok := strings.Cut(out, "\nTLS\n")
		if !ok {
			t.Fatalf("check %q: no TLS section:\n%s", tc.tls, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(tlsPart, w) {
				t.Errorf("check %q: TLS section lacks %q:\n%s", tc.tls, w, tlsPart)
			}
		}
	}
}

// TestCheckRefusesBadBackendTLS: check loads every route's backend CA and
// client certificate as the proxies do when run applies the policy: a CA
// file without a certificate, or a client key of another certificate, is
// refused by check too, not only by run.
func TestCheckRefusesBadBackendTLS(t *testing.T) {
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	pkiRun(t, "init-ca", "--dir", p("ca"), "--cn", "test CA")
	pkiRun(t, "issue", "--ca", p("ca"), "--server", "--dns", "gw.example", "--out", p("server"))
	pkiRun(t, "issue", "--ca", p("ca"), "--client", "--tenant", "gw", "--uri", "spiffe://gw/backend", "--out", p("client"))
	pkiRun(t, "issue", "--ca", p("ca"), "--client", "--tenant", "gw", "--uri", "spiffe://gw/other", "--out", p("other"))
	if err := os.WriteFile(p("junk.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(route string) error {
		t.Helper()
		yaml := fmt.Sprintf(`state_dir: /var/lib/gatehouse
enforcement: {xdp: "off", nftables: false}
tenants:
  - {id: a, client_ca: %[1]s/ca/ca.pem, identities: {uri_san: ["spiffe://a/*"]}}
listeners:
  - {name: raw, listen: "127.0.0.1:8443", protocol: tcp, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key,
     routes: [{tenant: a, backend: "192.0.2.5:443", backend_tls: true, %[2]s}]}
`, d, route)
		path := p("gatehouse.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := runCLI("check", "-c", path)
		return err
	}
	if err := check("backend_ca: " + p("ca/ca.pem") + ", backend_cert: " + p("client.pem") + ", backend_key: " + p("client.key")); err != nil {
		t.Fatalf("check with good backend TLS: %v", err)
	}
	for name, tc := range map[string]struct{ route, want string }{
		"ca without a certificate": {"backend_ca: " + p("junk.pem"), "holds no PEM certificate"},
		"key of another cert":      {"backend_cert: " + p("client.pem") + ", backend_key: " + p("other.key"), "backend client certificate"},
	} {
		var ee exitError
		if err := check(tc.route); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, tc.want) || !strings.Contains(ee.msg, `listener "raw" route 0`) {
			t.Errorf("%s: want exit 1 naming the route and %q, got %v", name, tc.want, err)
		}
	}
}

// TestCheckTicketKeys: check reads tls.ticket_keys as run does: a file
// others may read, or with a short key, is refused with its reason and
// path; a good one is named in the TLS summary.
func TestCheckTicketKeys(t *testing.T) {
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	pkiRun(t, "init-ca", "--dir", p("ca"), "--cn", "acme CA")
	pkiRun(t, "init-ca", "--dir", p("server-ca"), "--cn", "gateway CA")
	pkiRun(t, "issue", "--ca", p("server-ca"), "--server", "--dns", "gw.example", "--out", p("server"))
	keys := p("ticket.keys")
	yaml := fmt.Sprintf(`state_dir: /var/lib/gatehouse
enforcement: {xdp: "off", nftables: false}
tls: {ticket_keys: %[2]s}
tenants: [{id: acme, client_ca: %[1]s/ca/ca.pem}]
listeners:
  - {name: web, listen: "127.0.0.1:8443", protocol: tcp, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key,
     routes: [{tenant: acme, backend: "192.0.2.5:443"}]}
`, d, keys)
	path := p("gatehouse.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	good := "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=\n" // 32 bytes
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"world readable", good, 0o644, "readable by other users"},
		{"short key", "c2hvcnQ=\n", 0o600, "bad ticket key: 5 bytes, want 32 or 48"},
		{"duplicate", good + good, 0o600, "ticket key given twice"},
	} {
		if err := os.WriteFile(keys, []byte(tc.content), tc.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(keys, tc.mode)
		_, _, err := runCLI("check", "-c", path)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, tc.want) || !strings.Contains(ee.msg, keys) {
			t.Errorf("%s: want exit 1 with %q and the path, got %v", tc.name, tc.want, err)
		}
	}
	if err := os.WriteFile(keys, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(keys, 0o600)
	out, _, err := runCLI("check", "-c", path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "session_tickets  on, keys from "+keys) {
		t.Errorf("summary does not name the ticket key file:\n%s", out)
	}
}
