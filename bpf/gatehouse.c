//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// gatehouse XDP admission filter.
//
// Every IP packet is parsed down to its transport header and given a verdict
// from one "generation": a single BPF array map of 64 KiB pages that holds the
// mode, the port flags, the management ranges and the admitted set of both
// families. A new generation is built beside the old one and published with
// one update of the outer map gh_gen, so a packet sees one whole generation.
// Page 0 is the header, with four flag bits per port from GH_PORTS_OFF.
//
// Admitted lookup (the default build):
//   IPv4: a directory of 2^20 eight-byte entries (8 MiB, always pages 1-128),
//         one per 16 consecutive /24s: the low 32 bits hold two bits per
//         /24 (none, whole /24 admitted, or partial), the high 32 bits the
//         number of partial /24s before the entry. A partial /24's rank, that
//         number plus the partial ones before it in the entry, indexes its
//         256-bit bitmap of addresses (from page 129). A lookup is one load,
//         or two with a count of bits between them: no hashing, no probing.
//   IPv6: two bits per top-24-bit block; a partial block has an
//         entry in a two-choice hash table listing the prefix lengths (up to
//         15) present under it, and each length is one exact-match probe.
// Built with -DGH_LPM the same program looks both families up in plain LPM
// tries instead (the reference for equality tests and benchmarks).
//
// Where the stateless line is: TCP segments that are not a bare SYN (any ACK,
// RST or FIN without SYN), UDP to the local ephemeral port range, ICMP errors
// and echo replies, and later fragments are not new flows: they may be return
// traffic of the appliance's own connections (or of a flow XDP already let
// in), and nftables' conntrack decides. In strict mode a bare SYN, UDP to any
// other port, an echo request or any other IP protocol is a new flow, dropped
// unless it is admitted or management; before it drops such a UDP datagram,
// the program asks conntrack (ct.h) and passes an answer to a flow the
// appliance opened (NTP from port 123 to port 123) as "established". The
// kfuncs look up TCP and UDP only, so GRE, ESP and the like are still
// dropped there. In both modes the blocklist takes only
// what can do nothing but open a flow, a bare SYN or an echo request, and
// neither to a listener port from an admitted source nor to a management port
// from its range: a scan is easily forged in someone else's name, so a block
// takes nothing a tenant or an admin needs. UDP and other protocols from a
// blocked source may answer the appliance's own query or tunnel (NTP from
// port 123, a GRE or ESP peer): nftables, which knows the flows, judges them.
// ARP, IPv6 neighbour discovery, router advertisements and MLD always pass;
// an IPv4-mapped IPv6 source is malformed.
//
// Scan detection (both modes): a bare SYN to a port that is neither a
// listener nor management for its source, from a source outside every
// management range, counts its (source, port) pair once per scan window; a
// source's new pairs drain a bucket of distinct_ports-1 tokens refilled one
// per gap (the nftables limit's algorithm, with the gap its rate gives: the
// policy computes it once for both layers), and the pair that finds it empty
// blocks the source for block_for. A source is its
// address masked to the generation's source prefix (an IPv6 /64 by default).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define GH_PAGE_SIZE 65536
#define GH_MAGIC 0x67680004 // "gh" layout 4: bump when the page layout changes
#define GH_DIR_PAGES 64     // IPv6: 2 bits per top-24-bit block = 4 MiB = 64 pages
#define GH_V4_DIR 1         // first page of the IPv4 directory
#define GH_V4_DIR_PAGES 128 // 2^20 entries of 8 bytes
#define GH_V4_BITS (GH_V4_DIR + GH_V4_DIR_PAGES) // first page of the IPv4 bitmaps
#define GH_MAX_PAGES 512    // 32 MiB per generation; see MaxPages in layout.go
#define GH_MAX_MGMT 32
#define GH_MAX_LENS 15
#define GH_MAX_EXT 8 // IPv6 extension headers walked before giving up
#define GH_PORTS_OFF 32768 // port flags in the header page, four bits per port

// Verdict reasons; the counter index is action*GH_REASONS + reason.
enum gh_reason {
	GH_ADMITTED = 0,
	GH_NOT_ADMITTED = 1,
	GH_BLOCKED = 2,
	GH_MALFORMED = 3,
	GH_MANAGEMENT = 4,
	GH_PASSTHROUGH = 5,
	GH_SCAN = 6,
	GH_ESTABLISHED = 7, // an answer to a flow conntrack knows (ct.h)
	GH_REASONS = 8,
};

enum gh_action {
	GH_ACT_PASS = 0,
	GH_ACT_DROP = 1,
	GH_ACTIONS = 2,
};

