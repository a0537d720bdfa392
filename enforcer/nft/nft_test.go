package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel records every batch an Enforcer sends and acknowledges it the
// way google/nftables' own tests do (echo); every read (dump) fails with
// ENOENT, as on a namespace without our table.
type fakeKernel struct {
	batches [][]netlink.Message
	reads   int
}

func (f *fakeKernel) dial(req []netlink.Message) ([]netlink.Message, error) {
	if len(req) == 0 {
		return nil, nil
	}
	if req[0].Header.Type != netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
		f.reads++
		return nil, unix.ENOENT
	}
	batch := make([]netlink.Message, len(req))
	for i, m := range req {
		batch[i] = netlink.Message{Header: m.Header, Data: bytes.Clone(m.Data)}
	}
	f.batches = append(f.batches, batch)
	return req, nil
}

func newFake(t *testing.T) (*Enforcer, *fakeKernel) {
	t.Helper()
	e, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeKernel{}
	e.testDial = f.dial
	return e, f
}

// msgType is the nftables message type of m (NFT_MSG_*), or the raw type
// for batch delimiters.
func msgType(m netlink.Message) int {
	ht := int(m.Header.Type)
	if ht>>8 == unix.NFNL_SUBSYS_NFTABLES {
		return ht & 0xff
	}
	return ht
}

var msgNames = map[int]string{
	unix.NFNL_MSG_BATCH_BEGIN: "batch-begin", unix.NFNL_MSG_BATCH_END: "batch-end",
	unix.NFT_MSG_NEWTABLE: "newtable", unix.NFT_MSG_DELTABLE: "deltable",
	unix.NFT_MSG_NEWCHAIN: "newchain", unix.NFT_MSG_NEWRULE: "newrule",
	unix.NFT_MSG_NEWSET: "newset", unix.NFT_MSG_NEWSETELEM: "newsetelem",
	unix.NFT_MSG_DELSETELEM: "delsetelem", unix.NFT_MSG_NEWOBJ: "newobj",
}

func attrs(t *testing.T, m netlink.Message) map[uint16][]byte {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint16][]byte{}
	for ad.Next() {
		out[ad.Type()] = ad.Bytes()
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// elemCount counts the elements in a NEWSETELEM or DELSETELEM message and
// returns the size of its element list attribute.
func elemCount(t *testing.T, m netlink.Message) (n, size int) {
	t.Helper()
	list := attrs(t, m)[unix.NFTA_SET_ELEM_LIST_ELEMENTS]
	ad, err := netlink.NewAttributeDecoder(list)
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		n++
	}
	return n, len(list)
}

// checkBatchOwnTable asserts the invariant that keeps other tables safe:
// every message of every batch is family inet and names table gatehouse.
func checkBatchOwnTable(t *testing.T, batch []netlink.Message) {
	t.Helper()
	if msgType(batch[0]) != unix.NFNL_MSG_BATCH_BEGIN || msgType(batch[len(batch)-1]) != unix.NFNL_MSG_BATCH_END {
		t.Fatalf("batch not delimited: %v ... %v", batch[0].Header, batch[len(batch)-1].Header)
	}
	for i, m := range batch[1 : len(batch)-1] {
		if m.Data[0] != unix.NFPROTO_INET {
			t.Errorf("message %d (%s): family %d, want inet", i, msgNames[msgType(m)], m.Data[0])
		}
		// Attribute 1 is the table name in every message type we send.
		if got := attrs(t, m)[1]; string(got) != TableName+"\x00" {
			t.Errorf("message %d (%s): table %q, want %q", i, msgNames[msgType(m)], got, TableName)
		}
	}
}

func countTypes(batch []netlink.Message) map[string]int {
	out := map[string]int{}
	for _, m := range batch {
		out[msgNames[msgType(m)]]++
	}
	return out
}

