package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial atomic.Int64

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"gatehouse test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

// issue signs a leaf certificate; server leaves get hosts as SANs.
func (ca *testCA) issue(t testing.TB, cn string, server bool, hosts ...string) tls.Certificate {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func fingerprint(c tls.Certificate) string {
	sum := sha256.Sum256(c.Certificate[0])
	return hex.EncodeToString(sum[:])
}

// writePEM stores a certificate (and its key, if any) for tools like curl.
func writePEM(t testing.TB, dir, name string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile = filepath.Join(dir, name+".pem")
	keyFile = filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func writeCAPEM(t testing.TB, dir, name string, ca *testCA) string {
	t.Helper()
	f := filepath.Join(dir, name+".pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// testSource is a TLSSource over test CAs: the issuing CA names the tenant,
// and fingerprints can be revoked at run time.
type testSource struct {
	server  tls.Certificate
	clients *x509.CertPool
	tenants map[string]string // RawIssuer → tenant

	mu      sync.Mutex
	revoked map[string]bool
	broken  map[string]error // listener → TLSConfig error
	failed  atomic.Int64
	anyCert bool // verify in VerifyConnection, not in crypto/tls
	// elsewhere, when set, is the listener HandshakeDone's Peers name
	// instead of the connection's: a TLS source that is wrong.
	elsewhere string
}

var errRevoked = errors.New("certificate revoked")

func (s *testSource) TLSConfig(listener string) (*tls.Config, error) {
	s.mu.Lock()
	err := s.broken[listener]
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if s.anyCert {
		// The certificate manager's way: ask for any certificate (so the
		// CertificateRequest names no tenant CA) and verify the chain in
		// VerifyConnection, which also runs on resumed sessions.
		return &tls.Config{
			Certificates: []tls.Certificate{s.server},
			ClientAuth:   tls.RequireAnyClientCert,
			MinVersion:   tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("no client certificate")
				}
				inter := x509.NewCertPool()
				for _, c := range cs.PeerCertificates[1:] {
					inter.AddCert(c)
				}
				if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: s.clients, Intermediates: inter,
					KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					return err
				}
				_, err := s.Identify(cs)
				return err
			},
		}, nil
	}
	return &tls.Config{
		Certificates: []tls.Certificate{s.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    s.clients,
		MinVersion:   tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := s.Identify(cs)
			return err
		},
	}, nil
}

func (s *testSource) Identify(cs tls.ConnectionState) (certs.Peer, error) {
	if len(cs.PeerCertificates) == 0 {
		return certs.Peer{}, errors.New("no client certificate")
	}
	leaf := cs.PeerCertificates[0]
	s.mu.Lock()
	defer s.mu.Unlock()
	tenant, ok := s.tenants[string(leaf.RawIssuer)]
	if !ok {
		return certs.Peer{}, errors.New("unknown issuer")
	}
	sum := sha256.Sum256(leaf.Raw)
	fp := hex.EncodeToString(sum[:])
	if s.revoked[fp] {
		return certs.Peer{}, errRevoked
	}
	return certs.Peer{Tenant: tenant, FingerprintSHA256: fp, Subject: leaf.Subject.String(), NotAfter: leaf.NotAfter}, nil
}

func (s *testSource) HandshakeDone(listener string, source netip.AddrPort, cs tls.ConnectionState) (certs.Peer, error) {
	p, err := s.Identify(cs)
	p.Listener, p.Source, p.ServerName = listener, source, cs.ServerName
	s.mu.Lock()
	if s.elsewhere != "" {
		p.Listener = s.elsewhere
	}
	s.mu.Unlock()
	return p, err
}

func (s *testSource) HandshakeFailed(_ string, _ netip.AddrPort, _ tls.ConnectionState, err error) certs.Refusal {
	s.failed.Add(1)
	return certs.Refusal{Result: certs.ResultOf(err), Reason: err.Error()}
}

// remap makes the certificates of cert's issuer map to tenant from now on.
func (s *testSource) remap(cert tls.Certificate, tenant string) {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		panic(err)
	}
	s.mu.Lock()
	s.tenants[string(leaf.RawIssuer)] = tenant
	s.mu.Unlock()
}

func (s *testSource) revoke(fp string) {
	s.mu.Lock()
	s.revoked[fp] = true
	s.mu.Unlock()
}

// pki is the whole cast of a test: a server, two tenants and a stranger.
type pki struct {
	serverCA *testCA
	src      *testSource
	acme     tls.Certificate
	globex   tls.Certificate
	rogue    tls.Certificate // from a CA no tenant trusts
	acmeCA   *testCA
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	serverCA := newCA(t, "server ca")
	acmeCA := newCA(t, "acme ca")
	globexCA := newCA(t, "globex ca")
	rogueCA := newCA(t, "rogue ca")
	clients := x509.NewCertPool()
	clients.AddCert(acmeCA.cert)
	clients.AddCert(globexCA.cert)
	return &pki{
		serverCA: serverCA,
		acmeCA:   acmeCA,
		src: &testSource{
			server:  serverCA.issue(t, "gatehouse", true, "localhost", "127.0.0.1", "a.example", "special.example", "g.example"),
			clients: clients,
			tenants: map[string]string{
				string(acmeCA.cert.RawSubject):   "acme",
				string(globexCA.cert.RawSubject): "globex",
			},
			revoked: map[string]bool{},
			broken:  map[string]error{},
		},
		acme:   acmeCA.issue(t, "acme-cloud", false),
		globex: globexCA.issue(t, "globex-cloud", false),
		rogue:  rogueCA.issue(t, "rogue", false),
	}
}

// clientTLS is a client config presenting cert (none when zero).
func (p *pki) clientTLS(cert tls.Certificate, serverName string, alpn ...string) *tls.Config {
	c := &tls.Config{RootCAs: p.serverCA.pool(), ServerName: serverName, NextProtos: alpn, MinVersion: tls.VersionTLS12}
	if cert.Certificate != nil {
		c.Certificates = []tls.Certificate{cert}
	}
	return c
}

var tlsZero tls.Certificate
