// Package nft installs and keeps the stateful layer of gatehouse: the
// nftables table inet gatehouse (connection tracking, SYN cookies for the
// listeners, admitted sets, per-source rate and connection caps on proven
// connections, scan detection with a timed blocklist, strict mode), filled
// from one compiled policy.Policy per netlink batch.
//
// It owns that one table and nothing else: every message it sends names table
// inet gatehouse, it never flushes the ruleset or another table, and it leaves
// its own table in force when the daemon stops (no owner flag), so a crash or
// restart never opens a window. Teardown is the only remover. Before its
// first Apply an Enforcer can say what a previous run left in the table
// (HoldsPrevious, and HeldAdmitted reads the admitted ranges back), so that
// the daemon keeps those ranges while a feed lacks a release. It changes no
// sysctl.
//
// A connection to a listener port goes through synproxy: nothing exists of
// it, in conntrack or in any per-source set, until the client's ACK returns
// the SYN cookie, and only that proven connection is counted. The chains:
//
//   - prerouting (priority raw, before conntrack): a bare SYN to a listener
//     port on the appliance, not over loopback, from a source that is not
//     admitted is dropped, one from an admitted source is left untracked.
//     A management range's SYN to its own port is left alone.
//   - input (priority filter - 10): loopback accept; ct state
//     established,related accept; synproxy for an admitted source's SYN and
//     for the handshake's ACK (ct state invalid or new: either
//     nf_conntrack_tcp_loose); ct state invalid drop; the ICMPv6 types a
//     host needs from anyone; management (source . port, TCP and UDP)
//     accepted; what is left of a listener port from a source that is not
//     admitted dropped; blocked sources dropped; in strict mode echo
//     requests from admitted sources accepted; scan detection; in strict
//     mode everything else dropped.
//   - output (priority filter - 10): the SYN synproxy sends the listener
//     once the cookie came back, from the client's address: over the
//     per-source rate (update @rate_*) or the connection cap (add @conns_*
//     with ct count) it is dropped, else accepted and counted as admitted.
//   - scan_block (a regular chain): where scan detection jumps; the source
//     goes into blocked_* and the SYN is dropped, or, the set being full,
//     dropped all the same (blocklist_full).
//
// The order is what makes the blocklist safe against forged scans: a SYN
// is trivially sent with any source address, so anyone can get any address
// blocked. Established flows, management ranges on their ports and admitted
// sources on the listener ports are all decided before the blocklist is
// read, so a block takes from a source only what it could reach beyond
// them: in listeners mode every other port, in strict mode echo requests.
// Scan detection never counts a management source; a source that holds a
// management range (an IPv6 /64 around a smaller one) can still be blocked,
// by a scan from another of its addresses, and keeps the management ports.
//
// Every per-source set (rate_*, conns_*, scan_*, blocked_*) is keyed by the
// source address masked to the policy's SourcePrefix: by default an IPv4
// address, and an IPv6 /64, which one host owns and can rotate through
// for free.
//
// With enforcement.forward set, flows routed through the appliance to the
// listener ports of internal hosts get the same: their SYNs from the outside
// interface are dropped or left untracked in prerouting, the forward chain
// (filter hook forward, priority filter - 10) reads ct state
// established,related accept; synproxy; ct state invalid drop; flows that
// entered on another interface than the policy's Interface accepted
// (fwd_internal); listener ports from sources not admitted dropped; blocked
// sources dropped; in strict mode ICMP and ICMPv6 echo-request from admitted
// sources, and everything else dropped. The output chain limits their proven
// connections too. There is no loopback, management or scan rule:
// management reaches the appliance's own services, and scan detection stays
// in the input chain (a source it blocks is dropped here too). Both paths
// update the same rate_* and conns_* sets, so one source has one rate bucket
// and one connection cap for the appliance's listeners and the routed ones
// together. The forward counters are the input ones prefixed fwd_
// (fwd_admitted, fwd_not_admitted, fwd_strict_drop, ...), a fixed set of
// rule labels.
//
// The forward chain's policy follows the mode, and what a router's admin
// expects shapes it. In listeners mode it is accept: gatehouse polices the
// listener ports of internal hosts and has no opinion on other routed
// traffic, which the admin's own forward chains still judge (an accept in
// one base chain does not skip the others; a drop anywhere is final). In
// strict mode it is drop, and because no other table can undo that drop,
// strict polices only what enters on the outside interface: internal hosts
// keep opening flows outwards and to each other, and their replies come
// back as established. Without an Interface every interface counts as
// outside, so strict closes the router for everything but admitted
// sources to listener ports (and echo-request). Switching forward on or
// off, or changing the Interface, replaces the table in one batch like a
// mode change; reconcile treats the forward chain as part of the desired
// state, and a forward chain someone adds while forward is off is drift.
//
// Scan detection is an approximation of "DistinctPorts closed ports within
// Window". A bare SYN (SYN without ACK, ct state new) that got this far (not
// to a listener, not management, not from a blocked source or a management
// range) adds (source . port) to scan_ports_* for Window; only when the pair
// was new does it take a token from the source's bucket in scan_count_*,
// which holds DistinctPorts-1 tokens and refills at the policy's rate
// (policy.ScanRefill: the XDP program refills at the same). The source that
// finds the bucket empty goes to scan_block. So a burst of DistinctPorts new
// ports blocks at once; a slow scan that stays under DistinctPorts per Window
// never does; and in listeners mode "closed" means "not a listener and not
// management for this source", open ports of other services included. Only
// TCP SYNs are counted, as the XDP layer counts them; on the XDP interface in
// strict mode those SYNs never reach nftables, and the XDP layer's own scan
// detection blocks the source, which the daemon mirrors into blocked_* with
// Block.
//
// Dynamic sets hold at most 65535 entries. When rate_* or conns_* is full,
// a new source is not limited until entries expire (the rate buckets after a
// minute idle, the connection counts when their connections close); when
// blocked_* is full, no new source is blocked (its SYNs past the threshold
// are still dropped) and Block says policy.ErrBlocklistFull.
//
// Reconcile runs its checks only when the namespace's ruleset generation
// moved. It notices a deleted table, chain, set or counter, a changed chain
// or rule (every rule carries a hash in a private userdata field), and changed
// elements of the small sets. The admitted sets are never dumped (100k ranges
// take seconds to read back): 16 sampled ranges per set, the first and last
// among them, are probed with single-element gets, which catches a flushed or
// replaced set at once but a single element deleted by hand only by chance.
package nft
