package certs

import (
	"crypto/x509"
	"fmt"
	"time"
)

// CRLSet is the revocation state of a set of CAs that are trust anchors
// themselves (the admin CAs of access.grants): one complete CRL from each,
// checked as a tenant's are (signature by the CA, complete scope, critical
// extensions).
type CRLSet struct {
	file string
	crls []*crlState
}

// ParseCertificatesPEM returns every CERTIFICATE block of a PEM bundle.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) { return parseCertsPEM(data) }

// NewCRLSet reads the CRLs in data (file names them in errors): each must
// be signed by one of cas, be that CA's complete CRL (not a delta, not
// limited to some certificates, reasons or one distribution point), and no
// CA may have two. Every CA in cas must have one.
func NewCRLSet(file string, data []byte, cas []*x509.Certificate) (*CRLSet, error) {
	lists, err := ParseCRLs(data)
	if err != nil {
		return nil, fmt.Errorf("crl %s: %w", file, err)
	}
	s := &CRLSet{file: file}
	for n, crl := range lists {
		var signer *x509.Certificate
		for _, ca := range cas {
			if string(ca.RawSubject) == string(crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
				signer = ca
				break
			}
		}
		if signer == nil {
			return nil, fmt.Errorf("crl %s (#%d, issuer %s): not signed by any CA of client_ca: %w", file, n+1, crl.Issuer, ErrCRLSignature)
		}
		if s.crlFor(signer) != nil {
			return nil, fmt.Errorf("crl %s: two CRLs from %s: %w", file, crl.Issuer, ErrDuplicate)
		}
		dps, err := crlScope(crl)
		if err == nil && len(dps) > 0 {
			err = fmt.Errorf("the CRL of the distribution point %v only: %w", dps, ErrCRLScope)
		}
		if err != nil {
			return nil, fmt.Errorf("crl %s (#%d, issuer %s): %w", file, n+1, crl.Issuer, err)
		}
		cs := &crlState{list: crl, signer: signer, revoked: make(map[string]bool, len(crl.RevokedCertificateEntries))}
		for _, e := range crl.RevokedCertificateEntries {
			cs.revoked[e.SerialNumber.String()] = true
		}
		s.crls = append(s.crls, cs)
	}
	for _, ca := range cas {
		if s.crlFor(ca) == nil {
			return nil, fmt.Errorf("crl %s: no CRL from %s, a CA of client_ca: each needs its CRL in the file", file, ca.Subject)
		}
	}
	return s, nil
}

func (s *CRLSet) crlFor(issuer *x509.Certificate) *crlState {
	for _, c := range s.crls {
		if c.issuedBy(issuer) {
			return c
		}
	}
	return nil
}

// Check judges a verified chain (leaf first, a CA of the set last): every
// certificate but the anchor must be covered by a CRL of the set from its
// issuer and not be on it, and that CRL must not be past its nextUpdate
// unless staleOK. Refusals are *AuthError (revoked, crl_stale, no_crl).
func (s *CRLSet) Check(chain []*x509.Certificate, now time.Time, staleOK bool) error {
	for k, c := range chain[:len(chain)-1] {
		crl := s.crlFor(chain[k+1])
		if crl == nil {
			return &AuthError{Result: ResultNoCRL, Detail: fmt.Sprintf("no CRL in %s from %s, the issuer of %s", s.file, chain[k+1].Subject, c.Subject)}
		}
		if crl.revoked[c.SerialNumber.String()] {
			return &AuthError{Result: ResultRevoked, Detail: fmt.Sprintf("serial %x on CRL %s (%s)", c.SerialNumber, s.file, c.Subject)}
		}
		if crl.stale(now) && !staleOK {
			return &AuthError{Result: ResultCRLStale,
				Detail: "CRL " + s.file + " of " + crl.list.Issuer.String() + " past nextUpdate " + crl.list.NextUpdate.UTC().Format(time.RFC3339)}
		}
	}
	return nil
}

// Stale reports whether a CRL of the set is past its nextUpdate.
func (s *CRLSet) Stale(now time.Time) bool {
	for _, c := range s.crls {
		if c.stale(now) {
			return true
		}
	}
	return false
}
