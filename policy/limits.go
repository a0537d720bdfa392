package policy

import (
	"net/netip"
	"time"
)

// Limits bound what the clients of one listener may hold and how long they
// may take. The configuration resolves every field: its defaults, then the
// listener's overrides, then the tenant's (ForTenant). A zero duration or
// count means "off" only where the field says so.
type Limits struct {
	// Listener-wide: decided before a client has proved a tenant, so a
	// tenant cannot override them.

	// MaxConns caps the connections the listener holds, identified or not.
	MaxConns int
	// MaxPreHandshake caps the connections that have not finished the TLS
	// handshake, so clients that prove nothing can never take the slots of
	// identified tenants. MaxPreHandshakePerSource caps those of one
	// source, counted per SourcePrefix (an IPv6 /64 is one machine).
	MaxPreHandshake          int
	MaxPreHandshakePerSource int
	// HandshakeTimeout bounds the TLS handshake (and, for STARTTLS, the
	// Telnet negotiation before it), slow clients included.
	HandshakeTimeout time.Duration
	// DrainTimeout is how long connections of a listener that a reload
	// removed or changed may finish before they are closed.
	DrainTimeout time.Duration

	// Per tenant of the listener.

	// MaxConnsPerTenant caps one tenant's identified connections.
	MaxConnsPerTenant int
	HTTP              HTTPLimits
	// TCP bounds tcp listeners' sessions and upgraded (WebSocket) HTTP
	// connections.
	TCP    StreamLimits
	Telnet TelnetLimits
}

// HTTPLimits bound the requests of https and soap listeners.
type HTTPLimits struct {
	// MaxInFlight caps one tenant's requests in flight; more get 503.
	MaxInFlight int
	// MaxHeaderBytes caps a request's header block; a larger one gets 431.
	MaxHeaderBytes int
	// MaxBodyBytes caps a request body; a larger one gets 413.
	MaxBodyBytes int64
	// BodyBufferBytes: a body up to this size is read whole before any of
	// the request reaches the backend, so a refused or aborted body never
	// half-arrives; a larger one (up to MaxBodyBytes) is streamed.
	BodyBufferBytes int64
	// BodyBufferTotal caps the request bodies the listener holds in
	// memory at once, all tenants together; more get 503. Listener-wide.
	BodyBufferTotal int64
	// BodyBufferTimeout bounds the reading of a body that is read whole
	// (up to BodyBufferBytes, a SOAP envelope) in all.
	BodyBufferTimeout time.Duration
	// ReadHeaderTimeout bounds reading one request's headers.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long.
	IdleTimeout time.Duration
	// BodyReadTimeout bounds the wait for the next bytes of a request body.
	BodyReadTimeout time.Duration
	// BackendTimeout bounds the wait for a backend's response headers.
	BackendTimeout time.Duration
	// Engine is how HTTP/1.1 requests reach their backends: "std"
	// (net/http's Transport) or "fast" (on the request's own goroutine);
	// "" is std. Listener-wide.
	Engine string
}

// StreamLimits bound a relayed session. Zero means no limit.
type StreamLimits struct {
	// IdleTimeout ends a session without a byte in either direction this long.
	IdleTimeout time.Duration
	// MaxSession ends any session this long after it began.
	MaxSession time.Duration
}

// TelnetLimits bound the sessions of tn3270 and tn5250 listeners.
type TelnetLimits struct {
	StreamLimits
	// MaxSessionsPerTenant caps one tenant's open terminal sessions.
	MaxSessionsPerTenant int
}

// ForTenant returns the limits that apply to tenant's connections on l: the
// listener's, with the tenant's overrides.
func (l Listener) ForTenant(tenant string) Limits {
	if lim, ok := l.TenantLimits[tenant]; ok {
		return lim
	}
	return l.Limits
}

// SourcePrefix is how many leading bits of a source address count as one
// source for per-source limits: a cloud VM owns a whole IPv6 /64, and
// counting its addresses one by one would let it multiply its share.
type SourcePrefix struct {
	V4 int // 1..32
	V6 int // 1..128
}

// DefaultSourcePrefix counts IPv4 sources by address and IPv6 sources by /64.
var DefaultSourcePrefix = SourcePrefix{V4: 32, V6: 64}

// Source returns the prefix of addr that per-source limits count by. Lengths
// out of range (a zero SourcePrefix) take DefaultSourcePrefix's.
func (s SourcePrefix) Source(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := s.V6
	if addr.Is4() {
		bits = s.V4
		if bits < 1 || bits > 32 {
			bits = DefaultSourcePrefix.V4
		}
	} else if bits < 1 || bits > 128 {
		bits = DefaultSourcePrefix.V6
	}
	p, _ := addr.WithZone("").Prefix(bits)
	return p
}
