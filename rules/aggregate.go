package rules

import (
	"net/netip"

	"go4.org/netipx"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Union merges the prefixes of every source (a feed name, or "static") into
// one admitted set per family: overlapping and adjacent prefixes merged,
// sorted, canonical. PerFeed records what each source contributed.
func Union(sources map[string][]netip.Prefix) (policy.Admitted, error) {
	var b netipx.IPSetBuilder
	adm := policy.Admitted{PerFeed: make(map[string]policy.FamilyCount, len(sources))}
	for name, prefixes := range sources {
		var fc policy.FamilyCount
		for _, p := range prefixes {
			p = p.Masked()
			b.AddPrefix(p)
			if p.Addr().Is4() {
				fc.V4++
			} else {
				fc.V6++
			}
		}
		adm.PerFeed[name] = fc
	}
	set, err := b.IPSet()
	if err != nil {
		return policy.Admitted{}, err
	}
	for _, p := range set.Prefixes() {
		if p.Addr().Is4() {
			adm.V4 = append(adm.V4, p)
		} else {
			adm.V6 = append(adm.V6, p)
		}
	}
	return adm, nil
}

// Aggregate merges one list of prefixes into the fewest covering the same
// addresses, sorted, IPv4 before IPv6.
func Aggregate(prefixes []netip.Prefix) []netip.Prefix {
	var v4, v6 []netip.Prefix
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	out := make([]netip.Prefix, 0, len(v4)/4+len(v6)/4+1)
	out = aggregateFamily(v4, true, out)
	return aggregateFamily(v6, false, out)
}
