// Package certs owns TLS on gatehouse's listeners: the server configuration of
// each listener, the mapping of a client certificate (verified up to a
// tenant's root) to exactly one tenant, CRL checks of every CA of the chain,
// hot reload of certificates, keys, CAs and CRLs, session-ticket keys, the
// handshake metrics and the last refused handshakes, and the PKI operations
// behind `gatehouse certs`.
//
// It imports policy and the standard library (plus Prometheus and PKCS#12)
// and knows nothing of sockets beyond a tls.ConnectionState and a client's
// address: proxies ask it for a *tls.Config and for the tenant of a
// connection, and tell it how each handshake ended (HandshakeDone,
// HandshakeFailed), since only a completed handshake proves the client
// holds its certificate's key. HandshakeDone makes the connection's Peer
// (tenant, certificate, listener, source, server name), the one identity
// type every proxy passes on as a value.
package certs
