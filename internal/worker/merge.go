package worker

import (
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// sameEverywhere are gauges whose value every worker holds alike.
var sameEverywhere = map[string]bool{
	"gatehouse_cert_expiry_timestamp_seconds": true,
}

// mergeFamily adds mf's series to byName, summing a series already there.
func mergeFamily(byName map[string]*dto.MetricFamily, series map[string]*dto.Metric, mf *dto.MetricFamily) {
	name := mf.GetName()
	if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") || strings.HasPrefix(name, "promhttp_") {
		return
	}
	fam, ok := byName[name]
	if !ok {
		fam = &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type, Unit: mf.Unit}
		byName[name] = fam
	}
	if fam.GetType() != mf.GetType() {
		return // workers of one binary never disagree; ignore rather than mix
	}
	for _, m := range mf.Metric {
		key := name + "\xff" + labelKey(m)
		have, ok := series[key]
		if !ok {
			series[key] = m
			fam.Metric = append(fam.Metric, m)
			continue
		}
		if sameEverywhere[name] {
			continue
		}
		sum(have, m)
	}
}

func labelKey(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.Label {
		b.WriteString(l.GetName())
		b.WriteByte(0)
		b.WriteString(l.GetValue())
		b.WriteByte(0)
	}
	return b.String()
}

func add(a, b float64) *float64 { v := a + b; return &v }

func sum(dst, m *dto.Metric) {
	switch {
	case dst.Counter != nil && m.Counter != nil:
		dst.Counter.Value = add(dst.Counter.GetValue(), m.Counter.GetValue())
	case dst.Gauge != nil && m.Gauge != nil:
		dst.Gauge.Value = add(dst.Gauge.GetValue(), m.Gauge.GetValue())
	case dst.Untyped != nil && m.Untyped != nil:
		dst.Untyped.Value = add(dst.Untyped.GetValue(), m.Untyped.GetValue())
	case dst.Histogram != nil && m.Histogram != nil:
		h, o := dst.Histogram, m.Histogram
		c := h.GetSampleCount() + o.GetSampleCount()
		h.SampleCount = &c
		h.SampleSum = add(h.GetSampleSum(), o.GetSampleSum())
		for i := range h.Bucket {
			if i < len(o.Bucket) && h.Bucket[i].GetUpperBound() == o.Bucket[i].GetUpperBound() {
				n := h.Bucket[i].GetCumulativeCount() + o.Bucket[i].GetCumulativeCount()
				h.Bucket[i].CumulativeCount = &n
			}
		}
	}
}
