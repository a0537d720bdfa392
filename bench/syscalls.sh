#!/usr/bin/env bash
# bench/syscalls.sh: system calls per keep-alive HTTPS request (1 KiB, mutual
# TLS, 4 connections), counted by strace -c on the server while a fixed number
# of requests run; gatehouse beside nginx, in one namespace created and removed
# here (loopback only).
#
#   sudo bench/syscalls.sh                       gatehouse of this tree, nginx
#   sudo GATEHOUSE="main=/tmp/gh-main this=/tmp/gh" bench/syscalls.sh
#                                                several gatehouse builds
#   N=20000 MODE=h2 bench/syscalls.sh            more requests; HTTP/2
#   ENGINES="std fast" bench/syscalls.sh         each gatehouse under each HTTP engine
#                                                (limits.http.engine); default: its default
#   KEEP=/tmp/sc bench/syscalls.sh               keep strace's tables as /tmp/sc-NAME
#   PROFILE=/tmp/p bench/syscalls.sh             perf record instead of strace: the
#                                                cumulative share of each function in
#                                                /tmp/p-NAME.txt (needs linux-perf)
#
# strace slows the server down many times over: the counts are the figure,
# not the rates. Needs root, strace, nginx.
set -euo pipefail
N=${N:-10000}
MODE=${MODE:-ka}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/gatehouse-syscalls.XXXXXX)
NS=ghs-$$
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "bench/syscalls.sh: run as root (namespace)" >&2; exit 1; }

if [ -z "${GATEHOUSE:-}" ]; then
	(cd "$ROOT" && go build -o "$W/gatehouse" ./cmd/gatehouse)
	GATEHOUSE="gatehouse=$W/gatehouse"
