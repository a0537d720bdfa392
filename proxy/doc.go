// Package proxy runs gatehouse's TLS listeners: it binds them, terminates
// TLS with the client certificate the TLSSource demands, learns the tenant
// from the verified certificate, and hands each connection to its protocol:
// HTTPS and SOAP (proxy/http), a plain TLS relay for tcp (proxy/relay), and
// TN3270/TN5250/TNVIP sessions (proxy/telnet; on a StartTLS listener the telnet
// handler runs the handshake inside Telnet START_TLS and calls back here to
// identify and admit the tenant). Connections from other sources (a
// tunnel stream, a socket another process verified, a test) enter through
// ServeConn with the certs.Peer their handshake proved: the certificate is
// identified again, and from there they are admitted, routed, limited,
// revalidated and drained exactly as the listeners' own. A gateway's
// Tunnel listeners serve no protocol: each identified and admitted
// connection goes to Config.Handoff, which sends it down a tunnel. Every
// backend connection asks Config.DialControl first, when set (a
// connector's allow-list). Each connection
// carries its one Peer from identification to close; an HTTP connection
// reaches its server through a one-connection listener that carries it, so
// its requests learn the Peer without a lookup.
//
// It applies whole policy generations atomically (bind new addresses
// first, then swap), drains what a reload
// removes, ends the tcp and telnet sessions and upgraded (WebSocket) HTTP
// connections whose route a reload removed or changed, and closes
// connections whose certificate stops checking out (Revalidate). It never
// loads certificates itself.
//
// Limits come from the policy generation in force, never from here: the
// listener's (policy.Listener.Limits: connections, the pre-handshake
// budget per listener and per source, handshake and drain timeouts, the
// HTTP server's header size and timeouts) and, once the certificate proved
// the tenant, the tenant's (ForTenant: connections per tenant, terminal
// sessions, tcp and terminal idle and session length; proxy/http takes the
// per-request ones). A reload applies them to the next connection; open
// tcp and terminal sessions and upgraded connections get the new timeouts
// at once (those set up during the reload included), and keep-alive
// HTTP connections of changed HTTP server limits are closed once idle.
// Unfinished handshakes that exceed their budget are evicted from the
// network and source holding the most (see gate), and new connections are
// closed at once, and backend connections refused, while the process is
// within DescriptorReserve of RLIMIT_NOFILE (relay.Descriptors).
//
// Metrics: gatehouse_proxy_connections_active{listener,tenant,environment},
// gatehouse_proxy_handshakes_pending{listener},
// gatehouse_proxy_connections_refused_total{listener,reason},
// gatehouse_proxy_bytes_total{listener,tenant,direction} (client side, TLS
// records included, of the listeners' own sockets: a connection handed to
// ServeConn is its source's to count), and from proxy/http
// gatehouse_http_requests_total, gatehouse_http_request_duration_seconds
// and gatehouse_soap_rejections_total, and from proxy/telnet
// gatehouse_telnet_sessions_total.
package proxy
