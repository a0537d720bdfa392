package policy

// Glob matches s against pattern, where '*' stands for any run of
// characters other than sep (possibly empty; sep 0 for none) and everything
// else matches itself. Keeping '*' inside one segment means
// "spiffe://acme/*" cannot be stretched to "spiffe://acme/../other" style
// surprises across segments, and "*.acme.example" matches one label only,
// as in certificate wildcards.
func Glob(pattern, s string, sep byte) bool {
	// Iterative matching with one backtrack point: linear in practice and
	// never exponential, as patterns come from configuration but s comes
	// from outside.
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			starP, starI = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case starP >= 0 && s[starI] != sep:
			// Let the last star swallow one more character, unless that
			// character is a separator.
			starI++
			i = starI
			p = starP + 1
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
