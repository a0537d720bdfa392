package policy

import (
	"cmp"
	"regexp"
)

// DefaultEnvironment is the one implicit environment of a tenant that
// declares none: its routes and its certificates are all in it.
const DefaultEnvironment = "default"

// EnvironmentNameRE is what an environment's name must look like.
var EnvironmentNameRE = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)

// Environment is one isolated work area of a tenant (production,
// development …). A client certificate of the tenant belongs to the one
// environment whose identities it matches.
type Environment struct {
	Name       string
	Identities Identities
}

// TenantEnv is the (tenant, environment) pair a client certificate
// proves and a route serves; routing compares nothing else.
type TenantEnv struct {
	Tenant      string
	Environment string // never empty once made by Env or MakeTenantEnv
}

// MakeTenantEnv returns the pair, with an empty environment read as the
// implicit DefaultEnvironment.
func MakeTenantEnv(tenant, env string) TenantEnv {
	return TenantEnv{Tenant: tenant, Environment: cmp.Or(env, DefaultEnvironment)}
}

// String writes the pair as tenant/environment.
func (te TenantEnv) String() string {
	return te.Tenant + "/" + cmp.Or(te.Environment, DefaultEnvironment)
}

// Env returns the (tenant, environment) pair the route serves.
func (r Route) Env() TenantEnv { return MakeTenantEnv(r.Tenant, r.Environment) }

// EnvironmentNames lists the tenant's environments by name, or the one
// implicit DefaultEnvironment.
func (t Tenant) EnvironmentNames() []string {
	if len(t.Environments) == 0 {
		return []string{DefaultEnvironment}
	}
	names := make([]string, len(t.Environments))
	for i, e := range t.Environments {
		names[i] = e.Name
	}
	return names
}
