package rules

import "github.com/prometheus/client_golang/prometheus"

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.descSerial
	ch <- m.descSuccess
	ch <- m.descUpdates
	ch <- m.descExpired
	ch <- m.descPrevious
	ch <- m.descRefresh
}

// Collect implements prometheus.Collector.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	for _, f := range m.feeds {
		f.mu.Lock()
		name := f.cfg.Name
		if f.current != nil {
			ch <- prometheus.MustNewConstMetric(m.descSerial, prometheus.GaugeValue, float64(f.current.Manifest.Serial), name)
		}
		if !f.lastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(m.descSuccess, prometheus.GaugeValue, float64(f.lastSuccess.UnixNano())/1e9, name)
		}
		exp := 0.0
		if f.expired {
			exp = 1
		}
		ch <- prometheus.MustNewConstMetric(m.descExpired, prometheus.GaugeValue, exp, name)
		prev := 0.0
		if f.previous {
			prev = 1
		}
		ch <- prometheus.MustNewConstMetric(m.descPrevious, prometheus.GaugeValue, prev, name)
		// The fleet's alert on nodes disagreeing about a serial waits two
		// of these: it need not be told the interval separately.
		ch <- prometheus.MustNewConstMetric(m.descRefresh, prometheus.GaugeValue, f.refresh().Seconds(), name)
		// Every result of every configured feed, at 0 until it happens: a
		// dashboard sees 0 refusals, not "no data". A feed a reload removed
		// goes with the manager it belonged to.
		for _, r := range UpdateResults() {
			ch <- prometheus.MustNewConstMetric(m.descUpdates, prometheus.CounterValue, float64(f.updates[r]), name, r)
		}
		f.mu.Unlock()
	}
}
