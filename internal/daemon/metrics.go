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
	}
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(r)
	}
	reg.MustRegister(m.reloads, m.applySeconds, m.admitted, m.generation)
	return m
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
