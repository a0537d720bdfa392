package policy

import "net/netip"

// Bits returns the prefix length of one source of the family, as Source
// applies it: the kernel layers key their per-source sets and maps by it.
func (s SourcePrefix) Bits(v6 bool) int {
	if v6 {
		return s.Source(netip.IPv6Unspecified()).Bits()
	}
	return s.Source(netip.IPv4Unspecified()).Bits()
}
