package certs

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority kept in a directory: ca.pem, ca.key (0600),
// revoked.txt (the revocation index) and crlnumber.
type CA struct {
	Dir  string
	Cert *x509.Certificate
	Key  crypto.Signer
	// Chain is the rest of ca.pem for an intermediate: its issuers, up to
	// and including the root.
	Chain []*x509.Certificate
	now   func() time.Time
}

// CAOptions describe a new CA.
type CAOptions struct {
	Dir          string
	CommonName   string
	Organization string
	KeyType      KeyType
	Validity     time.Duration // zero: 10 years
	// MaxPathLen is how many intermediates may follow this CA; 0 means it
	// signs end-entity certificates only.
	MaxPathLen int
	// Parent, when set, signs the new CA (an intermediate) instead of the
	// CA signing itself.
	Parent *CA
	Force  bool
	Now    func() time.Time
}

// ErrPathLen is returned when a parent CA may not sign another CA.
var ErrPathLen = errors.New("parent CA's path length does not allow another CA below it (create it with a larger --path-len)")

// InitCA creates a self-signed CA in opts.Dir. It refuses to overwrite an
// existing CA unless Force is set.
func InitCA(opts CAOptions) (*CA, error) {
	if opts.CommonName == "" {
		return nil, errors.New("init ca: common name required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Validity <= 0 {
		opts.Validity = 10 * 365 * 24 * time.Hour
	}
	key, err := GenerateKey(opts.KeyType)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	now := opts.Now()
	subj := pkix.Name{CommonName: opts.CommonName}
	if opts.Organization != "" {
		subj.Organization = []string{opts.Organization}
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subj,
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(opts.Validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            opts.MaxPathLen,
		MaxPathLenZero:        opts.MaxPathLen == 0,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	if opts.MaxPathLen < 0 {
		return nil, errors.New("init ca: negative path length")
	}
	issuer, signer := tmpl, key
	var chain []*x509.Certificate
	if p := opts.Parent; p != nil {
		pc := p.Cert
		// A parsed certificate has MaxPathLen -1 when it sets no limit;
		// otherwise it must leave room for this CA's own limit plus itself.
		if pc.MaxPathLen >= 0 && pc.MaxPathLen <= opts.MaxPathLen {
			return nil, fmt.Errorf("init ca: parent %s (path length %d): %w", pc.Subject, pc.MaxPathLen, ErrPathLen)
		}
		if tmpl.NotAfter.After(pc.NotAfter) {
			tmpl.NotAfter = pc.NotAfter
		}
		issuer, signer = pc, p.Key
		chain = append([]*x509.Certificate{pc}, p.Chain...)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	if err := WriteKeyFile(filepath.Join(opts.Dir, CAKeyFile), key, opts.Force); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	ders := [][]byte{der}
	for _, c := range chain {
		ders = append(ders, c.Raw)
	}
	if err := WriteCertFile(filepath.Join(opts.Dir, CACertFile), opts.Force, ders...); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	return &CA{Dir: opts.Dir, Cert: cert, Key: key, Chain: chain, now: opts.Now}, nil
}

// OpenCA loads the CA in dir. The certificate and key may come from OpenSSL.
func OpenCA(dir string) (*CA, error) {
	certs, err := ReadCertsFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("open ca: %w", err)
	}
	key, err := ReadKeyFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("open ca: %w", err)
	}
	cert := certs[0]
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("open ca %s: %w", dir, ErrKeyMismatch)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("open ca %s: %w", dir, ErrNotCA)
	}
	return &CA{Dir: dir, Cert: cert, Key: key, Chain: certs[1:], now: time.Now}, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// Profile says what an issued certificate is for.
type Profile struct {
	Server     bool
	Client     bool
	CommonName string
	DNS        []string
	IPs        []net.IP
	URIs       []*url.URL
	// Tenant is written as the subject's OU, so that `identities: {ou: [..]}`
	// can select on it; tenant mapping itself is by CA.
	Tenant   string
	Validity time.Duration // zero: one year
}

func (p Profile) template(now time.Time, pub crypto.PublicKey) (*x509.Certificate, error) {
	if p.Server == p.Client {
		return nil, ErrUsage
	}
	if p.Validity <= 0 {
		p.Validity = 365 * 24 * time.Hour
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: p.CommonName},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(p.Validity),
		BasicConstraintsValid: true,
		DNSNames:              p.DNS,
		IPAddresses:           p.IPs,
		URIs:                  p.URIs,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	if _, ok := pub.(*rsa.PublicKey); ok {
		t.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if p.Tenant != "" {
		t.Subject.OrganizationalUnit = []string{p.Tenant}
	}
	if p.Server {
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		if len(p.DNS) == 0 && len(p.IPs) == 0 {
			return nil, errors.New("server certificate needs at least one DNS name or IP address")
		}
		if t.Subject.CommonName == "" && len(p.DNS) > 0 {
			t.Subject.CommonName = p.DNS[0]
		}
	} else {
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if t.Subject.CommonName == "" {
			t.Subject.CommonName = p.Tenant
		}
	}
	if t.Subject.CommonName == "" && len(t.URIs) == 0 {
		return nil, errors.New("certificate needs a common name or a URI")
	}
	return t, nil
}

// Issue makes a key of type kt and a certificate for it.
func (ca *CA) Issue(p Profile, kt KeyType) (der []byte, key crypto.Signer, err error) {
	key, err = GenerateKey(kt)
	if err != nil {
		return nil, nil, fmt.Errorf("issue: %w", err)
	}
	der, err = ca.sign(p, key.Public())
	if err != nil {
		return nil, nil, err
	}
	return der, key, nil
}

func (ca *CA) sign(p Profile, pub crypto.PublicKey) ([]byte, error) {
	tmpl, err := p.template(ca.now(), pub)
	if err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue: %w", err)
	}
	return der, nil
}

// CSROptions are what a certificate request asks for.
type CSROptions struct {
	CommonName string
	OU         []string
	DNS        []string
	IPs        []net.IP
	URIs       []*url.URL
}

// CreateCSR makes a PKCS#10 request signed by key; the key stays with the
// caller.
func CreateCSR(key crypto.Signer, o CSROptions) ([]byte, error) {
	tmpl := &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: o.CommonName, OrganizationalUnit: o.OU},
		DNSNames:    o.DNS,
		IPAddresses: o.IPs,
		URIs:        o.URIs,
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("create csr: %w", err)
	}
	return der, nil
}

// ParseCSR reads a PEM or DER PKCS#10 request and checks its signature.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("PEM block %q, want CERTIFICATE REQUEST", b.Type)
		}
		data = b.Bytes
	}
	csr, err := x509.ParseCertificateRequest(data)
	if err != nil {
		return nil, fmt.Errorf("parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCSRSignature, err)
	}
	return csr, nil
}

// SignCSR issues a certificate for the request's key. The subject CN and the
// SANs come from the request unless p sets them; usage and validity come
// from p alone, never from the request's extensions.
func (ca *CA) SignCSR(csr *x509.CertificateRequest, p Profile) ([]byte, error) {
	if p.CommonName == "" {
		p.CommonName = csr.Subject.CommonName
	}
	if len(p.DNS) == 0 {
		p.DNS = csr.DNSNames
	}
	if len(p.IPs) == 0 {
		p.IPs = csr.IPAddresses
	}
	if len(p.URIs) == 0 {
		p.URIs = csr.URIs
	}
	if p.Tenant == "" && len(csr.Subject.OrganizationalUnit) == 1 {
		p.Tenant = csr.Subject.OrganizationalUnit[0]
	}
	return ca.sign(p, csr.PublicKey)
}
