// Package bench holds the helper programs of "make bench" (bench/run.sh):
// loadgen, a TLS load generator that presents a client certificate, and
// flood, a bounded raw-frame sender for the drop-rate comparison. It is a
// module of its own so that the main module's tests and vet never see it.
// Nothing here is part of the daemon; it touches only loopback and the
// network namespaces run.sh creates.
package bench
