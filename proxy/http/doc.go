// Package httpproxy (folder proxy/http) is the HTTP side of gatehouse: it
// routes each request of an already authenticated tenant to that tenant's
// internal backend by host and longest path prefix, rewrites the identity
// headers the backend may trust, enforces request limits, and, for SOAP
// listeners, inspects the XML envelope and its operation before a byte
// reaches the backend. It never decides who the tenant is: that comes from the
// verified client certificate, handed in through the request context.
package httpproxy