// Port flags, four bits per port from GH_PORTS_OFF of the header page.
#define GH_PORT_TCP 0x01
#define GH_PORT_UDP 0x02
#define GH_PORT_MGMT_TCP 0x04
#define GH_PORT_MGMT_UDP 0x08

#define GH_FLAG_STRICT 0x01

struct gh_page {
	__u8 b[GH_PAGE_SIZE];
};

struct gh_mgmt {
	__u8 family; // 4 or 6
	__u8 plen;   // 0..32 or 0..128
	__u16 port;
	__u32 pad;
	__u64 hi; // address, host order; IPv4 in the top 32 bits of hi
	__u64 lo;
};

struct gh_hdr {
	__u32 magic;
	__u32 flags;
	__u16 eph_lo;
	__u16 eph_hi;
	__u16 v6_tab_page; // 0: no IPv6 table
	__u16 pad0;
	__u32 v6_mask; // buckets - 1
	__u32 mgmt_count;
	// v6dir: page of each 64 KiB of the IPv6 2-bit map; 0 = all zero
	__u16 v6dir[GH_DIR_PAGES];
	struct gh_mgmt mgmt[GH_MAX_MGMT];
	__u32 src_mask4;    // network order: the bits of an IPv4 source
	__u32 scan_ports;   // distinct ports that block; 0: no scan detection
	__u32 src_mask6[4]; // network order: the bits of an IPv6 source
	__u64 scan_window;  // ns a (source, port) pair counts once
	__u64 scan_gap;     // ns of refill one new pair costs: about window / ports
	__u64 scan_burst;   // (ports - 1) * gap: the bucket's depth
	__u64 block_for;    // ns a scanner stays blocked
};

// The Go encoder writes these offsets; keep both sides in step.
_Static_assert(__builtin_offsetof(struct gh_hdr, v6_tab_page) == 12, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, v6_mask) == 16, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, mgmt_count) == 20, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, v6dir) == 24, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, mgmt) == 152, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, src_mask4) == 920, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, src_mask6) == 928, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, scan_window) == 944, "gh_hdr layout");
_Static_assert(__builtin_offsetof(struct gh_hdr, block_for) == 968, "gh_hdr layout");
_Static_assert(sizeof(struct gh_mgmt) == 24, "gh_mgmt layout");
_Static_assert(sizeof(struct gh_hdr) <= GH_PORTS_OFF, "gh_hdr layout");

// One IPv6 table entry (32 bytes, four to a bucket). For a prefix, tag is its
// length and val is unused. For a top-24 block (tag byte 0 == 24), the other
// tag bytes and val hold the prefix lengths present under it, longest first,
// zero-terminated.
struct gh_v6ent {
	__u64 hi;
	__u64 lo;
	__u64 tag;
	__u64 val;
};

// The outer map holds the generation in force. Every generation has the
// same number of pages: a fixed size lets the verifier inline the page
// lookups, which BPF_F_INNER_MAP (sized per generation) would forbid; those
// helper calls measured about 10 ns each.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, GH_MAX_PAGES);
		__uint(key_size, 4);
		__uint(value_size, GH_PAGE_SIZE);
	});
} gh_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GH_ACTIONS *GH_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} gh_counters SEC(".maps");

// Nonzero when the blocklists may hold an entry. A global variable is read
// with one load; the array lookup it replaces cost a row of instructions on
// every new flow that passes. The program sets it after every block it makes;
// the daemon clears it only when it finds both blocklists empty, and looks
// again after clearing it.
volatile __u32 gh_block_active SEC(".data.state") = 0;

struct gh_in6 {
	__u8 a[16];
};

// Blocklists: source (address masked to the source prefix) →
// bpf_ktime_get_ns deadline.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); // network order
	__type(value, __u64);
} gh_block4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct gh_in6);
	__type(value, __u64);
} gh_block6 SEC(".maps");

#ifdef GH_LPM
struct gh_lpm4_key {
	__u32 prefixlen;
	__u32 addr; // network order
};

struct gh_lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
	__type(key, struct gh_lpm4_key);
	__type(value, __u8);
} gh_lpm4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 20);
	__type(key, struct gh_lpm6_key);
	__type(value, __u8);
} gh_lpm6 SEC(".maps");
#endif

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct ipv6_ext {
	__u8 next;
	__u8 len;
	__be16 frag; // fragment header: offset<<3 | flags
};

struct gh_pkt {
	__u64 hi; // source address, host order (IPv4: top 32 bits of hi)
	__u64 lo;
	__u32 saddr4; // network order, IPv4 only
	__u8 v6;
	__u8 l4;     // IPPROTO_*, 0 when no transport header (later fragment)
	__u16 dport; // host order
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 later_frag;
	__u8 pad;
	struct gh_in6 saddr6;
	// UDP only, for the conntrack lookup (ct.h); network order. A pointer
	// to the headers kept until then would give the verifier a state of
	// its own for every path through the IPv6 extension headers.
	__be16 sport;
	__u32 daddr4;
	struct gh_in6 daddr6;
};

