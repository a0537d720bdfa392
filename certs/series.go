package certs

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// noTenant is the tenant label of a handshake no tenant is known for.
const noTenant = "none"

// untenanted are the results counted with tenant "none": refusals made
// before a tenant is known, and clients that closed.
var untenanted = []Result{ResultNoCert, ResultUnknownCA, ResultExpired, ResultNotYetValid, ResultNoTenant,
	ResultAmbiguousTenant, ResultProtocolVersion, ResultOther, ResultClientClosed}

// crlResults are the refusals counted with the tenant whose CRL made them.
var crlResults = []Result{ResultRevoked, ResultCRLStale, ResultNoCRL}

// envResults are the refusals counted with the tenant whose environments
// made them.
var envResults = []Result{ResultNoEnvironment, ResultAmbiguousEnvironment}

// initSeries gives every series of gatehouse_tls_handshakes_total that the
// policy determines a value from the start, so that rates and alerts see
// them before the first event: per listener each untenanted result, and
// for each tenant routed on it ok, with a CRL the CRL refusals, and with
// environments the environment refusals. It deletes the series of
// listeners and tenants the policy no longer has, and the environment
// refusals of a tenant that has no environments any more. At most
// listeners × (9 + routed tenants × 6) series. Called with m.mu held.
func (m *Manager) initSeries(p *policy.Policy) {
	listeners := map[string]bool{}
	tenants := map[string]bool{noTenant: true}
	hasCRL := map[string]bool{}
	hasEnv := map[string]bool{}
	for _, t := range p.Tenants {
		tenants[t.ID] = true
		hasCRL[t.ID] = t.CRL != ""
		hasEnv[t.ID] = len(t.Environments) > 0
	}
	for _, l := range p.Listeners {
		listeners[l.Name] = true
		for _, r := range untenanted {
			m.handshakes.WithLabelValues(l.Name, noTenant, string(r))
		}
		for _, rt := range l.Routes {
			if !tenants[rt.Tenant] {
				continue
			}
			m.handshakes.WithLabelValues(l.Name, rt.Tenant, string(ResultOK))
			if hasCRL[rt.Tenant] {
				for _, r := range crlResults {
					m.handshakes.WithLabelValues(l.Name, rt.Tenant, string(r))
				}
			}
			if hasEnv[rt.Tenant] {
				for _, r := range envResults {
					m.handshakes.WithLabelValues(l.Name, rt.Tenant, string(r))
				}
			}
		}
	}
	ch := make(chan prometheus.Metric)
	go func() {
		m.handshakes.Collect(ch)
		close(ch)
	}()
	var stale [][3]string
	for metric := range ch {
		var d dto.Metric
		if metric.Write(&d) != nil {
			continue
		}
		var l [3]string // listener, tenant, result
		for _, lp := range d.GetLabel() {
			switch lp.GetName() {
			case "listener":
				l[0] = lp.GetValue()
			case "tenant":
				l[1] = lp.GetValue()
			case "result":
				l[2] = lp.GetValue()
			}
		}
		envGone := !hasEnv[l[1]] && (l[2] == string(ResultNoEnvironment) || l[2] == string(ResultAmbiguousEnvironment))
		if !listeners[l[0]] || !tenants[l[1]] || envGone {
			stale = append(stale, l)
		}
	}
	for _, l := range stale {
		m.handshakes.DeleteLabelValues(l[0], l[1], l[2])
	}
}
