package certs

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/gatehouse-dmz/gatehouse/internal/atomicfile"
)

// KeyType names a key algorithm for new keys.
type KeyType string

// Key types. ECDSA P-256 is the default: fast handshakes, universally
// supported; RSA 3072 for old peers; Ed25519 where both ends support it.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyRSA3072   KeyType = "rsa-3072"
	KeyEd25519   KeyType = "ed25519"
)

// Files of a CA directory.
const (
	CACertFile   = "ca.pem"
	CAKeyFile    = "ca.key"
	CAIndexFile  = "revoked.txt" // one revoked serial a line
	CACRLNumFile = "crlnumber"
)

// Errors of the PKI operations.
var (
	ErrUnknownKeyType = errors.New("unknown key type (want ecdsa-p256, rsa-3072 or ed25519)")
	ErrExists         = errors.New("file exists (use --force to replace it)")
	ErrNoKey          = errors.New("no private key found")
	ErrKeyMismatch    = errors.New("private key does not belong to the certificate")
	ErrUsage          = errors.New("exactly one of server or client usage is required")
	ErrCSRSignature   = errors.New("CSR signature does not verify")
	ErrUnknownFormat  = errors.New("not a certificate, CSR, CRL or key in PEM or DER")
	ErrBadSerial      = errors.New("bad serial number")
	ErrUnknownReason  = errors.New("unknown revocation reason")
)

// GenerateKey makes a new private key; the empty type means ECDSA P-256.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case "", KeyECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyRSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("%q: %w", kt, ErrUnknownKeyType)
}

// MarshalKeyPEM encodes a private key as PKCS#8 PEM ("PRIVATE KEY").
func MarshalKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM reads the first private key of a PEM file: PKCS#8, SEC 1
// ("EC PRIVATE KEY", what `openssl ecparam -genkey` writes) or PKCS#1.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, ErrNoKey
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted private keys are not supported; decrypt with openssl pkey first")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key type %T: %w", k, ErrUnknownKeyType)
		}
		return s, nil
	}
}

// WriteKeyFile writes key as PKCS#8 PEM with mode 0600. Without force an
// existing file is an error, so a key is never silently replaced.
func WriteKeyFile(path string, key crypto.Signer, force bool) error {
	b, err := MarshalKeyPEM(key)
	if err != nil {
		return err
	}
	return WriteFile(path, b, 0o600, force)
}

// WriteCertFile writes certificates (DER) as one PEM file, mode 0644.
func WriteCertFile(path string, force bool, ders ...[]byte) error {
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return WriteFile(path, b, 0o644, force)
}

// WriteFile writes data to path with mode, whole (a reader, such as a
// daemon watching a CRL, sees the old file or the new one). Unless force,
// anything already at path, a symbolic link included, is refused with
// ErrExists, in the same step that creates the file; with force it is
// replaced (a symbolic link itself, never what it points to).
func WriteFile(path string, data []byte, mode os.FileMode, force bool) error {
	if force {
		return atomicfile.Write(path, data, mode)
	}
	err := atomicfile.Create(path, data, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", path, ErrExists)
	}
	return err
}

