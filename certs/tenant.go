package certs

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func loadTenant(ld *loader, t policy.Tenant) (*tenantState, error) {
	ts := &tenantState{id: t.ID, crlFile: t.CRL}
	if t.ClientCA == "" {
		return nil, ErrNoCA
	}
	roots, err := loadCAs(ld, t.ClientCA, "client CA")
	if err != nil {
		return nil, err
	}
	for _, ca := range roots {
		if !selfSigned(ca) {
			return nil, fmt.Errorf("client CA %s: %q (issued by %q): %w", t.ClientCA, ca.Subject.String(), ca.Issuer.String(), ErrNotRoot)
		}
	}
	ts.roots = roots
	if t.Intermediates != "" {
		if ts.inters, err = loadIntermediates(ld, t.Intermediates, roots); err != nil {
			return nil, err
		}
	}
	if ts.match, err = compileIdentities(t.Identities); err != nil {
		return nil, fmt.Errorf("identities: %w", err)
	}
	if ts.envs, err = compileEnvironments(t.Environments); err != nil {
		return nil, err
	}
	if t.CRL == "" {
		return ts, nil
	}
	data, err := ld.read(t.CRL)
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	lists, err := ParseCRLs(data)
	if err != nil {
		return nil, fmt.Errorf("crl %s: %w", t.CRL, err)
	}
	signers := append(append([]*x509.Certificate{}, roots...), ts.inters...)
	for n, crl := range lists {
		var signer *x509.Certificate
		for _, ca := range signers {
			if bytes.Equal(ca.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ca) == nil {
				signer = ca
				break
			}
		}
		if signer == nil {
			return nil, fmt.Errorf("crl %s (#%d, issuer %s): %w", t.CRL, n+1, crl.Issuer, ErrCRLSignature)
		}
		if ts.crlFor(signer) != nil {
			return nil, fmt.Errorf("crl %s: two CRLs from %s: %w", t.CRL, crl.Issuer, ErrDuplicate)
		}
		dps, err := crlScope(crl)
		if err != nil {
			return nil, fmt.Errorf("crl %s (#%d, issuer %s): %w", t.CRL, n+1, crl.Issuer, err)
		}
		cs := &crlState{list: crl, signer: signer, dps: dps, revoked: make(map[string]bool, len(crl.RevokedCertificateEntries))}
		for _, e := range crl.RevokedCertificateEntries {
			cs.revoked[e.SerialNumber.String()] = true
		}
		ts.crls = append(ts.crls, cs)
	}
	return ts, nil
}

// loadCAs reads a PEM bundle of CA certificates; what names the key for
// errors.
func loadCAs(ld *loader, file, what string) ([]*x509.Certificate, error) {
	data, err := ld.read(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	cas, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, file, err)
	}
	for _, ca := range cas {
		if !ca.IsCA {
			return nil, fmt.Errorf("%s %s: %q: %w", what, file, ca.Subject.String(), ErrNotCA)
		}
	}
	return cas, nil
}

// loadIntermediates reads the tenant's intermediate CAs and proves that
// each chains to one of its roots. A copy of one of those roots in the file
// is skipped (the bundle `gatehouse certs init-ca --parent` writes ends
// with its issuers); any other self-signed certificate is refused, since it
// would look like a trust anchor while being none.
func loadIntermediates(ld *loader, file string, roots []*x509.Certificate) ([]*x509.Certificate, error) {
	cas, err := loadCAs(ld, file, "intermediates")
	if err != nil {
		return nil, err
	}
	var inters []*x509.Certificate
	for _, ca := range cas {
		if !selfSigned(ca) {
			inters = append(inters, ca)
			continue
		}
		if !slices.ContainsFunc(roots, func(r *x509.Certificate) bool { return bytes.Equal(r.Raw, ca.Raw) }) {
			return nil, fmt.Errorf("intermediates %s: %q: %w", file, ca.Subject.String(), ErrRootInIntermediates)
		}
	}
	if len(inters) == 0 {
		return nil, fmt.Errorf("intermediates %s: only roots, no intermediate CA: %w", file, ErrNoCertificates)
	}
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range inters {
		interPool.AddCert(c)
	}
	for _, ca := range inters {
		if err := canIssue(ca, roots, inters, rootPool, interPool, ld.now); err != nil {
			return nil, fmt.Errorf("intermediates %s: %q (issued by %q): %w", file, ca.Subject.String(), ca.Issuer.String(), err)
		}
	}
	return inters, nil
}

// canIssue checks at load what every handshake will check of an
// intermediate: it runs x509's chain verification, as a handshake does,
// with the intermediate standing for a client certificate it issued, so
// that signatures, basic constraints, critical extensions and extended key
// usage (clientAuth) are judged alike; and, since the
// intermediate itself sits below them in every client's chain, the path
// length of each CA above must leave room for it. Validity is judged now
// or, for an intermediate not valid now (expired, or staged for later), at
// the start of its own validity; when no single moment suits the chain,
// the signatures alone are checked. An expired CA is refused at handshake
// time (result expired), not at load, so that a CRL update still reloads.
func canIssue(ca *x509.Certificate, roots, inters []*x509.Certificate, rootPool, interPool *x509.CertPool, now time.Time) error {
	opts := x509.VerifyOptions{Roots: rootPool, Intermediates: interPool, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	chains, err := ca.Verify(opts)
	if timeInvalid(err) {
		opts.CurrentTime = ca.NotBefore
		if chains, err = ca.Verify(opts); timeInvalid(err) {
			if chainsTo(ca, roots, inters, nil) {
				return nil
			}
			return ErrIntermediateNoRoot
		}
	}
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &ua):
		return ErrIntermediateNoRoot
	case err != nil:
		return fmt.Errorf("%w: %w", ErrIntermediateUnusable, err)
	}
	var short string
	for _, ch := range chains {
		if short = pathTooShort(ch); short == "" {
			return nil
		}
	}
	return fmt.Errorf("%w: the path length of %s leaves no room for it", ErrIntermediateUnusable, short)
}

// timeInvalid reports whether err is a certificate outside its validity.
func timeInvalid(err error) bool {
	var ci x509.CertificateInvalidError
	return errors.As(err, &ci) && ci.Reason == x509.Expired
}

// pathTooShort names the first CA of ch (an intermediate's chain up to a
// root) whose pathLenConstraint allows fewer intermediates below it than
// a client's chain through ch has, or returns "".
func pathTooShort(ch []*x509.Certificate) string {
	for j, c := range ch[1:] {
		// Below ch[j+1] in a client's chain: ch[0] to ch[j], j+1 CAs.
		if c.BasicConstraintsValid && c.MaxPathLen >= 0 && j+1 > c.MaxPathLen {
			return fmt.Sprintf("%q (%d)", c.Subject.String(), c.MaxPathLen)
		}
	}
	return ""
}

// chainsTo reports whether signatures lead from c to one of roots, through
// inters, whatever the validity periods.
func chainsTo(c *x509.Certificate, roots, inters, seen []*x509.Certificate) bool {
	issued := func(parent *x509.Certificate) bool {
		return bytes.Equal(parent.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(parent) == nil
	}
	if slices.ContainsFunc(roots, issued) {
		return true
	}
	seen = append(seen, c)
	for _, p := range inters {
		if !slices.Contains(seen, p) && issued(p) && chainsTo(p, roots, inters, seen) {
			return true
		}
	}
	return false
}

// selfSigned reports whether c is a root: issuer and subject alike, and
// signed by its own key.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
