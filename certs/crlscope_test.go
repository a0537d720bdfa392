package certs

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// crlWith signs a CRL of ca carrying the extensions, revoking the entries,
// as PEM.
func crlWith(t *testing.T, ca *certstest.CA, exts []pkix.Extension, entries ...x509.RevocationListEntry) []byte {
	t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()),
		ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: entries, ExtraExtensions: exts}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// idp encodes an issuingDistributionPoint from its DER fields.
func idp(fields ...byte) []byte {
	return append([]byte{0x30, byte(len(fields))}, fields...)
}

// idpURI is an issuingDistributionPoint naming one URI as its point:
// [0] { [0] { [6] uri } }.
func idpURI(uri string) []byte {
	gn := append([]byte{0x86, byte(len(uri))}, uri...)
	full := append([]byte{0xa0, byte(len(gn))}, gn...)
	dp := append([]byte{0xa0, byte(len(full))}, full...)
	return idp(dp...)
}

// TestCRLMustBeComplete: a CRL that is not its issuer's complete CRL (a
// delta CRL, one limited to CA or user certificates, to some reasons, an
// indirect one) would pass the certificates it leaves out as not revoked,
// and so would one with a critical extension gatehouse does not read: each
// is refused at load, naming the file, and the generation in force stays.
// Non-critical extensions gatehouse does not read are fine.
func TestCRLMustBeComplete(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{c.tenant()}
	m := newManager(t, Config{}, p)
	rootCRL := readFile(t, c.root.CRL(t, filepath.Join(t.TempDir(), "root.crl"), time.Now().Add(time.Hour)))
	deltaBase, err := asn1.Marshal(big.NewInt(1))
	if err != nil {
		t.Fatal(err)
	}
	private := asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1}
	for _, tc := range []struct {
		name    string
		exts    []pkix.Extension
		entries []x509.RevocationListEntry
		want    error
	}{
		{name: "delta CRL", exts: []pkix.Extension{{Id: oidDeltaCRL, Critical: true, Value: deltaBase}}, want: ErrCRLScope},
		{name: "only CA certificates", exts: []pkix.Extension{{Id: oidIssuingDP, Critical: true, Value: idp(0x82, 1, 0xff)}}, want: ErrCRLScope},
		{name: "only user certificates", exts: []pkix.Extension{{Id: oidIssuingDP, Critical: true, Value: idp(0x81, 1, 0xff)}}, want: ErrCRLScope},
		{name: "only some reasons", exts: []pkix.Extension{{Id: oidIssuingDP, Critical: true, Value: idp(0x83, 2, 7, 0x80)}}, want: ErrCRLScope},
		{name: "indirect", exts: []pkix.Extension{{Id: oidIssuingDP, Critical: true, Value: idp(0x84, 1, 0xff)}}, want: ErrCRLScope},
		{name: "an unknown critical extension", exts: []pkix.Extension{{Id: private, Critical: true, Value: []byte{5, 0}}}, want: ErrCRLCritical},
		{name: "an entry's unknown critical extension", entries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(99), RevocationTime: time.Now(),
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 29}, Critical: true, Value: []byte{0x30, 0}}}}}, want: ErrCRLCritical},
		{name: "an unknown non-critical extension", exts: []pkix.Extension{{Id: private, Value: []byte{5, 0}}}},
		{name: "an empty issuingDistributionPoint", exts: []pkix.Extension{{Id: oidIssuingDP, Critical: true, Value: idp()}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "corp.crl")
			certstest.WriteFile(t, file, append(append([]byte{}, rootCRL...), crlWith(t, c.inter, tc.exts, tc.entries...)...))
			q := clonePolicy(p)
			q.Tenants[0].CRL = file
			err := m.Apply(q)
			if !errors.Is(err, tc.want) || err != nil && !strings.Contains(err.Error(), file) {
				t.Fatalf("Apply: %v, want %v naming %s", err, tc.want, file)
			}
			if res, tenant := present(t, m, k, c.leaf.Alone()); res != ResultOK || tenant != "corp" {
				t.Errorf("leaf: %s %q, want corp", res, tenant)
			}
			if err == nil {
				if err := m.Apply(p); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestCRLOfADistributionPoint: an issuer's CRL whose
// issuingDistributionPoint names a URI speaks for the certificates naming
// that point only; another certificate of the issuer is no_crl, whatever
// the CRL says, and a revoked one naming the point is revoked.
func TestCRLOfADistributionPoint(t *testing.T) {
	k := newPKI(t)
	c := newCorp(t)
	const dp = "http://crl.corp.example/issuing.crl"
	issue := func(cn string, dps ...string) *certstest.Leaf {
		return c.inter.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, CRLDistributionPoints: dps,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	}
	named, other, none, gone := issue("named", dp), issue("other", "http://crl.corp.example/2.crl"), issue("none"), issue("gone", dp)
	rootCRL := readFile(t, c.root.CRL(t, filepath.Join(t.TempDir(), "root.crl"), time.Now().Add(time.Hour)))
	file := filepath.Join(t.TempDir(), "corp.crl")
	certstest.WriteFile(t, file, append(rootCRL, crlWith(t, c.inter, []pkix.Extension{{Id: oidIssuingDP, Critical: true, Value: idpURI(dp)}},
		x509.RevocationListEntry{SerialNumber: gone.Cert.SerialNumber, RevocationTime: time.Now()})...))
	p := clonePolicy(k.policy)
	p.Tenants = []policy.Tenant{c.tenant()}
	p.Tenants[0].CRL = file
	m := newManager(t, Config{}, p)
	for _, tc := range []struct {
		leaf *certstest.Leaf
		want Result
	}{{named, ResultOK}, {gone, ResultRevoked}, {other, ResultNoCRL}, {none, ResultNoCRL}} {
		if res, _ := present(t, m, k, tc.leaf.Alone()); res != tc.want {
			t.Errorf("%s: %s, want %s", tc.leaf.Cert.Subject.CommonName, res, tc.want)
		}
	}
}

// FuzzIssuingDP: the extension comes from a file; whatever it holds, the
// parser answers with URIs or an error.
func FuzzIssuingDP(f *testing.F) {
	f.Add(idp())
	f.Add(idp(0x82, 1, 0xff))
	f.Add(idpURI("http://crl.example/a.crl"))
	f.Add([]byte{0x30, 0x04, 0xa0, 0x02, 0xa1, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		uris, err := parseIssuingDP(b)
		if err == nil && uris != nil && len(uris) == 0 {
			t.Fatal("empty URI list without an error")
		}
	})
}
