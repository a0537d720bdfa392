package proxy_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// soapSeries scrapes gatehouse_soap_rejections_total: value by tenant and
// reason.
func soapSeries(t testing.TB, reg *prometheus.Registry) map[[2]string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[[2]string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_soap_rejections_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var k [2]string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "tenant":
					k[0] = l.GetValue()
				case "reason":
					k[1] = l.GetValue()
				}
			}
			out[k] = m.GetCounter().GetValue()
		}
	}
	return out
}

func tenantsOf(series map[[2]string]float64) map[string]int {
	n := map[string]int{}
	for k := range series {
		n[k[0]]++
	}
	return n
}

// TestSOAPRejectionSeriesFollowTenants: gatehouse_soap_rejections_total
// has a series at 0 for every tenant routed on a soap listener and every
// reason as soon as the listener is in service, none for tenants of https
// listeners, and a reload that takes a tenant off the soap listeners
// deletes its series while the others keep their counts.
func TestSOAPRejectionSeriesFollowTenants(t *testing.T) {
	b := newBackend(t, "soap")
	soap := func(routes ...policy.Route) policy.Listener { return listener("services", policy.ProtoSOAP, routes...) }
	acme := policy.Route{Tenant: "acme", Backend: b.url(), SOAPActions: []string{"urn:acme:GetOrder"}}
	globex := policy.Route{Tenant: "globex", Backend: b.url(), SOAPActions: []string{"urn:globex:Get"}}
	web := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "globex", Backend: b.url()})
	web.Port = freePort(t)
	h := newHarness(t, testLimits(), soap(acme, globex), web)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(h.srv); err != nil {
		t.Fatal(err)
	}
	const reasons = 21
	if got := tenantsOf(soapSeries(t, reg)); len(got) != 2 || got["acme"] != reasons || got["globex"] != reasons {
		t.Fatalf("series per tenant before any request %v, want acme and globex with %d each", got, reasons)
	}
	if v, ok := soapSeries(t, reg)[[2]string{"acme", "action_not_allowed"}]; !ok || v != 0 {
		t.Errorf("acme/action_not_allowed = %v (present %v), want 0", v, ok)
	}

	env := `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><DeleteOrder xmlns="urn:acme"/></s:Body></s:Envelope>`
	hdr := http.Header{"Content-Type": {"text/xml; charset=utf-8"}, "Soapaction": {`"urn:acme:DeleteOrder"`}}
	if r := h.mustDo(h.client(h.pki.acme, false), "services", "POST", "", "/", hdr, strings.NewReader(env)); r.status != 500 {
		t.Fatalf("forbidden operation: status %d, want 500", r.status)
	}

	// globex leaves the soap listener (it keeps its https route).
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{soap(acme), web}}); err != nil {
		t.Fatal(err)
	}
	series := soapSeries(t, reg)
	if got := tenantsOf(series); len(got) != 1 || got["acme"] != reasons {
		t.Errorf("series per tenant after globex left %v, want acme only, %d", got, reasons)
	}
	if v := series[[2]string{"acme", "action_not_allowed"}]; v != 1 {
		t.Errorf("acme/action_not_allowed after the reload = %v, want 1 (kept, not restarted)", v)
	}

	// The soap listener becomes an https one: no soap series are left.
	if err := h.srv.Apply(&policy.Policy{Generation: 3, Listeners: []policy.Listener{
		listener("services", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()}), web}}); err != nil {
		t.Fatal(err)
	}
	if got := soapSeries(t, reg); len(got) != 0 {
		t.Errorf("%d soap series left without a soap listener", len(got))
	}
}
