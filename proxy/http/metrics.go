package httpproxy

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the HTTP and SOAP series of every listener. One Metrics is
// shared by all handlers of a process; the caller registers it.
type Metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	soapRejections *prometheus.CounterVec
	backendUp      *prometheus.Desc

	mu   sync.Mutex
	live map[*Handler]struct{} // handlers in service, for backend_up
}

var _ prometheus.Collector = (*Metrics)(nil)

// NewMetrics creates the series, unregistered.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_http_requests_total",
			Help: "HTTP requests answered, by listener, tenant and status code.",
		}, []string{"listener", "tenant", "code"}),
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
		live: map[*Handler]struct{}{},
	}
}

func (m *Metrics) add(h *Handler) {
	m.mu.Lock()
	m.live[h] = struct{}{}
	m.mu.Unlock()
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
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.duration.Collect(ch)
	m.soapRejections.Collect(ch)
	now := time.Now()
	seen := map[[4]string]bool{}
	m.mu.Lock()
	defer m.mu.Unlock()
	for h := range m.live {
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
