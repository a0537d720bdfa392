// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The conntrack lookup of gatehouse.c: where the stateless verdict would
// drop a UDP datagram as a new flow (strict mode, a port that is neither a
// listener, management nor ephemeral), the program first asks the kernel's
// connection tracking whether the datagram answers a flow the appliance
// itself opened, and passes it as "established" if so. Only that drop path
// asks: admitted traffic and TCP never pay for a lookup.
//
// The kfuncs exist for TCP and UDP only: any other l4proto is refused with
// -EPROTO before the table is searched, so GRE, ESP and ICMP answers stay
// conntrack's to judge behind XDP, and in strict mode XDP drops them.
//
// Everything that is not a confirmed entry found in the reply direction is
// "not found": a failed lookup (any error), an entry in the original
// direction (a datagram that names the appliance's own flow from the
// appliance's side: forged), and a program loaded without the kfuncs (the
// loader then replaces both calls by "r0 = 0", see bpf.WithoutConntrack).

#ifndef GH_CT_H
#define GH_CT_H

// The entry is never read, only released; a struct (not a declaration
// alone) so that the kfuncs' signatures match the kernel's.
struct nf_conn {
	int opaque;
};

// struct bpf_ct_opts as the kernel reads it: 12 bytes, the size the
// kfuncs came with and this kernel takes. dir is written by the lookup:
// the direction of the entry the tuple matched. A kernel whose struct has
// a reserved byte there leaves it 0, which never reads as a reply: no
// answer passes there, as without the kfuncs.
struct gh_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

_Static_assert(sizeof(struct gh_ct_opts) == 12, "bpf_ct_opts layout");

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct gh_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

#define GH_CT_CURRENT_NETNS -1 // the namespace of the receiving device
#define GH_CT_DIR_REPLY 1

// ct_answer reports whether conntrack holds a flow whose reply direction is
// the UDP tuple t (tsz bytes: an IPv4 or an IPv6 tuple), in the network
// namespace of the device the packet came in on.
static __always_inline int ct_answer(struct xdp_md *ctx, struct bpf_sock_tuple *t, __u32 tsz)
{
	struct gh_ct_opts o = {
		.netns_id = GH_CT_CURRENT_NETNS,
		.l4proto = IPPROTO_UDP,
	};
	struct nf_conn *ct = bpf_xdp_ct_lookup(ctx, t, tsz, &o, sizeof(o));
	if (!ct)
		return 0;
	int reply = o.error == 0 && o.dir == GH_CT_DIR_REPLY;
	bpf_ct_release(ct);
	return reply;
}

// ct_answer4 and ct_answer6 look up the UDP datagram pk, whose
// addresses and ports parsing kept for this.
static __always_inline int ct_answer4(struct xdp_md *ctx, struct gh_pkt *pk)
{
	struct bpf_sock_tuple t;
	t.ipv4.saddr = pk->saddr4;
	t.ipv4.daddr = pk->daddr4;
	t.ipv4.sport = pk->sport;
	t.ipv4.dport = bpf_htons(pk->dport);
	return ct_answer(ctx, &t, sizeof(t.ipv4));
}

static __always_inline int ct_answer6(struct xdp_md *ctx, struct gh_pkt *pk)
{
	struct bpf_sock_tuple t;
	__builtin_memcpy(t.ipv6.saddr, pk->saddr6.a, 16);
	__builtin_memcpy(t.ipv6.daddr, pk->daddr6.a, 16);
	t.ipv6.sport = pk->sport;
	t.ipv6.dport = bpf_htons(pk->dport);
	return ct_answer(ctx, &t, sizeof(t.ipv6));
}

#endif // GH_CT_H
