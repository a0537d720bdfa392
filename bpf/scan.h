// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Scan detection and the blocklist lookup of gatehouse.c (see its top
// comment): included there, after the blocklists and mgmt_match.

#ifndef GH_SCAN_H
#define GH_SCAN_H

// Scan detection state; neither map is pinned (a restart forgets partial
// scans, never a block).
struct gh_scan_key {
	__u32 a[4]; // source, masked; IPv4 in a[0]
	__u16 port; // 0 in gh_scan_src
	__u8 v6;
	__u8 pad;
};

// Source → the bucket's theoretical arrival time (GCRA): the bucket is full
// again at that bpf_ktime_get_ns time.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gh_scan_key);
	__type(value, __u64);
} gh_scan_src SEC(".maps");

// (source, port) → when the pair was first counted.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gh_scan_key);
	__type(value, __u64);
} gh_scan_pairs SEC(".maps");

// src_key writes pk's source masked to the source prefix into key (IPv4
// in key[0]).
static __always_inline void src_key(struct gh_hdr *h, struct gh_pkt *pk, const int v6, __u32 *key)
{
	if (v6) {
		__u32 *a = (__u32 *)pk->saddr6.a;
#pragma clang loop unroll(full)
		for (int i = 0; i < 4; i++)
			key[i] = a[i] & h->src_mask6[i];
	} else {
		key[0] = pk->saddr4 & h->src_mask4;
		key[1] = 0;
		key[2] = 0;
		key[3] = 0;
	}
}

static __always_inline int blocked(struct gh_hdr *h, struct gh_pkt *pk, const int v6)
{
	if (!gh_block_active)
		return 0;
	__u32 key[4];
	src_key(h, pk, v6, key);
	__u64 *deadline;
	if (v6)
		deadline = bpf_map_lookup_elem(&gh_block6, key);
	else
		deadline = bpf_map_lookup_elem(&gh_block4, key);
	return deadline && bpf_ktime_get_ns() < *deadline;
}

// scan counts a bare SYN to a closed port and reports whether it made its
// source blocked (see the top of this file).
static __always_inline int scan(struct gh_hdr *h, struct gh_pkt *pk, const int v6)
{
	if (h->scan_ports == 0 || mgmt_match(h, pk, v6, 1))
		return 0;
	struct gh_scan_key k;
	src_key(h, pk, v6, k.a);
	k.port = pk->dport;
	k.v6 = v6;
	k.pad = 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 *seen = bpf_map_lookup_elem(&gh_scan_pairs, &k);
	if (seen && now - *seen < h->scan_window)
		return 0; // this pair is counted already
	bpf_map_update_elem(&gh_scan_pairs, &k, &now, BPF_ANY);
	k.port = 0;
	__u64 *tat = bpf_map_lookup_elem(&gh_scan_src, &k);
	__u64 t = now;
	if (tat && *tat > now)
		t = *tat;
	t += h->scan_gap;
	if (t - now <= h->scan_burst) {
		if (tat)
			*tat = t;
		else
			bpf_map_update_elem(&gh_scan_src, &k, &t, BPF_ANY);
		return 0;
	}
	// The bucket is empty: block the source.
	__u64 until = now + h->block_for;
	if (v6)
		bpf_map_update_elem(&gh_block6, k.a, &until, BPF_ANY);
	else
		bpf_map_update_elem(&gh_block4, k.a, &until, BPF_ANY);
	bpf_map_delete_elem(&gh_scan_src, &k);
	gh_block_active = 1; // after the entry: see gh_block_active
	return 1;
}

#endif // GH_SCAN_H
