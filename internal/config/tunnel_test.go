package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const gatewayYAML = `
interface: veth-dmz
static_ranges: [203.0.113.0/24]
tenants:
  - {id: acme, client_ca: ${DIR}/acme-ca.pem}
  - {id: globex, client_ca: ${DIR}/globex-ca.pem}
listeners:
  - {name: web, listen: ":443", protocol: https, server_cert: ${DIR}/server.pem, server_key: ${DIR}/server.key}
gateway:
  listen: ":8443"
  server_cert: ${DIR}/server.pem
  server_key: ${DIR}/server.key
  connectors:
    - {tenant: acme, client_ca: ${DIR}/internal-ca.pem}
`

const connectorYAML = `
enforcement: {xdp: "off", nftables: false}
tenants:
  - {id: acme, client_ca: ${DIR}/acme-ca.pem}
listeners:
  - name: web
    listen: "127.0.0.1:8443"
    protocol: https
    server_cert: ${DIR}/server.pem
    server_key: ${DIR}/server.key
    routes: [{tenant: acme, backend: "https://192.0.2.5:8443"}]
connector:
  tenant: acme
  gateways: ["gw1.example:443", "gw2.example:443"]
  gateway_ca: ${DIR}/internal-ca.pem
  cert: ${DIR}/server.pem
  key: ${DIR}/server.key
  allow: ["192.0.2.0/24:8443"]
`

