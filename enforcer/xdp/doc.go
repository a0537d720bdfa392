// Package xdp applies a policy to the XDP admission filter of one
// interface: it loads the program from package bpf, pins its link and maps
// under /sys/fs/bpf/gatehouse/<interface>/, adopts them after a restart,
// swaps whole generations atomically, feeds the blocklist and exports the
// program's counters. It does not decide policy and never removes the filter
// except through Teardown. It repairs nothing on its own: CheckAttached and
// Repair (watch.go) let the daemon find a link detached or unpinned behind
// its back (or an interface created again under its name) and put it back,
// CheckPinDir (pindir.go) tells whether the pin directory's bpffs outlives
// the daemon at all, and LinkHolders (holders.go) which processes hold a
// pinned filter (a running daemon, for teardown).
//
// The filter keeps no connection state of its own. In strict mode it drops
// a new flow (a bare TCP SYN, UDP to a port outside the local ephemeral
// range, an ICMP echo request, any other IP protocol) unless it comes from
// an admitted source to a listener port or from a management range to a
// management port; a UDP datagram it would drop it first looks up in the
// kernel's conntrack (bpf_xdp_ct_lookup), and passes it as "established"
// when it answers a flow the appliance opened. Where the kernel has no
// conntrack kfuncs, New loads the program without the lookup, which drops
// those answers too, and says so (ConntrackLookup, the log,
// gatehouse_xdp_conntrack_lookup). TCP segments that are not a bare SYN, UDP to the ephemeral range,
// ICMP errors, echo replies and later fragments pass as "passthrough": they
// may answer the appliance's own connections, and nftables' conntrack is
// where that is decided (in strict mode a later fragment, which has no
// port, passes only from admitted sources and management ranges). ARP,
// IPv6 neighbour discovery, router advertisements and MLD always pass.
//
// The program detects port scans itself, in both modes, with the nftables
// rule's algorithm and refill (see bpf/gatehouse.c), and blocks the scanner
// in its blocklist; Run reports the new blocks of each poll (one log line,
// one OnBlock call each, at most mirrorBudget a poll), which the daemon
// hands to the nftables layer, and Block takes the nftables layer's
// scanners in. The blocklist drops only bare SYNs and echo requests, and
// never those to a listener port from an admitted source or to a
// management port from its range: anyone can forge a scan in a tenant's or
// an admin's name, and spoofing the address of the appliance's own
// resolver, NTP server or IPsec peer must not cut the appliance's own
// traffic (UDP and other protocols go to nftables, which knows the flows).
// Apply keys the blocklists anew when the source prefix changes.
package xdp
