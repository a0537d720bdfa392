package proxy_test

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// scrape gathers the server's metrics as "name{v1,v2,…}" → value, label
// values in the order of their names.
func (h *harness) scrape() map[string]float64 {
	h.t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(h.srv); err != nil {
		h.t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var vals []string
			for _, lp := range m.GetLabel() {
				vals = append(vals, lp.GetValue())
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[mf.GetName()+"{"+strings.Join(vals, ",")+"}"] = v
		}
	}
	return out
}

// metric returns one series' value, -1 when it does not exist. Label
// values go in the order of the label names, sorted (as Gather sorts them).
func (h *harness) metric(name string, values ...string) float64 {
	if v, ok := h.scrape()[name+"{"+strings.Join(values, ",")+"}"]; ok {
		return v
	}
	return -1
}
