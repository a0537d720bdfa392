#!/usr/bin/env bash
# bench/strace-count.sh: the system calls a server makes per message.
#
#   bench/strace-count.sh MESSAGES PID[,PID…] -- COMMAND…
#
# Attaches strace -c -f to every thread of the given processes, runs
# COMMAND (a load generator that sends exactly MESSAGES messages, for
# example loadgen echo -max N), detaches, and prints one line:
#   per=<calls per message> total=<calls> <name>=<calls per message>…
# for the calls that make up the bulk. strace slows the server: the count
# is what matters here, never the time. Needs root and strace.
set -euo pipefail
[ $# -ge 4 ] && [ "$3" = -- ] || { echo "usage: $0 MESSAGES PID[,PID…] -- COMMAND…" >&2; exit 2; }
msgs=$1
pids=$2
shift 3
out=$(mktemp /tmp/gatehouse-syscalls.XXXXXX)
trap 'rm -f "$out"' EXIT
args=()
for p in ${pids//,/ }; do args+=(-p "$p"); done
strace -c -f -qq -o "$out" "${args[@]}" &
st=$!
sleep 1 # strace attaches before the first message
"$@" >/dev/null
kill -INT "$st"
wait "$st" 2>/dev/null || true
# strace -c: "% time seconds usecs/call calls [errors] syscall"; the
# errors column is empty for most rows.
rows=$(awk '/^-+/ || /^%/ || / total$/ {next} NF >= 5 {print $4, $NF}' "$out" | sort -rn)
total=$(awk '{t+=$1} END{print t+0}' <<<"$rows")
if [ "$msgs" -le 0 ] || [ "$total" = 0 ]; then echo "per=0 total=0"; exit 0; fi
printf 'per=%s total=%s' "$(awk -v t="$total" -v m="$msgs" 'BEGIN{printf "%.2f", t/m}')" "$total"
head -6 <<<"$rows" | awk -v m="$msgs" '{printf " %s=%.2f", $2, $1/m}'
echo