static __always_inline int count(__u32 action, __u32 reason)
{
	__u32 key = action * GH_REASONS + reason;
	__u64 *c = bpf_map_lookup_elem(&gh_counters, &key);
	if (c)
		*c += 1;
	return action == GH_ACT_DROP ? XDP_DROP : XDP_PASS;
}

static __always_inline void *page(void *gen, __u32 idx)
{
	return bpf_map_lookup_elem(gen, &idx);
}

#include "admitted.h"

#include "classify.h"
#include "ct.h"
#include "parse.h"
#include "scan.h"

// GH_ASK_CT is verdict's answer for a UDP datagram it would drop as a new
// flow: the caller, which holds the headers, asks conntrack (ct.h).
#define GH_ASK_CT -1

// verdict is instantiated once per family (v6 is a constant), so that each
// copy is straight-line code for its own family. It returns an XDP action,
// or GH_ASK_CT.
static __always_inline int verdict(struct gh_pkt *pk, const int v6, const int tcp_seg)
{
	__u32 zero = 0;
	void *gen = bpf_map_lookup_elem(&gh_gen, &zero);
	if (!gen)
		return count(GH_ACT_PASS, GH_PASSTHROUGH); // no policy applied yet
	struct gh_hdr *h = page(gen, 0);
	if (!h || h->magic != GH_MAGIC)
		return count(GH_ACT_PASS, GH_PASSTHROUGH);
	__u32 c = classify(h, pk, v6, tcp_seg);
	if (c == GH_MANAGEMENT)
		return count(GH_ACT_PASS, GH_MANAGEMENT);
	if (c & GH_CHECK) {
		int ok = v6 ? v6_admitted(gen, h, pk) : v4_admitted(gen, pk->saddr4);
		if (!ok)
			return count(GH_ACT_DROP, GH_NOT_ADMITTED);
		if (c & GH_LISTENER)
			return count(GH_ACT_PASS, GH_ADMITTED);
		c = GH_ADMITTED;
	}
	if (opens(pk, v6, tcp_seg)) {
		if (blocked(h, pk, v6))
			return count(GH_ACT_DROP, GH_BLOCKED);
		// A bare SYN to a port that is neither listener nor management.
		if ((tcp_seg || pk->l4 == IPPROTO_TCP) && scan(h, pk, v6))
			return count(GH_ACT_DROP, GH_SCAN);
	}
	if (c & GH_DROP) {
		if (!tcp_seg && pk->l4 == IPPROTO_UDP)
			return GH_ASK_CT;
		return count(GH_ACT_DROP, c & 0xff);
	}
	return count(GH_ACT_PASS, c);
}

// answered counts the verdict on a datagram verdict asked conntrack about:
// an answer to a flow conntrack knows passes, anything else is the new
// flow verdict took it for.
static __always_inline int answered(int known)
{
	if (known)
		return count(GH_ACT_PASS, GH_ESTABLISHED);
	return count(GH_ACT_DROP, GH_NOT_ADMITTED);
}

static __always_inline int handle_v4(struct xdp_md *ctx, void *cur, void *end)
{
	struct gh_pkt pk;
	pkt_init(&pk, 0);
	struct iphdr *ip = cur;
	if ((void *)(ip + 1) > end)
		return count(GH_ACT_DROP, GH_MALFORMED);
	__u32 ihl = ip->ihl * 4;
	__u32 tot = bpf_ntohs(ip->tot_len);
	// tot >= ihl and cur + tot <= end: the options end inside the frame
	// (parse_l4 checks its own header against end for the verifier).
	if (ip->version != 4 || ihl < sizeof(*ip) || tot < ihl || cur + tot > end)
		return count(GH_ACT_DROP, GH_MALFORMED);
	__u16 frag = bpf_ntohs(ip->frag_off);
	pk.saddr4 = ip->saddr;
	pk.hi = (__u64)bpf_ntohl(ip->saddr) << 32;
	pk.l4 = ip->protocol == IPPROTO_ICMPV6 ? 255 : ip->protocol;
	if (frag & 0x1fff) {
		pk.later_frag = 1;
		pk.l4 = 0;
	} else if (parse_l4(&pk, cur + ihl, end, tot - ihl) < 0) {
		return count(GH_ACT_DROP, GH_MALFORMED);
	} else if (pk.l4 == IPPROTO_TCP) {
		return verdict(&pk, 0, 1);
	} else if (pk.l4 == IPPROTO_UDP) {
		pk.daddr4 = ip->daddr;
	}
	int r = verdict(&pk, 0, 0);
	if (r == GH_ASK_CT)
		return answered(ct_answer4(ctx, &pk));
	return r;
}

