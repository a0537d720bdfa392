package certs

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
)

// CRL and CRL entry extensions gatehouse reads (RFC 5280, 5.2 and 5.3).
var (
	oidAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidCRLNumber      = asn1.ObjectIdentifier{2, 5, 29, 20}
	oidDeltaCRL       = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidIssuingDP      = asn1.ObjectIdentifier{2, 5, 29, 28}
	oidReasonCode     = asn1.ObjectIdentifier{2, 5, 29, 21}
	oidInvalidityDate = asn1.ObjectIdentifier{2, 5, 29, 24}
)

// issuingDistributionPoint is the CRL extension of RFC 5280, 5.2.5.
type issuingDistributionPoint struct {
	DistributionPoint          asn1.RawValue  `asn1:"optional,tag:0"`
	OnlyContainsUserCerts      bool           `asn1:"optional,tag:1"`
	OnlyContainsCACerts        bool           `asn1:"optional,tag:2"`
	OnlySomeReasons            asn1.BitString `asn1:"optional,tag:3"`
	IndirectCRL                bool           `asn1:"optional,tag:4"`
	OnlyContainsAttributeCerts bool           `asn1:"optional,tag:5"`
}

// crlScope checks that crl is its issuer's complete CRL, the only kind a
// revocation check can rely on: a CRL that leaves some of the issuer's
// certificates out would pass them as not revoked. A delta CRL, an
// issuingDistributionPoint limited to user, CA or attribute certificates,
// to some reasons, or an indirect CRL are refused (ErrCRLScope), and so is
// a CRL or CRL entry with any other critical extension gatehouse does not
// process (ErrCRLCritical), as RFC 5280 requires. An issuingDistributionPoint
// that names its distribution point (URIs) is the issuer's CRL for the
// certificates naming that point in their cRLDistributionPoints: those
// URIs are returned, and certificates that name none of them are not
// covered (crlState.covers).
func crlScope(crl *x509.RevocationList) (dps []string, err error) {
	for _, e := range crl.Extensions {
		switch {
		case e.Id.Equal(oidDeltaCRL):
			return nil, fmt.Errorf("a delta CRL (deltaCRLIndicator), not the complete CRL: %w", ErrCRLScope)
		case e.Id.Equal(oidIssuingDP):
			if dps, err = parseIssuingDP(e.Value); err != nil {
				return nil, err
			}
		case e.Critical && !e.Id.Equal(oidAuthorityKeyID) && !e.Id.Equal(oidCRLNumber):
			return nil, fmt.Errorf("critical extension %s: %w", e.Id, ErrCRLCritical)
		}
	}
	for _, rc := range crl.RevokedCertificateEntries {
		for _, e := range rc.Extensions {
			// certificateIssuer (indirect CRLs) is critical and not read.
			if e.Critical && !e.Id.Equal(oidReasonCode) && !e.Id.Equal(oidInvalidityDate) {
				return nil, fmt.Errorf("critical extension %s of the entry of serial %x: %w", e.Id, rc.SerialNumber, ErrCRLCritical)
			}
		}
	}
	return dps, nil
}

func parseIssuingDP(der []byte) ([]string, error) {
	var idp issuingDistributionPoint
	if rest, err := asn1.Unmarshal(der, &idp); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("issuingDistributionPoint unreadable: %w", errors.Join(err, ErrCRLCritical))
	}
	var limits []string
	for _, l := range []struct {
		set  bool
		name string
	}{
		{idp.OnlyContainsUserCerts, "onlyContainsUserCerts"},
		{idp.OnlyContainsCACerts, "onlyContainsCACerts"},
		{idp.OnlySomeReasons.BitLength > 0, "onlySomeReasons"},
		{idp.IndirectCRL, "indirectCRL"},
		{idp.OnlyContainsAttributeCerts, "onlyContainsAttributeCerts"},
	} {
		if l.set {
			limits = append(limits, l.name)
		}
	}
	if len(limits) > 0 {
		return nil, fmt.Errorf("issuingDistributionPoint %v covers part of the issuer's certificates only: %w", limits, ErrCRLScope)
	}
	if len(idp.DistributionPoint.FullBytes) == 0 {
		return nil, nil
	}
	// [0] DistributionPointName, a CHOICE, so explicitly tagged: inside it
	// fullName [0] GeneralNames, or nameRelativeToCRLIssuer [1].
	var name asn1.RawValue
	if rest, err := asn1.Unmarshal(idp.DistributionPoint.Bytes, &name); err != nil || len(rest) > 0 ||
		name.Class != asn1.ClassContextSpecific || name.Tag != 0 {
		return nil, fmt.Errorf("issuingDistributionPoint names its distribution point other than by a fullName: %w", ErrCRLCritical)
	}
	var uris []string
	for b := name.Bytes; len(b) > 0; {
		var gn asn1.RawValue
		rest, err := asn1.Unmarshal(b, &gn)
		if err != nil {
			return nil, fmt.Errorf("issuingDistributionPoint unreadable: %w", errors.Join(err, ErrCRLCritical))
		}
		b = rest
		if gn.Class == asn1.ClassContextSpecific && gn.Tag == 6 { // uniformResourceIdentifier
			uris = append(uris, string(gn.Bytes))
		}
	}
	if len(uris) == 0 {
		return nil, fmt.Errorf("issuingDistributionPoint names its distribution point without a URI: %w", ErrCRLCritical)
	}
	return uris, nil
}

// covers reports whether the CRL speaks for c, a certificate its issuer
// signed: always, unless the CRL is that of one distribution point, which
// c must name.
func (c *crlState) covers(cert *x509.Certificate) bool {
	if len(c.dps) == 0 {
		return true
	}
	return slices.ContainsFunc(cert.CRLDistributionPoints, func(u string) bool { return slices.Contains(c.dps, u) })
}
