// Package announce is the BGP speaker: it announces the node's service
// addresses to its routers while the daemon says the node is ready, and
// withdraws them otherwise. It knows nothing of policy or the kernel
// layers; the daemon tells it when to announce.
package announce
