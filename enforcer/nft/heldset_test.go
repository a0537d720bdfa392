package nft

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestHeldAdmittedReadsPreviousRun: a new Enforcer in a namespace whose
// table a previous run left reads back exactly the admitted ranges that run
// applied (merged where adjacent), before it applies anything; once it has
// applied, nothing is held.
func TestHeldAdmittedReadsPreviousRun(t *testing.T) {
	netns.RequirePriv(t)
	ns := netns.New(t, "gate")
	prev := newGateIn(t, ns, Config{})
	if v4, v6, err := prev.e.HeldAdmitted(); err != nil || v4 != nil || v6 != nil {
		t.Fatalf("without a table: %v %v %v, want nothing", v4, v6, err)
	}
	p := goldenPolicy()
	if err := prev.e.Apply(p); err != nil {
		t.Fatal(err)
	}
	if _, _, err := prev.e.HeldAdmitted(); !errors.Is(err, ErrApplied) {
		t.Errorf("HeldAdmitted after Apply: %v, want ErrApplied", err)
	}
	prev.e.Close()

	next := newGateIn(t, ns, Config{})
	v4, v6, err := next.e.HeldAdmitted()
	if err != nil {
		t.Fatal(err)
	}
	// 203.0.113.0/25 and 203.0.113.128/26 are one range in the set.
	want4 := prefixes("192.0.2.0/24", "203.0.113.0/25", "203.0.113.128/26")
	if !slices.Equal(v4, want4) || !slices.Equal(v6, p.Admitted.V6) {
		t.Errorf("held: v4 %v v6 %v, want %v %v", v4, v6, want4, p.Admitted.V6)
	}
	q := &policy.Policy{Generation: 2, Enforcement: p.Enforcement, Listeners: p.Listeners,
		Admitted: policy.Admitted{V4: v4, V6: v6}}
	if err := next.e.Apply(q); err != nil {
		t.Fatalf("the held ranges do not apply as a policy: %v", err)
	}
}

func TestIntervalPrefixes(t *testing.T) {
	el := func(s string, end bool) nftables.SetElement {
		return nftables.SetElement{Key: netip.MustParseAddr(s).AsSlice(), IntervalEnd: end}
	}
	for _, tc := range []struct {
		name  string
		elems []nftables.SetElement
		v6    bool
		want  []netip.Prefix
		err   bool
	}{
		{name: "none"},
		{name: "reverse order with nft's leading end", elems: []nftables.SetElement{
			el("203.0.113.192", true), el("203.0.113.0", false), el("192.0.3.0", true), el("192.0.2.0", false), el("0.0.0.0", true)},
			want: prefixes("192.0.2.0/24", "203.0.113.0/25", "203.0.113.128/26")},
		{name: "adjacent ranges merge", elems: []nftables.SetElement{
			el("192.0.2.0", false), el("192.0.2.128", true), el("192.0.2.128", false), el("192.0.3.0", true)},
			want: prefixes("192.0.2.0/24")},
		{name: "to the top of the space", elems: []nftables.SetElement{el("255.255.255.0", false)},
			want: prefixes("255.255.255.0/24")},
		{name: "ipv6", v6: true, elems: []nftables.SetElement{el("2001:db8:1::", false), el("2001:db8:2::", true)},
			want: prefixes("2001:db8:1::/48")},
		{name: "two starts", elems: []nftables.SetElement{el("192.0.2.0", false), el("192.0.2.8", false)}, err: true},
		{name: "wrong family", elems: []nftables.SetElement{el("2001:db8::", false)}, err: true},
	} {
		got, err := intervalPrefixes(tc.elems, tc.v6)
		if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v %v, want %v (error %v)", tc.name, got, err, tc.want, tc.err)
		}
	}
}
