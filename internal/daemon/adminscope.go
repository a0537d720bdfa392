package daemon

import (
	"cmp"
	"io"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// scopedStatus is what a principal without a global grant sees of st:
// only what is listed here, each item filtered to the tenants (and
// environments) it sees. Anything added to Status later stays hidden from
// tenant principals until it is added here (fail closed).
func scopedStatus(st Status, p admin.Principal) Status {
	if p.Global() {
		return st
	}
	out := Status{Version: st.Version, Started: st.Started, Generation: st.Generation, Ready: st.Ready, Role: st.Role,
		Mode: st.Mode, XDPMode: st.XDPMode, NFTables: st.NFTables}
	for _, t := range st.Tenants {
		if p.SeesTenant(t.ID) {
			out.Tenants = append(out.Tenants, scopedTenant(t, p))
		}
	}
	for _, l := range st.Listeners {
		if p.Sees(l.Tenant, routeEnvironment(l)) {
			out.Listeners = append(out.Listeners, l)
		}
	}
	out.Certs = scopedCerts(st.Certs, p)
	for _, c := range st.Counters {
		if c.tenant != "" && p.Sees(c.tenant, c.env) {
			out.Counters = append(out.Counters, c)
		}
	}
	// A refusal names a tenant, not an environment (the certificate
	// proved none, or was refused before): only a grant of the whole
	// tenant sees it.
	for _, r := range st.Refusals {
		if r.Tenant != "" && p.Sees(r.Tenant, "") {
			out.Refusals = append(out.Refusals, r)
		}
	}
	if st.Role == "gateway" { // a gateway's tunnel peers are tenants
		for _, tu := range st.Tunnels {
			if p.SeesTenant(tu.Peer) {
				out.Tunnels = append(out.Tunnels, tu)
			}
		}
	}
	return out
}

// scopedTenant is what p sees of t: all of it with a grant of the whole
// tenant; with grants of some of its environments only those, and only
// their sessions counted.
func scopedTenant(t TenantStatus, p admin.Principal) TenantStatus {
	if p.Sees(t.ID, "") {
		return t
	}
	out := TenantStatus{ID: t.ID, Environments: []EnvironmentStatus{}}
	for _, e := range t.Environments {
		if p.Sees(t.ID, e.Name) {
			out.Environments = append(out.Environments, e)
			out.Sessions += e.Sessions
		}
	}
	return out
}

// routeEnvironment is the environment a route serves ("default" for a
// tenant without environments).
func routeEnvironment(r ListenerRoute) string {
	return cmp.Or(r.Environment, policy.DefaultEnvironment)
}

// scopedCerts keeps the tenants' CA and CRL expiries a principal sees
// (their name is the tenant's id); listeners' and other global
// certificates only for a global principal.
func scopedCerts(all []CertExpiry, p admin.Principal) []CertExpiry {
	if p.Global() {
		return all
	}
	var out []CertExpiry
	for _, c := range all {
		if isTenantCert(c.Kind) && p.SeesTenant(c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// isTenantCert reports whether a cert_expiry kind is named by a tenant id.
func isTenantCert(kind string) bool {
	switch kind {
	case "tenant_ca", "crl_next_update":
		return true
	}
	return false
}

// writeScopedMetrics writes the daemon's metrics in the text format: all
// of them for a global principal; for a tenant principal only the series
// labelled with a tenant (and environment) it sees, so that no other
// tenant's label values appear.
func writeScopedMetrics(w io.Writer, mfs []*dto.MetricFamily, p admin.Principal) error {
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if !p.Global() {
			var keep []*dto.Metric
			for _, m := range mf.GetMetric() {
				lbl := labels(m)
				if t, ok := lbl["tenant"]; ok && p.Sees(t, envOf(lbl)) {
					keep = append(keep, m)
				}
			}
			if len(keep) == 0 {
				continue
			}
			mf = &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type, Unit: mf.Unit, Metric: keep}
		}
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}

// envOf is a series' environment: its environment label, or "" for a
// series of the tenant as a whole (every environment's), which only a
// grant of the whole tenant sees, whatever the environments are named.
func envOf(lbl map[string]string) string {
	return lbl["environment"]
}
