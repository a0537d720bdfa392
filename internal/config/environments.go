package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func (t Tenant) policyEnvironments() []policy.Environment {
	var out []policy.Environment
	for _, e := range t.Environments {
		out = append(out, policy.Environment{Name: e.Name, Identities: e.Identities.policy()})
	}
	return out
}

// validateEnvironments checks a tenant's environments: valid, unique
// names; at least one identity rule each (an environment without one
// would take every certificate of the tenant, and so overlap all the
// others); and no identity that two environments share or that one's
// pattern provably matches in another's list, since a certificate it
// names would match both and be refused at every handshake.
func validateEnvironments(c *checker, p string, t Tenant) {
	seen := map[string]string{}
	for i, e := range t.Environments {
		ep := fmt.Sprintf("%s.environments[%d]", p, i)
		switch {
		case !policy.EnvironmentNameRE.MatchString(e.Name):
			c.add(ep+".name", "%q must be 1 to 32 lowercase letters, digits or '-'", e.Name)
		case seen[e.Name] != "":
			c.add(ep+".name", "duplicate environment %q (also at %s)", e.Name, seen[e.Name])
		default:
			seen[e.Name] = ep
		}
		if e.Identities.empty() {
			c.add(ep+".identities", "at least one identity rule is required: without one the environment would take every certificate of tenant %q", t.ID)
			continue
		}
		validateIdentities(c, ep, e.Identities)
		for j, o := range t.Environments[:i] {
			if key, v, ok := overlap(o.Identities, e.Identities); ok {
				c.add(ep+".identities."+key, "%q overlaps environment %q (%s.environments[%d]): a certificate matching both would be refused; tell them apart", v, o.Name, p, j)
			}
		}
	}
}

// overlap finds an identity rule of b that a certificate matching it
// would provably also match in a: the same fingerprint, key, CN or OU, or
// a SAN pattern of one that matches the other's pattern taken literally.
func overlap(a, b Identities) (key, value string, ok bool) {
	exact := []struct {
		key  string
		a, b []string
		norm func(string) string
	}{
		{"fingerprints_sha256", a.FingerprintsSHA256, b.FingerprintsSHA256, normaliseHex},
		{"spki_sha256", a.SPKISHA256, b.SPKISHA256, normaliseHex},
		{"cn", a.CN, b.CN, nil},
		{"ou", a.OU, b.OU, nil},
	}
	for _, x := range exact {
		for _, v := range x.b {
			if slices.ContainsFunc(x.a, func(w string) bool {
				if x.norm != nil {
					return x.norm(w) == x.norm(v)
				}
				return w == v
			}) {
				return x.key, v, true
			}
		}
	}
	globs := []struct {
		key  string
		a, b []string
		sep  byte
	}{{"uri_san", a.URISAN, b.URISAN, '/'}, {"dns_san", a.DNSSAN, b.DNSSAN, '.'}}
	for _, g := range globs {
		for _, v := range g.b {
			for _, w := range g.a {
				lv, lw := v, w
				if g.key == "dns_san" {
					lv, lw = strings.ToLower(v), strings.ToLower(w)
				}
				if policy.Glob(lw, lv, g.sep) || policy.Glob(lv, lw, g.sep) {
					return g.key, v, true
				}
			}
		}
	}
	return "", "", false
}

// checkEnvironmentRef checks the environment a route or connector of tenant
// names, at path.
func (cfg *Config) checkEnvironmentRef(c *checker, path, tenant, env string) {
	i := slices.IndexFunc(cfg.Tenants, func(t Tenant) bool { return t.ID == tenant })
	if i < 0 {
		return // the tenant's own problem is reported
	}
	t := cfg.Tenants[i]
	names := make([]string, len(t.Environments))
	for k, e := range t.Environments {
		names[k] = e.Name
	}
	switch {
	case len(names) == 0 && env != "" && env != policy.DefaultEnvironment:
		c.add(path, "tenant %q declares no environments: leave environment out (or %q)", tenant, policy.DefaultEnvironment)
	case len(names) == 0:
	case env == "":
		c.add(path, "required: tenant %q declares environments (%s)", tenant, strings.Join(names, ", "))
	case !slices.Contains(names, env):
		c.add(path, "unknown environment %q of tenant %q (it has %s)", env, tenant, strings.Join(names, ", "))
	}
}

// poolKey is what the gateway's connector trust calls the connector's
// (tenant, environment), and keys its tunnels by: the tenant alone for
// the implicit environment, tenant/environment otherwise (the same as
// tunnel.Header's).
func (t ConnectorTrust) poolKey() string {
	if t.Environment == "" || t.Environment == policy.DefaultEnvironment {
		return t.Tenant
	}
	return t.Tenant + "/" + t.Environment
}

// ConnectorKeys lists the keys of gateway.connectors as the gateway's
// tunnels are bound to them.
func (g Gateway) ConnectorKeys() []string {
	var out []string
	for _, t := range g.Connectors {
		out = append(out, t.poolKey())
	}
	return out
}

// checkConnectorEnvironments refuses a connector entry (t, at p) that a
// connector certificate of an earlier entry of the same tenant, in another
// environment, could also match: the same client_ca's roots with no
// identities on either to tell them apart, or identities that provably
// overlap. Such a certificate would be refused at every tunnel handshake.
func checkConnectorEnvironments(c *checker, p string, t ConnectorTrust, before []ConnectorTrust) {
	for j, o := range before {
		if o.Tenant != t.Tenant || o.poolKey() == t.poolKey() || (o.ClientCA != t.ClientCA && !sharesCert(o.ClientCA, t.ClientCA)) {
			continue
		}
		if o.Identities.empty() || t.Identities.empty() {
			c.add(p+".identities", "connectors of %s and %s (gateway.connectors[%d]) share a root: give both identities (e.g. uri_san) to tell the environments apart, or issue them from CAs of their own", t.poolKey(), o.poolKey(), j)
			continue
		}
		if key, v, ok := overlap(o.Identities, t.Identities); ok {
			c.add(p+".identities."+key, "%q overlaps the connectors of %s (gateway.connectors[%d]), which share a root: a certificate matching both would be refused", v, o.poolKey(), j)
		}
	}
}
