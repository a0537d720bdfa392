package certs

import (
	"crypto/x509"
	"fmt"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// envState is one compiled environment of a tenant.
type envState struct {
	name  string
	match *matcher
}

// compileEnvironments compiles a tenant's environments. An environment
// without any identity would match every certificate of the tenant, and
// two of the same name could not be told apart: both are refused.
func compileEnvironments(envs []policy.Environment) ([]envState, error) {
	var out []envState
	seen := map[string]bool{}
	for _, e := range envs {
		switch {
		case !policy.EnvironmentNameRE.MatchString(e.Name):
			return nil, fmt.Errorf("environment %q: %w", e.Name, ErrEnvironmentName)
		case seen[e.Name]:
			return nil, fmt.Errorf("environment %q: %w", e.Name, ErrDuplicate)
		case e.Identities.Empty():
			return nil, fmt.Errorf("environment %q: %w", e.Name, ErrEnvironmentCatchAll)
		}
		seen[e.Name] = true
		m, err := compileIdentities(e.Identities)
		if err != nil {
			return nil, fmt.Errorf("environment %q identities: %w", e.Name, err)
		}
		out = append(out, envState{name: e.Name, match: m})
	}
	return out, nil
}

// environment returns the one environment of t that leaf matches: the
// implicit policy.DefaultEnvironment when t declares none. Matching none,
// or more than one, refuses the certificate.
func (t *tenantState) environment(leaf *x509.Certificate) (string, *AuthError) {
	if len(t.envs) == 0 {
		return policy.DefaultEnvironment, nil
	}
	var names []string
	for _, e := range t.envs {
		if e.match.match(leaf) {
			names = append(names, e.name)
		}
	}
	switch len(names) {
	case 1:
		return names[0], nil
	case 0:
		all := make([]string, len(t.envs))
		for i, e := range t.envs {
			all[i] = e.name
		}
		return "", &AuthError{Result: ResultNoEnvironment, Tenant: t.id,
			Detail: "matches none of the tenant's environments (" + strings.Join(all, ", ") + "): " + leaf.Subject.String()}
	}
	return "", &AuthError{Result: ResultAmbiguousEnvironment, Tenant: t.id,
		Detail: "certificate matches environments " + strings.Join(names, ", ")}
}

// Env returns the (tenant, environment) pair the peer proved.
func (p Peer) Env() policy.TenantEnv { return policy.MakeTenantEnv(p.Tenant, p.Environment) }
