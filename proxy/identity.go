package proxy

import (
	"crypto/tls"
	"net/netip"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// TLSSource supplies the TLS side of every listener; the daemon adapts the
// certificate manager to it. proxy relies on it for every trust decision it
// makes about a peer.
type TLSSource interface {
	// TLSConfig returns the server configuration of a listener. It must
	// require and verify a client certificate, and authorise the tenant in
	// VerifyConnection so resumed sessions are authorised too.
	TLSConfig(listener string) (*tls.Config, error)
	// Identify says which tenant the verified peer is, re-checking
	// revocation (the Peer of the certificate alone).
	Identify(cs tls.ConnectionState) (certs.Peer, error)
	// HandshakeDone tells the TLS layer that a handshake from source
	// completed (only then has the client proved it holds its
	// certificate's key) and returns the connection's Peer: the
	// certificate's identity, listener, source and server name.
	HandshakeDone(listener string, source netip.AddrPort, cs tls.ConnectionState) (certs.Peer, error)
	// HandshakeFailed lets the TLS layer count and remember a failed
	// handshake from source; cs is the connection's state after the
	// failure, with the certificates the client sent. The Refusal it
	// returns classifies it and names that certificate, for the refusal's
	// log line.
	HandshakeFailed(listener string, source netip.AddrPort, cs tls.ConnectionState, err error) certs.Refusal
}

// The certificate manager is the TLS source the daemon hands in.
var _ TLSSource = (*certs.Manager)(nil)
