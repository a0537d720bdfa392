package admin

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Grant is one role at one scope.
type Grant struct {
	Role  policy.Role  `json:"role"`
	Scope policy.Scope `json:"scope"`
}

func (g Grant) String() string { return g.Role.String() + " at " + g.Scope.String() }

// Action is one thing the admin API does.
type Action string

// The actions, and what each needs.
const (
	ActStatus      Action = "status"
	ActMetrics     Action = "metrics"
	ActCerts       Action = "certificates"
	ActAccessLog   Action = "access_log"
	ActFeedAccept  Action = "feed_accept"
	ActFeedRefresh Action = "feed_refresh"
	ActDrain       Action = "sessions_drain"
	ActKill        Action = "sessions_kill"
	ActReload      Action = "reload"
	ActTeardown    Action = "teardown"
	// ActHandshake is not asked for: it audits an admin certificate the
	// HTTPS endpoint refused in the handshake (revoked, CRL stale).
	ActHandshake Action = "handshake"
)

// need is the role each action takes, and whether only a global grant
// gives it (feeds, reload and teardown are global things).
// A read (filtered) is allowed with the role at any scope: its answer is
// cut down to what the principal's grants see.
var need = map[Action]struct {
	role     policy.Role
	global   bool
	filtered bool
}{
	ActStatus:      {role: policy.RoleViewer, filtered: true},
	ActMetrics:     {role: policy.RoleViewer, filtered: true},
	ActCerts:       {role: policy.RoleViewer, filtered: true},
	ActAccessLog:   {role: policy.RoleViewer, filtered: true},
	ActFeedAccept:  {role: policy.RolePublisher, global: true},
	ActFeedRefresh: {role: policy.RolePublisher, global: true},
	ActDrain:       {role: policy.RolePublisher},
	ActKill:        {role: policy.RoleAdmin},
	ActReload:      {role: policy.RoleAdmin, global: true},
	ActTeardown:    {role: policy.RoleAdmin, global: true},
}

// Principal is who asks: a unix peer or an admin certificate, with every
// grant that names it.
type Principal struct {
	Transport string `json:"transport"` // unix or https
	// A unix peer.
	UID  *uint32 `json:"uid,omitempty"`
	User string  `json:"user,omitempty"`
	// An admin certificate.
	Subject     string `json:"subject,omitempty"`
	Fingerprint string `json:"fingerprint_sha256,omitempty"`

	Grants []Grant `json:"-"`
	// Revoked says why the certificate is refused whatever its grants
	// (revoked, its CRL stale, no CRL from its issuer); nil otherwise.
	Revoked error `json:"-"`
}

// Name says who the principal is, for refusals and logs.
func (p Principal) Name() string {
	if p.UID != nil {
		if p.User != "" {
			return fmt.Sprintf("uid %d (%s)", *p.UID, p.User)
		}
		return fmt.Sprintf("uid %d", *p.UID)
	}
	return fmt.Sprintf("certificate %q (sha256 %s)", p.Subject, p.Fingerprint)
}

// ErrRefused is wrapped by every *Refused.
var ErrRefused = errors.New("refused")

// Refused is an action a principal may not take, and why.
type Refused struct {
	Action Action
	Need   policy.Role
	Scope  policy.Scope // what the action was asked for
	Who    string
	Have   []Grant
}

func (r *Refused) Error() string {
	where := "a scope covering " + r.Scope.String()
	switch {
	case need[r.Action].global:
		where = "global scope"
	case need[r.Action].filtered:
		where = "any scope"
	}
	have := "no grant"
	if len(r.Have) > 0 {
		var hs []string
		for _, g := range r.Have {
			hs = append(hs, g.String())
		}
		have = strings.Join(hs, ", ")
	}
	return fmt.Sprintf("refused: %s on %s needs role %s at %s; %s has %s", r.Action, r.Scope, r.Need, where, r.Who, have)
}

func (r *Refused) Unwrap() error { return ErrRefused }

