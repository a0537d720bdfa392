// Package nft installs and keeps the stateful layer of gatehouse: the
// nftables table inet gatehouse (connection tracking, admitted sets, per-source
// rate and connection caps, scan detection with a timed blocklist, strict mode),
// filled from one compiled policy.Policy per netlink batch.
//
// It owns that one table and nothing else: it never lists, flushes or edits
// another table, and it leaves its own table in force when the daemon stops,
// so a crash or restart never opens a window. Teardown is the only remover.
package nft
