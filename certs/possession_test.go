package certs

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// publicOnly is what a stranger holding a copy of a certificate, not its
// key, can present: the certificate, and signatures that are noise.
func publicOnly(l *certstest.Leaf) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: noiseSigner{l.Cert.PublicKey}, Leaf: l.Cert}
}

type noiseSigner struct{ pub crypto.PublicKey }

func (s noiseSigner) Public() crypto.PublicKey { return s.pub }
func (s noiseSigner) Sign(_ io.Reader, _ []byte, _ crypto.SignerOpts) ([]byte, error) {
	b := make([]byte, 72)
	_, err := rand.Read(b)
	return b, err
}

// leaveAfterCertificate is a client connection that sends its hello whole
// and, of its second flight, the records up to its Certificate; then it
// half-closes, so the server reads the certificate and then the end of the
// stream, and nothing that would prove the client holds the key. crypto/tls
// writes each handshake message of a flight as its own record and the
// flight in one Write.
type leaveAfterCertificate struct {
	*net.TCPConn
	writes int
}

func (c *leaveAfterCertificate) Write(b []byte) (int, error) {
	c.writes++
	if c.writes == 1 {
		return c.TCPConn.Write(b)
	}
	end := 0
	for end+5 <= len(b) {
		typ, n := b[end], int(b[end+3])<<8|int(b[end+4])
		end += 5 + n
		if typ != 20 { // change_cipher_spec (TLS 1.3 sends one first) does not count
			break
		}
	}
	if _, err := c.TCPConn.Write(b[:end]); err != nil {
		return 0, err
	}
	c.CloseWrite()
	return len(b), nil
}

// TestCertificateThenClose: a client that sends a certificate and then
// closes is not client_closed, whatever the handshake had reached: with
// TLS 1.2 crypto/tls judges the certificate only after the key exchange,
// so the stranger's and the revoked one are judged here, with their
// certificate in the refusal; with TLS 1.3 acme's copied certificate was
// accepted but never proven, so it is no ok either.
func TestCertificateThenClose(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	for _, tc := range []struct {
		name   string
		v      uint16
		leaf   *certstest.Leaf
		want   Result
		tenant string
		reason string
	}{
		{"TLS 1.3, acme's certificate without its key", tls.VersionTLS13, k.acme, ResultOther, "", "certificate of tenant acme, but the client closed the connection"},
		{"TLS 1.2, a stranger", tls.VersionTLS12, k.stranger, ResultUnknownCA, "", "the client closed the connection"},
		{"TLS 1.2, revoked", tls.VersionTLS12, k.revoked, ResultRevoked, "acme", "on CRL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			okBefore := counter(t, m, "web", "acme", ResultOK)
			label := tc.tenant
			if label == "" {
				label = "none"
			}
			before := counter(t, m, "web", label, tc.want)
			cc := k.clientConfig(nil)
			cc.MinVersion, cc.MaxVersion = tc.v, tc.v
			cc.Certificates = []tls.Certificate{publicOnly(tc.leaf)}
			cs, err := serverHandshake(t, srv, func(c *net.TCPConn) {
				tls.Client(&leaveAfterCertificate{TCPConn: c}, cc).Handshake()
			})
			if err == nil {
				t.Fatal("handshake completed")
			}
			r := m.HandshakeFailed("web", testSource, cs, err)
			if r.Result != tc.want || r.Tenant != tc.tenant || r.FingerprintSHA256 != FingerprintSHA256(tc.leaf.Cert) ||
				r.Subject != tc.leaf.Cert.Subject.String() || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("server error %v: refusal %+v, want %s %q with the certificate and a reason saying %q", err, r, tc.want, tc.tenant, tc.reason)
			}
			if got := m.Refusals(); len(got) == 0 || got[0] != r {
				t.Errorf("refusal not remembered: %+v", got)
			}
			if after := counter(t, m, "web", label, tc.want); after != before+1 {
				t.Errorf("{web,%s,%s} %v → %v, want +1", label, tc.want, before, after)
			}
			if ok := counter(t, m, "web", "acme", ResultOK); ok != okBefore {
				t.Errorf("ok{acme} %v → %v for a client that proved nothing", okBefore, ok)
			}
		})
	}
}

