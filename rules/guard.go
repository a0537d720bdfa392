package rules

import (
	"cmp"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
)

// Guards are the checks every prefix of a feed must pass before selection.
type Guards struct {
	// MinPrefixV4 and MinPrefixV6 are the shortest prefix lengths a feed
	// may carry; zero means the default (/8 and /24).
	MinPrefixV4, MinPrefixV6 int
	// ReservedExempt lists special-purpose ranges a feed may still carry
	// (tests and demos use the documentation ranges). A feed prefix passes
	// the bogon guard when it lies wholly inside one of them.
	ReservedExempt []netip.Prefix
}

// Default minimum prefix lengths.
const (
	DefaultMinPrefixV4 = 8
	DefaultMinPrefixV6 = 24
)

// minPrefix is the shortest prefix length allowed for p's family.
func (g Guards) minPrefix(p netip.Prefix) int {
	if p.Addr().Is4() {
		return cmp.Or(g.MinPrefixV4, DefaultMinPrefixV4)
	}
	return cmp.Or(g.MinPrefixV6, DefaultMinPrefixV6)
}

// SpecialPurpose is the special-purpose and bogon address space a feed may
// not carry: the IANA special-purpose registries (RFC 6890 and its
// updates), the reserved 240/4 and multicast. IPv6 outside 2000::/3 is
// refused as well (see CheckPrefix).
var SpecialPurpose = mustPrefixes(
	"0.0.0.0/8",         // "this network"
	"10.0.0.0/8",        // private
	"100.64.0.0/10",     // shared address space (CGN)
	"127.0.0.0/8",       // loopback
	"169.254.0.0/16",    // link local
	"172.16.0.0/12",     // private
	"192.0.0.0/24",      // IETF protocol assignments
	"192.0.2.0/24",      // documentation TEST-NET-1
	"192.31.196.0/24",   // AS112-v4
	"192.52.193.0/24",   // AMT
	"192.88.99.0/24",    // deprecated 6to4 relay anycast
	"192.168.0.0/16",    // private
	"192.175.48.0/24",   // direct delegation AS112
	"198.18.0.0/15",     // benchmarking
	"198.51.100.0/24",   // documentation TEST-NET-2
	"203.0.113.0/24",    // documentation TEST-NET-3
	"224.0.0.0/4",       // multicast
	"240.0.0.0/4",       // reserved, includes 255.255.255.255
	"::/128",            // unspecified
	"::1/128",           // loopback
	"::ffff:0:0/96",     // IPv4-mapped
	"64:ff9b::/96",      // IPv4/IPv6 translation
	"64:ff9b:1::/48",    // local-use translation
	"100::/64",          // discard only
	"2001::/23",         // IETF protocol assignments
	"2001:db8::/32",     // documentation
	"2002::/16",         // 6to4
	"2620:4f:8000::/48", // direct delegation AS112
	"3fff::/20",         // documentation (RFC 9637)
	"5f00::/16",         // SRv6 SIDs
	"fc00::/7",          // unique local
	"fe80::/10",         // link local
	"fec0::/10",         // deprecated site local
	"ff00::/8",          // multicast
)

var (
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	// special4 and special6 are SpecialPurpose as merged, sorted spans,
	// for a binary search per feed prefix.
	special4 = spansOf(SpecialPurpose, true)
	special6 = spansOf(SpecialPurpose, false)
)

func spansOf(ps []netip.Prefix, is4 bool) []span {
	var fam []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is4() == is4 {
			fam = append(fam, p)
		}
	}
	var out []span
	for _, p := range aggregateFamily(fam, is4, nil) {
		out = append(out, spanOf(p))
	}
	return out
}

// overlapsAny reports whether p overlaps one of the sorted, disjoint spans.
func overlapsAny(spans []span, p netip.Prefix) bool {
	s := spanOf(p)
	i, _ := slices.BinarySearchFunc(spans, s.first, func(e span, t u128) int {
		if e.last.cmp(t) < 0 {
			return -1
		}
		return 1
	})
	return i < len(spans) && spans[i].first.cmp(s.last) <= 0
}

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// CheckPrefix applies the guards to one feed prefix: canonical (no host
// bits), not shorter than the minimum, not special-purpose unless exempt.
// The error is an *Error with ReasonNotCanonical, ReasonTooBroad or
// ReasonBogon.
func (g Guards) CheckPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return refuse(ReasonParse, "invalid prefix")
	}
	if p.Addr().Zone() != "" {
		return refuse(ReasonParse, "%s: zoned address", p)
	}
	if m := p.Masked(); m != p {
		return refuse(ReasonNotCanonical, "%s has host bits set (canonical: %s)", p, m)
	}
	if min := g.minPrefix(p); p.Bits() < min {
		return refuse(ReasonTooBroad, "%s is shorter than /%d", p, min)
	}
	for _, e := range g.ReservedExempt {
		if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
			return nil
		}
	}
	if p.Addr().Is6() && !globalUnicast6.Overlaps(p) {
		return refuse(ReasonBogon, "%s is outside IPv6 global unicast 2000::/3", p)
	}
	special := special6
	if p.Addr().Is4() {
		special = special4
	}
	if !overlapsAny(special, p) {
		return nil
	}
	for _, s := range SpecialPurpose {
		if s.Overlaps(p) {
			return refuse(ReasonBogon, "%s overlaps special-purpose range %s", p, s)
		}
	}
	return nil
}

