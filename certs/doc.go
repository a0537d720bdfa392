// Package certs owns TLS on gatehouse's listeners: the server configuration of
// each listener, the mapping of a client certificate to exactly one tenant,
// CRL checks, hot reload of certificates, keys, CAs and CRLs, session-ticket
// keys, and the PKI operations behind `gatehouse certs`.
//
// It imports policy and the standard library (plus Prometheus and PKCS#12)
// and knows nothing of sockets beyond a tls.ConnectionState: proxies ask it
// for a *tls.Config and for the tenant of a connection.
package certs
