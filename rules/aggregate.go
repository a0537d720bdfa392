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
	var b netipx.IPSetBuilder
	for _, p := range prefixes {
		b.AddPrefix(p.Masked())
	}
	set, _ := b.IPSet()
	return set.Prefixes()
}