// Check applies CheckPrefix to every prefix and returns the first refusal.
func (g Guards) Check(ps []netip.Prefix) error {
	for _, p := range ps {
		if err := g.CheckPrefix(p); err != nil {
			return err
		}
	}
	return nil
}

// Validate reports impossible settings.
func (g Guards) Validate() error {
	if g.MinPrefixV4 < 0 || g.MinPrefixV4 > 32 {
		return fmt.Errorf("min prefix v4 %d: want 0..32", g.MinPrefixV4)
	}
	if g.MinPrefixV6 < 0 || g.MinPrefixV6 > 128 {
		return fmt.Errorf("min prefix v6 %d: want 0..128", g.MinPrefixV6)
	}
	for _, e := range g.ReservedExempt {
		if !e.IsValid() || e.Masked() != e {
			return fmt.Errorf("reserved exempt %s: not a canonical prefix", e)
		}
		if !exemptable(e) {
			return fmt.Errorf("reserved exempt %s: not inside one special-purpose range; name only the reserved ranges a feed may carry (such as 192.0.2.0/24), not public address space", e)
		}
	}
	return nil
}

// exemptable reports whether e lies wholly in space the bogon check
// refuses: inside one special-purpose range, or IPv6 outside 2000::/3. An
// exemption reaching beyond it (0.0.0.0/0, 8.0.0.0/8) would switch the check
// off for public space and is refused.
func exemptable(e netip.Prefix) bool {
	for _, s := range SpecialPurpose {
		if s.Bits() <= e.Bits() && s.Contains(e.Addr()) {
			return true
		}
	}
	return e.Addr().Is6() && !globalUnicast6.Overlaps(e)
}

// Coverage is the address space an aggregated set covers, per family.
type Coverage struct {
	V4 uint64   // addresses, at most 2^32
	V6 *big.Int // addresses, at most 2^128
}

// CoverageOf sums the addresses of prefixes that must not overlap (the
// output of Aggregate).
func CoverageOf(aggregated []netip.Prefix) Coverage {
	c := Coverage{V6: new(big.Int)}
	one := big.NewInt(1)
	for _, p := range aggregated {
		if p.Addr().Is4() {
			c.V4 += 1 << (32 - p.Bits())
		} else {
			c.V6.Add(c.V6, new(big.Int).Lsh(one, uint(128-p.Bits())))
		}
	}
	return c
}

// V6Float returns the IPv6 coverage as a float (for ratios and display).
func (c Coverage) V6Float() float64 {
	if c.V6 == nil {
		return 0
	}
	f, _ := new(big.Float).SetInt(c.V6).Float64()
	return f
}

// Default coverage guard thresholds.
const (
	DefaultMaxShrink = 0.25
	DefaultMaxGrow   = 0.25
)

// CheckCoverage compares the covered space of an update with the set in
// force, per family, and returns an *Error with ReasonQuarantined when a
// family shrinks by more than maxShrink or grows by more than maxGrow (as
// fractions of the old space). A family appearing from nothing or vanishing
// counts as unbounded change.
func CheckCoverage(old, new Coverage, maxShrink, maxGrow float64) error {
	check := func(family string, o, n float64) error {
		if o == n {
			return nil
		}
		if o == 0 {
			return refuse(ReasonQuarantined, "%s coverage appears: 0 → %.0f addresses", family, n)
		}
		if n == 0 { // whatever max_shrink says, even 1
			return refuse(ReasonQuarantined, "%s coverage vanishes: %.0f → 0 addresses", family, o)
		}
		r := n/o - 1
		switch {
		case r < -maxShrink:
			return refuse(ReasonQuarantined, "%s coverage shrinks by %.1f %% (%.0f → %.0f addresses, limit %.1f %%)",
				family, -100*r, o, n, 100*maxShrink)
		case r > maxGrow:
			return refuse(ReasonQuarantined, "%s coverage grows by %.1f %% (%.0f → %.0f addresses, limit %.1f %%)",
				family, 100*r, o, n, 100*maxGrow)
		}
		return nil
	}
	if err := check("IPv4", float64(old.V4), float64(new.V4)); err != nil {
		return err
	}
	return check("IPv6", old.V6Float(), new.V6Float())
}
