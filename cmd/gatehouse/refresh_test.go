package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/rules"
)

// TestPrintOutcomes: each outcome of gatehouse feed refresh says what
// happened to the release, in particular one applied but not saved is
// not called refused, and one the daemon answered from a recent refresh
// says so.
func TestPrintOutcomes(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		o         rules.Outcome
		want, not string
		ok        bool
	}{
		{rules.Outcome{Feed: "aws", Result: "store_error", Serial: 7, Prefixes: 12, Error: "store_error: write /var/lib/gatehouse/feeds/aws.lkg.json: no space left on device"},
			"aws  applied serial 7 (12 prefixes) but not saved in state_dir", "refused", false},
		{rules.Outcome{Feed: "aws", Result: "deferred", Serial: 8, Prefixes: 12}, "verified serial 8 (12 prefixes); not in force in the kernel layers", "refused", false},
		{rules.Outcome{Feed: "aws", Result: "apply_failed", Error: "apply_failed: apply generation 7 to nftables: replace table: device or resource busy"}, "verified but not applied: apply generation 7 to nftables: replace table: device or resource busy (the release in force stays)", "refused", false},
		{rules.Outcome{Feed: "aws", Result: "mirror_unsettled", Error: "mirror_unsettled: file x"}, "mirror in flux", "refused", false},
		{rules.Outcome{Feed: "aws", Result: "unchanged", Serial: 8, At: now.Add(-3 * time.Second), Reused: true},
			"unchanged (serial 8 in force) [outcome of a refresh 3s ago", "", true},
		{rules.Outcome{Feed: "aws", Result: "bad_signature", Error: "bad_signature: no key"}, "refused: bad_signature: no key (the release in force stays)", "", false},
	} {
		var b bytes.Buffer
		ok := printOutcomes(&b, []rules.Outcome{tc.o}, now)
		if !strings.Contains(b.String(), tc.want) || tc.not != "" && strings.Contains(b.String(), tc.not) || ok != tc.ok {
			t.Errorf("%s: printed %q (ok %v), want %q without %q (ok %v)", tc.o.Result, b.String(), ok, tc.want, tc.not, tc.ok)
		}
	}
}
