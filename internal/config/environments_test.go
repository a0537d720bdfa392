package config

import (
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

const envYAML = `
enforcement: {xdp: "off", nftables: false}
tenants:
  - id: acme
    client_ca: ${DIR}/acme-ca.pem
    identities: {uri_san: ["spiffe://acme/*"]}
    environments:
      - {name: production, identities: {uri_san: ["spiffe://acme/prod-*"]}}
      - {name: development, identities: {uri_san: ["spiffe://acme/dev-*"], ou: [acme-dev]}}
  - {id: globex, client_ca: ${DIR}/globex-ca.pem}
listeners:
  - name: web
    listen: ":443"
    protocol: https
    server_cert: ${DIR}/server.pem
    server_key: ${DIR}/server.key
    routes:
      - {tenant: acme, environment: production, backend: "http://192.0.2.5"}
      - {tenant: acme, environment: development, backend: "http://192.0.2.6"}
      - {tenant: globex, backend: "http://192.0.2.7"}
  - name: mainframe
    listen: ":992"
    protocol: tn3270
    server_cert: ${DIR}/server.pem
    server_key: ${DIR}/server.key
    routes:
      - {tenant: acme, environment: production, backend: "192.0.2.8:23"}
      - {tenant: acme, environment: development, backend: "192.0.2.9:23"}
`

func TestEnvironmentsGood(t *testing.T) {
	cfg, err := parse(t, envYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy()
	if got := p.Tenants[0].EnvironmentNames(); !slices.Equal(got, []string{"production", "development"}) {
		t.Fatalf("environments %v", got)
	}
	if got := p.Tenants[1].EnvironmentNames(); !slices.Equal(got, []string{policy.DefaultEnvironment}) {
		t.Fatalf("globex environments %v, want the implicit one", got)
	}
	web := p.Listeners[0].Routes
	if web[0].Env() != (policy.TenantEnv{Tenant: "acme", Environment: "production"}) ||
		web[2].Env() != (policy.TenantEnv{Tenant: "globex", Environment: policy.DefaultEnvironment}) {
		t.Fatalf("route environments %v %v", web[0].Env(), web[2].Env())
	}
}

// TestEnvironmentsRefused: every problem at its key path, at once.
func TestEnvironmentsRefused(t *testing.T) {
	for _, tc := range []struct {
		name, from, to, path, msg string
	}{
		{"duplicate name", "{name: development,", "{name: production,", "tenants[0].environments[1].name", `duplicate environment "production"`},
		{"bad name", "{name: development,", "{name: Dev_1,", "tenants[0].environments[1].name", "1 to 32 lowercase letters"},
		{"long name", "{name: development,", "{name: " + strings.Repeat("d", 33) + ",", "tenants[0].environments[1].name", "1 to 32"},
		{"no identity", `{name: development, identities: {uri_san: ["spiffe://acme/dev-*"], ou: [acme-dev]}}`, "{name: development}", "tenants[0].environments[1].identities", "at least one identity rule"},
		{"glob overlap", `uri_san: ["spiffe://acme/dev-*"], ou`, `uri_san: ["spiffe://acme/prod-db"], ou`, "tenants[0].environments[1].identities.uri_san", `overlaps environment "production"`},
		{"same ou", `uri_san: ["spiffe://acme/prod-*"]}}`, `uri_san: ["spiffe://acme/prod-*"], ou: [acme-dev]}}`, "tenants[0].environments[1].identities.ou", `"acme-dev" overlaps environment "production"`},
		{"route without", "{tenant: acme, environment: development, backend: \"http://192.0.2.6\"}", "{tenant: acme, backend: \"http://192.0.2.6\"}", "listeners[0].routes[1].environment", "required: tenant \"acme\" declares environments (production, development)"},
		{"route unknown", "{tenant: acme, environment: development, backend: \"192.0.2.9:23\"}", "{tenant: acme, environment: staging, backend: \"192.0.2.9:23\"}", "listeners[1].routes[1].environment", `unknown environment "staging" of tenant "acme"`},
		{"route env of tenant without", "{tenant: globex, backend:", "{tenant: globex, environment: production, backend:", "listeners[0].routes[2].environment", `tenant "globex" declares no environments`},
		{"two routes of one environment", "{tenant: acme, environment: development, backend: \"192.0.2.9:23\"}", "{tenant: acme, environment: production, backend: \"192.0.2.9:23\"}", "listeners[1].routes[1]", "overlaps route 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(envYAML, tc.from) {
				t.Fatalf("fixture lacks %q", tc.from)
			}
			_, err := parse(t, strings.Replace(envYAML, tc.from, tc.to, 1), nil)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.HasPrefix(line, tc.path+": ") && strings.Contains(line, tc.msg) {
					return
				}
			}
			t.Fatalf("no %s: %q in\n%v", tc.path, tc.msg, err)
		})
	}
}

