package certstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/atomicfile"
)

// CA is a certificate authority with its key, kept in memory and on disk.
type CA struct {
	Name     string
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertFile string // PEM certificate
	KeyFile  string // PEM PKCS#8 key, mode 0600
	dir      string
	crlNum   atomic.Int64
	// chain holds the DER of this CA and its issuers up to, not including,
	// the root, for an intermediate; leaves present it after themselves.
	chain [][]byte
}

// Leaf is an issued certificate with its key. CertFile and TLS hold the
// leaf followed by any intermediates of its CA.
type Leaf struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	TLS      tls.Certificate // leaf and key, ready for tls.Config.Certificates
	CertFile string
	KeyFile  string
}

var seq atomic.Int64

// NewCA creates a self-signed ECDSA P-256 CA valid from an hour ago for a year.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	now := time.Now()
	return NewCAValid(t, name, now.Add(-time.Hour), now.Add(365*24*time.Hour))
}

// NewCAValid creates a self-signed CA with the given validity.
func NewCAValid(t testing.TB, name string, notBefore, notAfter time.Time) *CA {
	t.Helper()
	return NewCAWith(t, name, func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter })
}

// NewCAWith creates a self-signed CA like NewCA, its template changed by
// mod first (a path length, extended key usages, a validity).
func NewCAWith(t testing.TB, name string, mod func(*x509.Certificate)) *CA {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"gatehouse test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	mod(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("certstest: create CA %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := &CA{Name: name, Cert: cert, Key: key, dir: dir}
	ca.CertFile = filepath.Join(dir, fileName(name)+"-ca.pem")
	ca.KeyFile = filepath.Join(dir, fileName(name)+"-ca.key")
	writePEM(t, ca.CertFile, "CERTIFICATE", der, 0o644)
	writeKey(t, ca.KeyFile, key)
	return ca
}

// Intermediate creates a CA signed by ca. Leaves it issues carry it in
// their tls.Certificate chain and their PEM file.
func (ca *CA) Intermediate(t testing.TB, name string) *CA {
	t.Helper()
	return ca.IntermediateWith(t, name, func(*x509.Certificate) {})
}

// IntermediateWith is Intermediate with its template changed by mod first.
func (ca *CA) IntermediateWith(t testing.TB, name string, mod func(*x509.Certificate)) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"gatehouse test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              ca.Cert.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	mod(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("certstest: create intermediate %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	in := &CA{Name: name, Cert: cert, Key: key, dir: t.TempDir()}
	in.chain = append([][]byte{der}, ca.chain...)
	in.CertFile = filepath.Join(in.dir, fileName(name)+"-ca.pem")
	in.KeyFile = filepath.Join(in.dir, fileName(name)+"-ca.key")
	writePEM(t, in.CertFile, "CERTIFICATE", der, 0o644)
	writeKey(t, in.KeyFile, key)
	return in
}

// Alone is the leaf's tls.Certificate without its intermediates: a client
// that sends nothing but its own certificate.
func (l *Leaf) Alone() tls.Certificate {
	return tls.Certificate{Certificate: l.TLS.Certificate[:1], PrivateKey: l.Key, Leaf: l.Cert}
}

// AsLeaf is the CA's certificate as a Leaf, for its issuer's CRL to revoke.
func (ca *CA) AsLeaf() *Leaf { return &Leaf{Cert: ca.Cert} }

// Server issues a server certificate for the DNS names (and IP addresses,
// when a name parses as one).
func (ca *CA) Server(t testing.TB, dns ...string) *Leaf {
	t.Helper()
	tmpl := &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if len(dns) > 0 {
		tmpl.Subject.CommonName = dns[0]
	}
	for _, d := range dns {
		if ip := net.ParseIP(d); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, d)
		}
	}
	return ca.Issue(t, tmpl)
}

// Client issues a client certificate with the common name and URI SANs.
func (ca *CA) Client(t testing.TB, cn string, uris ...string) *Leaf {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("certstest: uri %q: %v", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	return ca.Issue(t, tmpl)
}

// Issue signs tmpl with a fresh ECDSA P-256 key. Zero NotBefore/NotAfter
// default to an hour ago and a day ahead; the serial is always random.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate) *Leaf {
	t.Helper()
	return ca.IssueKey(t, tmpl, newKey(t))
}

// IssueKey signs tmpl for the given key.
func (ca *CA) IssueKey(t testing.TB, tmpl *x509.Certificate, key crypto.Signer) *Leaf {
	t.Helper()
	c := *tmpl
	c.SerialNumber = serial(t)
	if c.NotBefore.IsZero() {
		c.NotBefore = time.Now().Add(-time.Hour)
	}
	if c.NotAfter.IsZero() {
		c.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if c.KeyUsage == 0 {
		c.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, &c, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("certstest: issue: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	name := c.Subject.CommonName
	if name == "" {
		name = "leaf"
	}
	base := filepath.Join(ca.dir, strconv.FormatInt(seq.Add(1), 10)+"-"+fileName(name))
	l := &Leaf{
		Cert:     cert,
		Key:      key,
		TLS:      tls.Certificate{Certificate: append([][]byte{der}, ca.chain...), PrivateKey: key, Leaf: cert},
		CertFile: base + ".pem",
		KeyFile:  base + ".key",
	}
	var pemData []byte
	for _, d := range l.TLS.Certificate {
		pemData = append(pemData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	replaceFile(t, l.CertFile, pemData, 0o644)
	writeKey(t, l.KeyFile, key)
	return l
}

// CRL signs a CRL revoking the leaves, valid until nextUpdate, and writes it
// as PEM to path (created or replaced). It returns path.
func (ca *CA) CRL(t testing.TB, path string, nextUpdate time.Time, revoked ...*Leaf) string {
	t.Helper()
	return ca.writeCRL(t, path, nextUpdate, revoked, true)
}

// CRLDER is CRL written as DER.
func (ca *CA) CRLDER(t testing.TB, path string, nextUpdate time.Time, revoked ...*Leaf) string {
	t.Helper()
	return ca.writeCRL(t, path, nextUpdate, revoked, false)
}

func (ca *CA) writeCRL(t testing.TB, path string, nextUpdate time.Time, revoked []*Leaf, asPEM bool) string {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, l := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: l.Cert.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
	}
	tmpl := &x509.RevocationList{
		Number:                    big.NewInt(ca.crlNum.Add(1)),
		ThisUpdate:                time.Now().Add(-time.Minute),
		NextUpdate:                nextUpdate,
		RevokedCertificateEntries: entries,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		t.Fatalf("certstest: crl: %v", err)
	}
	data := der
	if asPEM {
		data = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	replaceFile(t, path, data, 0o644)
	return path
}

// Bundle writes the CA certificates into one PEM file in a new temporary
// directory and returns its path.
func Bundle(t testing.TB, cas ...*CA) string {
	t.Helper()
	var b []byte
	for _, ca := range cas {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})...)
	}
	path := filepath.Join(t.TempDir(), "bundle.pem")
	replaceFile(t, path, b, 0o644)
	return path
}

// Pool returns a pool holding the CA certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

func writeKey(t testing.TB, path string, key crypto.Signer) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "PRIVATE KEY", der, 0o600)
}

func writePEM(t testing.TB, path, typ string, der []byte, mode os.FileMode) {
	t.Helper()
	replaceFile(t, path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// replaceFile writes atomically, so that a watcher never reads half a file.
func replaceFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := atomicfile.Write(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// WriteFile replaces path atomically with data; tests use it to swap
// certificates and CRLs under a running watcher.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	replaceFile(t, path, data, 0o644)
}

func fileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, s)
}
