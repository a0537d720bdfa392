package daemon

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// leaveAfterCertificate is a client connection that sends its hello whole
// and, of its second flight, the records up to its Certificate; then it
// half-closes. crypto/tls writes each handshake message of a flight as its
// own record and the flight in one Write.
type leaveAfterCertificate struct {
	net.Conn
	writes int
}

func (c *leaveAfterCertificate) Write(b []byte) (int, error) {
	c.writes++
	if c.writes == 1 {
		return c.Conn.Write(b)
	}
	end := 0
	for end+5 <= len(b) {
		typ, n := b[end], int(b[end+3])<<8|int(b[end+4])
		end += 5 + n
		if typ != 20 { // a change_cipher_spec first does not count
			break
		}
	}
	if _, err := c.Conn.Write(b[:end]); err != nil {
		return 0, err
	}
	c.Conn.(*net.TCPConn).CloseWrite()
	return len(b), nil
}

// startTLS runs the client side of Telnet START_TLS on c up to the point
// where the TLS handshake begins.
func startTLS(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	expect := func(want []byte) {
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %v (%v), want %v", got, err, want)
		}
	}
	expect([]byte{255, 253, 46}) // IAC DO START_TLS
	c.Write([]byte{255, 251, 46})
	expect([]byte{255, 250, 46, 1, 255, 240}) // IAC SB START_TLS FOLLOWS IAC SE
	c.Write([]byte{255, 250, 46, 1, 255, 240})
}

// TestCertificateThenCloseIsRefused: a client that sends a certificate no
// tenant trusts and closes before the handshake ends is a refusal with
// that certificate, on an implicit-TLS listener and after START_TLS alike,
// not a client that closed (TLS 1.2 judges the certificate only after the
// key exchange the client never sent).
func TestCertificateThenCloseIsRefused(t *testing.T) {
	r := startRealTLS(t)
	stranger := certstest.NewCA(t, "stranger").Client(t, "stranger")
	for _, tc := range []struct {
		listener, addr string
		starttls       bool
	}{{"web", r.web, false}, {"tn", r.tn, true}} {
		t.Run(tc.listener, func(t *testing.T) {
			c, err := net.Dial("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.starttls {
				startTLS(t, c)
			}
			cc := &tls.Config{RootCAs: r.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{stranger.TLS}}
			tls.Client(&leaveAfterCertificate{Conn: c}, cc).Handshake()
			var got certs.Refusal
			waitFor(t, "the refusal in the status", func() bool {
				for _, ref := range r.d.Status().Refusals {
					if ref.Listener == tc.listener {
						got = ref
						return true
					}
				}
				return false
			})
			if got.Result != certs.ResultUnknownCA || got.FingerprintSHA256 != certs.FingerprintSHA256(stranger.Cert) {
				t.Errorf("refusal %+v, want unknown_ca with the stranger's certificate", got)
			}
			if v, _ := handshakes(t, r.d, tc.listener, "none", certs.ResultClientClosed); v != 0 {
				t.Errorf("counted as client_closed too: %v", v)
			}
		})
	}
}

// TestRefusalLogLineBounded: the refusal log line carries the refusal's
// reason, bounded and printable, not the handshake's error, which repeats
// the client's names as they came.
func TestRefusalLogLineBounded(t *testing.T) {
	r := startRealTLS(t)
	huge := strings.Repeat("x", 3000)
	long := r.ca.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "long", Organization: []string{huge}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	r.ca.CRL(t, r.crl, time.Now().Add(time.Hour), r.revoked, long)
	if err := r.d.Reload(); err != nil {
		t.Fatal(err)
	}
	r.dial(t, long, true)
	var line string
	waitFor(t, "the refusal's log line", func() bool {
		for _, l := range strings.Split(r.logs.String(), "\n") {
			if strings.Contains(l, `msg="TLS handshake refused"`) {
				line = l
			}
		}
		return line != ""
	})
	if !strings.Contains(line, "result=revoked") || !strings.Contains(line, "reason=") || !strings.Contains(line, "on CRL") {
		t.Errorf("refusal log line lacks its result and reason:\n%s", line)
	}
	// Subject, issuer and reason are each cut to 256 characters.
	if strings.Contains(line, strings.Repeat("x", 300)) || len(line) > 2000 {
		t.Errorf("refusal log line of %d bytes repeats the certificate's names uncut:\n%.600s…", len(line), line)
	}
}
