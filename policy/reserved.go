package policy

// ReservedTenantIDs are the label values the daemon gives traffic that
// proved no tenant; a tenant with one of these ids would be counted, logged
// and shown together with that traffic, so the configuration refuses them.
// The value says where each is used.
var ReservedTenantIDs = map[string]string{
	"unknown": "the tenant label of connections that never proved a tenant (gatehouse_bytes_total, terminal sessions, the access log)",
	"none":    "the tenant label of TLS handshakes refused before a tenant was known (gatehouse_tls_handshakes_total)",
	"-":       "the tenant label of HTTP requests no route took (gatehouse_http_requests_total, the access log)",
}
