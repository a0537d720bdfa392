package admin

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestAuditSamplesReads: a status page polling every two seconds writes
// one line per principal and read per ReadAuditPeriod, the next one saying
// how many reads it left out, and the count of the last period is written
// when the log closes; refused reads, failed reads and actions are all
// written, however often.
func TestAuditSamplesReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	viewer, stranger := uint32(1000), uint32(1001)
	pv := Principal{Transport: "unix", UID: &viewer, Grants: []Grant{{policy.RoleViewer, sc("tenant:acme")}}}
	ps := Principal{Transport: "unix", UID: &stranger}
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := func(p Principal, act Action, at time.Duration, result string) {
		e := NewEntry(p, act, "global", nil)
		e.Time, e.Result = t0.Add(at), result
		if err := a.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	// 10 minutes of polling: 300 reads of status, 300 of metrics.
	for i := range 300 {
		at := time.Duration(i) * 2 * time.Second
		rec(pv, ActStatus, at, "ok")
		rec(pv, ActMetrics, at, "ok")
		if i%100 == 0 {
			rec(ps, ActStatus, at, "refused")
			rec(pv, ActCerts, at, "error")
			rec(pv, ActReload, at, "refused")
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	count := map[string]int{}
	reads := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		k := string(e.Action) + " " + e.Result + " " + e.Principal
		count[k]++
		if n, ok := e.Args["reads_not_written"].(float64); ok {
			reads[k] += n
		}
		if e.Result == "ok" {
			reads[k]++
		}
	}
	for k, want := range map[string]int{
		"status ok uid 1000":          3, // at 0, at 5m, and the rest at close
		"metrics ok uid 1000":         3,
		"status refused uid 1001":     3,
		"certificates error uid 1000": 3,
		"reload refused uid 1000":     3,
	} {
		if count[k] != want {
			t.Errorf("%s: %d lines, want %d (all: %v)", k, count[k], want, count)
		}
	}
	for _, k := range []string{"status ok uid 1000", "metrics ok uid 1000"} {
		if reads[k] != 300 {
			t.Errorf("%s: the lines account for %v reads, want 300", k, reads[k])
		}
	}
}
