package httpproxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the HTTP and SOAP series of every listener. One Metrics is
// shared by all handlers of a process; the caller registers it.
type Metrics struct {
	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	soapRejections *prometheus.CounterVec
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
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.duration.Describe(ch)
	m.soapRejections.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.duration.Collect(ch)
	m.soapRejections.Collect(ch)
}
