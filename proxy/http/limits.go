package httpproxy

import (
	"cmp"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// Defaults of the request limits, for a policy built without a
// configuration (library use, tests), which leaves them zero; the
// configuration sets every one (limits.http). They are sized for
// integration traffic (API calls, SOAP messages, file transfers of a few
// megabytes), not for media streaming.
const (
	// DefaultMaxBodyBytes caps an HTTPS request body.
	DefaultMaxBodyBytes = 32 << 20
	// DefaultMaxInFlightPerTenant caps the requests one tenant has in flight
	// on one listener; more get 503 at once, so a flood from one tenant
	// queues neither in the proxy nor at other tenants' backends.
	DefaultMaxInFlightPerTenant = 256
	// DefaultBodyBufferBytes: a request body up to this size is read whole
	// before anything of the request reaches the backend.
	DefaultBodyBufferBytes = 1 << 20
	// DefaultBackendTimeout bounds the wait for a backend's response headers.
	DefaultBackendTimeout = 60 * time.Second
	// DefaultBodyReadTimeout bounds how long the proxy waits for the next
	// bytes of a request body, so a client trickling a body cannot hold an
	// in-flight slot and a backend connection for ever. It is an idle
	// bound, not a total one: large uploads at a steady pace are fine.
	DefaultBodyReadTimeout = 30 * time.Second
	// DefaultBodyBufferTotal caps the request bodies one listener holds
	// in memory at once; a request that would need more gets 503.
	DefaultBodyBufferTotal = 256 << 20
	// DefaultBodyBufferTimeout bounds the reading of a body that is read
	// whole before it goes on, in all.
	DefaultBodyBufferTimeout = 60 * time.Second
)

// Fixed bounds that no configuration key reaches, sized so that working
// backends never meet them; the README lists them. An admin tunes what
// they guard with the keys that exist: health_interval, the backends of a
// route, backend_timeout.
const (
	// dialTimeout bounds connecting to a backend and its TLS handshake:
	// a refused connection fails at once, an unreachable host after
	// this, as for tcp and telnet backends.
	dialTimeout = 5 * time.Second
	// backendDownTime is how long a backend that failed a request is
	// skipped when its route has others; each further failure doubles
	// it, up to backendDownMax.
	backendDownTime = 10 * time.Second
	backendDownMax  = 60 * time.Second
	// healthTimeout bounds one active health check (and never exceeds
	// the route's interval).
	healthTimeout = 2 * time.Second
)

// Defaults of XMLLimits, and the bounds of every SOAP envelope the proxy
// inspects: far above real messages, they guard the parser. An envelope
// is also held to the tenant's max_body_size.
const (
	DefaultMaxSOAPBytes    = 4 << 20
	DefaultMaxXMLDepth     = 64
	DefaultMaxXMLElements  = 50_000
	DefaultMaxXMLAttrs     = 32
	DefaultMaxXMLNameLen   = 512
	DefaultMaxXMLTextBytes = 2 << 20
)

// HeaderReadLimit is the MaxHeaderBytes to give the http.Server of a
// listener whose request heads are limited to maxHeader bytes. Go's HTTP/2
// server closes the whole connection (COMPRESSION_ERROR) on a single header
// field longer than MaxHeaderBytes, and answers 431 only when the sum of
// shorter fields is over it; so the server reads up to twice the limit,
// and the handler answers 431 itself for a head over the limit. HTTP/1.1
// does not need the doubling: there the FramingGuard (given maxHeader)
// ends a head 4 KiB past the limit with 431, before net/http's bound.
func HeaderReadLimit(maxHeader int) int {
	return 2 * maxHeader
}

// requestLimits bound what one request may cost.
type requestLimits struct {
	// MaxHeaderBytes caps the request line and header fields, counted as
	// HTTP/1.1 writes them; a larger head gets 431. Zero: no check here
	// (the server's MaxHeaderBytes alone).
	MaxHeaderBytes int
	MaxBodyBytes   int64
	// BodyBufferBytes: a request body up to this size is read whole before
	// anything of the request is sent to the backend, so a body refused or
	// broken off on the way never half-arrives; a larger one is streamed.
	// Negative streams every body.
	BodyBufferBytes int64
	// BodyBufferTotal is the listener's budget for request bodies held in
	// memory (the listener's own value counts, not a tenant's).
	BodyBufferTotal int64
	// BodyBufferTimeout bounds, in all, the reading of a body read whole
	// (up to BodyBufferBytes, a SOAP envelope).
	BodyBufferTimeout    time.Duration
	MaxInFlightPerTenant int
	BackendTimeout       time.Duration
	BodyReadTimeout      time.Duration
}

// XMLLimits bound the SOAP inspector. Zero fields take the defaults.
type XMLLimits struct {
	MaxBytes    int64 // whole body
	MaxDepth    int   // element nesting
	MaxElements int   // elements in the document
	MaxAttrs    int   // attributes on one element, namespace declarations included
	MaxNameLen  int   // local name of an element or attribute
	MaxTextLen  int   // one run of character data or one attribute value
}

func defaultLimits() requestLimits {
	return requestLimits{
		MaxBodyBytes:         DefaultMaxBodyBytes,
		BodyBufferBytes:      DefaultBodyBufferBytes,
		BodyBufferTotal:      DefaultBodyBufferTotal,
		BodyBufferTimeout:    DefaultBodyBufferTimeout,
		MaxInFlightPerTenant: DefaultMaxInFlightPerTenant,
		BackendTimeout:       DefaultBackendTimeout,
		BodyReadTimeout:      DefaultBodyReadTimeout,
	}
}

// withPolicy returns l with the limits a compiled policy sets. The
// configuration resolves every one of them; a zero HTTPLimits is a policy
// built without a configuration (library use, tests), and leaves l as it is.
func (l requestLimits) withPolicy(p policy.HTTPLimits) requestLimits {
	if q := p; q.Engine != "" {
		q.Engine = "" // not a limit: a policy may name the engine only
		p = q
	}
	if p == (policy.HTTPLimits{}) {
		return l
	}
	if p.MaxInFlight > 0 {
		l.MaxInFlightPerTenant = p.MaxInFlight
	}
	if p.MaxHeaderBytes > 0 {
		l.MaxHeaderBytes = p.MaxHeaderBytes
	}
	if p.MaxBodyBytes > 0 {
		l.MaxBodyBytes = p.MaxBodyBytes
	}
	// 0 is a value of its own here: buffer nothing, stream every body.
	l.BodyBufferBytes = cmp.Or(p.BodyBufferBytes, -1)
	if p.BodyReadTimeout > 0 {
		l.BodyReadTimeout = p.BodyReadTimeout
	}
	if p.BodyBufferTotal > 0 {
		l.BodyBufferTotal = p.BodyBufferTotal
	}
	if p.BodyBufferTimeout > 0 {
		l.BodyBufferTimeout = p.BodyBufferTimeout
	}
	if p.BackendTimeout > 0 {
		l.BackendTimeout = p.BackendTimeout
	}
	return l
}

// tenantLimits are what one tenant's requests, and the tunnels its
// upgraded connections become, may take on a listener.
type tenantLimits struct {
	requestLimits
	// Stream bounds upgraded connections (limits.tcp); zero fields: no limit.
	Stream policy.StreamLimits
}

func resolveLimits(base requestLimits, p policy.Limits) *tenantLimits {
	return &tenantLimits{requestLimits: base.withPolicy(p.HTTP), Stream: p.TCP}
}

// limitsOf returns tenant's limits on the listener.
func (h *Handler) limitsOf(tenant string) *tenantLimits {
	if tl, ok := h.tenants[tenant]; ok {
		return tl
	}
	return h.base
}

func (l XMLLimits) withDefaults() XMLLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxSOAPBytes
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxXMLDepth
	}
	if l.MaxElements <= 0 {
		l.MaxElements = DefaultMaxXMLElements
	}
	if l.MaxAttrs <= 0 {
		l.MaxAttrs = DefaultMaxXMLAttrs
	}
	if l.MaxNameLen <= 0 {
		l.MaxNameLen = DefaultMaxXMLNameLen
	}
	if l.MaxTextLen <= 0 {
		l.MaxTextLen = DefaultMaxXMLTextBytes
	}
	return l
}