// TestKeylessCertificate: a client with a copy of a tenant's certificate
// and no key completes no handshake and is counted as no ok: the
// certificate is accepted in VerifyConnection, which crypto/tls runs before
// it checks the CertificateVerify, so ok is counted only once the
// handshake is done. The refusal names the certificate. What the client
// sees differs, as the README says: the signature's decrypt_error for an
// accepted certificate, bad_certificate for a refused one.
func TestKeylessCertificate(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tc := range []struct {
			leaf   *certstest.Leaf
			want   Result
			reason string
			alert  string
		}{
			{k.acme, ResultOther, "certificate of tenant acme, but tls: invalid signature", "error decrypting message"},
			{k.revoked, ResultRevoked, "on CRL", "bad certificate"},
		} {
			t.Run(tls.VersionName(v)+" "+tc.leaf.Cert.Subject.CommonName, func(t *testing.T) {
				okBefore := counter(t, m, "web", "acme", ResultOK)
				cc := k.clientConfig(nil)
				cc.MinVersion, cc.MaxVersion = v, v
				cc.Certificates = []tls.Certificate{publicOnly(tc.leaf)}
				clientErr := make(chan error, 1)
				cs, err := serverHandshake(t, srv, func(c *net.TCPConn) {
					tc := tls.Client(c, cc)
					c.SetDeadline(time.Now().Add(10 * time.Second))
					err := tc.Handshake()
					if err == nil { // TLS 1.3: the server's verdict follows the client's Finished
						_, err = tc.Read(make([]byte, 1))
					}
					clientErr <- err
				})
				if err == nil {
					t.Fatal("handshake completed without the key")
				}
				r := m.HandshakeFailed("web", testSource, cs, err)
				if r.Result != tc.want || r.FingerprintSHA256 != FingerprintSHA256(tc.leaf.Cert) || !strings.Contains(r.Reason, tc.reason) {
					t.Errorf("server error %v: refusal %+v, want %s with the certificate, reason saying %q", err, r, tc.want, tc.reason)
				}
				if ok := counter(t, m, "web", "acme", ResultOK); ok != okBefore {
					t.Errorf("ok{acme} %v → %v without proof of the key", okBefore, ok)
				}
				if ce := <-clientErr; ce == nil || !strings.Contains(ce.Error(), tc.alert) {
					t.Errorf("client saw %v, want the alert %q", ce, tc.alert)
				}
			})
		}
	}
	// With the key, the same certificate is ok once the handshake is done.
	okBefore := counter(t, m, "web", "acme", ResultOK)
	r := handshake(t, srv, k.clientConfig(k.acme), false)
	if r.serverErr != nil {
		t.Fatal(r.serverErr)
	}
	if ok := counter(t, m, "web", "acme", ResultOK); ok != okBefore {
		t.Errorf("ok{acme} counted before HandshakeDone: %v → %v", okBefore, ok)
	}
	id, err := m.HandshakeDone("web", testSource, r.server)
	if err != nil || id.Tenant != "acme" {
		t.Fatalf("HandshakeDone = %+v, %v", id, err)
	}
	// The Peer is the connection's, not only the certificate's.
	if id.Listener != "web" || id.Source != testSource || id.ServerName != r.server.ServerName || id.FingerprintSHA256 == "" {
		t.Errorf("HandshakeDone Peer = %+v, want listener web, source %v, server name %q and a fingerprint", id, testSource, r.server.ServerName)
	}
	if ok := counter(t, m, "web", "acme", ResultOK); ok != okBefore+1 {
		t.Errorf("ok{acme} %v → %v after HandshakeDone, want +1", okBefore, ok)
	}
}

// TestHandshakeDoneAfterReload: a certificate revoked between
// VerifyConnection and the end of the handshake is refused by
// HandshakeDone, counted and remembered as revoked, not ok.
func TestHandshakeDoneAfterReload(t *testing.T) {
	k := newPKI(t)
	m := newManager(t, Config{}, k.policy)
	srv, _ := m.TLSConfig("web")
	r := handshake(t, srv, k.clientConfig(k.acme), false)
	if r.serverErr != nil {
		t.Fatal(r.serverErr)
	}
	k.acmeCA.CRL(t, k.acmeCRL, time.Now().Add(time.Hour), k.acme)
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	okBefore, revBefore := counter(t, m, "web", "acme", ResultOK), counter(t, m, "web", "acme", ResultRevoked)
	if _, err := m.HandshakeDone("web", testSource, r.server); ResultOf(err) != ResultRevoked {
		t.Fatalf("HandshakeDone after the revocation: %v", err)
	}
	if ok, rev := counter(t, m, "web", "acme", ResultOK), counter(t, m, "web", "acme", ResultRevoked); ok != okBefore || rev != revBefore+1 {
		t.Errorf("ok %v → %v, revoked %v → %v; want ok unchanged, revoked +1", okBefore, ok, revBefore, rev)
	}
	if got := m.Refusals(); len(got) != 1 || got[0].Result != ResultRevoked || got[0].FingerprintSHA256 != FingerprintSHA256(k.acme.Cert) {
		t.Errorf("refusals %+v", got)
	}
}
