// Package xdp applies a policy to the XDP admission filter of one
// interface: it loads the program from package bpf, pins its link and maps
// under /sys/fs/bpf/gatehouse/<interface>/, adopts them after a restart,
// swaps whole generations atomically, feeds the blocklist and exports the
// program's counters. It does not decide policy and never removes the filter
// except through Teardown. It repairs nothing on its own: CheckAttached and
// Repair (watch.go) let the daemon find a link detached or unpinned behind
// its back and put it back, and CheckPinDir (pindir.go) tells whether the
// pin directory's bpffs outlives the daemon at all.
//
// The filter is stateless. In strict mode it drops a new flow (a bare TCP
// SYN, UDP to a port outside the local ephemeral range, an ICMP echo
// request, any other IP protocol) unless it comes from an admitted source to
// a listener port or from a management range to a management port. TCP
// segments that are not a bare SYN, UDP to the ephemeral range, ICMP errors
// and echo replies pass as "passthrough": they may answer the appliance's own
// connections, and nftables' conntrack is where that is decided. ARP, IPv6
// neighbour discovery, router advertisements and MLD always pass.
package xdp
