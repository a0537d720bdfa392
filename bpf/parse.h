// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Header parsing of gatehouse.c: the transport header into struct gh_pkt,
// and the IPv6 extension headers walked to find it. Included there, after
// struct gh_pkt.

#ifndef GH_PARSE_H
#define GH_PARSE_H

static __always_inline int parse_l4(struct gh_pkt *pk, void *l4, void *end, __u32 avail)
{
	if (pk->l4 == IPPROTO_TCP) {
		struct tcphdr *t = l4;
		if ((void *)(t + 1) > end || avail < sizeof(*t))
			return -1;
		__u32 doff = t->doff * 4;
		if (doff < sizeof(*t) || doff > avail)
			return -1;
		pk->dport = bpf_ntohs(t->dest);
		pk->tcp_flags = ((__u8 *)t)[13];
		return 0;
	}
	if (pk->l4 == IPPROTO_UDP) {
		struct udphdr *u = l4;
		if ((void *)(u + 1) > end || avail < sizeof(*u))
			return -1;
		pk->dport = bpf_ntohs(u->dest);
		pk->sport = u->source;
		return 0;
	}
	if (pk->l4 == IPPROTO_ICMP || pk->l4 == IPPROTO_ICMPV6) {
		__u8 *ic = l4;
		if ((void *)(ic + 8) > end || avail < 8)
			return -1;
		pk->icmp_type = ic[0];
		return 0;
	}
	return 0;
}

// gh_pkt is filled field by field: zeroing the whole struct cost a row of
// stores on every packet.
static __always_inline void pkt_init(struct gh_pkt *pk, __u8 v6)
{
	pk->lo = 0;
	pk->v6 = v6;
	pk->l4 = 0;
	pk->dport = 0;
	pk->tcp_flags = 0;
	pk->icmp_type = 0;
	pk->later_frag = 0;
}

static __always_inline int is_ext(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_FRAGMENT || next == IPPROTO_AH;
}

#endif // GH_PARSE_H