fi
(cd "$ROOT/bench" && go build -o "$W/loadgen" ./loadgen)
G=${GATEHOUSE%% *}
G=${G#*=}
P=$W/pki
q() { "$@" >/dev/null; }
q "$G" certs init-ca --dir "$P/sca" --cn "bench server CA"
q "$G" certs init-ca --dir "$P/cca" --cn "bench client CA"
q "$G" certs issue --ca "$P/sca" --server --dns bench.example --ip 127.0.0.1 --out "$P/server"
q "$G" certs issue --ca "$P/cca" --client --tenant t1 --cn t1 --out "$P/t1"

ip netns add "$NS"
ip -n "$NS" link set lo up
inns() { ip netns exec "$NS" "$@"; }
wait_port() {
	local i
	for i in $(seq 100); do
		inns ss -Hltn "sport = :$1" | grep -q . && return 0
		sleep 0.1
	done
	echo "nothing listens on :$1" >&2
	return 1
}
ip netns exec "$NS" "$W/loadgen" serve -addr 127.0.0.1:8080 >/dev/null 2>&1 &
PIDS+=($!)
wait_port 8080

cat >"$W/gatehouse.yaml" <<EOC
state_dir: $W/state
admin_socket: ""
enforcement: {xdp: "off", nftables: false}
metrics: {listen: "127.0.0.1:9477"}
tenants: [{id: t1, client_ca: $P/cca/ca.pem, identities: {cn: ["t1"]}}]
listeners:
  - {name: web, listen: "127.0.0.1:8443", protocol: https, server_cert: $P/server.pem, server_key: $P/server.key,
     routes: [{tenant: t1, backend: "http://127.0.0.1:8080"}]}
EOC
mkdir -p "$W/nginx/tmp" "$W/state"
cat >"$W/nginx/nginx.conf" <<EOC
worker_processes 1;
error_log $W/nginx/error.log warn;
pid $W/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $W/nginx/tmp/body;
    proxy_temp_path $W/nginx/tmp/proxy;
    upstream be { server 127.0.0.1:8080; keepalive 64; }
    server {
        listen 127.0.0.1:8443 ssl;
        listen 127.0.0.1:8444 ssl http2;
        ssl_certificate $P/server.pem;
        ssl_certificate_key $P/server.key;
        ssl_client_certificate $P/cca/ca.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        keepalive_requests 1000000;
        location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOC

# count NAME PORT PID…: N requests with strace on the PIDs; prints one line.
count() {
	local name=$1 port=$2 out=$W/strace-$1
	shift 2
	inns "$W/loadgen" "$MODE" -target "127.0.0.1:$port" -cert "$P/t1.pem" -key "$P/t1.key" -ca "$P/sca/ca.pem" \
		-dur 2s -conc 4 >/dev/null # warm-up: connections and pools
	local args=()
	for p in "$@"; do args+=(-p "$p"); done
	if [ -n "${PROFILE:-}" ]; then
		# perf samples with call chains (Go keeps frame pointers) instead
		# of counting system calls.
		perf record -F 1999 -g -o "$out.perf" "${args[@]}" 2>"$out.err" >/dev/null &
	else
		strace -f -c -o "$out" "${args[@]}" 2>"$out.err" &
	fi
	local sp=$!
	sleep 1 # strace attaches
	inns "$W/loadgen" "$MODE" -target "127.0.0.1:$port" -cert "$P/t1.pem" -key "$P/t1.key" -ca "$P/sca/ca.pem" \
		-dur 600s -max "$N" -conc 4 >"$W/lg-$name" 
	kill -INT "$sp" 2>/dev/null || { echo "strace on $name ended early: $(cat "$out.err")" >&2; return 1; }
	wait "$sp" || true
	if [ -n "${PROFILE:-}" ]; then
		perf report -i "$out.perf" --children --stdio -g none --percent-limit 0.3 --sort symbol 2>/dev/null |
			grep -v '^#' | grep . >"$PROFILE-$name.txt" || true
		echo "$name: perf report (children) in $PROFILE-$name.txt"
		return 0
	fi
	local ok
	ok=$(tr ' ' '\n' <"$W/lg-$name" | sed -n 's/^ok=//p')
	awk -v n="$ok" -v name="$name" '
		$NF ~ /^(read|write|recvfrom|sendto|readv|writev|sendmsg|recvmsg|epoll_wait|epoll_pwait|futex|nanosleep|getrusage)$/ {
			c[$NF] += $4 }
		$NF == "total" { total = $4 }
		END {
			printf "%-12s %d requests: %.2f syscalls/request", name, n, total / n
			for (s in c) printf ", %s %.2f", s, c[s] / n
			printf "\n" }' "$out"
	[ -z "${KEEP:-}" ] || cp "$out" "$KEEP-$name"
}

for spec in $(for g in $GATEHOUSE; do for e in ${ENGINES:--}; do echo "$e/$g"; done; done); do
	engine=${spec%%/*} spec=${spec#*/}
	name=${spec%%=*} bin=${spec#*=}
	cp "$W/gatehouse.yaml" "$W/gatehouse-run.yaml"
	if [ "$engine" != - ]; then
		name=$name-$engine
		sed -i "s/protocol: https,/protocol: https, limits: {http: {engine: $engine}},/" "$W/gatehouse-run.yaml"
	fi
	ip netns exec "$NS" "$bin" run -c "$W/gatehouse-run.yaml" >/dev/null 2>"$W/$name.err" &
	gp=$!
	PIDS+=("$gp")
	wait_port 8443
	count "$name" 8443 "$gp"
	kill "$gp"
	wait "$gp" 2>/dev/null || true
	for _ in $(seq 50); do inns ss -Hltn "sport = :8443" | grep -q . || break; sleep 0.1; done
done
ip netns exec "$NS" nginx -e "$W/nginx/error.log" -p "$W/nginx" -c "$W/nginx/nginx.conf" -g 'daemon off;' &
np=$!
PIDS+=("$np")
wait_port 8443
port=8443
[ "$MODE" = h2 ] && port=8444
count nginx "$port" $(pgrep -P "$np")
