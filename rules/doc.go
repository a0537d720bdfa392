// Package rules turns range feeds into admitted sets: it parses the
// providers' formats, verifies signed manifests, guards against bogons,
// rollbacks and shrinking feeds, aggregates prefixes and keeps the last known
// good. It knows nothing of the kernel: its output is policy.Admitted.
package rules
