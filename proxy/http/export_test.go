package httpproxy

import "github.com/prometheus/client_golang/prometheus"

// MetricsRejections exposes one rejection counter to the tests.
func MetricsRejections(m *Metrics, tenant, reason string) prometheus.Counter {
	return m.soapRejections.WithLabelValues(tenant, reason)
}

// GuardKept is how many bytes of its current line g holds.
func GuardKept(g *FramingGuard) int { return cap(g.line) }
