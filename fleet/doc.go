// Package fleet shares scan blocks between the nodes of a fleet: each node
// serves the sources it blocked itself over mutual TLS (GET
// /fleet/v1/blocks) and pulls its peers' lists into its own blocklist,
// each block capped in time and count. It knows nothing of the kernel: the
// daemon hands it the functions that list local blocks and add a peer's.
package fleet
