package bpf

// The objects are built for little-endian targets only (bpfel): the page
// layout is written in host order and gatehouse runs on amd64 and arm64.
// The include path covers Debian's multiarch asm/ headers of both.
// -mcpu=v3 (32-bit jumps and ALU, kernel 5.1+) gives shorter code than
// bpf2go's default v1.
//go:generate go tool bpf2go -tags linux -target bpfel -output-stem gatehouse gatehouse gatehouse.c -- -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu -mcpu=v3 -Wall -Werror
//go:generate go tool bpf2go -tags linux -target bpfel -output-stem gatehouselpm gatehouseLPM gatehouse.c -- -DGH_LPM -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu -mcpu=v3 -Wall -Werror