// Authorize returns the grant that lets p take action at target, or a
// *Refused. An action only global grants give is asked at the global
// scope; a read is allowed at any scope (its answer is filtered).
func (p Principal) Authorize(action Action, target policy.Scope) (Grant, error) {
	n, ok := need[action]
	if !ok {
		return Grant{}, fmt.Errorf("unknown action %q", action)
	}
	if p.Revoked != nil {
		return Grant{}, fmt.Errorf("%w: %v", ErrRefused, p.Revoked)
	}
	if n.global {
		target = policy.Global
	}
	best, found := Grant{}, false
	for _, g := range p.Grants {
		if g.Role >= n.role && (n.filtered || g.Scope.Covers(target)) && (!found || g.Role > best.Role || g.Scope.Covers(best.Scope)) {
			best, found = g, true
		}
	}
	if !found {
		return Grant{}, &Refused{Action: action, Need: n.role, Scope: target, Who: p.Name(), Have: slices.Clone(p.Grants)}
	}
	return best, nil
}

// Sees reports whether p may see what belongs to tenant and environment
// ("" for the tenant as a whole: only a grant of the whole tenant, or a
// global one, sees that). A tenant "" is something global: only global
// grants see it.
func (p Principal) Sees(tenant, env string) bool {
	for _, g := range p.Grants {
		if g.Role < policy.RoleViewer {
			continue
		}
		switch {
		case g.Scope.IsGlobal():
			return true
		case tenant == "" || g.Scope.Tenant != tenant:
		case g.Scope.Environment == "" || g.Scope.Environment == env:
			return true
		}
	}
	return false
}

// SeesTenant reports whether p sees anything of tenant: a grant of the
// tenant or one of its environments, or a global one.
func (p Principal) SeesTenant(tenant string) bool {
	for _, g := range p.Grants {
		if g.Role >= policy.RoleViewer && (g.Scope.IsGlobal() || g.Scope.Tenant == tenant) {
			return true
		}
	}
	return false
}

// Global reports whether p has a global grant (sees everything).
func (p Principal) Global() bool { return p.Sees("", "") }

// Strongest is p's strongest grant, for the audit log of an action it was
// refused.
func (p Principal) Strongest() (Grant, bool) {
	var best Grant
	for _, g := range p.Grants {
		if g.Role > best.Role || (g.Role == best.Role && g.Scope.IsGlobal()) {
			best = g
		}
	}
	return best, best.Role != policy.RoleNone
}

// Rules are the compiled grants of the access section.
type Rules struct {
	users  map[uint32][]Grant
	groups map[uint32][]Grant
	certs  []certRule
	cas    *x509.CertPool
	self   uint32
	crls   crlFiles // the CRL files read, to notice when one changes
	// StaleOK accepts certificates whose CRL is past its nextUpdate
	// (tls.crl_stale: warn); by default they are refused.
	StaleOK bool
}

type certRule struct {
	roots *x509.CertPool
	crl   *certs.CRLSet // nil: crl none
	match *certs.IdentityMatcher
	grant Grant
}