func TestApplyIsOneBatchOnOwnTable(t *testing.T) {
	e, f := newFake(t)
	if err := e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 1 {
		t.Fatalf("%d batches, want 1", len(f.batches))
	}
	b := f.batches[0]
	checkBatchOwnTable(t, b)
	got := countTypes(b)
	rs := mustSpec(t, goldenPolicy()).build()
	want := map[string]int{
		"batch-begin": 1, "batch-end": 1,
		"newtable": 2, "deltable": 1, // create-if-absent, delete, create: atomic replace
		"newobj":   len(rs.counters),
		"newset":   len(rs.sets) + len(rs.anon),
		"newchain": len(rs.chains),
		"newrule":  len(rs.rules),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %d messages, want %d", k, got[k], v)
		}
	}
	// The replace order matters: the delete must come before anything is
	// created, and it must delete exactly our table.
	if msgType(b[1]) != unix.NFT_MSG_NEWTABLE || msgType(b[2]) != unix.NFT_MSG_DELTABLE || msgType(b[3]) != unix.NFT_MSG_NEWTABLE {
		t.Errorf("batch starts %s %s %s, want newtable deltable newtable",
			msgNames[msgType(b[1])], msgNames[msgType(b[2])], msgNames[msgType(b[3])])
	}
	for _, m := range b {
		if msgType(m) == unix.NFT_MSG_NEWTABLE {
			// No owner flag: the table must outlive the daemon.
			if fl := attrs(t, m)[unix.NFTA_TABLE_FLAGS]; binary.BigEndian.Uint32(fl) != 0 {
				t.Errorf("table flags %x, want 0", fl)
			}
		}
	}
}

func mustSpec(t testing.TB, p *policy.Policy) *spec {
	t.Helper()
	s, err := newSpec(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// randomPrefixes returns n sorted, disjoint, non-adjacent IPv4 /24s
// (every other /24 of 1.0.0.0 upwards), deterministic for a seed.
func randomPrefixes(n int, seed uint64) []netip.Prefix {
	r := rand.New(rand.NewPCG(seed, 1))
	picked := map[uint32]bool{}
	for len(picked) < n {
		picked[r.Uint32N(1<<22)*2+1<<16] = true
	}
	out := make([]netip.Prefix, 0, n)
	for k := range picked {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], k<<8)
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(b), 24))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func bigPolicy(n int, seed uint64) *policy.Policy {
	p := goldenPolicy()
	p.Admitted.V4 = randomPrefixes(n, seed)
	return p
}

func TestLargeSetIsChunkedInOneBatch(t *testing.T) {
	const n = 100_000
	e, f := newFake(t)
	p := bigPolicy(n, 1)
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 1 {
		t.Fatalf("%d batches, want 1", len(f.batches))
	}
	checkBatchOwnTable(t, f.batches[0])
	total, msgs := 0, 0
	for _, m := range f.batches[0] {
		if msgType(m) != unix.NFT_MSG_NEWSETELEM || string(attrs(t, m)[unix.NFTA_SET_NAME]) != "admitted_v4\x00" {
			continue
		}
		c, size := elemCount(t, m)
		if size > 0xffff-4 {
			t.Errorf("element list of %d bytes does not fit a netlink attribute", size)
		}
		total += c
		msgs++
	}
	if total != 2*n {
		t.Errorf("%d admitted_v4 elements sent, want %d (start and end of %d ranges)", total, 2*n, n)
	}
	if msgs < 2 {
		t.Errorf("%d element messages for %d elements: not chunked", msgs, 2*n)
	}
}

