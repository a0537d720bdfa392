package nft

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// chainRules returns the rules of rs in the chain named name.
func chainRules(rs *ruleset, name string) []*nftables.Rule {
	var out []*nftables.Rule
	for _, r := range rs.rules {
		if r.Chain.Name == name {
			out = append(out, r)
		}
	}
	return out
}

// ruleCounter returns the name of the counter a rule updates, or for a
// rule without one, "jump" and the chain it jumps to, "notrack", or "".
func ruleCounter(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Objref:
			return e.Name
		case *expr.Verdict:
			if e.Kind == expr.VerdictJump {
				return "jump " + e.Chain
			}
		case *expr.Notrack:
			return "notrack"
		}
	}
	return ""
}

// chainCounters returns the counters of the rules of one chain, in rule
// order, repeats folded.
func chainCounters(rs *ruleset, chain string) []string {
	var got []string
	for _, r := range chainRules(rs, chain) {
		if n := ruleCounter(r); len(got) == 0 || got[len(got)-1] != n {
			got = append(got, n)
		}
	}
	return got
}

func TestForwardChain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    policy.Mode
		iface   string
		forward bool
		policy  nftables.ChainPolicy
		// counters of the forward chain, in rule order, repeats folded
		counters []string
	}{
		{name: "off", mode: policy.ModeStrict, iface: "eth1"},
		{"listeners", policy.ModeListeners, "", true, nftables.ChainPolicyAccept, []string{
			"fwd_established", "fwd_syn_proxy", "fwd_invalid", "fwd_not_admitted", "fwd_blocked"}},
		{"listeners outside", policy.ModeListeners, "eth1", true, nftables.ChainPolicyAccept, []string{
			"fwd_established", "fwd_syn_proxy", "fwd_invalid", "fwd_internal", "fwd_not_admitted", "fwd_blocked"}},
		{"strict outside", policy.ModeStrict, "eth1", true, nftables.ChainPolicyDrop, []string{
			"fwd_strict_protocol", "fwd_established", "fwd_syn_proxy", "fwd_invalid", "fwd_internal", "fwd_not_admitted", "fwd_blocked",
			"fwd_icmp_allowed", "fwd_strict_drop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := goldenPolicy()
			p.Interface = tc.iface
			p.Enforcement.Mode = tc.mode
			p.Enforcement.Forward = tc.forward
			rs := mustSpec(t, p).build()
			noFwd := *p
			noFwd.Enforcement.Forward = false
			input := mustSpec(t, &noFwd).build()
			// The input chain does not depend on the forward switch.
			inRules := chainRules(rs, chainInput)
			wantIn := chainRules(input, chainInput)
			if len(inRules) != len(wantIn) {
				t.Fatalf("input chain: %d rules, want %d", len(inRules), len(wantIn))
			}
			for i := range inRules {
				if !bytes.Equal(ruleTag(0, inRules[i].Exprs), ruleTag(0, wantIn[i].Exprs)) {
					t.Errorf("input rule %d differs with forward on", i)
				}
			}
			if got := chainCounters(rs, chainForward); !slices.Equal(got, tc.counters) {
				t.Errorf("forward counters %v, want %v", got, tc.counters)
			}
			// The output chain counts proven connections to routed
			// listeners too.
			wantOut := []string{"rate_limited", "conn_limited", "admitted"}
			if tc.forward {
				wantOut = append(wantOut, "fwd_rate_limited", "fwd_conn_limited", "fwd_admitted")
			}
			if got := chainCounters(rs, chainOutput); !slices.Equal(got, wantOut) {
				t.Errorf("output counters %v, want %v", got, wantOut)
			}
			var names []string
			for _, ch := range rs.chains {
				names = append(names, ch.Name)
			}
			wantChains := []string{chainPrerouting, chainInput, chainOutput, chainScanBlock}
			if tc.forward {
				wantChains = []string{chainPrerouting, chainInput, chainOutput, chainForward, chainScanBlock}
			}
			if !slices.Equal(names, wantChains) {
				t.Errorf("chains %v, want %v", names, wantChains)
			}
			if !tc.forward {
				for _, c := range rs.counters {
					if strings.HasPrefix(c, fwdPrefix) {
						t.Errorf("counter %s without forward", c)
					}
				}
				return
			}
			fwd := rs.chains[3]
			if *fwd.Hooknum != *nftables.ChainHookForward || *fwd.Priority != *nftables.ChainPriorityRef(chainPriority) || *fwd.Policy != tc.policy {
				t.Errorf("forward chain hook %d priority %d policy %d, want forward %d %d %d",
					*fwd.Hooknum, *fwd.Priority, *fwd.Policy, *nftables.ChainHookForward, chainPriority, tc.policy)
			}
			// Bounded label set: one counter per rule kind, every one named.
			for _, c := range rs.counters {
				if c == "" {
					t.Error("rule without a counter")
				}
			}
			// Both paths update the same per-source sets: no forward sets.
			if len(rs.sets) != len(input.sets) {
				t.Errorf("%d sets with forward, %d without: want the same sets", len(rs.sets), len(input.sets))
			}
			// Every rule's tag is unique across the chains.
			seen := map[string]bool{}
			for i := range rs.rules {
				if seen[string(rs.tags[i])] {
					t.Errorf("rule %d: duplicate tag", i)
				}
				seen[string(rs.tags[i])] = true
			}
		})
	}
}

