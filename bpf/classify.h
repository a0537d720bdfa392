// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// What gatehouse.c decides from the generation's header alone: management
// ranges, port flags, and whether a packet may be return traffic or opens a
// flow (see the top comment of gatehouse.c). Included there, after the
// generation's structures.

#ifndef GH_CLASSIFY_H
#define GH_CLASSIFY_H

// mgmt_match reports whether the source lies in a management range that
// may reach pk's port, or, with any_port, in any management range.
static __always_inline int mgmt_match(struct gh_hdr *h, struct gh_pkt *pk, const int v6, const int any_port)
{
	__u32 n = h->mgmt_count;
#pragma clang loop unroll(disable)
	for (int i = 0; i < GH_MAX_MGMT; i++) {
		if (i >= n)
			return 0;
		struct gh_mgmt *m = &h->mgmt[i];
		if ((!any_port && m->port != pk->dport) || m->family != (v6 ? 6 : 4))
			continue;
		__u32 l = m->plen;
		__u64 mh, ml;
		if (l == 0) {
			mh = 0;
			ml = 0;
		} else if (l <= 64) {
			mh = ~0ULL << (64 - l);
			ml = 0;
		} else {
			mh = ~0ULL;
			ml = ~0ULL << ((128 - l) & 63);
		}
		if ((pk->hi & mh) == m->hi && (pk->lo & ml) == m->lo)
			return 1;
	}
	return 0;
}

// port_flags returns the four flag bits of a port.
static __always_inline __u32 port_flags(struct gh_hdr *h, __u32 port)
{
	__u8 b = ((__u8 *)h)[GH_PORTS_OFF + ((port >> 1) & 0x7fff)];
	return (b >> ((port & 1) * 4)) & 0xf;
}

// bare_syn reports a TCP segment that opens a connection: SYN without ACK.
static __always_inline int bare_syn(struct gh_pkt *pk)
{
	return (pk->tcp_flags & 0x12) == 0x02;
}

// icmp_answer reports an ICMP error or echo reply: an answer to the
// appliance's own traffic, never a new flow.
static __always_inline int icmp_answer(struct gh_pkt *pk, const int v6)
{
	__u8 t = pk->icmp_type;
	return v6 ? (t >= 1 && t <= 4) || t == 129 : t == 0 || t == 3 || t == 11 || t == 12;
}

// echo_request reports an ICMP or ICMPv6 echo request.
static __always_inline int echo_request(struct gh_pkt *pk, const int v6)
{
	return pk->icmp_type == (v6 ? 128 : 8);
}

// ephemeral reports UDP to the local port range of outbound flows, which
// may answer the appliance's own query.
static __always_inline int ephemeral(struct gh_hdr *h, struct gh_pkt *pk)
{
	return h->eph_lo != 0 && pk->dport >= h->eph_lo && pk->dport <= h->eph_hi;
}

#define GH_CHECK 0x100    // decide by the admitted set
#define GH_DROP 0x200     // with a reason: drop
#define GH_LISTENER 0x400 // with GH_CHECK: a listener port, which no block takes

// classify returns a pass reason, GH_DROP|reason, or GH_CHECK (with
// GH_LISTENER for a listener port).
//
// tcp_seg is a constant: 1 when the caller knows pk is a TCP segment with its
// header (the common case gets code of its own, without the tests below).
static __always_inline __u32 classify(struct gh_hdr *h, struct gh_pkt *pk, const int v6, const int tcp_seg)
{
	int strict = h->flags & GH_FLAG_STRICT;

	if (!tcp_seg && pk->later_frag) {
		// No transport header: only the source can be judged. In
		// listeners mode anyone may open a flow to a port that is not a
		// listener, so any later fragment may belong to one. In strict
		// mode only admitted sources and management ranges may have sent
		// the first fragment.
		if (!strict)
			return GH_PASSTHROUGH;
		if (mgmt_match(h, pk, v6, 1))
			return GH_MANAGEMENT;
		return GH_CHECK;
	}

	if (tcp_seg || pk->l4 == IPPROTO_TCP || pk->l4 == IPPROTO_UDP) {
		__u32 f = port_flags(h, pk->dport);
		int tcp = tcp_seg || pk->l4 == IPPROTO_TCP;
		if ((f & (tcp ? GH_PORT_MGMT_TCP : GH_PORT_MGMT_UDP)) && mgmt_match(h, pk, v6, 0))
			return GH_MANAGEMENT;
		if (f & (tcp ? GH_PORT_TCP : GH_PORT_UDP))
			return GH_CHECK | GH_LISTENER;
		if (!strict)
			return GH_PASSTHROUGH;
		// A bare SYN opens a flow; every other segment may be return
		// traffic and is conntrack's to judge, as is UDP to the
		// ephemeral range.
		if (tcp ? !bare_syn(pk) : ephemeral(h, pk))
			return GH_PASSTHROUGH;
		return GH_DROP | GH_NOT_ADMITTED;
	}

	if (pk->l4 == IPPROTO_ICMP || pk->l4 == IPPROTO_ICMPV6) {
		if (!strict)
			return GH_PASSTHROUGH;
		// Errors and echo replies answer our own traffic; echo requests
		// and the rest are new and need an admitted source.
		return icmp_answer(pk, v6) ? GH_PASSTHROUGH : GH_CHECK;
	}

	// Other IP protocols (and IPv6 without a transport header).
	return strict ? GH_DROP | GH_NOT_ADMITTED : GH_PASSTHROUGH;
}

// opens reports a packet the blocklist takes: a bare SYN or an echo
// request, which can only open a flow. UDP, other protocols and later
// fragments may belong to a flow only conntrack knows (an NTP answer to
// port 123, a GRE or ESP peer), so they go on to nftables, whose blocked
// rule comes after its established one.
static __always_inline int opens(struct gh_pkt *pk, const int v6, const int tcp_seg)
{
	if (tcp_seg || pk->l4 == IPPROTO_TCP)
		return !pk->later_frag && bare_syn(pk);
	if (pk->l4 == IPPROTO_ICMP || pk->l4 == IPPROTO_ICMPV6)
		return !pk->later_frag && echo_request(pk, v6);
	return 0;
}

#endif // GH_CLASSIFY_H
