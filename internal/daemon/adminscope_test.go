package daemon

import (
	"bytes"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestScopedMetricsHideTenantWideSeriesFromEnvironmentGrants: a series
// labelled with a tenant but no environment counts the whole tenant (every
// environment's handshakes, bytes, refusals). A principal granted one
// environment, even one named "default", sees only series of that
// environment; the tenant-wide ones only a grant of the whole tenant sees,
// as with refusals and the access log.
func TestScopedMetricsHideTenantWideSeriesFromEnvironmentGrants(t *testing.T) {
	reg := prometheus.NewRegistry()
	wide := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_test_handshakes_total"}, []string{"tenant", "result"})
	perEnv := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gatehouse_test_sessions_total"}, []string{"tenant", "environment"})
	reg.MustRegister(wide, perEnv)
	wide.WithLabelValues("acme", "ok").Add(7)
	perEnv.WithLabelValues("acme", "default").Add(1)
	perEnv.WithLabelValues("acme", "prod").Add(2)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	scrape := func(g admin.Grant) string {
		var b bytes.Buffer
		if err := writeScopedMetrics(&b, mfs, admin.Principal{Grants: []admin.Grant{g}}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	envGrant := scrape(admin.Grant{Role: policy.RoleViewer, Scope: policy.Scope{Tenant: "acme", Environment: "default"}})
	if strings.Contains(envGrant, "gatehouse_test_handshakes_total") || strings.Contains(envGrant, `environment="prod"`) ||
		!strings.Contains(envGrant, `gatehouse_test_sessions_total{environment="default",tenant="acme"} 1`) {
		t.Errorf("a grant of tenant:acme/default scrapes:\n%s\nwant only acme/default's series", envGrant)
	}
	whole := scrape(admin.Grant{Role: policy.RoleViewer, Scope: policy.Scope{Tenant: "acme"}})
	if !strings.Contains(whole, `gatehouse_test_handshakes_total{result="ok",tenant="acme"} 7`) || !strings.Contains(whole, `environment="prod"`) {
		t.Errorf("a grant of tenant:acme scrapes:\n%s\nwant every series of acme", whole)
	}
}
