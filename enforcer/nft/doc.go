// Package nft installs and keeps the stateful layer of gatehouse: the
// nftables table inet gatehouse (connection tracking, admitted sets, per-source
// rate and connection caps, scan detection with a timed blocklist, strict mode),
// filled from one compiled policy.Policy per netlink batch.
//
// It owns that one table and nothing else: every message it sends names table
// inet gatehouse, it never flushes the ruleset or another table, and it leaves
// its own table in force when the daemon stops (no owner flag), so a crash or
// restart never opens a window. Teardown is the only remover. Before its
// first Apply an Enforcer can say what a previous run left in the table
// (HoldsPrevious, and HeldAdmitted reads the admitted ranges back), so that
// the daemon keeps those ranges while a feed lacks a release.
//
// The input chain (priority filter - 10) reads, in order: loopback accept;
// ct state established,related accept; ct state invalid drop; the ICMPv6
// types a host needs from anyone (MLD query, router advertisement,
// neighbour solicitation and advertisement); management (source . port,
// both in one concatenated set, TCP and UDP) accepted; new TCP to
// listener_ports dropped unless from admitted_v4/v6, over the per-source
// rate (update @rate_* with limit), or over the per-source connection cap
// (add @conns_* with ct count), else accepted; sources in blocked_v4/v6
// dropped; in strict mode ICMP and ICMPv6 echo-request from admitted
// sources accepted; scan detection; in strict mode everything else dropped.
//
// The order is what makes the blocklist safe against forged scans: a SYN
// is trivially sent with any source address, so anyone can get any address
// blocked. Established flows, management ranges on their ports and admitted
// sources on the listener ports are all decided before the blocklist is
// read, so a block takes from a source only what it could reach beyond
// them: in listeners mode every other port, in strict mode echo requests.
// Scan detection never counts a management source, so management ranges
// never enter the blocklist through it (and Block refuses them).
//
// Every per-source set (rate_*, conns_*, scan_*, blocked_*) is keyed by the
// source address masked to the policy's SourcePrefix: by default an IPv4
// address, and an IPv6 /64, which one host owns and can rotate through
// for free.
//
// With enforcement.forward set, the same table has a forward chain (filter
// hook forward, priority filter - 10) for DMZ designs where the appliance
// routes to internal hosts instead of terminating: ct state
// established,related accept; ct state invalid drop; flows that entered on
// another interface than the policy's Interface accepted (fwd_internal);
// then the listener admission of the input chain, for new TCP to
// listener_ports on any internal host; blocked sources dropped; in strict
// mode ICMP and ICMPv6 echo-request from admitted sources, and everything
// else dropped. There is no loopback, management or scan rule: management
// reaches the appliance's own services, and scan detection stays in the
// input chain (a source it blocks is dropped here too). Both chains update
// the same rate_* and conns_* sets, so one source has one rate bucket and
// one connection cap for the appliance's listeners and the routed ones
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
// which holds DistinctPorts-1 tokens and refills at DistinctPorts per Window.
// The source that finds the bucket empty goes into blocked_* for BlockFor.
// So a burst of DistinctPorts new ports blocks at once; a slow scan that stays
// under DistinctPorts per Window never does; and in listeners mode "closed"
// means "not a listener and not management for this source", open ports of
// other services included. Only TCP SYNs are counted, as the XDP layer
// counts them; on the XDP interface in strict mode those SYNs never reach
// nftables, and the XDP layer's own scan detection blocks the source, which
// the daemon mirrors into blocked_* with Block.
//
// Dynamic sets hold at most 65535 entries. When rate_* or conns_* is full,
// a new source is not limited until entries expire (the rate buckets after a
// minute idle, the connection counts when their connections close).
//
// Reconcile runs its checks only when the namespace's ruleset generation
// moved. It notices a deleted table, chain, set or counter, a changed chain
// or rule (every rule carries a hash in a private userdata field), and changed
// elements of the small sets. The admitted sets are never dumped (100k ranges
// take seconds to read back): 16 sampled ranges per set, the first and last
// among them, are probed with single-element gets, which catches a flushed or
// replaced set at once but a single element deleted by hand only by chance.
package nft
