// Package proxy runs gatehouse's TLS listeners: it binds them, terminates
// TLS with the client certificate the TLSSource demands, learns the tenant
// from the verified certificate, and hands each connection to its protocol:
// HTTPS and SOAP (proxy/http), a plain TLS relay for tcp (proxy/relay), and
// TN3270/TN5250 sessions (proxy/telnet; on a StartTLS listener the telnet
// handler runs the handshake inside Telnet START_TLS and calls back here to
// identify and admit the tenant). It applies whole policy generations
// atomically (bind new addresses first, then swap), drains what a reload
// removes, ends the tcp and telnet sessions and upgraded (WebSocket) HTTP
// connections whose route a reload removed or changed, and closes
// connections whose certificate stops checking out (Revalidate). It never
// loads certificates itself.
//
// Limits (see Limits and the Default constants here and in proxy/http):
// handshake and header-read timeouts, idle timeout, header size, connections
// per listener and per tenant on a listener, and per request body size, body
// read idle time, backend timeout and requests in flight per tenant, so one
// tenant's flood is refused before it can starve another.
//
// Metrics: gatehouse_proxy_connections_active{listener,tenant},
// gatehouse_proxy_bytes_total{listener,tenant,direction} (client side, TLS
// records included), and from proxy/http gatehouse_http_requests_total,
// gatehouse_http_request_duration_seconds and gatehouse_soap_rejections_total,
// and from proxy/telnet gatehouse_telnet_sessions_total.
package proxy
