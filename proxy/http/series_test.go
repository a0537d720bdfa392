package httpproxy

import (
	"net/http"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCountNoAllocs: counting a request on the keep-alive path looks up
// no vector (issue 21), and the counts land in the same series.
func TestCountNoAllocs(t *testing.T) {
	m := NewMetrics()
	h, err := New(Config{Metrics: m, Listener: policy.Listener{Name: "web", Protocol: policy.ProtoHTTPS,
		Routes: []policy.Route{{Tenant: "acme", Path: "/", Backend: "http://192.0.2.1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	acme, globex := policy.MakeTenantEnv("acme", ""), policy.MakeTenantEnv("globex", "")
	h.count(acme, http.StatusOK, time.Millisecond) // the first request looks the children up
	if n := testing.AllocsPerRun(100, func() { h.count(acme, http.StatusOK, time.Millisecond) }); n != 0 {
		t.Errorf("counting a request: %v allocations, want 0", n)
	}
	// Still the vectors' series, under the same labels.
	if got := testutil.ToFloat64(m.requests.WithLabelValues("web", "acme", "default", "200")); got != 102 {
		t.Errorf("requests_total{code=200} = %v, want 102", got)
	}
	h.count(acme, 404, time.Millisecond)
	h.count(acme, 999, time.Millisecond)
	h.count(globex, 200, time.Millisecond) // not routed here: looked up each time
	for _, c := range []struct {
		tenant, code string
		want         float64
	}{{"acme", "404", 1}, {"acme", "999", 1}, {"globex", "200", 1}} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues("web", c.tenant, "default", c.code)); got != c.want {
			t.Errorf("requests_total{tenant=%s,code=%s} = %v, want %v", c.tenant, c.code, got, c.want)
		}
	}
	if got := testutil.CollectAndCount(m.duration, "gatehouse_http_request_duration_seconds"); got != 2 {
		t.Errorf("%d duration series, want 2 (acme, globex)", got)
	}
}
