// Package xdp applies a policy to the XDP admission filter of one
// interface: it loads the program from package bpf, pins its link and maps
// under /sys/fs/bpf/gatehouse/<interface>/, adopts them after a restart,
// swaps whole generations atomically, feeds the blocklist and exports the
// program's counters. It does not decide policy and never removes the filter
// except through Teardown.
package xdp
