package bpf

// The objects are built for little-endian targets only (bpfel): the page
// layout is written in host order and gatehouse runs on amd64 and arm64.
// Every header comes from include/ (vendored and pinned, see
// include/README.md): -nostdinc keeps the machine's own /usr/include and
// clang's out, so the objects are the same bytes wherever they are built.
// -mcpu=v3 (32-bit jumps and ALU, kernel 5.1+) gives shorter code than
// bpf2go's default v1.
//go:generate go tool bpf2go -tags linux -target bpfel -output-stem gatehouse gatehouse gatehouse.c -- -nostdinc -Iinclude -mcpu=v3 -Wall -Werror
//go:generate go tool bpf2go -tags linux -target bpfel -output-stem gatehouselpm gatehouseLPM gatehouse.c -- -DGH_LPM -nostdinc -Iinclude -mcpu=v3 -Wall -Werror
