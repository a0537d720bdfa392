package proxy_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
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

// TestSeriesAtApply: the series the configuration determines exist right
// after Apply, at zero, and a reload drops those of listeners and tenants
// it removed.
func TestSeriesAtApply(t *testing.T) {
	host, _ := fakeHost(t)
	echo := lineEcho(t)
	b := newBackend(t, "a")
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()}, policy.Route{Tenant: "globex", Backend: b.url()})
	mf := listener("mf", policy.ProtoTN3270, policy.Route{Tenant: "acme", Backend: host}, policy.Route{Tenant: "globex", Backend: host})
	raw := listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: echo})
	mf.Port, raw.Port = freePort(t), freePort(t)
	h := newHarness(t, testLimits(), web, mf, raw)
	got := h.scrape()
	results := []string{"ok", "refused", "no_route", "limit", "timeout", "protocol", "backend", "shutdown"}
	want := []string{
		"gatehouse_proxy_connections_active{default,web,acme}", "gatehouse_proxy_connections_active{default,web,globex}",
		"gatehouse_proxy_connections_active{default,mf,acme}", "gatehouse_proxy_connections_active{default,mf,globex}",
		"gatehouse_proxy_connections_active{default,raw,acme}",
		"gatehouse_proxy_handshakes_pending{web}", "gatehouse_proxy_handshakes_pending{raw}",
		"gatehouse_proxy_connections_refused_total{raw,pre_handshake}",
		"gatehouse_proxy_bytes_total{in,web,acme}", "gatehouse_proxy_bytes_total{out,web,globex}",
		"gatehouse_proxy_bytes_total{in,mf,globex}", "gatehouse_proxy_bytes_total{out,raw,acme}",
		"gatehouse_proxy_bytes_total{in,raw,unknown}",
	}
	for _, tenant := range []string{"acme", "globex"} {
		for _, r := range results {
			want = append(want, "gatehouse_telnet_sessions_total{default,mf,"+r+","+tenant+"}")
		}
	}
	for _, k := range want {
		if v, ok := got[k]; !ok || v != 0 {
			t.Errorf("%s: %v (present %v), want 0 right after Apply", k, v, ok)
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "gatehouse_telnet_sessions_total{default,web") || strings.HasPrefix(k, "gatehouse_telnet_sessions_total{default,raw") {
			t.Errorf("%s: a terminal series for a listener that is not one", k)
		}
	}

	// The reload drops globex from web and mf, and the raw listener.
	web.Routes, mf.Routes = web.Routes[:1], mf.Routes[:1]
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{web, mf}}); err != nil {
		t.Fatal(err)
	}
	got = h.scrape()
	var left []string
	for k := range got {
		if strings.Contains(k, "globex") || strings.Contains(k, "{raw") || strings.Contains(k, ",raw,") {
			left = append(left, k)
		}
	}
	slices.Sort(left)
	if len(left) > 0 {
		t.Errorf("series of removed tenants and listeners left after the reload: %v", left)
	}
	if _, ok := got["gatehouse_telnet_sessions_total{default,mf,ok,acme}"]; !ok {
		t.Error("acme's terminal series lost by the reload")
	}
}
