// Package relay holds the connection plumbing every gatehouse listener shares:
// an accept loop with backoff and a connection limit, a bounded TLS handshake,
// byte counting on the wire, a half-closing copy between two connections with
// pooled buffers, and a Timer that ends a session idle or open too long. It
// knows nothing of tenants, routes or protocols.
package relay
