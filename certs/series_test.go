package certs

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// handshakeSeries lists the series of gatehouse_tls_handshakes_total as
// "listener/tenant/result=value".
func handshakeSeries(t *testing.T, m *Manager) []string {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_tls_handshakes_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out = append(out, l["listener"]+"/"+l["tenant"]+"/"+l["result"]+"="+strconv.FormatFloat(mt.GetCounter().GetValue(), 'f', -1, 64))
		}
	}
	slices.Sort(out)
	return out
}

// TestSeriesInitialised: right after Apply every series the configuration
// determines exists at 0 (each listener × each result without a tenant;
// ok per tenant routed on the listener; the CRL refusals of a routed tenant
// with a CRL), and an Apply that removes a listener or a tenant removes
// their series, keeping the counts of the rest.
func TestSeriesInitialised(t *testing.T) {
	k := newPKI(t)
	p := clonePolicy(k.policy)
	p.Listeners[0].Routes = []policy.Route{{Tenant: "acme"}, {Tenant: "globex"}, {Tenant: "acme", Host: "b.example"}}
	p.Listeners[1].Routes = []policy.Route{{Tenant: "globex"}}
	m := newManager(t, Config{}, p)
	var want []string
	for _, l := range []string{"web", "mainframe"} {
		for _, r := range untenanted {
			want = append(want, l+"/none/"+string(r)+"=0")
		}
	}
	want = append(want, "web/acme/ok=0", "web/acme/revoked=0", "web/acme/crl_stale=0", "web/acme/no_crl=0",
		"web/globex/ok=0", "mainframe/globex/ok=0")
	slices.Sort(want)
	if got := handshakeSeries(t, m); !slices.Equal(got, want) {
		t.Fatalf("series after Apply:\n got %v\nwant %v", got, want)
	}

	srv, _ := m.TLSConfig("web")
	for _, leaf := range []*certstest.Leaf{k.acme, k.globex} {
		r := handshake(t, srv, k.clientConfig(leaf), false)
		if r.serverErr != nil {
			t.Fatal(r.serverErr)
		}
		if _, err := m.HandshakeDone("web", testSource, r.server); err != nil {
			t.Fatal(err)
		}
	}
	q := clonePolicy(p)
	q.Listeners = q.Listeners[:1]
	q.Listeners[0].Routes = q.Listeners[0].Routes[:1]
	q.Tenants = slices.DeleteFunc(slices.Clone(q.Tenants), func(t policy.Tenant) bool { return t.ID == "globex" })
	if err := m.Apply(q); err != nil {
		t.Fatal(err)
	}
	got := handshakeSeries(t, m)
	for _, s := range got {
		if strings.HasPrefix(s, "mainframe/") || strings.Contains(s, "/globex/") {
			t.Errorf("series %s of a removed listener or tenant kept", s)
		}
	}
	if !slices.Contains(got, "web/acme/ok=1") || !slices.Contains(got, "web/none/no_cert=0") {
		t.Errorf("series of what stayed: %v", got)
	}
}
