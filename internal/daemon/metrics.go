package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// metrics are the daemon's own: reloads, per-layer apply time and the size
// of the admitted set in force.
type metrics struct {
	reloads      *prometheus.CounterVec
	applySeconds *prometheus.HistogramVec
	admitted     *prometheus.GaugeVec
	generation   prometheus.Gauge
	layerHeld    *prometheus.GaugeVec
	heldPrefixes *prometheus.GaugeVec
	// The admin API: requests by action and result, audit lines lost.
	adminRequests *prometheus.CounterVec
	auditErrors   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_config_reloads_total",
			Help: "Configuration reloads by result (ok, error).",
		}, []string{"result"}),
		applySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatehouse_policy_apply_seconds",
			Help:    "Time to apply one policy generation, per layer.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"layer"}),
		admitted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatehouse_admitted_prefixes",
			Help: "Prefixes each feed contributes to the admitted set in force (static: static_ranges; all: after aggregation).",
		}, []string{"family", "feed"}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gatehouse_policy_generation",
			Help: "Generation number of the policy in force.",
		}),
		layerHeld: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatehouse_kernel_layer_held",
			Help: "1 while a kernel layer keeps a previous run's admitted ranges because a feed has no verified release (gatehouse_admitted_prefixes then describes the other layers).",
		}, []string{"layer"}),
		heldPrefixes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatehouse_held_admitted_prefixes",
			Help: "Prefixes of the previous run's admitted ranges that held kernel layers enforce (0 when none is held, or they could not be read).",
		}, []string{"family"}),
	}
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(r)
	}
	m.heldPrefixes.WithLabelValues("ipv4")
	m.heldPrefixes.WithLabelValues("ipv6")
	m.adminRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_admin_requests_total",
		Help: "Admin API requests by action and result (ok, refused, error, unaudited: an action refused because its audit line could not be written).",
	}, []string{"action", "result"})
	m.auditErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gatehouse_admin_audit_errors_total",
		Help: "Admin requests whose audit log line could not be written (the log says why).",
	})
	reg.MustRegister(m.reloads, m.applySeconds, m.admitted, m.generation, m.layerHeld, m.heldPrefixes, m.adminRequests, m.auditErrors)
	return m
}

// observeHold sets the hold's series: one per kernel layer.
func (m *metrics) observeHold(h *holdState, kernel []string) {
	for _, l := range kernel {
		v := 0.0
		if h.holds(l) {
			v = 1
		}
		m.layerHeld.WithLabelValues(l).Set(v)
	}
	m.heldPrefixes.WithLabelValues("ipv4").Set(float64(heldLen(h, true)))
	m.heldPrefixes.WithLabelValues("ipv6").Set(float64(heldLen(h, false)))
}

func (m *metrics) observePolicy(p *policy.Policy) {
	m.admitted.Reset()
	for feed, c := range p.Admitted.PerFeed {
		m.admitted.WithLabelValues("ipv4", feed).Set(float64(c.V4))
		m.admitted.WithLabelValues("ipv6", feed).Set(float64(c.V6))
	}
	m.admitted.WithLabelValues("ipv4", allSources).Set(float64(len(p.Admitted.V4)))
	m.admitted.WithLabelValues("ipv6", allSources).Set(float64(len(p.Admitted.V6)))
	m.generation.Set(float64(p.Generation))
}
