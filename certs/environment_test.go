package certs

import (
	"crypto/tls"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// envPKI is acme with two environments told apart by URI SAN, and its
// certificates: one of each, one both claim (its CN is development's too)
// and one of the tenant in neither.
type envPKI struct {
	*pki
	prod, dev, both, neither *certstest.Leaf
}

func newEnvPKI(t *testing.T) *envPKI {
	k := &envPKI{pki: newPKI(t)}
	k.prod = k.acmeCA.Client(t, "acme prod", "spiffe://acme/prod-app")
	k.dev = k.acmeCA.Client(t, "acme dev", "spiffe://acme/dev-app")
	k.both = k.acmeCA.Client(t, "shared", "spiffe://acme/prod-shared")
	k.neither = k.acmeCA.Client(t, "acme qa", "spiffe://acme/qa-app")
	k.policy.Tenants[0].Environments = []policy.Environment{
		{Name: "production", Identities: policy.Identities{URISAN: []string{"spiffe://acme/prod-*"}}},
		{Name: "development", Identities: policy.Identities{URISAN: []string{"spiffe://acme/dev-*"}, CommonName: []string{"shared"}}},
	}
	return k
}

// handshakeDone runs a real handshake on the web listener and returns
// what the manager proves of the client after it, and the server's state.
func handshakeDone(t *testing.T, m *Manager, client *tls.Config) (Peer, tls.ConnectionState, error) {
	t.Helper()
	srv, err := m.TLSConfig("web")
	if err != nil {
		t.Fatal(err)
	}
	r := handshake(t, srv, client, false)
	src := netip.MustParseAddrPort("192.0.2.1:40000")
	if r.serverErr != nil {
		m.HandshakeFailed("web", src, r.server, r.serverErr)
		return Peer{}, r.server, r.serverErr
	}
	p, err := m.HandshakeDone("web", src, r.server)
	return p, r.server, err
}

// TestEnvironmentOfCertificate: a certificate of a tenant with
// environments proves exactly one; matching two or none fails the
// handshake, and the refusal names the tenant and the environments.
func TestEnvironmentOfCertificate(t *testing.T) {
	k := newEnvPKI(t)
	m := newManager(t, Config{StateDir: t.TempDir()}, k.policy)
	for _, tc := range []struct {
		name   string
		cert   *certstest.Leaf
		env    string
		result Result
		reason string
	}{
		{"production", k.prod, "production", ResultOK, ""},
		{"development", k.dev, "development", ResultOK, ""},
		{"both", k.both, "", ResultAmbiguousEnvironment, "matches environments production, development"},
		{"neither", k.neither, "", ResultNoEnvironment, "matches none of the tenant's environments (production, development)"},
		{"tenant rule first", k.acmeOther, "", ResultNoTenant, "matches no tenant's identities"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, err := handshakeDone(t, m, k.clientConfig(tc.cert))
			if ResultOf(err) != tc.result {
				t.Fatalf("handshake: %v, want %s", err, tc.result)
			}
			if err == nil {
				if p.Tenant != "acme" || p.Environment != tc.env {
					t.Fatalf("peer %s/%s, want acme/%s", p.Tenant, p.Environment, tc.env)
				}
				return
			}
			var last Refusal
			for _, r := range m.Refusals() {
				if r.FingerprintSHA256 == FingerprintSHA256(tc.cert.Cert) {
					last = r
				}
			}
			if last.Result != tc.result || !strings.Contains(last.Reason, tc.reason) {
				t.Fatalf("refusal %+v, want %s saying %q", last, tc.result, tc.reason)
			}
			if tc.result != ResultNoTenant && last.Tenant != "acme" {
				t.Fatalf("refusal names tenant %q, want acme", last.Tenant)
			}
		})
	}
	// A tenant without environments has the implicit one.
	p, _, err := handshakeDone(t, m, k.clientConfig(k.globex))
	if err != nil || p.Environment != policy.DefaultEnvironment {
		t.Fatalf("globex: %v, environment %q, want %q", err, p.Environment, policy.DefaultEnvironment)
	}
}

// TestEnvironmentResumption: a resumed session is judged again, so a
// reload that moves the certificate to another environment gives the
// resumed session that environment, and one that leaves it in none
// refuses the resumption.
func TestEnvironmentResumption(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			k := newEnvPKI(t)
			m := newManager(t, Config{StateDir: t.TempDir()}, k.policy)
			cc := k.clientConfig(k.prod)
			cc.MaxVersion = v
			cc.ClientSessionCache = tls.NewLRUClientSessionCache(8)
			if p, _, err := handshakeDone(t, m, cc); err != nil || p.Environment != "production" {
				t.Fatalf("first handshake: %v, environment %q", err, p.Environment)
			}
			moved := clonePolicy(k.policy)
			moved.Tenants[0].Environments = []policy.Environment{
				{Name: "production", Identities: policy.Identities{URISAN: []string{"spiffe://acme/live-*"}}},
				{Name: "development", Identities: policy.Identities{URISAN: []string{"spiffe://acme/dev-*", "spiffe://acme/prod-*"}}},
			}
			if err := m.Apply(moved); err != nil {
				t.Fatal(err)
			}
			p, cs, err := handshakeDone(t, m, cc)
			if err != nil || !cs.DidResume || p.Environment != "development" {
				t.Fatalf("resumed after the move: %v, resumed %v, environment %q; want development", err, cs.DidResume, p.Environment)
			}
			gone := clonePolicy(k.policy)
			gone.Tenants[0].Environments = gone.Tenants[0].Environments[1:]
			if err := m.Apply(gone); err != nil {
				t.Fatal(err)
			}
			if _, _, err := handshakeDone(t, m, cc); ResultOf(err) != ResultNoEnvironment {
				t.Fatalf("resumption in no environment: %v, want no_environment", err)
			}
		})
	}
}

// TestDescribeEnvironments: check says which environment takes which
// certificates.
func TestDescribeEnvironments(t *testing.T) {
	k := newEnvPKI(t)
	got := DescribeTenant(k.policy.Tenants[0])
	want := "each in exactly one environment of: production (URI SAN spiffe://acme/prod-*), development (URI SAN spiffe://acme/dev-*; CN shared)"
	if !strings.Contains(got, want) {
		t.Fatalf("%q lacks %q", got, want)
	}
}

// TestEnvironmentApplyRefusals: what a handshake could never decide is
// refused at load, and the previous generation stays.
func TestEnvironmentApplyRefusals(t *testing.T) {
	k := newEnvPKI(t)
	m := newManager(t, Config{StateDir: t.TempDir()}, k.policy)
	for _, tc := range []struct {
		name string
		envs []policy.Environment
		want error
	}{
		{"catch-all", []policy.Environment{{Name: "production"}}, ErrEnvironmentCatchAll},
		{"duplicate", []policy.Environment{{Name: "p", Identities: policy.Identities{CommonName: []string{"a"}}}, {Name: "p", Identities: policy.Identities{CommonName: []string{"b"}}}}, ErrDuplicate},
		{"bad name", []policy.Environment{{Name: "Prod", Identities: policy.Identities{CommonName: []string{"a"}}}}, ErrEnvironmentName},
	} {
		p := clonePolicy(k.policy)
		p.Tenants[0].Environments = tc.envs
		if err := m.Apply(p); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if p, _, err := handshakeDone(t, m, k.clientConfig(k.prod)); err != nil || p.Environment != "production" {
		t.Fatalf("after refused applies: %v, environment %q", err, p.Environment)
	}
}
