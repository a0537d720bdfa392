package rules

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestUnion(t *testing.T) {
	mp := netip.MustParsePrefix
	adm, err := Union(map[string][]netip.Prefix{
		"static": {mp("203.0.113.0/25"), mp("203.0.113.128/25"), mp("2001:db8::/48")},
		"aws":    {mp("198.51.100.0/24"), mp("198.51.100.64/26"), mp("2001:db8:0:1::/64")},
	})
	if err != nil {
		t.Fatal(err)
	}
	want4 := []netip.Prefix{mp("198.51.100.0/24"), mp("203.0.113.0/24")}
	if len(adm.V4) != 2 || adm.V4[0] != want4[0] || adm.V4[1] != want4[1] {
		t.Errorf("v4 = %v, want %v", adm.V4, want4)
	}
	if len(adm.V6) != 1 || adm.V6[0] != mp("2001:db8::/48") {
		t.Errorf("v6 = %v", adm.V6)
	}
	if adm.PerFeed["static"] != (policy.FamilyCount{V4: 2, V6: 1}) || adm.PerFeed["aws"] != (policy.FamilyCount{V4: 2, V6: 1}) {
		t.Errorf("per feed = %v", adm.PerFeed)
	}
	p := &policy.Policy{Admitted: adm}
	if err := p.Validate(); err != nil {
		t.Errorf("union output fails policy invariants: %v", err)
	}
}

// TestAggregateMatchesBruteForce checks membership of random addresses
// against the unaggregated input.
func TestAggregateMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 50; round++ {
		var in []netip.Prefix
		for i := 0; i < 40; i++ {
			a := netip.AddrFrom4([4]byte{198, 51, byte(r.IntN(4)), byte(r.IntN(256))})
			in = append(in, netip.PrefixFrom(a, 22+r.IntN(11)).Masked())
		}
		adm, err := Union(map[string][]netip.Prefix{"x": in})
		if err != nil {
			t.Fatal(err)
		}
		if err := (&policy.Policy{Admitted: adm}).Validate(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2000; i++ {
			a := netip.AddrFrom4([4]byte{198, 51, byte(r.IntN(5)), byte(r.IntN(256))})
			want := false
			for _, p := range in {
				if p.Contains(a) {
					want = true
					break
				}
			}
			if got := adm.Contains(a); got != want {
				t.Fatalf("round %d: %s: aggregated %v, brute force %v", round, a, got, want)
			}
		}
	}
}
