package certs

import (
	"crypto/x509"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// IdentityMatcher is a compiled identity list, the same rules tenants use
// (uri_san, dns_san, cn, ou, fingerprints, spki), for certificates that
// are not tenants' (the admin endpoint's).
type IdentityMatcher struct{ m *matcher }

// NewIdentityMatcher compiles ids. An empty list matches every certificate:
// callers that must not allow that refuse it before.
func NewIdentityMatcher(ids policy.Identities) (*IdentityMatcher, error) {
	m, err := compileIdentities(ids)
	if err != nil {
		return nil, err
	}
	return &IdentityMatcher{m: m}, nil
}

// Match reports whether cert is one of the identities.
func (im *IdentityMatcher) Match(cert *x509.Certificate) bool { return im.m.match(cert) }
