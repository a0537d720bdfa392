package httpproxy

import (
	"cmp"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Defaults for Limits. They are sized for integration traffic (API calls,
// SOAP messages, file transfers of a few megabytes), not for media streaming.
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
	// DefaultDialTimeout bounds connecting to a backend; refused connections
	// fail at once, unreachable ones after this.
	DefaultDialTimeout = 5 * time.Second
	// DefaultBodyReadTimeout bounds how long the proxy waits for the next
	// bytes of a request body, so a client trickling a body cannot hold an
	// in-flight slot and a backend connection for ever. It is an idle
	// bound, not a total one: large uploads at a steady pace are fine.
	DefaultBodyReadTimeout = 30 * time.Second
	// DefaultBackendDownTime is how long a backend that failed a request
	// is skipped when its route has others; each further failure doubles
	// it, up to DefaultBackendDownMax.
	DefaultBackendDownTime = 10 * time.Second
	DefaultBackendDownMax  = 60 * time.Second
	// DefaultHealthTimeout bounds one active health check (and never
	// exceeds the route's interval).
	DefaultHealthTimeout = 2 * time.Second

	// SOAP inspection limits.
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
// and the handler answers 431 itself for a head over the limit (over
// HTTP/1.1, net/http answers 431 past the server's limit too).
func HeaderReadLimit(maxHeader int) int {
	return 2 * maxHeader
}

// Limits bound what one request may cost. Zero fields take the defaults.
type Limits struct {
	// MaxHeaderBytes caps the request line and header fields, counted as
	// HTTP/1.1 writes them; a larger head gets 431. Zero: no check here
	// (the server's MaxHeaderBytes alone).
	MaxHeaderBytes int
	MaxBodyBytes   int64
	// BodyBufferBytes: a request body up to this size is read whole before
	// anything of the request is sent to the backend, so a body refused or
	// broken off on the way never half-arrives; a larger one is streamed.
	// Negative streams every body.
	BodyBufferBytes      int64
	MaxInFlightPerTenant int
	BackendTimeout       time.Duration
	DialTimeout          time.Duration
	BodyReadTimeout      time.Duration
	BackendDownTime      time.Duration
	BackendDownMax       time.Duration
	HealthTimeout        time.Duration
	XML                  XMLLimits
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

func (l Limits) withDefaults() Limits {
	if l.MaxBodyBytes <= 0 {
		l.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if l.BodyBufferBytes == 0 {
		l.BodyBufferBytes = DefaultBodyBufferBytes
	}
	if l.MaxInFlightPerTenant <= 0 {
		l.MaxInFlightPerTenant = DefaultMaxInFlightPerTenant
	}
	if l.BackendTimeout <= 0 {
		l.BackendTimeout = DefaultBackendTimeout
	}
	if l.BodyReadTimeout <= 0 {
		l.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if l.DialTimeout <= 0 {
		l.DialTimeout = DefaultDialTimeout
	}
	if l.BackendDownTime <= 0 {
		l.BackendDownTime = DefaultBackendDownTime
	}
	if l.BackendDownMax <= 0 {
		l.BackendDownMax = DefaultBackendDownMax
	}
	l.BackendDownMax = max(l.BackendDownMax, l.BackendDownTime)
	if l.HealthTimeout <= 0 {
		l.HealthTimeout = DefaultHealthTimeout
	}
	l.XML = l.XML.withDefaults()
	return l
}

// withPolicy returns l with the limits a compiled policy sets. The
// configuration resolves every one of them; a zero HTTPLimits is a policy
// built without a configuration (library use, tests), and leaves l as it is.
func (l Limits) withPolicy(p policy.HTTPLimits) Limits {
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
	if p.BackendTimeout > 0 {
		l.BackendTimeout = p.BackendTimeout
	}
	return l
}

// tenantLimits are what one tenant's requests, and the tunnels its
// upgraded connections become, may take on a listener.
type tenantLimits struct {
	Limits
	// Stream bounds upgraded connections (limits.tcp); zero fields: no limit.
	Stream policy.StreamLimits
}

func resolveLimits(base Limits, p policy.Limits) *tenantLimits {
	return &tenantLimits{Limits: base.withPolicy(p.HTTP), Stream: p.TCP}
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

// InFlight counts requests in flight per listener and tenant.
type InFlight struct {
	mu sync.Mutex
	m  map[[2]string]int
}

// NewInFlight returns an empty counter.
func NewInFlight() *InFlight { return &InFlight{m: map[[2]string]int{}} }

func (f *InFlight) acquire(listener, tenant string, limit int) (release func(), ok bool) {
	k := [2]string{listener, tenant}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m[k] >= limit {
		return nil, false
	}
	f.m[k]++
	return func() {
		f.mu.Lock()
		if f.m[k]--; f.m[k] <= 0 {
			delete(f.m, k)
		}
		f.mu.Unlock()
	}, true
}