// ReadCertsFile reads every certificate of a PEM file, or one DER certificate.
func ReadCertsFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(data)
	if errors.Is(err, ErrNoCertificates) {
		c, derr := x509.ParseCertificate(data)
		if derr != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return []*x509.Certificate{c}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// ReadKeyFile reads a private key file.
func ReadKeyFile(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

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

// Revocation is one entry of a CA's revocation index.
type Revocation struct {
	Serial *big.Int
	Time   time.Time
	Reason int // RFC 5280 CRLReason
}

// Reasons maps the names `gatehouse certs revoke --reason` takes to RFC 5280
// CRLReason codes.
var Reasons = map[string]int{
	"unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
	"superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "privilegeWithdrawn": 9,
}

// Revoked reads the CA's revocation index.
func (ca *CA) Revoked() ([]Revocation, error) {
	data, err := os.ReadFile(filepath.Join(ca.Dir, CAIndexFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Revocation
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("%s line %d: want \"<hex serial> <unix time> <reason code>\"", CAIndexFile, n)
		}
		s, ok := new(big.Int).SetString(f[0], 16)
		sec, err1 := strconv.ParseInt(f[1], 10, 64)
		reason, err2 := strconv.Atoi(f[2])
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s line %d: malformed", CAIndexFile, n)
		}
		out = append(out, Revocation{Serial: s, Time: time.Unix(sec, 0).UTC(), Reason: reason})
	}
	return out, sc.Err()
}

// ParseSerial reads a serial in hex, with or without colons or 0x.
func ParseSerial(s string) (*big.Int, error) {
	h := strings.TrimPrefix(strings.ToLower(strings.ReplaceAll(s, ":", "")), "0x")
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("%q: %w", s, ErrBadSerial)
	}
	return n, nil
}

// Revoke adds serial to the CA's index; revoking twice is a no-op. The CRL
// changes only when `crl` issues a new one.
func (ca *CA) Revoke(serial *big.Int, reason int) error {
	list, err := ca.Revoked()
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	for _, r := range list {
		if r.Serial.Cmp(serial) == 0 {
			return nil
		}
	}
	var b strings.Builder
	b.WriteString("# serial (hex) revocation time (unix) reason (RFC 5280 code)\n")
	for _, r := range append(list, Revocation{Serial: serial, Time: ca.now(), Reason: reason}) {
		fmt.Fprintf(&b, "%x %d %d\n", r.Serial, r.Time.Unix(), r.Reason)
	}
	if err := atomicfile.Write(filepath.Join(ca.Dir, CAIndexFile), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	return nil
}

// CRL issues a CRL of every revoked serial, valid for validity (zero: 7
// days), with the next CRL number. It returns DER.
func (ca *CA) CRL(validity time.Duration) ([]byte, error) {
	if validity <= 0 {
		validity = 7 * 24 * time.Hour
	}
	list, err := ca.Revoked()
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	numPath := filepath.Join(ca.Dir, CACRLNumFile)
	num := big.NewInt(0)
	if b, err := os.ReadFile(numPath); err == nil {
		if _, ok := num.SetString(strings.TrimSpace(string(b)), 16); !ok {
			return nil, fmt.Errorf("crl: %s is not a hex number", numPath)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("crl: %w", err)
	}
	num.Add(num, big.NewInt(1))
	now := ca.now()
	tmpl := &x509.RevocationList{Number: num, ThisUpdate: now.Add(-5 * time.Minute), NextUpdate: now.Add(validity)}
	for _, r := range list {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: r.Serial, RevocationTime: r.Time, ReasonCode: r.Reason,
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	if err := atomicfile.Write(numPath, []byte(fmt.Sprintf("%x\n", num)), 0o644); err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	return der, nil
}

// EncodeP12 bundles key, certificate and chain as PKCS#12 with modern
// encryption (AES-256-CBC, PBKDF2, SHA-256 MAC).
func EncodeP12(key crypto.Signer, cert *x509.Certificate, chain []*x509.Certificate, password string) ([]byte, error) {
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return nil, ErrKeyMismatch
	}
	b, err := pkcs12.Modern.Encode(key, cert, chain, password)
	if err != nil {
		return nil, fmt.Errorf("encode pkcs12: %w", err)
	}
	return b, nil
}

// DecodeP12 reads a PKCS#12 file with one key and certificate (and an
// optional chain), as written by OpenSSL, Windows or Java.
func DecodeP12(data []byte, password string) (crypto.Signer, *x509.Certificate, []*x509.Certificate, error) {
	k, cert, chain, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("decode pkcs12: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, nil, fmt.Errorf("decode pkcs12: key type %T: %w", k, ErrUnknownKeyType)
	}
	return s, cert, chain, nil
}

func newSerial() (*big.Int, error) {
	// 127 random bits: unique, unpredictable, positive and within the 20
	// octets RFC 5280 allows.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
