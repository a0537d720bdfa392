// Package relay holds the connection plumbing every gatehouse listener shares:
// an accept loop with backoff and a connection limit, a bounded TLS handshake,
// byte counting on the wire, and a half-closing copy between two connections
// with pooled buffers. It knows nothing of tenants, routes or protocols.
package relay