// TestInputChainOrder pins the order the input chain decides in: live
// flows first, then listener connections to synproxy (which keeps them out
// of conntrack until their source is proven), then what no block may take
// (management ports), what is left of the listener ports, then the
// blocklist, then the rest.
func TestInputChainOrder(t *testing.T) {
	for _, tc := range []struct {
		mode policy.Mode
		want []string
	}{
		{policy.ModeListeners, []string{"loopback", "established", "syn_proxy", "invalid", "icmp_allowed", "management", "not_admitted",
			"blocked", "jump scan_block"}},
		{policy.ModeStrict, []string{"loopback", "established", "syn_proxy", "invalid", "icmp_allowed", "management", "not_admitted",
			"blocked", "icmp_allowed", "jump scan_block", "strict_drop"}},
	} {
		p := goldenPolicy()
		p.Enforcement.Mode = tc.mode
		rs := mustSpec(t, p).build()
		if got := chainCounters(rs, chainInput); !slices.Equal(got, tc.want) {
			t.Errorf("%s: input counters %v, want %v", tc.mode, got, tc.want)
		}
		// Before conntrack: a SYN to a listener from a source that is
		// not admitted is dropped, the rest left untracked.
		if got, want := chainCounters(rs, chainPrerouting), []string{"not_admitted", "notrack", "not_admitted", "notrack"}; !slices.Equal(got, want) {
			t.Errorf("%s: prerouting %v, want %v", tc.mode, got, want)
		}
		if got, want := chainCounters(rs, chainScanBlock), []string{"scan_detected", "blocklist_full"}; !slices.Equal(got, want) {
			t.Errorf("%s: scan_block %v, want %v", tc.mode, got, want)
		}
	}
}

// TestForwardToggleReplaces checks that switching forward on, changing the
// outside interface and switching it off each replace the table in one
// batch, and that the last batch creates no forward chain.
func TestForwardToggleReplaces(t *testing.T) {
	e, f := newFake(t)
	steps := []struct {
		name   string
		p      *policy.Policy
		chains int
	}{
		{"off", goldenPolicy(), 4},
		{"on", forwardPolicy(), 5},
		{"interface", func() *policy.Policy { p := forwardPolicy(); p.Interface = "eth2"; return p }(), 5},
		{"off again", goldenPolicy(), 4},
	}
	for i, st := range steps {
		if err := e.Apply(st.p); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if len(f.batches) != i+1 {
			t.Fatalf("%s: %d batches, want %d", st.name, len(f.batches), i+1)
		}
		b := f.batches[i]
		checkBatchOwnTable(t, b)
		got := countTypes(b)
		if got["deltable"] != 1 || got["newchain"] != st.chains {
			t.Errorf("%s: %d deltable and %d newchain, want a full replace with %d chains", st.name, got["deltable"], got["newchain"], st.chains)
		}
		var fwdRules int
		for _, m := range b {
			if msgType(m) == unix.NFT_MSG_NEWRULE && string(attrs(t, m)[unix.NFTA_RULE_CHAIN]) == "forward\x00" {
				fwdRules++
			}
		}
		if (fwdRules > 0) != (st.chains == 5) {
			t.Errorf("%s: %d forward rules sent", st.name, fwdRules)
		}
	}
	// Set contents alone still go as a diff with forward on.
	if err := e.Apply(forwardPolicy()); err != nil {
		t.Fatal(err)
	}
	p := forwardPolicy()
	p.Admitted.V4 = prefixes("192.0.2.0/24")
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if got := countTypes(f.batches[len(f.batches)-1]); got["deltable"] != 0 || got["delsetelem"] != 1 {
		t.Errorf("admitted change with forward on: %v, want one element deletion", got)
	}
}
