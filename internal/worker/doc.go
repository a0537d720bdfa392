// Package worker is the privilege split: the enforcer (gatehouse run, with
// CAP_NET_ADMIN and CAP_BPF) binds every listener socket and starts N
// unprivileged worker processes (gatehouse worker) that run the TLS
// handshakes and the protocol proxies on those sockets, confined by
// internal/sandbox. Pool is the enforcer's side: it binds, starts,
// supervises and restarts the workers, hands them policy snapshots and
// gathers their status and metrics. Main is the worker's side. Both speak
// the control protocol of proto.go over one socketpair per worker.
package worker
