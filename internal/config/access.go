package config

import (
	"fmt"
	"os/user"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Access says who may use the admin API (the admin socket and the
// optional HTTPS admin endpoint) and with which role where. Root is
// always a global admin, and so is the daemon's own user.
type Access struct {
	// AuditLog is the append-only JSON audit log of every admin request;
	// empty means audit.log in state_dir.
	AuditLog string       `mapstructure:"audit_log"`
	HTTPS    AccessHTTPS  `mapstructure:"https"`
	Grants   []AccessRule `mapstructure:"grants"`
}

// AccessHTTPS is the admin endpoint for the management network: mutual TLS
// only, the client certificate names the principal.
type AccessHTTPS struct {
	Listen     string `mapstructure:"listen"` // empty: off
	ServerCert string `mapstructure:"server_cert"`
	ServerKey  string `mapstructure:"server_key"`
}

// AccessRule grants one role at one scope to unix users, unix groups and
// admin certificates.
type AccessRule struct {
	Role         string             `mapstructure:"role"`
	Scope        string             `mapstructure:"scope"`
	Users        []string           `mapstructure:"users"`
	Groups       []string           `mapstructure:"groups"`
	Certificates []AdminCertificate `mapstructure:"certificates"`
}

// AdminCertificate names admin certificates: issued by ClientCA and
// matching one of Identities (the tenants' rules). Identities may not be
// empty: a CA alone would make every certificate it ever signed an admin.
// CRL is required: the CRL file (PEM or DER) of every CA in ClientCA, or
// CRLNone to say, explicitly, that no certificate of it can be revoked.
type AdminCertificate struct {
	ClientCA   string     `mapstructure:"client_ca"`
	CRL        string     `mapstructure:"crl"`
	Identities Identities `mapstructure:"identities"`
}

// CRLNone is the crl of an admin CA that publishes no CRL.
const CRLNone = "none"

// UnixGrantsNonRoot reports whether a grant names a unix user other than
// root, or any group: then the admin socket must be reachable by others
// (every request is still authorised by its peer's credentials).
func (a Access) UnixGrantsNonRoot() bool {
	for _, g := range a.Grants {
		if len(g.Groups) > 0 {
			return true
		}
		for _, u := range g.Users {
			if u != "root" {
				return true
			}
		}
	}
	return false
}

// EnvironmentKnown reports whether tenant has an environment named env:
// one of its tenants[].environments, or the implicit "default" of a
// tenant that names none.
func (cfg *Config) EnvironmentKnown(tenant, env string) bool {
	for _, t := range cfg.Tenants {
		if t.ID != tenant {
			continue
		}
		if len(t.Environments) == 0 {
			return env == policy.DefaultEnvironment
		}
		for _, e := range t.Environments {
			if e.Name == env {
				return true
			}
		}
	}
	return false
}

func (cfg *Config) validateAccess(c *checker, tenants map[string]bool) {
	a := cfg.Access
	if a.AuditLog != "" && !strings.HasPrefix(a.AuditLog, "/") {
		c.add("access.audit_log", "must be an absolute path or empty (audit.log in state_dir), got %q", a.AuditLog)
	}
	certGrants := false
	for i, g := range a.Grants {
		p := fmt.Sprintf("access.grants[%d]", i)
		if _, err := policy.ParseRole(g.Role); err != nil {
			c.add(p+".role", "%v", err)
		}
		if sc, err := policy.ParseScope(g.Scope); err != nil {
			c.add(p+".scope", "%v", err)
		} else if !sc.IsGlobal() {
			switch {
			case !tenants[sc.Tenant]:
				c.add(p+".scope", "tenant %q is not in tenants", sc.Tenant)
			case sc.Environment != "" && !cfg.EnvironmentKnown(sc.Tenant, sc.Environment):
				c.add(p+".scope", "tenant %q has no environment %q", sc.Tenant, sc.Environment)
			}
		}
		if len(g.Users)+len(g.Groups)+len(g.Certificates) == 0 {
			c.add(p, "names no principal: list users, groups or certificates")
		}
		for j, u := range g.Users {
			if _, err := user.Lookup(u); err != nil {
				c.add(fmt.Sprintf("%s.users[%d]", p, j), "unix user %q: %v", u, err)
			}
		}
		for j, name := range g.Groups {
			if _, err := user.LookupGroup(name); err != nil {
				c.add(fmt.Sprintf("%s.groups[%d]", p, j), "unix group %q: %v", name, err)
			}
		}
		for j, ac := range g.Certificates {
			cp := fmt.Sprintf("%s.certificates[%d]", p, j)
			certGrants = true
			c.file(cp+".client_ca", ac.ClientCA, true)
			switch ac.CRL {
			case "":
				c.add(cp+".crl", "required: the CRL file of client_ca, or none (then no certificate of it can ever be revoked)")
			case CRLNone:
			default:
				c.file(cp+".crl", ac.CRL, true)
			}
			if ac.Identities.empty() {
				c.add(cp+".identities", "at least one identity rule is required: a CA alone would make every certificate it signed an admin")
			}
			validateIdentities(c, cp, ac.Identities)
		}
	}
	h := a.HTTPS
	if h.Listen == "" {
		if certGrants {
			c.add("access.https.listen", "certificates are granted but the HTTPS admin endpoint is off: set access.https.listen")
		}
		return
	}
	ap, err := parseListen(h.Listen)
	if err != nil {
		c.add("access.https.listen", "%v", err)
	} else {
		for i, l := range cfg.Listeners {
			if lp, err := parseListen(l.Listen); err == nil && lp.Port() == ap.Port() {
				c.add("access.https.listen", "port %d is already used by listeners[%d]", ap.Port(), i)
			}
		}
		if cfg.Enforcement.Mode == string(policy.ModeStrict) && !ap.Addr().IsLoopback() && !cfg.managementPort(ap.Port()) {
			c.add("access.https.listen", "strict mode drops every new inbound connection but the listeners' and management's: list the management ranges with port %d in enforcement.management", ap.Port())
		}
	}
	c.file("access.https.server_cert", h.ServerCert, true)
	c.file("access.https.server_key", h.ServerKey, true)
	if !certGrants {
		c.add("access.https", "no grant names certificates: nobody could use the HTTPS admin endpoint")
	}
}

// Policy is the identity list as the certificate matcher takes it.
func (id Identities) Policy() policy.Identities { return id.policy() }
