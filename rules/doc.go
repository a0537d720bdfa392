// Package rules turns signed range feeds into admitted prefixes. It parses
// the providers' files exactly as published (aws, gcp, azure, oracle,
// cidr), selects, guards and aggregates their prefixes, verifies
// minisign-signed manifests, keeps the last known good release of each
// feed in state_dir (and the one it replaced, for when that file is
// damaged, and the rollback floor in a file of its own), and runs the
// fetch loop (Manager), which also checks that a mirror still serving the
// manifest in force serves its files unchanged, and fetches at once on
// request (Refresh). A release is committed only once the daemon has it
// in force everywhere (ApplyFunc; ErrDeferred keeps it aside). It knows
// nothing of the kernel or the configuration file: its output is prefixes
// per feed, which the daemon unites (Union) into policy.Admitted.
//
// A release is refused at the first failing check, in this order: size
// limits, threshold of signatures over the raw manifest bytes, strict
// manifest parse, source name, expiry and clock skew, serial (rollback,
// no-op, reuse; and against the floor), each file's length and SHA-256,
// strict payload parse, the guards on every prefix (canonical, minimum
// length, special-purpose ranges), selection, aggregation, and the
// coverage guard against the set in force. Every refusal carries a bounded Reason for metrics.
//
// A release held in quarantine by the coverage guard is written to
// state_dir/feeds/NAME.quarantine.json; `gatehouse feed accept NAME` (or
// Manager.Accept) writes NAME.accept with the SHA-256 of its manifest, and
// the manager applies exactly that release on its next check.
package rules
