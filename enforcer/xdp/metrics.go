package xdp

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/bpf"
)

var _ prometheus.Collector = (*Enforcer)(nil)

var (
	packetsDesc = prometheus.NewDesc("gatehouse_xdp_packets_total",
		"Packets the XDP filter judged, by action and reason (per-CPU counters summed).",
		[]string{"action", "reason"}, nil)
	attachDesc = prometheus.NewDesc("gatehouse_xdp_attach_mode",
		"1 for the mode the XDP filter is attached in (native or generic), 0 for the other.",
		[]string{"mode"}, nil)
	conntrackDesc = prometheus.NewDesc("gatehouse_xdp_conntrack_lookup",
		"1 when the XDP filter asks conntrack before dropping a UDP datagram as a new flow (strict mode), 0 when it runs without the lookup and drops such answers to the appliance's own flows.",
		nil, nil)
)

type metrics struct {
	blocked  prometheus.Gauge
	mirrored *prometheus.CounterVec
}

// mirrorResults are the results of handing a block to the nftables layer.
var mirrorResults = []string{"ok", "full", "error"}

func newMetrics() *metrics {
	m := &metrics{
		blocked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gatehouse_xdp_blocked_sources",
			Help: "Sources in the XDP blocklists at the last poll (scanners the program caught and those pushed in).",
		}),
		mirrored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gatehouse_xdp_blocks_mirrored_total",
			Help: "Scanners the XDP program blocked, handed to the nftables layer: ok, full (its blocklist holds no more; not retried) or error (retried).",
		}, []string{"result"}),
	}
	for _, r := range mirrorResults {
		m.mirrored.WithLabelValues(r)
	}
	return m
}

// Describe implements prometheus.Collector.
func (e *Enforcer) Describe(ch chan<- *prometheus.Desc) {
	ch <- packetsDesc
	ch <- attachDesc
	ch <- conntrackDesc
	e.metrics.blocked.Describe(ch)
	e.metrics.mirrored.Describe(ch)
}

// Collect implements prometheus.Collector. The counters live in the pinned
// map, so they survive restarts of the daemon. The attach mode is asked of
// the kernel: a link detached behind gatehouse's back reports no interface,
// and both modes then read 0, which is what the XDP-not-attached alert
// watches for.
func (e *Enforcer) Collect(ch chan<- prometheus.Metric) {
	e.metrics.blocked.Collect(ch)
	e.metrics.mirrored.Collect(ch)
	mode := e.AttachMode()
	for _, m := range []string{ModeNative, ModeGeneric} {
		v := 0.0
		if m == mode {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(attachDesc, prometheus.GaugeValue, v, m)
	}
	ct := 0.0
	if ok, _ := e.ConntrackLookup(); ok {
		ct = 1
	}
	ch <- prometheus.MustNewConstMetric(conntrackDesc, prometheus.GaugeValue, ct)
	counts, err := e.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(packetsDesc, err)
		return
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(v), k.Action, k.Reason)
	}
}

// CounterKey names one of the program's counters.
type CounterKey struct{ Action, Reason string }

// Counters returns the program's packet counters, summed over CPUs. Only
// the pairs the program can produce are returned.
func (e *Enforcer) Counters() (map[CounterKey]uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	out := map[CounterKey]uint64{}
	m := e.coll.Maps[bpf.MapCounters]
	for a, action := range bpf.Actions {
		for r, reason := range bpf.Reasons {
			if !possible(action, reason) {
				continue
			}
			var per []uint64
			if err := m.Lookup(bpf.CounterIndex(a, r), &per); err != nil {
				return nil, err
			}
			var sum uint64
			for _, v := range per {
				sum += v
			}
			out[CounterKey{action, reason}] = sum
		}
	}
	return out, nil
}

// possible reports whether the program ever counts this pair.
func possible(action, reason string) bool {
	switch reason {
	case "admitted", "management", "passthrough", "established":
		return action == "pass"
	default:
		return action == "drop"
	}
}