func TestDiffSendsOnlyChangedElements(t *testing.T) {
	e, f := newFake(t)
	p1 := bigPolicy(10_000, 2)
	if err := e.Apply(p1); err != nil {
		t.Fatal(err)
	}
	// 1 %: drop 50 prefixes, add 50 new ones.
	p2 := bigPolicy(10_000, 2)
	added := randomPrefixes(50, 3)
	v4 := slices.Clone(p2.Admitted.V4[50:])
	for _, a := range added {
		if !slices.Contains(v4, a) && !slices.Contains(p2.Admitted.V4[:50], a) {
			v4 = append(v4, a)
		}
	}
	slices.SortFunc(v4, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	p2.Admitted.V4 = v4
	p2.Generation = 2
	if err := e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 2 {
		t.Fatalf("%d batches, want 2", len(f.batches))
	}
	b := f.batches[1]
	checkBatchOwnTable(t, b)
	del, add := diffRanges(toRanges(p1.Admitted.V4), toRanges(p2.Admitted.V4))
	var gotDel, gotAdd int
	for _, m := range b[1 : len(b)-1] {
		switch msgType(m) {
		case unix.NFT_MSG_DELSETELEM:
			n, _ := elemCount(t, m)
			gotDel += n
		case unix.NFT_MSG_NEWSETELEM:
			n, _ := elemCount(t, m)
			gotAdd += n
		default:
			t.Errorf("diff batch has a %s message", msgNames[msgType(m)])
		}
	}
	if gotDel != 2*len(del) || gotAdd != 2*len(add) || len(del) == 0 {
		t.Errorf("diff sent %d deletions and %d additions, want %d and %d", gotDel, gotAdd, 2*len(del), 2*len(add))
	}
	// The same generation again sends nothing at all.
	if err := e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != 2 {
		t.Errorf("unchanged generation sent a batch")
	}
}

func TestShapeChangeReplacesTable(t *testing.T) {
	e, f := newFake(t)
	if err := e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	p := goldenPolicy()
	p.Enforcement.Mode = policy.ModeListeners
	if err := e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if got := countTypes(f.batches[len(f.batches)-1])["deltable"]; got != 1 {
		t.Errorf("mode change: %d deltable, want a full replace", got)
	}
}

func TestBadPolicySendsNothing(t *testing.T) {
	unsorted := goldenPolicy()
	unsorted.Admitted.V4 = prefixes("203.0.113.0/24", "192.0.2.0/24")
	hostBits := goldenPolicy()
	hostBits.Admitted.V6 = prefixes("2001:db8::1/64")
	badMode := goldenPolicy()
	badMode.Enforcement.Mode = "open"
	noWindow := goldenPolicy()
	noWindow.Enforcement.ScanBlock.Window = 0
	mgmtPort := goldenPolicy()
	mgmtPort.Enforcement.Management[0].Ports = nil
	longIface := forwardPolicy()
	longIface.Interface = "an-interface-name-too-long"
	for name, p := range map[string]*policy.Policy{
		"nil": nil, "unsorted": unsorted, "host bits": hostBits, "mode": badMode,
		"scan window": noWindow, "management ports": mgmtPort, "forward interface": longIface,
	} {
		t.Run(name, func(t *testing.T) {
			e, f := newFake(t)
			err := e.Apply(p)
			if !errors.Is(err, errBadPolicy) {
				t.Errorf("error %v, want errBadPolicy", err)
			}
			if len(f.batches)+f.reads != 0 {
				t.Errorf("bad policy reached the kernel")
			}
		})
	}
}

func TestFailedFlushKeepsPreviousGeneration(t *testing.T) {
	e, f := newFake(t)
	if err := e.Apply(goldenPolicy()); err != nil {
		t.Fatal(err)
	}
	fail := true
	e.testDial = func(req []netlink.Message) ([]netlink.Message, error) {
		if fail && len(req) > 0 && req[0].Header.Type == netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN) {
			return nil, unix.EINVAL
		}
		return f.dial(req)
	}
	p2 := goldenPolicy()
	p2.Admitted.V4 = prefixes("192.0.2.0/24")
	if err := e.Apply(p2); err == nil {
		t.Fatal("Apply succeeded though the kernel refused the batch")
	}
	// The next attempt must diff against what the kernel still holds
	// (generation 1), so it deletes the 203.0.113.0 range again.
	fail = false
	if err := e.Apply(p2); err != nil {
		t.Fatal(err)
	}
	b := f.batches[len(f.batches)-1]
	if n := countTypes(b)["delsetelem"]; n != 1 {
		t.Errorf("retry sent %d deletions, want 1", n)
	}
}

func TestRulesCarryTags(t *testing.T) {
	rs := mustSpec(t, goldenPolicy()).build()
	seen := map[string]bool{}
	for i, r := range rs.rules {
		if !bytes.Contains(r.UserData, rs.tags[i]) {
			t.Errorf("rule %d lacks its tag", i)
		}
		if seen[string(rs.tags[i])] {
			t.Errorf("rule %d: duplicate tag", i)
		}
		seen[string(rs.tags[i])] = true
	}
}

