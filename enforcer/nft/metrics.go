package nft

import (
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/prometheus/client_golang/prometheus"
)

var _ prometheus.Collector = (*Enforcer)(nil)

var (
	packetsDesc = prometheus.NewDesc("gatehouse_nft_packets_total",
		"Packets that matched each rule of table inet gatehouse, from its named counters.",
		[]string{"rule"}, nil)
)

type metrics struct {
	drift          prometheus.Counter
	blockedSources prometheus.Gauge
	fill           *prometheus.GaugeVec

	// swap is held by a full replace from reading the old table's counters
	// until they are in base, and shared by Collect: a scrape sees the old
	// table or the new one with its base, never both or neither, so the
	// counters never step back. It also guards base.
	swap sync.RWMutex
	base map[string]uint64 // packets counted by tables we replaced
}

func newMetrics() *metrics {
	m := &metrics{
		drift: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gatehouse_nft_drift_total",
			Help: "Times reconcile found table inet gatehouse deleted or edited and rebuilt it.",
		}),
		blockedSources: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gatehouse_nft_blocked_sources",
			Help: "Sources currently in the blocked_v4 and blocked_v6 sets.",
		}),
		fill: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatehouse_nft_blocklist_fill_ratio",
			Help: "How full the blocked_v4 and blocked_v6 sets are (0 to 1). A full set blocks no more scanners (their SYNs are still dropped, counted as rule blocklist_full) and refuses the XDP layer's.",
		}, []string{"family"}),
		base: map[string]uint64{},
	}
	for _, v6 := range []bool{false, true} {
		m.fill.WithLabelValues(family(v6))
	}
	return m
}

// Describe implements prometheus.Collector.
func (e *Enforcer) Describe(ch chan<- *prometheus.Desc) {
	ch <- packetsDesc
	e.metrics.drift.Describe(ch)
	e.metrics.blockedSources.Describe(ch)
	e.metrics.fill.Describe(ch)
}

// Collect implements prometheus.Collector. It reads the named counters of
// the table, one small dump, never a set.
func (e *Enforcer) Collect(ch chan<- prometheus.Metric) {
	e.metrics.drift.Collect(ch)
	e.metrics.blockedSources.Collect(ch)
	e.metrics.fill.Collect(ch)
	e.metrics.swap.RLock()
	defer e.metrics.swap.RUnlock()
	c, err := e.conn()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(packetsDesc, err)
		return
	}
	counts, err := readCounters(c)
	if err != nil {
		// Exporting the base alone would step the totals back; leave the
		// rule series out of this scrape instead. (No table yet reads as
		// no counters, not as an error.)
		e.log.Warn("reading nftables counters failed", "err", err)
		return
	}
	for name, base := range e.metrics.base {
		counts[name] += base
	}
	for name, v := range counts {
		ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(v), name)
	}
}

// readCounters returns the packet count of each named counter of our table.
func readCounters(c *nftables.Conn) (map[string]uint64, error) {
	out := map[string]uint64{}
	objs, err := c.GetNamedObjects(ourTable())
	if err != nil {
		return out, err
	}
	for _, o := range objs {
		no, ok := o.(*nftables.NamedObj)
		if !ok || no.Type != nftables.ObjTypeCounter {
			continue
		}
		if ctr, ok := no.Obj.(*expr.Counter); ok {
			out[no.Name] = ctr.Packets
		}
	}
	return out, nil
}

// fold adds the counters of a table that was replaced to the base, so
// gatehouse_nft_packets_total does not fall back to zero. The caller holds
// swap.
func (m *metrics) fold(counts map[string]uint64) {
	for name, v := range counts {
		m.base[name] += v
	}
}