static __always_inline int handle_v6(struct xdp_md *ctx, void *cur, void *end)
{
	struct gh_pkt pk;
	pkt_init(&pk, 1);
	struct ipv6hdr *ip = cur;
	if ((void *)(ip + 1) > end)
		return count(GH_ACT_DROP, GH_MALFORMED);
	__u32 avail = bpf_ntohs(ip->payload_len);
	if (ip->version != 6 || cur + sizeof(*ip) + avail > end)
		return count(GH_ACT_DROP, GH_MALFORMED);
	// An IPv4-mapped source (::ffff:0:0/96) is no IPv6 source: the
	// kernel drops it before any hook (RFC 4291 2.5.5.2), and scan
	// detection must not take it for one in ::/64.
	if (ip->saddr.in6_u.u6_addr32[0] == 0 && ip->saddr.in6_u.u6_addr32[1] == 0 &&
	    ip->saddr.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
		return count(GH_ACT_DROP, GH_MALFORMED);
	__builtin_memcpy(pk.saddr6.a, &ip->saddr, 16);
	pk.hi = ((__u64)bpf_ntohl(ip->saddr.in6_u.u6_addr32[0]) << 32) | bpf_ntohl(ip->saddr.in6_u.u6_addr32[1]);
	pk.lo = ((__u64)bpf_ntohl(ip->saddr.in6_u.u6_addr32[2]) << 32) | bpf_ntohl(ip->saddr.in6_u.u6_addr32[3]);

	__u8 next = ip->nexthdr;
	cur += sizeof(*ip);
	int done = 0;
#pragma clang loop unroll(full)
	for (int i = 0; i < GH_MAX_EXT; i++) {
		if (!is_ext(next)) {
			done = 1;
			break;
		}
		struct ipv6_ext *x = cur;
		if ((void *)(x + 1) > end || avail < 8)
			return count(GH_ACT_DROP, GH_MALFORMED);
		__u32 len;
		if (next == IPPROTO_FRAGMENT) {
			len = 8;
			if (bpf_ntohs(x->frag) & 0xfff8) {
				pk.later_frag = 1;
				next = 0;
				done = 1;
				break;
			}
		} else if (next == IPPROTO_AH) {
			len = (x->len + 2) * 4;
		} else {
			len = (x->len + 1) * 8;
		}
		if (len > avail)
			return count(GH_ACT_DROP, GH_MALFORMED);
		avail -= len;
		next = x->next;
		cur += len;
	}
	if (!done && is_ext(next))
		return count(GH_ACT_DROP, GH_MALFORMED); // longer chain than we walk
	if (!pk.later_frag) {
		pk.l4 = next;
		if (next == IPPROTO_ICMPV6) {
			if (parse_l4(&pk, cur, end, avail) < 0)
				return count(GH_ACT_DROP, GH_MALFORMED);
			// Neighbour discovery, router advertisements and multicast
			// listener discovery always pass: the link itself needs them.
			__u8 t = pk.icmp_type;
			if ((t >= 133 && t <= 137) || (t >= 130 && t <= 132) || t == 143)
				return count(GH_ACT_PASS, GH_PASSTHROUGH);
		} else if (next == IPPROTO_TCP) {
			if (parse_l4(&pk, cur, end, avail) < 0)
				return count(GH_ACT_DROP, GH_MALFORMED);
		} else if (next == IPPROTO_UDP) {
			if (parse_l4(&pk, cur, end, avail) < 0)
				return count(GH_ACT_DROP, GH_MALFORMED);
			__builtin_memcpy(pk.daddr6.a, &ip->daddr, 16);
		} else if (next == IPPROTO_ICMP) {
			pk.l4 = 255; // ICMPv4 inside IPv6 is not ICMP
		}
	}
	int r = verdict(&pk, 1, 0);
	if (r == GH_ASK_CT)
		return answered(ct_answer6(ctx, &pk));
	return r;
}

SEC("xdp")
int gatehouse_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return count(GH_ACT_DROP, GH_MALFORMED);
	void *cur = eth + 1;
	// struct ethhdr is packed: read the type as one 16-bit load.
	__u16 proto = *(__u16 *)((__u8 *)data + 12);
#pragma clang loop unroll(full)
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *v = cur;
		if ((void *)(v + 1) > end)
			return count(GH_ACT_DROP, GH_MALFORMED);
		proto = v->proto;
		cur = v + 1;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx, cur, end);
	if (proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx, cur, end);
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return count(GH_ACT_DROP, GH_MALFORMED); // more tags than we read
	// ARP and every other non-IP frame: nothing here reaches a socket.
	return count(GH_ACT_PASS, GH_PASSTHROUGH);
}
