package httpproxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricsRejections exposes one rejection counter to the tests.
func MetricsRejections(m *Metrics, tenant, reason string) prometheus.Counter {
	return m.soapRejections.WithLabelValues(tenant, reason)
}

// GuardKept is how many bytes of its current line g holds.
func GuardKept(g *FramingGuard) int { return cap(g.line) }

// SetDirectIdleTimeout sets how long the fast engine keeps an idle backend
// connection, until the returned function restores it.
func SetDirectIdleTimeout(d time.Duration) func() {
	old := directIdleTimeout
	directIdleTimeout = d
	return func() { directIdleTimeout = old }
}