// Compile resolves the access section's names (an unknown unix user or
// group is an error) and reads the admin CAs. Root and the daemon's own
// user (self) are global admins whatever the section says.
func Compile(a config.Access, self uint32) (*Rules, error) {
	r := &Rules{users: map[uint32][]Grant{}, groups: map[uint32][]Grant{}, self: self, crls: crlFiles{}}
	var errs []error
	for i, g := range a.Grants {
		role, err := policy.ParseRole(g.Role)
		if err != nil {
			errs = append(errs, fmt.Errorf("access.grants[%d].role: %w", i, err))
			continue
		}
		scope, err := policy.ParseScope(g.Scope)
		if err != nil {
			errs = append(errs, fmt.Errorf("access.grants[%d].scope: %w", i, err))
			continue
		}
		gr := Grant{Role: role, Scope: scope}
		for _, name := range g.Users {
			u, err := user.Lookup(name)
			if err != nil {
				errs = append(errs, fmt.Errorf("access.grants[%d]: unix user %q: %w", i, name, err))
				continue
			}
			uid, _ := strconv.ParseUint(u.Uid, 10, 32)
			r.users[uint32(uid)] = append(r.users[uint32(uid)], gr)
		}
		for _, name := range g.Groups {
			grp, err := user.LookupGroup(name)
			if err != nil {
				errs = append(errs, fmt.Errorf("access.grants[%d]: unix group %q: %w", i, name, err))
				continue
			}
			gid, _ := strconv.ParseUint(grp.Gid, 10, 32)
			r.groups[uint32(gid)] = append(r.groups[uint32(gid)], gr)
		}
		for j, c := range g.Certificates {
			if c.Identities.Policy().Empty() {
				errs = append(errs, fmt.Errorf("access.grants[%d].certificates[%d]: no identity rule", i, j))
				continue
			}
			pem, err := os.ReadFile(c.ClientCA)
			if err != nil {
				errs = append(errs, fmt.Errorf("access.grants[%d].certificates[%d].client_ca: %w", i, j, err))
				continue
			}
			pool := x509.NewCertPool()
			if r.cas == nil {
				r.cas = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) || !r.cas.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("access.grants[%d].certificates[%d].client_ca: no certificate in %s", i, j, c.ClientCA))
				continue
			}
			m, err := certs.NewIdentityMatcher(c.Identities.Policy())
			if err != nil {
				errs = append(errs, fmt.Errorf("access.grants[%d].certificates[%d].identities: %w", i, j, err))
				continue
			}
			crl, err := r.loadCRL(c, pem)
			if err != nil {
				errs = append(errs, fmt.Errorf("access.grants[%d].certificates[%d].crl: %w", i, j, err))
				continue
			}
			r.certs = append(r.certs, certRule{roots: pool, crl: crl, match: m, grant: gr})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

var globalAdmin = Grant{Role: policy.RoleAdmin, Scope: policy.Global}

// Unix is the principal of a unix peer: uid, its primary gid as the
// kernel reports it (SO_PEERCRED), and the groups the user database gives
// the uid.
func (r *Rules) Unix(uid, gid uint32) Principal {
	p := Principal{Transport: "unix", UID: &uid}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err == nil {
		p.User = u.Username
	}
	if uid == 0 || uid == r.self {
		p.Grants = []Grant{globalAdmin}
		return p
	}
	p.Grants = append(p.Grants, r.users[uid]...)
	gids := map[uint32]bool{gid: true}
	if err == nil {
		if ids, err := u.GroupIds(); err == nil {
			for _, s := range ids {
				if g, err := strconv.ParseUint(s, 10, 32); err == nil {
					gids[uint32(g)] = true
				}
			}
		}
	}
	for g := range gids {
		p.Grants = append(p.Grants, r.groups[g]...)
	}
	return p
}

// Cert is the principal of the certificates a client presented (the leaf
// first, then intermediates): every certificate grant whose CA issued the
// leaf, valid now, and whose identities it matches. No grant: a principal
// that every action refuses.
func (r *Rules) Cert(peer []*x509.Certificate) Principal {
	if len(peer) == 0 {
		return Principal{Transport: "https", Subject: "(no certificate)"}
	}
	leaf := peer[0]
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	p := Principal{Transport: "https", Subject: leaf.Subject.String(), Fingerprint: certs.FingerprintSHA256(leaf)}
	now := time.Now()
	for _, c := range r.certs {
		opts := x509.VerifyOptions{Roots: c.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now}
		chains, err := leaf.Verify(opts)
		if err != nil {
			continue
		}
		// A certificate the CRL of a CA that issued it revokes is refused
		// whole, whatever other grants would name it.
		if c.crl != nil {
			for _, ch := range chains {
				if err := c.crl.Check(ch, now, r.StaleOK); err != nil {
					return Principal{Transport: p.Transport, Subject: p.Subject, Fingerprint: p.Fingerprint, Revoked: err}
				}
			}
		}
		if c.match.Match(leaf) {
			p.Grants = append(p.Grants, c.grant)
		}
	}
	return p
}

// ClientCAs is every admin CA, for the HTTPS endpoint's handshake; nil
// when no grant names certificates.
func (r *Rules) ClientCAs() *x509.CertPool { return r.cas }
