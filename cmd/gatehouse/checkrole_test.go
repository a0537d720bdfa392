package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckRoles: check loads what the gateway and connector roles load
// at start (the connector trust list, the pinned gateway CA, the
// connector's key pair) and refuses what run would.
func TestCheckRoles(t *testing.T) {
	d := t.TempDir()
	p := func(name string) string { return filepath.Join(d, name) }
	pkiRun(t, "init-ca", "--dir", p("clients"), "--cn", "acme CA")
	pkiRun(t, "init-ca", "--dir", p("connectors"), "--cn", "acme connectors CA")
	pkiRun(t, "init-ca", "--dir", p("server-ca"), "--cn", "gateway CA")
	pkiRun(t, "issue", "--ca", p("server-ca"), "--server", "--dns", "gw.example", "--out", p("server"))
	pkiRun(t, "issue", "--ca", p("connectors"), "--client", "--cn", "acme-connector", "--out", p("conn"))
	pkiRun(t, "issue", "--ca", p("connectors"), "--client", "--cn", "other", "--out", p("other"))
	if err := os.WriteFile(p("garbage.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gateway := func(connCA string) string {
		return fmt.Sprintf(`state_dir: /var/lib/gatehouse
enforcement: {xdp: "off", nftables: false}
tenants: [{id: acme, client_ca: %[1]s/clients/ca.pem}]
listeners: [{name: web, listen: "127.0.0.1:8443", protocol: https, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key}]
gateway:
  listen: "127.0.0.1:9443"
  server_cert: %[1]s/server.pem
  server_key: %[1]s/server.key
  connectors: [{tenant: acme, client_ca: %[2]s}]
`, d, connCA)
	}
	connector := func(gwCA, key string) string {
		return fmt.Sprintf(`state_dir: /var/lib/gatehouse
enforcement: {xdp: "off", nftables: false}
tenants: [{id: acme, client_ca: %[1]s/clients/ca.pem}]
listeners:
  - {name: web, listen: "127.0.0.1:8443", protocol: https, server_cert: %[1]s/server.pem, server_key: %[1]s/server.key,
     routes: [{tenant: acme, backend: "https://192.0.2.5:443"}]}
connector:
  tenant: acme
  gateways: ["gw.example:443"]
  gateway_ca: %[2]s
  cert: %[1]s/conn.pem
  key: %[3]s
  allow: ["192.0.2.0/24:443"]
`, d, gwCA, key)
	}
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"gateway", gateway(p("connectors/ca.pem")), ""},
		{"gateway connector CA not a certificate", gateway(p("garbage.pem")), "gateway.connectors"},
		{"connector", connector(p("server-ca/ca.pem"), p("conn.key")), ""},
		{"connector gateway CA not a certificate", connector(p("garbage.pem"), p("conn.key")), "connector.gateway_ca"},
		{"connector key of another certificate", connector(p("server-ca/ca.pem"), p("other.key")), "connector.cert and connector.key"},
	} {
		path := p("gatehouse.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		out, _, err := runCLI("check", "-c", path)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			// The summary says what the role does.
			for _, w := range map[string][]string{
				"gateway": {"Gateway", "tunnels on 127.0.0.1:9443", "connectors of acme"},
				"connector": {"Connector", "of tenant acme", "4 tunnels to gw.example:443, directly", "may connect to", "192.0.2.0/24:443 (nothing else)",
					"serves the sessions the gateway's listener", "(loopback, for local tests only)"},
			}[tc.name] {
				if !strings.Contains(out, w) {
					t.Errorf("%s: the summary lacks %q:\n%s", tc.name, w, out)
				}
			}
			continue
		}
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, tc.want) {
			t.Errorf("%s: want exit 1 naming %q, got %v", tc.name, tc.want, err)
		}
	}
}
