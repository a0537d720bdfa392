// Package relay holds the connection plumbing every gatehouse listener shares:
// an accept loop with backoff that lets its caller admit or refuse each
// connection in accept order, a bounded TLS handshake, byte counting on the
// wire, a half-closing copy between two connections with pooled buffers, a
// Timer that ends a session idle or open too long, and the token Bucket
// behind every rate bound. It knows nothing of tenants, routes or
// protocols.
package relay
