// SPDX-License-Identifier: GPL-2.0
// The floor of the flood comparison in bench/run.sh: an XDP program that
// drops every frame without looking at it. What a filter costs above this
// is its own work; what the sender costs is in this figure too.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