func TestRoles(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml string
		role Role
	}{
		"appliance": {goodYAML, RoleAppliance},
		"gateway":   {gatewayYAML, RoleGateway},
		"connector": {connectorYAML, RoleConnector},
	} {
		cfg, err := parse(t, tc.yaml, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := cfg.Role(); got != tc.role {
			t.Errorf("%s: role %s, want %s", name, got, tc.role)
		}
	}
	cfg, err := parse(t, connectorYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := cfg.Connector
	if k.Tunnels != 4 || k.Keepalive.Interval != 2*time.Second || k.Keepalive.Timeout != 3*time.Second {
		t.Errorf("connector defaults: tunnels %d, keepalive %+v; want 4, 2s/3s", k.Tunnels, k.Keepalive)
	}
	if al := k.AllowList(); len(al) != 1 || al[0].String() != "192.0.2.0/24:8443" {
		t.Errorf("allow list %v", al)
	}
	cfg, err = parse(t, gatewayYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g := cfg.Gateway; g.StreamsPerTunnel != 512 || g.StreamsPerTenant != 2000 {
		t.Errorf("gateway defaults: %+v", g)
	}
}

// TestRoleProblems: what the roles refuse, each with its key path, as
// check and run both see it (they share Load).
func TestRoleProblems(t *testing.T) {
	cases := []struct {
		name, base, from, to string
		want                 []string
	}{
		{"both roles", gatewayYAML, "gateway:", "connector: {gateways: [\"gw.example:443\"]}\ngateway:",
			[]string{"gateway.listen: set together with connector.gateways: one process plays one role"}},
		{"gateway listener with routes", gatewayYAML, "server_key: ${DIR}/server.key}", "server_key: ${DIR}/server.key, routes: [{tenant: acme, backend: \"http://192.0.2.6\"}]}",
			[]string{"listeners[0].routes: a gateway routes nothing itself"}},
		{"gateway starttls", gatewayYAML, "protocol: https,", "protocol: tn3270, starttls: true,",
			[]string{"listeners[0].starttls: a gateway takes implicit TLS only"}},
		{"gateway port clash", gatewayYAML, `listen: ":8443"`, `listen: ":443"`, []string{`gateway.listen: :443 overlaps listeners[0] (:443)`}},
		{"gateway port under a listener's wildcard", gatewayYAML, `listen: ":8443"`, `listen: "192.0.2.1:443"`, []string{`gateway.listen: 192.0.2.1:443 overlaps listeners[0] (:443)`}},
		{"gateway port same address", strings.Replace(gatewayYAML, `listen: ":8443"`, `listen: "192.0.2.1:443"`, 1) + "enforcement: {xdp: \"off\", nftables: false}\n", `listen: ":443", protocol`, `listen: "192.0.2.1:443", protocol`,
			[]string{`gateway.listen: 192.0.2.1:443 overlaps listeners[0] (192.0.2.1:443)`}},
		{"gateway port v6 wildcard", gatewayYAML + "enforcement: {xdp: \"off\", nftables: false}\n", `listen: ":443", protocol`, `listen: "[2001:db8::1]:8443", protocol`,
			[]string{`gateway.listen: :8443 overlaps listeners[0] ([2001:db8::1]:8443)`}},
		{"gateway port kernel layers", strings.Replace(gatewayYAML, `listen: ":8443"`, `listen: "198.51.100.1:8443"`, 1), `listen: ":443", protocol`, `listen: "192.0.2.1:8443", protocol`,
			[]string{"gateway.listen: port 8443 is listeners[0]'s port (on another address): the kernel layers admit by port"}},
		// The same port on two distinct addresses, kernel layers off: fine.
		{"gateway port another address", strings.Replace(gatewayYAML, `listen: ":8443"`, `listen: "198.51.100.1:443"`, 1) + "enforcement: {xdp: \"off\", nftables: false}\n",
			`listen: ":443", protocol`, `listen: "192.0.2.1:443", protocol`, nil},
		{"gateway port v4 wildcard and v6 address", strings.Replace(gatewayYAML, `listen: ":8443"`, `listen: "0.0.0.0:443"`, 1) + "enforcement: {xdp: \"off\", nftables: false}\n",
			`listen: ":443", protocol`, `listen: "[2001:db8::1]:443", protocol`, nil},
		{"gateway no connectors", gatewayYAML, "connectors:\n    - {tenant: acme, client_ca: ${DIR}/internal-ca.pem}", "connectors: []",
			[]string{"gateway.connectors: at least one is required"}},
		{"gateway unknown tenant", gatewayYAML, "{tenant: acme, client_ca", "{tenant: initech, client_ca", []string{`gateway.connectors[0].tenant: unknown tenant "initech"`}},
		{"gateway duplicate tenant", gatewayYAML, "    - {tenant: acme, client_ca: ${DIR}/internal-ca.pem}", "    - {tenant: acme, client_ca: ${DIR}/internal-ca.pem}\n    - {tenant: acme, client_ca: ${DIR}/acme-ca.pem}",
			[]string{`gateway.connectors[1].tenant: duplicate tenant "acme" (also at gateway.connectors[0])`}},
		{"gateway missing ca", gatewayYAML, "client_ca: ${DIR}/internal-ca.pem", "client_ca: ${DIR}/nope.pem", []string{"gateway.connectors[0].client_ca: cannot read"}},
		{"gateway no cert", gatewayYAML, "  server_cert: ${DIR}/server.pem\n  server_key", "  server_key", []string{"gateway.server_cert: required"}},
		{"gateway limits", gatewayYAML, "  connectors:", "  streams_per_tunnel: 0\n  streams_per_tenant: -1\n  connectors:",
			[]string{"gateway.streams_per_tunnel: must be at least 1", "gateway.streams_per_tenant: must be at least 1"}},
		{"gateway strict without management", gatewayYAML, "interface: veth-dmz", "interface: veth-dmz\nenforcement: {mode: strict}",
			[]string{"gateway.listen: strict mode drops every new inbound connection", "port 8443 in enforcement.management"}},
		{"gateway strict with management", gatewayYAML, "interface: veth-dmz", "interface: veth-dmz\nenforcement: {mode: strict, management: [{cidr: 198.51.100.0/24, ports: [8443]}]}", nil},
		{"gateway keepalive", gatewayYAML, "  connectors:", "  keepalive: {interval: 10ms, timeout: 2m}\n  connectors:",
			[]string{"gateway.keepalive.interval: must be 500ms..1m", "gateway.keepalive.timeout: must be 500ms..1m"}},
		{"connector tenant", connectorYAML, "tenant: acme\n  gateways", "tenant: globex\n  gateways", []string{`connector.tenant: unknown tenant "globex"`}},
		{"connector no tenant", connectorYAML, "tenant: acme\n  gateways", "gateways", []string{"connector.tenant: required"}},
		{"connector bad gateway", connectorYAML, `"gw2.example:443"`, `"gw2.example"`, []string{`connector.gateways[1]: "gw2.example" is not host:port`}},
		{"connector public listener", connectorYAML, `"127.0.0.1:8443"`, `":8443"`, []string{"listeners[0].listen: a connector's listeners bind loopback only"}},
		{"connector another tenant's route", connectorYAML, "  - {id: acme, client_ca: ${DIR}/acme-ca.pem}", "  - {id: acme, client_ca: ${DIR}/acme-ca.pem}\n  - {id: globex, client_ca: ${DIR}/globex-ca.pem}",
			nil}, // a second tenant alone is fine …
		{"connector route of another tenant", connectorYAML, "routes: [{tenant: acme,", "routes: [{tenant: globex,",
			[]string{`listeners[0].routes[0].tenant: unknown tenant "globex"`}},
		{"connector empty allow", connectorYAML, `allow: ["192.0.2.0/24:8443"]`, "allow: []", []string{"connector.allow: empty: the connector would refuse every backend"}},
		{"connector bad allow", connectorYAML, `allow: ["192.0.2.0/24:8443"]`, `allow: ["192.0.2.5/24:8443", "192.0.2.0/24"]`,
			[]string{"connector.allow[0]: \"192.0.2.5/24:8443\": 192.0.2.5/24 has host bits set", "connector.allow[1]: \"192.0.2.0/24\" is not CIDR:port"}},
		{"connector tunnels", connectorYAML, "  allow:", "  tunnels: 0\n  allow:", []string{"connector.tunnels: must be 1..64, got 0"}},
		{"connector kernel layers", connectorYAML, `enforcement: {xdp: "off", nftables: false}`, `interface: eth0`,
			[]string{"enforcement: a connector has no public listener for the kernel layers to police"}},
		{"connector proxy auth without address", connectorYAML, "  allow:", "  proxy: {username: u}\n  allow:", []string{"connector.proxy.address: required with username or password_file"}},
		{"connector proxy password without user", connectorYAML, "  allow:", "  proxy: {address: \"proxy.example:3128\", password_file: ${DIR}/server.key}\n  allow:",
			[]string{"connector.proxy.username: required with password_file"}},
		{"connector proxy missing password file", connectorYAML, "  allow:", "  proxy: {address: \"proxy.example:3128\", username: u, password_file: ${DIR}/nope}\n  allow:",
			[]string{"connector.proxy.password_file: cannot read"}},
		{"connector starttls", connectorYAML, "protocol: https", "protocol: tn3270\n    starttls: true", []string{"listeners[0].starttls: a connector's sessions arrive down the tunnel"}},
		{"connector missing gateway ca", connectorYAML, "gateway_ca: ${DIR}/internal-ca.pem", "gateway_ca: \"\"", []string{"connector.gateway_ca: required"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(tc.base, tc.from) {
				t.Fatalf("case edits %q, which the base does not contain", tc.from)
			}
			_, err := parse(t, strings.Replace(tc.base, tc.from, tc.to, 1), nil)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestConnectorCAApartFromTenants: a gateway.connectors entry on a
// tenant's own root, without identities to tell connectors from clients,
// is refused: a tenant's client certificate could open a tunnel.
func TestConnectorCAApartFromTenants(t *testing.T) {
	dir := fixture(t)
	pemCert := "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"
	for _, f := range []string{"acme-ca.pem", "internal-ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(pemCert), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := parseIn(dir, gatewayYAML, nil)
	if err == nil || !strings.Contains(err.Error(), "gateway.connectors[0].client_ca: shares a root with tenants[0].client_ca") {
		t.Fatalf("shared root without identities: %v", err)
	}
	narrowed := strings.Replace(gatewayYAML, "{tenant: acme, client_ca: ${DIR}/internal-ca.pem}",
		`{tenant: acme, client_ca: ${DIR}/internal-ca.pem, identities: {uri_san: ["spiffe://acme/connector"]}}`, 1)
	// The connectors narrowed, the tenant not: a connector's certificate
	// would still call a listener as acme.
	if _, err := parseIn(dir, narrowed, nil); err == nil {
		t.Fatal("shared root narrowed on the connectors' side only: accepted")
	}
	both := strings.Replace(narrowed, "{id: acme, client_ca: ${DIR}/acme-ca.pem}",
		`{id: acme, client_ca: ${DIR}/acme-ca.pem, identities: {uri_san: ["spiffe://acme/cloud"]}}`, 1)
	if _, err := parseIn(dir, both, nil); err != nil {
		t.Fatalf("shared root narrowed on both sides: %v", err)
	}
}

func TestAllowListWarnings(t *testing.T) {
	yaml := strings.Replace(connectorYAML, `routes: [{tenant: acme, backend: "https://192.0.2.5:8443"}]`,
		`routes: [{tenant: acme, backend: "https://192.0.2.5:8443"}, {tenant: acme, path: /x, backend: "https://198.51.100.7"}, {tenant: acme, path: /y, backend: "https://inside.example:8443"}]`, 1)
	cfg, err := parse(t, yaml, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := cfg.AllowListWarnings()
	if len(got) != 1 || !strings.Contains(got[0], "listeners[0].routes[1]: backend 198.51.100.7:443 is outside connector.allow") {
		t.Fatalf("warnings %q, want one for routes[1] only", got)
	}
}