// TestBatchGolden pins the bytes of the generation of goldenPolicy and of
// forwardPolicy, like google/nftables pins its messages against
// nft --debug=netlink.
func TestBatchGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		p    *policy.Policy
	}{
		{"batch.golden", goldenPolicy()},
		{"batch-forward.golden", forwardPolicy()},
	} {
		t.Run(tc.file, func(t *testing.T) {
			e, f := newFake(t)
			if err := e.Apply(tc.p); err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			for _, m := range f.batches[0] {
				fmt.Fprintf(&sb, "%s flags=%#x\n", msgNames[msgType(m)], uint16(m.Header.Flags))
				for d := m.Data; len(d) > 0; {
					n := min(32, len(d))
					fmt.Fprintf(&sb, "  %x\n", d[:n])
					d = d[n:]
				}
			}
			got := sb.String()
			path := filepath.Join("testdata", tc.file)
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("batch differs from %s (-update to accept)", path)
			}
		})
	}
}

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

// ruleCounter returns the name of the counter a rule updates.
func ruleCounter(r *nftables.Rule) string {
	for _, e := range r.Exprs {
		if o, ok := e.(*expr.Objref); ok {
			return o.Name
		}
	}
	return ""
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
			"fwd_established", "fwd_invalid", "fwd_not_admitted", "fwd_rate_limited",
			"fwd_conn_limited", "fwd_admitted", "fwd_blocked"}},
		{"listeners outside", policy.ModeListeners, "eth1", true, nftables.ChainPolicyAccept, []string{
			"fwd_established", "fwd_invalid", "fwd_internal", "fwd_not_admitted",
			"fwd_rate_limited", "fwd_conn_limited", "fwd_admitted", "fwd_blocked"}},
		{"strict outside", policy.ModeStrict, "eth1", true, nftables.ChainPolicyDrop, []string{
			"fwd_established", "fwd_invalid", "fwd_internal", "fwd_not_admitted", "fwd_rate_limited",
			"fwd_conn_limited", "fwd_admitted", "fwd_blocked", "fwd_icmp_allowed", "fwd_strict_drop"}},
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
			inRules := chainRules(rs, "input")
			wantIn := chainRules(input, "input")
			if len(inRules) != len(wantIn) {
				t.Fatalf("input chain: %d rules, want %d", len(inRules), len(wantIn))
			}
			for i := range inRules {
				if !bytes.Equal(inRules[i].UserData, wantIn[i].UserData) {
					t.Errorf("input rule %d differs with forward on", i)
				}
			}
			var got []string
			for _, r := range chainRules(rs, "forward") {
				if n := ruleCounter(r); len(got) == 0 || got[len(got)-1] != n {
					got = append(got, n)
				}
			}
			if !slices.Equal(got, tc.counters) {
				t.Errorf("forward counters %v, want %v", got, tc.counters)
			}
			if !tc.forward {
				if len(rs.chains) != 1 {
					t.Errorf("%d chains without forward, want 1", len(rs.chains))
				}
				for _, c := range rs.counters {
					if strings.HasPrefix(c, fwdPrefix) {
						t.Errorf("counter %s without forward", c)
					}
				}
				return
			}
			if len(rs.chains) != 2 {
				t.Fatalf("%d chains, want input and forward", len(rs.chains))
			}
			fwd := rs.chains[1]
			if fwd.Name != "forward" || *fwd.Hooknum != *nftables.ChainHookForward ||
				*fwd.Priority != *nftables.ChainPriorityRef(chainPriority) || *fwd.Policy != tc.policy {
				t.Errorf("forward chain %s hook %d priority %d policy %d, want forward %d %d %d", fwd.Name,
					*fwd.Hooknum, *fwd.Priority, *fwd.Policy, *nftables.ChainHookForward, chainPriority, tc.policy)
			}
			// Bounded label set: one counter per rule kind, every one named.
			for _, c := range rs.counters {
				if c == "" {
					t.Error("rule without a counter")
				}
			}
			// Both chains update the same per-source sets: no forward sets.
			if len(rs.sets) != len(input.sets) {
				t.Errorf("%d sets with forward, %d without: want the same sets", len(rs.sets), len(input.sets))
			}
			// Every rule's tag is unique across both chains.
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
// flows first, then what no block may take (management ports, listener
// ports of admitted sources), then the blocklist, then the rest.
func TestInputChainOrder(t *testing.T) {
	for _, tc := range []struct {
		mode policy.Mode
		want []string
	}{
		{policy.ModeListeners, []string{"loopback", "established", "invalid", "icmp_allowed", "management", "not_admitted",
			"rate_limited", "conn_limited", "admitted", "blocked", "scan_detected"}},
		{policy.ModeStrict, []string{"loopback", "established", "invalid", "icmp_allowed", "management", "not_admitted",
			"rate_limited", "conn_limited", "admitted", "blocked", "icmp_allowed", "scan_detected", "strict_drop"}},
	} {
		p := goldenPolicy()
		p.Enforcement.Mode = tc.mode
		var got []string
		for _, r := range chainRules(mustSpec(t, p).build(), "input") {
			if n := ruleCounter(r); len(got) == 0 || got[len(got)-1] != n {
				got = append(got, n)
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: input counters %v, want %v", tc.mode, got, tc.want)
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
		{"off", goldenPolicy(), 1},
		{"on", forwardPolicy(), 2},
		{"interface", func() *policy.Policy { p := forwardPolicy(); p.Interface = "eth2"; return p }(), 2},
		{"off again", goldenPolicy(), 1},
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
		if (fwdRules > 0) != (st.chains == 2) {
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

func TestToRanges(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{"192.0.2.0/24"}, []string{"192.0.2.0-192.0.2.255"}},
		{[]string{"203.0.113.0/25", "203.0.113.128/26"}, []string{"203.0.113.0-203.0.113.191"}},
		{[]string{"192.0.2.0/25", "198.51.100.0/24"}, []string{"192.0.2.0-192.0.2.127", "198.51.100.0-198.51.100.255"}},
		{[]string{"2001:db8::/48", "2001:db8:1::/48"}, []string{"2001:db8::-2001:db8:1:ffff:ffff:ffff:ffff:ffff"}},
	} {
		var got []string
		for _, r := range toRanges(prefixes(tc.in...)) {
			got = append(got, r.from.String()+"-"+r.to.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("toRanges(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestIntervalElementsTopOfSpace(t *testing.T) {
	els := intervalElements(toRanges(prefixes("255.255.255.0/24")))
	if len(els) != 1 || els[0].IntervalEnd {
		t.Errorf("range to the top: %+v, want one start element", els)
	}
	els = intervalElements(toRanges(prefixes("192.0.2.0/24")))
	if len(els) != 2 || !els[1].IntervalEnd || netip.AddrFrom4([4]byte(els[1].Key)) != netip.MustParseAddr("192.0.3.0") {
		t.Errorf("192.0.2.0/24: %+v, want start and end at 192.0.3.0", els)
	}
}

func TestDiffRanges(t *testing.T) {
	r := func(ss ...string) []addrRange { return toRanges(prefixes(ss...)) }
	del, add := diffRanges(r("192.0.2.0/24", "198.51.100.0/24"), r("192.0.2.0/25", "198.51.100.0/24", "203.0.113.0/24"))
	if !slices.Equal(del, r("192.0.2.0/24")) || !slices.Equal(add, r("192.0.2.0/25", "203.0.113.0/24")) {
		t.Errorf("diff: del %v add %v", del, add)
	}
}

func TestChunkElements(t *testing.T) {
	els := intervalElements(toRanges(randomPrefixes(20_000, 4)))
	chunks := chunkElements(els)
	var n int
	for i, c := range chunks {
		size := 0
		for _, e := range c {
			size += elementSize(e)
		}
		if size > maxElemBytes {
			t.Errorf("chunk %d: %d bytes", i, size)
		}
		if c[0].IntervalEnd {
			t.Errorf("chunk %d starts with an interval end", i)
		}
		n += len(c)
	}
	if n != len(els) {
		t.Errorf("chunks hold %d elements, want %d", n, len(els))
	}
}

// TestElementSize checks the size estimate against the real encoding.
func TestElementSize(t *testing.T) {
	for _, el := range []nftables.SetElement{
		{Key: []byte{192, 0, 2, 0}},
		{Key: []byte{192, 0, 3, 0}, IntervalEnd: true},
		{Key: netip.MustParseAddr("2001:db8::").AsSlice()},
		{Key: concatKey(netip.MustParseAddr("198.51.100.0"), 22), KeyEnd: concatKey(netip.MustParseAddr("198.51.100.15"), 22)},
	} {
		set := &nftables.Set{Table: ourTable(), Name: "x", ID: 1}
		c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
			if len(req) > 1 {
				n, size := elemCount(t, req[1])
				if n != 1 || size != elementSize(el) {
					t.Errorf("%+v: encodes to %d bytes, estimate %d", el, size, elementSize(el))
				}
			}
			return req, nil
		}))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SetAddElements(set, []nftables.SetElement{el}); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScanRate(t *testing.T) {
	for _, tc := range []struct {
		n      int
		window time.Duration
		rate   uint64
		unit   expr.LimitTime
	}{
		{10, 10 * time.Second, 1, expr.LimitTimeSecond},
		{5, 10 * time.Second, 30, expr.LimitTimeMinute},
		{100, 10 * time.Second, 10, expr.LimitTimeSecond},
		{10, time.Hour, 10, expr.LimitTimeHour},
	} {
		rate, unit := scanRate(policy.ScanBlock{DistinctPorts: tc.n, Window: tc.window})
		if rate != tc.rate || unit != tc.unit {
			t.Errorf("%d ports in %s: %d per %d s, want %d per %d s", tc.n, tc.window, rate, unit, tc.rate, tc.unit)
		}
	}
}

func TestNewRejectsBadNetNS(t *testing.T) {
	if _, err := New(Config{NetNS: -1}); !errors.Is(err, ErrBadNetNS) {
		t.Errorf("NetNS -1: %v", err)
	}
}

// TestIntervalChunks: the streamed chunks of a full replace hold exactly the
// elements of intervalElements, in order, each chunk within maxElemBytes and
// starting with a start element, for IPv4 (with a range to the top of the
// space) and IPv6.
func TestIntervalChunks(t *testing.T) {
	v4 := append(randomPrefixes(20_000, 5), netip.MustParsePrefix("255.255.255.0/24"))
	slices.SortFunc(v4, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	r := rand.New(rand.NewPCG(6, 6))
	var v6 []netip.Prefix
	for i := range 8000 {
		var a [16]byte
		copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i)})
		a[6] = byte(r.IntN(256))
		v6 = append(v6, netip.PrefixFrom(netip.AddrFrom16(a), 48+r.IntN(80)).Masked())
	}
	slices.SortFunc(v6, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, set := range [][]netip.Prefix{v4, v6} {
		rs := toRanges(set)
		var got []nftables.SetElement
		chunks := 0
		err := forIntervalChunks(rs, func(c []nftables.SetElement) error {
			chunks++
			size := 0
			for _, e := range c {
				size += elementSize(e)
				// The keys live in a buffer reused for the next chunk.
				got = append(got, nftables.SetElement{Key: slices.Clone(e.Key), IntervalEnd: e.IntervalEnd})
			}
			if size > maxElemBytes {
				t.Errorf("chunk %d: %d bytes", chunks, size)
			}
			if c[0].IntervalEnd {
				t.Errorf("chunk %d starts with an interval end", chunks)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := intervalElements(rs)
		if chunks < 2 || !slices.EqualFunc(got, want, func(a, b nftables.SetElement) bool {
			return slices.Equal(a.Key, b.Key) && a.IntervalEnd == b.IntervalEnd
		}) {
			t.Fatalf("%d chunks; elements equal to intervalElements: false (%d, want %d)", chunks, len(got), len(want))
		}
	}
	wantErr := errors.New("refused")
	if err := forIntervalChunks(toRanges(v4), func([]nftables.SetElement) error { return wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("error of the callback: %v", err)
	}
}
