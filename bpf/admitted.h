// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The admitted-set lookup of gatehouse.c (see its top comment for the
// layout): included there, after the generation's structures and page().

#ifndef GH_ADMITTED_H
#define GH_ADMITTED_H

#ifndef GH_LPM
// Two-choice bucket indexes, identical to the Go builder.
static __always_inline __u64 mix(__u64 h)
{
	h ^= h >> 31;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 29;
	return h;
}

// state2 returns the 2-bit state of a top-24-bit IPv6 block: 0 none, 1 whole,
// 2 partial.
static __always_inline __u32 state2(void *gen, __u16 *dir, __u32 idx24)
{
	__u32 byte = idx24 >> 2;
	__u32 d = byte >> 16;
	if (d >= GH_DIR_PAGES)
		return 0;
	__u16 pg = dir[d];
	if (pg == 0)
		return 0;
	__u8 *p = page(gen, pg);
	if (!p)
		return 0;
	return (p[byte & 0xffff] >> ((idx24 & 3) * 2)) & 3;
}

#endif

// v4_admitted looks up an IPv4 source (network order).
static __always_inline int v4_admitted(void *gen, __u32 saddr)
{
#ifdef GH_LPM
	struct gh_lpm4_key k = {.prefixlen = 32, .addr = saddr};
	return bpf_map_lookup_elem(&gh_lpm4, &k) != NULL;
#else
	__u32 host = bpf_ntohl(saddr);
	__u32 idx24 = host >> 8;
	__u32 ent = idx24 >> 4; // 8192 entries per page
	__u64 *dir = page(gen, GH_V4_DIR + (ent >> 13));
	if (!dir)
		return 0;
	__u64 e = dir[ent & 8191];
	__u32 sh = (idx24 & 15) * 2;
	__u32 st = (e >> sh) & 3;
	if (st != 2)
		return st == 1;
	// Rank: partial /24s before this entry, plus those before this /24 in
	// it (a state of 2 is binary 10; count those below sh).
	__u32 s = (__u32)e;
	__u32 m = (s >> 1) & ~s & 0x55555555 & ((1U << sh) - 1);
	m = (m & 0x33333333) + ((m >> 2) & 0x33333333);
	m = (m + (m >> 4)) & 0x0f0f0f0f;
	__u32 rank = (__u32)(e >> 32) + ((m * 0x01010101) >> 24);
	// 32-byte bitmaps: 2048 per page.
	__u8 *bits = page(gen, GH_V4_BITS + (rank >> 11));
	if (!bits)
		return 0;
	return (bits[((rank & 2047) * 32 + ((host & 0xff) >> 3)) & 0xffff] >> (host & 7)) & 1;
#endif
}

#ifndef GH_LPM
static __always_inline struct gh_v6ent *v6_probe(void *gen, struct gh_hdr *h, __u32 b, __u64 hi, __u64 lo, __u32 len)
{
	// 4 entries of 32 bytes per bucket: 512 buckets per page.
	struct gh_v6ent *e = page(gen, (__u32)h->v6_tab_page + (b >> 9));
	if (!e)
		return NULL;
	__u32 base = (b & 511) * 4;
#pragma clang loop unroll(full)
	for (int i = 0; i < 4; i++) {
		struct gh_v6ent *x = &e[(base + i) & 2047];
		if (x->tag == 0)
			return NULL;
		if ((x->tag & 0xff) == len && x->hi == hi && x->lo == lo)
			return x;
	}
	return NULL;
}

// v6_find returns the table entry for (hi, lo, len) or NULL.
static __always_inline struct gh_v6ent *v6_find(void *gen, struct gh_hdr *h, __u64 hi, __u64 lo, __u32 len)
{
	__u64 m = mix(hi * 0x9e3779b97f4a7c15ULL ^ lo * 0xc2b2ae3d27d4eb4fULL ^ ((__u64)len + 1) * 0x165667b19e3779f9ULL);
	struct gh_v6ent *x = v6_probe(gen, h, (__u32)(m >> 32) & h->v6_mask, hi, lo, len);
	if (x)
		return x;
	return v6_probe(gen, h, (__u32)m & h->v6_mask, hi, lo, len);
}
#endif

static __always_inline int v6_admitted(void *gen, struct gh_hdr *h, struct gh_pkt *pk)
{
#ifdef GH_LPM
	struct gh_lpm6_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, pk->saddr6.a, 16);
	return bpf_map_lookup_elem(&gh_lpm6, &k) != NULL;
#else
	__u32 idx24 = pk->hi >> 40;
	__u32 st = state2(gen, h->v6dir, idx24);
	if (st != 2)
		return st == 1;
	if (h->v6_tab_page == 0)
		return 0;
	struct gh_v6ent *blk = v6_find(gen, h, pk->hi & 0xffffff0000000000ULL, 0, 24);
	if (!blk)
		return 0;
	__u64 lens0 = blk->tag >> 8; // 7 lengths
	__u64 lens1 = blk->val;      // 8 more
#pragma clang loop unroll(disable)
	for (int i = 0; i < GH_MAX_LENS; i++) {
		__u32 l;
		if (i < 7)
			l = (lens0 >> (i * 8)) & 0xff;
		else
			l = (lens1 >> ((i - 7) * 8)) & 0xff;
		if (l == 0 || l > 128)
			return 0;
		__u64 hi = pk->hi, lo = pk->lo;
		if (l <= 64) {
			hi &= ~0ULL << (64 - l);
			lo = 0;
		} else {
			lo &= ~0ULL << (128 - l);
		}
		if (v6_find(gen, h, hi, lo, l))
			return 1;
	}
	return 0;
#endif
}

#endif // GH_ADMITTED_H
