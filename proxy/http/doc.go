// Package httpproxy (folder proxy/http) is the HTTP side of gatehouse: it
// routes each request of an already authenticated tenant to that tenant's
// internal backend by host and longest path prefix, rewrites the identity
// headers the backend may trust, enforces request limits, and, for SOAP
// listeners, inspects the XML envelope and its operation before a byte
// reaches the backend. It never decides who the tenant is: that comes from
// the verified client certificate, the connection's certs.Peer handed in
// through the request context (WithPeer), and nothing in a request can
// name another tenant's routes. Nor does it judge routes: New builds those
// policy.CheckListeners passed.
//
// Limits: the requests of a tenant are bounded by that tenant's limits on
// the listener (policy.Listener.ForTenant: limits.http with the listener's
// and the tenant's overrides): requests in flight, body size, body
// buffering, the wait for body bytes and for the backend's answer. A
// policy built without a configuration (library use, tests) leaves them
// zero and gets the Default* constants. What no key reaches is a fixed,
// documented bound: the dial and TLS handshake to a backend (5 s), the
// passive back-off (10 s doubling to 60 s), a health check (2 s), the SOAP
// inspector's XML limits (DefaultMaxSOAPBytes and the others).
//
// Routing: among the tenant's routes, the longest path prefix (matched on
// whole segments) wins, then a route naming the request's host over one for
// any host. No route means 403 and no backend is contacted. The path routed
// on is the request's path with every segment's ;parameters cut off, then
// percent-decoded, empty segments merged. The query is forwarded as it
// came; the path as net/url writes it (URL.EscapedPath): as it came when it
// is a valid URL path, otherwise (a '|', '{', '}', '^', '"', a byte over
// 0x7f …) decoded and percent-encoded again as a whole ("/{x}" goes on as
// "/%7Bx%7D", "/%41|b" as "/A%7Cb"). Routing reads that same path. A path that a backend could resolve elsewhere is refused
// with 400 before routing (see routingPath): a segment of dots (and
// spaces) in any spelling ("..;", "%2e%2e", "...", ".. ", full-width
// "．．"), a backslash, an encoded '/', '\' or ';' (also inside
// ;parameters, also full-width), an encoded '?' or '#', a segment that is
// not UTF-8 (overlong "%c0%ae"), double encoding ("%252e"), a control
// character; and ;parameters at all unless the route has path_params.
//
// Request heads: a head over the listener's max_header_size (request line
// and fields, counted as HTTP/1.1 writes them) gets 431 from the handler,
// with an access log line, over HTTP/1.1 and HTTP/2, whether one field or
// many are too long. The server reads up to HeaderReadLimit (twice the
// limit) so that Go's HTTP/2 server does not end the connection on a single
// long field first; over HTTP/1.1 the FramingGuard answers 431 and ends
// the connection once a head runs 4 KiB past the limit, so an HTTP/1.1
// head costs at most the limit, and the guard keeps no copy of it.
//
// Request bodies: a declared Content-Length over max_body_size gets 413
// before anything is sent to a backend. A body up to body_buffer_size is
// read whole first (in pooled 32 KiB chunks; at most in_flight_per_tenant
// such bodies per tenant) and goes on with its length, so one that breaks
// off, stalls (408), is malformed (400) or runs over the limit (413) never
// half-arrives; a longer body streams on after its start, and one that
// fails on the way ends the backend's connection before the body's end, so
// the backend never sees a complete request. SOAP bodies are read whole by
// the inspector anyway (up to DefaultMaxSOAPBytes). What is read whole must
// arrive within body_buffer_timeout in all (408), and its chunks count in
// the listener's body_buffer_total, shared by all its tenants and kept
// across reloads (InFlight): a request that would need more gets 503 at
// once, and the log says when the budget fills and when it has room again.
// A chunk goes back as soon as it was forwarded, so a streamed body holds
// none while its rest trickles in; gatehouse_http_body_buffer_bytes shows
// what each listener holds. A body read whole goes on without the client's
// "Expect: 100-continue": the client had its 100 from the proxy, and the
// backend gets the body at once; a streamed body keeps it.
//
// Backends: a route may have several. Requests take them round robin,
// skipping those marked down. A request that fails on a backend's connection
// (refused, reset, TLS failure, closed before the answer; not a slow answer)
// marks it down for 10 s, doubling with each further failure up to 60 s
// (backendDownTime, backendDownMax), and goes to the next backend only when that is safe:
// no connection was had (nothing of it was sent), or it is an idempotent
// method without a body. When every backend is down the answer is 502 at
// once, without contacting any. A route with one backend always tries it.
// Backend connections go through Config.Descriptors: within the process's
// descriptor reserve a request gets 503 and no backend is marked down.
// With a health path, Start runs one checker per backend that GETs the path
// (on the backend's host, over the route's backend TLS settings) every
// interval; an error or a status outside 2xx/3xx keeps the backend out until
// a check passes. Close stops the checkers. A new generation inherits the
// state of the previous one's matching backends. gatehouse_backend_up
// reports each backend by listener, tenant, route and backend position; the
// access log names the backend (index, -1 none) and the attempts.
//
// To the backend: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host,
// X-Gatehouse-Tenant, X-Gatehouse-Environment, X-Client-Cert-Fingerprint,
// X-Client-Cert-Subject and X-Gatehouse-Request-Id are always set by the
// proxy; whatever the client
// sent under those names, or as Forwarded / X-Real-IP, is dropped. A header
// name with anything but letters, digits and '-' ("X_Gatehouse_Tenant",
// "X.Tenant") is dropped too, as nginx does, since CGI-style backends fold
// '_' into '-'; the proxy's log says so at debug level. Request trailers
// are not forwarded. Hop-by-hop headers are stripped. A Connection header
// may name close, keep-alive, te and upgrade only: any other option would
// have the proxy strip that field after it was checked (SOAPAction), so it
// is refused with 400.
//
// Upgrades (WebSocket): only an RFC 6455 opening handshake may ask to
// switch protocols, only on an https route with websocket: true (see
// upgradeRefusal); any other upgrade, and every upgrade on a soap listener,
// is refused before a backend sees it. When the backend answers with 101,
// the client connection becomes a tunnel on the route it was routed on.
// The connection's owner learns the route's key and the tunnel's
// relay.Timer first (UpgradeHook) and refuses the tunnel with 503 when a
// reload removed or changed the route meanwhile; afterwards it ends the
// tunnel when a reload does. The tunnel is bounded by its tenant's
// limits.tcp: idle_timeout without a byte either way, max_session in all;
// the owner gives the timer the limits of each new generation, as it does
// for tcp sessions. It no longer counts as a request in
// flight. Its access log line, written when it ends, adds tunnel_in,
// tunnel_out and tunnel_end.
//
// HTTP/1 framing: FramingGuard refuses what two parsers could read
// differently (Content-Length with Transfer-Encoding, obs-fold, bad chunks)
// before net/http sees it. A connection whose upgrade is refused or
// declined is closed after the answer.
//
// SOAP: POST only; text/xml carries a SOAP 1.1 envelope, application/soap+xml
// a 1.2 one. The body is read and checked as it streams in (Inspect: size,
// depth, element count, attributes, name and text lengths, no DOCTYPE, no
// processing instructions, UTF-8 only), then the exact bytes read are
// forwarded. The action comes from SOAPAction (1.1), the action parameter
// (1.2) or wsa:Action, which must agree when several are present; it must be
// in the route's allow-list (empty denies all), and the single element in
// the Body must be the operation the entry names: the element it spells
// out ("ACTION {NAMESPACE}NAME"), or else the one the action names, local
// name and namespace (actionNames: "urn:acme:GetOrder" is
// {urn:acme}GetOrder, WCF's "http://tempuri.org/IOrders/GetOrder" is
// {http://tempuri.org/}GetOrder). Refusals answer a Fault in the caller's version with a correlation
// id that is also logged and sent as X-Correlation-Id. ?wsdl, ?xsd and
// ?singleWsdl (in any parameter, split at '&' or ';') are refused unless
// the route allows WSDL, and then pass only as a GET or HEAD without a
// body whose query holds metadata parameters alone (no ';', a value only
// a file name): nothing inspects such a request.
package httpproxy
