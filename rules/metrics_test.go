package rules

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestUpdateResultsInitialised: every configured feed has a
// gatehouse_feed_updates_total series for every result from the start, at
// 0, so that a dashboard or an alert on refusals sees 0 rather than no
// data.
func TestUpdateResultsInitialised(t *testing.T) {
	k := newTestKey(t)
	a, b := testFeedConfig(1, k), testFeedConfig(1, k)
	a.Name, b.Name = "aws", "gcp"
	m, err := NewManager(ManagerConfig{Logger: testLogger(t), StateDir: t.TempDir(), Feeds: []FeedConfig{a, b}, Guards: docGuards,
		Now: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_feed_updates_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			var feed, result string
			for _, l := range mt.GetLabel() {
				switch l.GetName() {
				case "feed":
					feed = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			if seen[feed] == nil {
				seen[feed] = map[string]float64{}
			}
			seen[feed][result] = mt.GetCounter().GetValue()
		}
	}
	for _, feed := range []string{"aws", "gcp"} {
		// Literal names: the label values dashboards and alerts use.
		for _, r := range []string{"applied", "unchanged", "accepted", "fetch_error", "bad_signature", "expired",
			"rollback", "serial_reuse", "hash_mismatch", "quarantined", "apply_failed", "store_error"} {
			v, ok := seen[feed][r]
			if !ok {
				t.Errorf("no gatehouse_feed_updates_total{feed=%q,result=%q} before any update", feed, r)
			} else if v != 0 {
				t.Errorf("gatehouse_feed_updates_total{feed=%q,result=%q} = %v before any update", feed, r, v)
			}
		}
	}
	if len(seen) != 2 {
		t.Errorf("series for feeds %v, want aws and gcp", seen)
	}
}
