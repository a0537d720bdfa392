// Package proxy runs gatehouse's TLS listeners: it binds them, terminates
// TLS with the client certificate the TLSSource demands, learns the tenant
// from the verified certificate, and hands each connection to its protocol:
// HTTPS and SOAP (proxy/http), a plain TLS relay for tcp (proxy/relay), and
// later TN3270/TN5250 (proxy/telnet). It applies whole policy generations
// atomically, drains what a reload removes, and closes connections whose
// certificate stops checking out. It never loads certificates itself.
package proxy
