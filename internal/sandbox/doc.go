// Package sandbox confines the current process for an unprivileged proxy
// worker: it drops every capability (bounding, ambient, permitted,
// effective) and switches to the worker's user, restricts the file system
// with Landlock (read-only paths for certificates, keys, CAs and CRLs,
// writable paths for ticket keys and logs, no exec anywhere) and installs a
// seccomp filter that allows what the Go runtime and TCP/UDP networking need
// and refuses the rest (bpf, namespaces, mount, ptrace, exec, raw, packet
// and netlink sockets, module and key management). Apply is one-way: a
// confined process cannot widen its own confinement. It knows nothing of
// policy, TLS or the kernel filters.
package sandbox
