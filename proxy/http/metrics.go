package httpproxy

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Metrics are the HTTP and SOAP series of every listener. One Metrics is
// shared by all handlers of a process; the caller registers it.
type Metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	soapRejections *prometheus.CounterVec
	backendUp      *prometheus.Desc
	bodyBuffers    *prometheus.Desc

	mu   sync.Mutex
	live map[*Handler]struct{} // handlers in service, for backend_up
	// soapTenants are the tenants whose soap_rejections_total series
	// exist: those routed on a soap listener in service, until Prune.
	soapTenants map[string]bool
}

var _ prometheus.Collector = (*Metrics)(nil)

// NewMetrics creates the series, unregistered.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_http_requests_total",
			Help: "HTTP requests answered, by listener, tenant, environment and status code.",
		}, []string{"listener", "tenant", "environment", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatehouse_http_request_duration_seconds",
			Help:    "Time from request headers to the end of the response, by listener and tenant.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"listener", "tenant"}),
		soapRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_soap_rejections_total",
			Help: "SOAP requests refused before reaching a backend, by tenant and reason.",
		}, []string{"tenant", "reason"}),
		// Labels stay bounded: the route's and the backend's positions in
		// the configuration, never an address or a path.
		backendUp: prometheus.NewDesc("gatehouse_backend_up",
			"1 when the backend of an https or soap route is taken for requests, 0 while a failed request or health check keeps it out.",
			[]string{"listener", "tenant", "route_index", "backend_index"}, nil),
		bodyBuffers: prometheus.NewDesc("gatehouse_http_body_buffer_bytes",
			"Bytes of request bodies a listener holds in memory (bodies read whole, SOAP envelopes), against limits.http.body_buffer_total.",
			[]string{"listener"}, nil),
		live:        map[*Handler]struct{}{},
		soapTenants: map[string]bool{},
	}
}

// add puts h in service: its backends in backend_up, and on a soap
// listener a soap_rejections_total series at 0 for each of its tenants and
// every reason, so that a rate or an alert has a series before the first
// refusal.
func (m *Metrics) add(h *Handler) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.live[h] = struct{}{}
	if !h.soap {
		return
	}
	for te := range h.byTenant {
		tenant := te.Tenant
		if m.soapTenants[tenant] {
			continue
		}
		m.soapTenants[tenant] = true
		for _, reason := range reasons {
			m.soapRejections.WithLabelValues(tenant, reason)
		}
	}
}

// rejected counts a SOAP refusal. The tenant is recorded so that Prune
// deletes the series also when a refusal on a generation just replaced
// comes after the tenant's route went.
func (m *Metrics) rejected(tenant, reason string) {
	m.mu.Lock()
	m.soapTenants[tenant] = true
	m.mu.Unlock()
	m.soapRejections.WithLabelValues(tenant, reason).Inc()
}

// Prune deletes the soap_rejections_total series of tenants no soap
// listener in service routes any more. Call it once a reload is in force
// (not between closing a listener's old generation and starting its new
// one, which would restart their counts) and after a removed listener
// drained.
func (m *Metrics) Prune() {
	m.mu.Lock()
	defer m.mu.Unlock()
	routed := map[string]bool{}
	for h := range m.live {
		if h.soap {
			for te := range h.byTenant {
				routed[te.Tenant] = true
			}
		}
	}
	for tenant := range m.soapTenants {
		if !routed[tenant] {
			m.soapRejections.DeletePartialMatch(prometheus.Labels{"tenant": tenant})
			delete(m.soapTenants, tenant)
		}
	}
}

func (m *Metrics) remove(h *Handler) {
	m.mu.Lock()
	delete(m.live, h)
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.duration.Describe(ch)
	m.soapRejections.Describe(ch)
	ch <- m.backendUp
	ch <- m.bodyBuffers
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.duration.Collect(ch)
	m.soapRejections.Collect(ch)
	now := time.Now()
	seen := map[[4]string]bool{}
	listeners := map[string]bool{}
	m.mu.Lock()
	defer m.mu.Unlock()
	for h := range m.live {
		if !listeners[h.listener] {
			listeners[h.listener] = true
			ch <- prometheus.MustNewConstMetric(m.bodyBuffers, prometheus.GaugeValue, float64(h.inFlight.bodyBytesHeld(h.listener)), h.listener)
		}
		for _, rts := range h.byTenant {
			for _, rt := range rts {
				for _, b := range rt.backends {
					k := [4]string{h.listener, rt.tenant, strconv.Itoa(rt.index), strconv.Itoa(b.index)}
					if seen[k] {
						continue // two generations of a listener for a moment
					}
					seen[k] = true
					up := 0.0
					if b.usable(now) {
						up = 1
					}
					ch <- prometheus.MustNewConstMetric(m.backendUp, prometheus.GaugeValue, up, k[:]...)
				}
			}
		}
	}
}

// series are one listener's request series of one tenant's environment, looked up in the
// vectors once per handler generation instead of at every request: a
// vector lookup hashes the label values and formats the code. Each child
// is looked up at its first request, so no series appears before one.
type series struct {
	m        *Metrics
	listener string
	tenant   string
	env      string
	duration atomic.Pointer[prometheus.Observer]
	// codes holds the counter of each status 100..599 once it was
	// answered; other codes (a backend may send up to 999) are looked up.
	codes [500]atomic.Pointer[prometheus.Counter]
}

func (m *Metrics) series(listener string, who policy.TenantEnv) *series {
	return &series{m: m, listener: listener, tenant: who.Tenant, env: who.Environment}
}

// observe counts one answered request.
func (s *series) observe(status int, d time.Duration) {
	o := s.duration.Load()
	if o == nil {
		oo := s.m.duration.WithLabelValues(s.listener, s.tenant)
		s.duration.Store(&oo)
		o = &oo
	}
	(*o).Observe(d.Seconds())
	if status < 100 || status >= 100+len(s.codes) {
		s.m.requests.WithLabelValues(s.listener, s.tenant, s.env, strconv.Itoa(status)).Inc()
		return
	}
	p := &s.codes[status-100]
	c := p.Load()
	if c == nil {
		cc := s.m.requests.WithLabelValues(s.listener, s.tenant, s.env, strconv.Itoa(status))
		p.Store(&cc)
		c = &cc
	}
	(*c).Inc()
}

// count records one answered request of who's. The (tenant,
// environment)s routed on the listener (and "-", no tenant) have their
// series, looked up when h was built; another's (a tenant refused here
// for want of a route) is counted through the vectors, without building
// a series (its 500 code slots) for one request.
func (h *Handler) count(who policy.TenantEnv, status int, d time.Duration) {
	if h.metrics == nil {
		return
	}
	if s := h.series[who]; s != nil {
		s.observe(status, d)
		return
	}
	h.metrics.duration.WithLabelValues(h.listener, who.Tenant).Observe(d.Seconds())
	h.metrics.requests.WithLabelValues(h.listener, who.Tenant, who.Environment, strconv.Itoa(status)).Inc()
}
