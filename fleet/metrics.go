package fleet

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the fleet's series; the peer label takes the configured
// peers' host:port only.
type metrics struct {
	peers    []string
	up       *prometheus.GaugeVec
	pulls    *prometheus.CounterVec
	received *prometheus.CounterVec
	served   prometheus.Gauge

	mu   sync.Mutex
	last map[string]string
}

func newMetrics(peers []string) *metrics {
	m := &metrics{
		peers: peers,
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gatehouse_fleet_peer_up",
			Help: "1 when the last pull of the peer's blocks reached it (its list may still have been refused)."}, []string{"peer"}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_fleet_pulls_total",
			Help: "Pulls of a peer's blocks by result: ok, or why nothing was taken."}, []string{"peer", "result"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_fleet_blocks_received_total",
			Help: "Sources a peer blocked that this node blocked in turn."}, []string{"peer"}),
		served: prometheus.NewGauge(prometheus.GaugeOpts{Name: "gatehouse_fleet_blocks_served",
			Help: "Blocks this node learned itself and served at the last pull by a peer."}),
		last: map[string]string{},
	}
	for _, p := range peers {
		m.up.WithLabelValues(p)
		m.received.WithLabelValues(p)
		for _, r := range Results {
			m.pulls.WithLabelValues(p, r)
		}
	}
	return m
}

// noteResult reports whether the peer's result differs from its last.
func (m *metrics) noteResult(peer, result string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := m.last[peer] != result
	m.last[peer] = result
	return changed
}

// Describe implements prometheus.Collector.
func (n *Node) Describe(ch chan<- *prometheus.Desc) {
	n.m.up.Describe(ch)
	n.m.pulls.Describe(ch)
	n.m.received.Describe(ch)
	n.m.served.Describe(ch)
}

// Collect implements prometheus.Collector.
func (n *Node) Collect(ch chan<- prometheus.Metric) {
	n.m.up.Collect(ch)
	n.m.pulls.Collect(ch)
	n.m.received.Collect(ch)
	n.m.served.Collect(ch)
}

var _ prometheus.Collector = (*Node)(nil)