// TestConnectorEnvironment: a gateway's connector entry proves one
// (tenant, environment); its trust names it so, and the rules of routes
// hold for it too.
func TestConnectorEnvironment(t *testing.T) {
	base := strings.Replace(gatewayYAML, "  - {id: acme, client_ca: ${DIR}/acme-ca.pem}\n",
		"  - id: acme\n    client_ca: ${DIR}/acme-ca.pem\n    environments:\n      - {name: production, identities: {ou: [prod]}}\n      - {name: development, identities: {ou: [dev]}}\n", 1)
	good := strings.Replace(base, "    - {tenant: acme, client_ca: ${DIR}/internal-ca.pem}\n",
		"    - {tenant: acme, environment: production, client_ca: ${DIR}/internal-ca.pem, identities: {ou: [conn-prod]}}\n"+
			"    - {tenant: acme, environment: development, client_ca: ${DIR}/internal-ca.pem, identities: {ou: [conn-dev]}}\n"+
			"    - {tenant: globex, client_ca: ${DIR}/globex-ca.pem}\n", 1)
	cfg, err := parse(t, good, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tn := range cfg.ConnectorTrust().Tenants {
		ids = append(ids, tn.ID)
	}
	if want := []string{"acme/production", "acme/development", "globex"}; !slices.Equal(ids, want) || !slices.Equal(cfg.Gateway.ConnectorKeys(), want) {
		t.Fatalf("connector trust %v, keys %v; want %v", ids, cfg.Gateway.ConnectorKeys(), want)
	}
	for _, tc := range []struct{ name, from, to, path, msg string }{
		{"without", "{tenant: acme, environment: production,", "{tenant: acme,", "gateway.connectors[0].environment", "required"},
		{"unknown", "{tenant: acme, environment: production,", "{tenant: acme, environment: staging,", "gateway.connectors[0].environment", `unknown environment "staging"`},
		{"twice", "{tenant: acme, environment: development,", "{tenant: acme, environment: production,", "gateway.connectors[1].tenant", `duplicate tenant "acme/production"`},
		{"tenant without", "{tenant: globex,", "{tenant: globex, environment: production,", "gateway.connectors[2].environment", "declares no environments"},
		{"shared root, no identities", ", identities: {ou: [conn-dev]}}", "}", "gateway.connectors[1].identities", "connectors of acme/development and acme/production (gateway.connectors[0]) share a root"},
		{"shared root, same identity", "identities: {ou: [conn-dev]}", "identities: {ou: [conn-prod]}", "gateway.connectors[1].identities.ou", `"conn-prod" overlaps the connectors of acme/production`},
	} {
		_, err := parse(t, strings.Replace(good, tc.from, tc.to, 1), nil)
		if err == nil || !slices.ContainsFunc(strings.Split(err.Error(), "\n"), func(l string) bool {
			return strings.HasPrefix(l, tc.path+": ") && strings.Contains(l, tc.msg)
		}) {
			t.Errorf("%s: want %s: %q, got %v", tc.name, tc.path, tc.msg, err)
		}
	}
}
