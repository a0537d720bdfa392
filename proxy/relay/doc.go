// Package relay holds the connection plumbing every gatehouse listener shares:
// an accept loop with backoff that lets its caller admit or refuse each
// connection in accept order, a bounded TLS handshake, byte counting on the
// wire, a half-closing copy between two connections, the one pool of copy
// buffers every proxy uses (Buffers: also the HTTP reverse proxy's), a
// Timer that ends a session idle or open too long, the token Bucket behind
// every rate bound, the keyed Limiter behind every per-key budget
// (the proxies key it by listener and tenant), the backend dial of stream sessions (DialBackend), and
// the descriptor reserve every accept and backend dial asks (Descriptors).
// It knows nothing of tenants, routes or protocols.
package relay
