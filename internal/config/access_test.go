package config

import (
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

const accessYAML = `
interface: veth-dmz
static_ranges: [203.0.113.0/24]
tenants:
  - {id: acme, client_ca: ${DIR}/acme-ca.pem}
  - id: globex
    client_ca: ${DIR}/globex-ca.pem
    environments:
      - {name: prod, identities: {cn: [globex-prod]}}
      - {name: dev, identities: {cn: [globex-dev]}}
listeners:
  - {name: web, listen: ":443", protocol: https, server_cert: ${DIR}/server.pem, server_key: ${DIR}/server.key,
     routes: [{tenant: acme, backend: "https://192.0.2.5:8443"}, {tenant: globex, environment: prod, host: globex.example, backend: "https://192.0.2.6:8443"}]}
access:
  https: {listen: "127.0.0.1:9443", server_cert: ${DIR}/server.pem, server_key: ${DIR}/server.key}
  grants:
    - {role: viewer, scope: "tenant:acme", users: [nobody]}
    - {role: admin, scope: global, users: [root]}
    - {role: publisher, scope: "tenant:globex/prod", groups: [nogroup]}
    - role: admin
      scope: global
      certificates: [{client_ca: ${DIR}/internal-ca.pem, crl: none, identities: {cn: [ops]}}]
`

func TestAccessConfig(t *testing.T) {
	cfg, err := parse(t, accessYAML, nil)
	if err != nil {
		t.Fatalf("good access config refused: %v", err)
	}
	if !cfg.Access.UnixGrantsNonRoot() {
		t.Error("grants to nobody and nogroup: the socket must open to others")
	}
	sc, _ := policy.ParseScope(cfg.Access.Grants[2].Scope)
	if sc != (policy.Scope{Tenant: "globex", Environment: "prod"}) {
		t.Errorf("scope = %+v", sc)
	}
	root := strings.Replace(accessYAML, "users: [nobody]", "users: [root]", 1)
	root = strings.Replace(root, "groups: [nogroup]", "users: [root]", 1)
	if cfg, err := parse(t, root, nil); err != nil || cfg.Access.UnixGrantsNonRoot() {
		t.Errorf("grants to root only: %v; the socket must stay private", err)
	}
}

// TestAccessProblems: every problem of the access section is named by
// its key path, and gatehouse check (which runs this validation) refuses
// what run would.
func TestAccessProblems(t *testing.T) {
	cases := []struct {
		name, from, to string
		want           []string
	}{
		{"unknown role", "role: viewer", "role: operator", []string{`access.grants[0].role: unknown role: "operator"`}},
		{"bad scope", `scope: "tenant:acme"`, `scope: "acme"`, []string{`access.grants[0].scope: bad scope: "acme"`}},
		{"unknown tenant", `scope: "tenant:acme"`, `scope: "tenant:initech"`, []string{`access.grants[0].scope: tenant "initech" is not in tenants`}},
		{"unknown environment", `scope: "tenant:globex/prod"`, `scope: "tenant:globex/staging"`, []string{`access.grants[2].scope: tenant "globex" has no environment "staging"`}},
		{"named environment of a tenant without", `scope: "tenant:acme"`, `scope: "tenant:acme/prod"`, []string{`access.grants[0].scope: tenant "acme" has no environment "prod"`}},
		{"unknown user", "users: [nobody]", "users: [no-such-user-gatehouse]", []string{`access.grants[0].users[0]: unix user "no-such-user-gatehouse"`}},
		{"unknown group", "groups: [nogroup]", "groups: [no-such-group-gatehouse]", []string{`access.grants[2].groups[0]: unix group "no-such-group-gatehouse"`}},
		{"no principal", "users: [nobody]", "users: []", []string{"access.grants[0]: names no principal"}},
		{"cert without identities", "identities: {cn: [ops]}", "identities: {}", []string{"access.grants[3].certificates[0].identities: at least one identity rule is required"}},
		{"cert missing ca", "client_ca: ${DIR}/internal-ca.pem", "client_ca: ${DIR}/nope.pem", []string{"access.grants[3].certificates[0].client_ca: cannot read"}},
		{"bad fingerprint", "identities: {cn: [ops]}", "identities: {fingerprints_sha256: [abc]}", []string{"access.grants[3].certificates[0].identities.fingerprints_sha256[0]"}},
		{"certs without endpoint", `listen: "127.0.0.1:9443"`, `listen: ""`, []string{"access.https.listen: certificates are granted but the HTTPS admin endpoint is off"}},
		{"endpoint port clash", `listen: "127.0.0.1:9443"`, `listen: ":443"`, []string{"access.https.listen: port 443 is already used by listeners[0]"}},
		{"endpoint without cert", "server_cert: ${DIR}/server.pem, server_key: ${DIR}/server.key}\n  grants", "server_key: ${DIR}/server.key}\n  grants",
			[]string{"access.https.server_cert: required"}},
		{"strict without management", "interface: veth-dmz", "interface: veth-dmz\nenforcement: {mode: strict}\n", nil}, // loopback: fine
		{"public endpoint in listeners mode", `listen: "127.0.0.1:9443"`, `listen: "198.51.100.2:9443"`, nil},
		{"cert without crl", "crl: none, ", "", []string{"access.grants[3].certificates[0].crl: required: the CRL file of client_ca, or none"}},
		{"cert crl missing", "crl: none", "crl: ${DIR}/nope.crl", []string{"access.grants[3].certificates[0].crl: cannot read"}},
		{"audit log relative", "access:\n", "access:\n  audit_log: audit.log\n", []string{"access.audit_log: must be an absolute path"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(accessYAML, tc.from) {
				t.Fatalf("case edits %q, which the base does not contain", tc.from)
			}
			_, err := parse(t, strings.Replace(accessYAML, tc.from, tc.to, 1), nil)
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
	// Strict mode: a non-loopback endpoint must be reachable from management.
	strict := strings.Replace(accessYAML, "interface: veth-dmz\n", "interface: veth-dmz\nenforcement: {mode: strict}\n", 1)
	strict = strings.Replace(strict, `listen: "127.0.0.1:9443"`, `listen: "198.51.100.2:9443"`, 1)
	if _, err := parse(t, strict, nil); err == nil || !strings.Contains(err.Error(), "access.https.listen: strict mode drops every new inbound connection") {
		t.Errorf("strict mode, endpoint port outside management: %v", err)
	}
	managed := strings.Replace(strict, "{mode: strict}", "{mode: strict, management: [{cidr: 198.51.100.0/28, ports: [9443]}]}", 1)
	if _, err := parse(t, managed, nil); err != nil {
		t.Errorf("strict mode, endpoint port in management: %v", err)
	}
}
