package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// authorize verifies the chain against the union of the tenants' roots,
// checks the CRL of every issuer in it, and maps the certificate to exactly
// one tenant.
func (m *Manager) authorize(st *state, chain []*x509.Certificate) (Peer, *AuthError) {
	if len(chain) == 0 {
		return Peer{}, &AuthError{Result: ResultNoCert, Detail: "no client certificate"}
	}
	leaf := chain[0]
	now := m.now()
	if now.Before(leaf.NotBefore) {
		return Peer{}, &AuthError{Result: ResultNotYetValid, Detail: "valid from " + leaf.NotBefore.UTC().Format(time.RFC3339)}
	}
	if now.After(leaf.NotAfter) {
		return Peer{}, &AuthError{Result: ResultExpired, Detail: "expired " + leaf.NotAfter.UTC().Format(time.RFC3339)}
	}
	chains, aerr := st.verifyChain(chain, now)
	if aerr != nil {
		return Peer{}, aerr
	}
	// Each verified chain ends at a root of client_ca (the only anchors);
	// it is a tenant's when that tenant owns it. owned[i] lists the chains
	// of tenant i, cands the tenants with any.
	owned := map[int][][]*x509.Certificate{}
	var cands []int
	for _, ch := range chains {
		for _, i := range st.byCA[sha256.Sum256(ch[len(ch)-1].Raw)] {
			if !st.tenants[i].owns(ch) {
				continue
			}
			if owned[i] == nil {
				cands = append(cands, i)
			}
			owned[i] = append(owned[i], ch)
		}
	}
	if len(cands) == 0 {
		return Peer{}, &AuthError{Result: ResultUnknownCA,
			Detail: "chains to no tenant: its issuer is none of the intermediates the tenants of its root list (issuer " + leaf.Issuer.String() + ")"}
	}
	// Revocation: every certificate of a tenant's chain but the root is
	// checked against the tenant's CRL from the CA that issued it there.
	// A tenant with CRLs needs one from every issuer of its chain:
	// uncovered[i] names the first issuer of tenant i's chains without one.
	uncovered := map[int]string{}
	for _, i := range cands {
		t := st.tenants[i]
		if len(t.crls) == 0 {
			continue
		}
		for _, ch := range owned[i] {
			for k, c := range ch[:len(ch)-1] {
				crl := t.crlFor(ch[k+1])
				if crl == nil || !crl.covers(c) {
					if _, ok := uncovered[i]; !ok {
						uncovered[i] = fmt.Sprintf("no CRL in %s from %s, the issuer of %s", t.crlFile, ch[k+1].Subject, c.Subject)
						if crl != nil {
							uncovered[i] = fmt.Sprintf("the CRL in %s from %s is that of the distribution point %v, which %s does not name", t.crlFile, ch[k+1].Subject, crl.dps, c.Subject)
						}
					}
					continue
				}
				if crl.revoked[c.SerialNumber.String()] {
					return Peer{}, &AuthError{Result: ResultRevoked, Tenant: t.id,
						Detail: fmt.Sprintf("serial %x on CRL %s (%s)", c.SerialNumber, t.crlFile, c.Subject)}
				}
				if !crl.stale(now) {
					continue
				}
				if st.policy.TLS.CRLStale != policy.CRLStaleWarn {
					return Peer{}, &AuthError{Result: ResultCRLStale, Tenant: t.id,
						Detail: "CRL " + t.crlFile + " of " + crl.list.Issuer.String() + " past nextUpdate " + crl.list.NextUpdate.UTC().Format(time.RFC3339)}
				}
				if _, warned := st.warnedStale.LoadOrStore(t.id, struct{}{}); !warned {
					m.logger.Warn("CRL past nextUpdate, accepting certificates anyway (tls.crl_stale: warn)",
						"tenant", t.id, "file", t.crlFile, "issuer", crl.list.Issuer.String(), "next_update", crl.list.NextUpdate)
				}
			}
		}
	}
	var match []int
	for _, i := range cands {
		if st.tenants[i].match.match(leaf) {
			match = append(match, i)
		}
	}
	switch len(match) {
	case 0:
		return Peer{}, &AuthError{Result: ResultNoTenant, Detail: "matches no tenant's identities (" + leaf.Subject.String() + ")"}
	case 1:
	default:
		ids := make([]string, len(match))
		for k, i := range match {
			ids[k] = st.tenants[i].id
		}
		return Peer{}, &AuthError{Result: ResultAmbiguousTenant, Detail: "certificate matches tenants " + strings.Join(ids, ", ")}
	}
	// A tenant with CRLs has revocation checked for every certificate of
	// the chains it admits: when one of its issuers has no CRL there, that
	// certificate could be revoked without gatehouse knowing, so the client
	// is refused (as openssl verify -crl_check_all does) rather than let
	// through.
	if why, ok := uncovered[match[0]]; ok {
		return Peer{}, &AuthError{Result: ResultNoCRL, Tenant: st.tenants[match[0]].id, Detail: why}
	}
	t := st.tenants[match[0]]
	env, aerr := t.environment(leaf)
	if aerr != nil {
		return Peer{}, aerr
	}
	return Peer{
		Tenant:            t.id,
		Environment:       env,
		FingerprintSHA256: FingerprintSHA256(leaf),
		Subject:           leaf.Subject.String(),
		NotAfter:          leaf.NotAfter,
	}, nil
}

// verifyChain verifies the presented chain against the union of the
// tenants' CAs. Successful results are cached per generation, keyed by the
// presented certificates, so that Identify after a handshake, resumptions
// and the re-validation of live connections do not repeat the signature
// checks; a hit still re-checks every certificate's validity period.
func (st *state) verifyChain(chain []*x509.Certificate, now time.Time) ([][]*x509.Certificate, *AuthError) {
	h := sha256.New()
	for _, c := range chain {
		h.Write(c.Raw)
	}
	var key [32]byte
	h.Sum(key[:0])
	if v, ok := st.verified.Load(key); ok {
		e := v.(*verifiedEntry)
		if !now.Before(e.from) && !now.After(e.until) {
			return e.chains, nil
		}
	}
	// What the client sent, and the configured intermediates, so that a
	// client sending its leaf alone is verified up to the root too.
	inter := st.inters.Clone()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         st.pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, classifyVerify(err)
	}
	if st.verifiedN.Add(1) <= maxVerifiedCache {
		e := &verifiedEntry{chains: chains, from: chains[0][0].NotBefore, until: chains[0][0].NotAfter}
		for _, ch := range chains {
			for _, c := range ch {
				if c.NotBefore.After(e.from) {
					e.from = c.NotBefore
				}
				if c.NotAfter.Before(e.until) {
					e.until = c.NotAfter
				}
			}
		}
		st.verified.Store(key, e)
	}
	return chains, nil
}

// maxVerifiedCache bounds the per-generation cache of verified chains; past
// it, chains are verified every time.
const maxVerifiedCache = 10000

type verifiedEntry struct {
	chains      [][]*x509.Certificate
	from, until time.Time // the window in which every certificate of every chain is valid
}

func classifyVerify(err error) *AuthError {
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &ua):
		return &AuthError{Result: ResultUnknownCA, Detail: err.Error()}
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		// The leaf was checked before; this is an intermediate or CA.
		return &AuthError{Result: ResultExpired, Detail: err.Error()}
	}
	return &AuthError{Result: ResultOther, Detail: err.Error()}
}
