package admin

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// crlFiles are the digests of the admin CRL files a Rules was compiled
// from.
type crlFiles map[string][32]byte

// loadCRL reads the CRL of an admin certificate grant; nil for crl none.
// caPEM is its client_ca, whose every CA must have signed one CRL of it.
func (r *Rules) loadCRL(c config.AdminCertificate, caPEM []byte) (*certs.CRLSet, error) {
	switch c.CRL {
	case config.CRLNone:
		return nil, nil
	case "":
		return nil, fmt.Errorf("required: the CRL file of %s, or none", c.ClientCA)
	}
	data, err := os.ReadFile(c.CRL)
	if err != nil {
		return nil, err
	}
	cas, err := certs.ParseCertificatesPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("client_ca %s: %w", c.ClientCA, err)
	}
	set, err := certs.NewCRLSet(c.CRL, data, cas)
	if err != nil {
		return nil, err
	}
	r.crls[c.CRL] = sha256.Sum256(data)
	return set, nil
}

// CRLsChanged reports whether an admin CRL file's content differs from
// what r was compiled from (a file that cannot be read counts as
// changed: the reload that follows says why).
func (r *Rules) CRLsChanged() bool {
	for path, sum := range r.crls {
		data, err := os.ReadFile(path)
		if err != nil {
			return true
		}
		if s := sha256.Sum256(data); !bytes.Equal(s[:], sum[:]) {
			return true
		}
	}
	return false
}

// StaleCRLs reports whether an admin CRL is past its nextUpdate.
func (r *Rules) StaleCRLs(now time.Time) bool {
	for _, c := range r.certs {
		if c.crl != nil && c.crl.Stale(now) {
			return true
		}
	}
	return false
}

// CompileConfig compiles cfg's access section with the stale-CRL rule of
// tls.crl_stale.
func CompileConfig(cfg *config.Config, self uint32) (*Rules, error) {
	r, err := Compile(cfg.Access, self)
	if err != nil {
		return nil, err
	}
	r.StaleOK = cfg.TLS.CRLStale == string(policy.CRLStaleWarn)
	return r, nil
}
