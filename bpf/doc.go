// Package bpf holds gatehouse's XDP admission filter: the C source, the
// bpf2go-generated loaders and objects (committed; `go generate ./bpf`
// rebuilds them byte for byte), and the encoder that lays out one policy
// generation in the pages the program reads. It knows nothing of policy files
// or of attaching: enforcer/xdp does that.
package bpf
