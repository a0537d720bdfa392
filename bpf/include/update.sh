#!/bin/sh
# Replaces the vendored headers with those of the installed Debian packages
# (libbpf-dev for bpf/, linux-libc-dev for the rest; asm/ from amd64's
# multiarch directory) and rewrites SHA256SUMS. Afterwards: note the new
# versions in README.md, run `make generate`, and commit headers, sums and
# the regenerated objects together.
set -eu
cd "$(dirname "$0")"
files="linux/bpf.h linux/bpf_common.h linux/byteorder/little_endian.h linux/if_ether.h
linux/in.h linux/in6.h linux/ip.h linux/ipv6.h linux/libc-compat.h linux/posix_types.h
linux/socket.h linux/stddef.h linux/swab.h linux/tcp.h linux/types.h linux/udp.h
asm-generic/bitsperlong.h asm-generic/int-ll64.h asm-generic/posix_types.h asm-generic/types.h
bpf/bpf_endian.h bpf/bpf_helper_defs.h bpf/bpf_helpers.h"
for f in $files; do
	mkdir -p "$(dirname "$f")"
	cp "/usr/include/$f" "$f"
done
for f in bitsperlong.h byteorder.h posix_types.h posix_types_64.h swab.h types.h; do
	mkdir -p asm
	cp "/usr/include/x86_64-linux-gnu/asm/$f" "asm/$f"
done
find . -type f ! -name SHA256SUMS ! -name README.md ! -name update.sh | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS
dpkg-query -W -f='${Package} ${Version}\n' libbpf-dev linux-libc-dev