// InFlight counts what requests hold while they are in flight: the
// requests of each tenant on each listener, and the bytes of request
// bodies each listener holds in memory. Pass the same one to every
// generation of the listeners (Config.InFlight), so that a reload restarts
// neither count.
type InFlight struct {
	requests relay.Limiter[[2]string] // per listener and tenant
	mu       sync.Mutex
	bodies   map[string]*bodyBytes
}

// bodyBytes is one listener's share of the body budget.
type bodyBytes struct {
	held int64
	full bool // the last hold was refused
}

// NewInFlight returns an empty counter.
func NewInFlight() *InFlight {
	return &InFlight{bodies: map[string]*bodyBytes{}}
}

func (f *InFlight) acquire(listener, tenant string, limit int) (release func(), ok bool) {
	k := [2]string{listener, tenant}
	if !f.requests.Acquire(k, limit) {
		return nil, false
	}
	return func() { f.requests.Release(k) }, true
}

// holdBody takes n bytes of listener's body budget of limit, and reports
// whether it did. filled reports a refusal after the budget had room,
// freed a hold after a refusal: the changes worth a log line.
func (f *InFlight) holdBody(listener string, n, limit int64) (ok, filled, freed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.bodies[listener]
	if b == nil {
		b = &bodyBytes{}
		f.bodies[listener] = b
	}
	if b.held+n > limit {
		filled, b.full = !b.full, true
		return false, filled, false
	}
	b.held += n
	freed, b.full = b.full, false
	return true, false, freed
}

// releaseBody gives back n bytes of listener's body budget.
func (f *InFlight) releaseBody(listener string, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.bodies[listener]; b != nil {
		if b.held -= n; b.held <= 0 && !b.full {
			delete(f.bodies, listener)
		}
	}
}

// bodyBytesHeld is what listener's request bodies hold in memory.
func (f *InFlight) bodyBytesHeld(listener string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.bodies[listener]; b != nil {
		return b.held
	}
	return 0
}
