package proxy

import (
	"crypto/tls"
	"net/netip"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// Identity is who a verified client certificate proves the peer to be.
type Identity struct {
	Tenant            string
	FingerprintSHA256 string // hex SHA-256 over the DER certificate
	Subject           string
}

// TLSSource supplies the TLS side of every listener; the daemon adapts the
// certificate manager to it. proxy relies on it for every trust decision it
// makes about a peer.
type TLSSource interface {
	// TLSConfig returns the server configuration of a listener. It must
	// require and verify a client certificate, and authorise the tenant in
	// VerifyConnection so resumed sessions are authorised too.
	TLSConfig(listener string) (*tls.Config, error)
	// Identify says which tenant the verified peer is, re-checking
	// revocation.
	Identify(cs tls.ConnectionState) (Identity, error)
	// HandshakeDone tells the TLS layer that a handshake from source
	// completed (only then has the client proved it holds its
	// certificate's key) and says who the peer is, as Identify does.
	HandshakeDone(listener string, source netip.AddrPort, cs tls.ConnectionState) (Identity, error)
	// HandshakeFailed lets the TLS layer count and remember a failed
	// handshake from source; cs is the connection's state after the
	// failure, with the certificates the client sent. The Refusal it
	// returns classifies it and names that certificate, for the refusal's
	// log line.
	HandshakeFailed(listener string, source netip.AddrPort, cs tls.ConnectionState, err error) certs.Refusal
}
