#!/usr/bin/env bash
# bench/run.sh: gatehouse beside what an admin would deploy instead, measured
# in one run, and written as one markdown table to bench/RESULTS.md.
#
#   sudo bench/run.sh                 the full run (about 15 minutes, 20 at most)
#   sudo ROUNDS=1 DUR=1 FLOOD_SECS=2 IDLE_SESSIONS=1000 GOBENCH=0 bench/run.sh
#                                     a quick pass to check the harness
#   sudo ONLY="ka h2" ROUNDS=3 bench/run.sh
#                                     only these mTLS rows (hs ka h2 bulk) against the
#                                     peers, interleaved as in the full run; no floods, Go
#                                     benchmarks, feeds, stream or idle rows; the table goes
#                                     to bench/out/RESULTS-only.md unless RESULTS is set
#   sudo ONLY=flood FLOOD_SECS=2 bench/run.sh
#                                     only the flood rows ("flood" mixes with the mTLS
#                                     rows above); FLOODERS="floor xdp" narrows them
#
# What it starts binds loopback or a network namespace it creates (ghb-<pid>-*),
# uses documentation addresses only, and is stopped by its PID when the run ends,
# fails or is interrupted. Every run is bounded in count and time, and the whole
# script stops itself after $BUDGET seconds. The machine's own interfaces,
# routes and firewall are never touched.
#
# Needs root, Go, and the Debian packages haproxy, nginx, libnginx-mod-stream,
# stunnel4, iptables, ethtool (and what make deps installs). The Go helpers are in
# bench/loadgen (TLS load generator with client certificates, and the
# backends) and bench/flood (SYN flood generated in the kernel).
set -euo pipefail

ROUNDS=${ROUNDS:-3}               # interleaved rounds: medians over them
DUR=${DUR:-4}                     # seconds per load-generator run
FLOOD_COUNT=${FLOOD_COUNT:-50000000}
FLOOD_SECS=${FLOOD_SECS:-5}
IDLE_SESSIONS=${IDLE_SESSIONS:-"1000 10000"}
GOBENCH=${GOBENCH:-1}             # 0: skip the Go benchmarks (harness checks)
ONLY=${ONLY:-}                    # mTLS rows to run alone, e.g. "ka h2" (see above)
HTTP_ENGINE=${HTTP_ENGINE:-}      # gatehouse's limits.http.engine (std, fast); "" its default
TLSMODES=${ONLY:-hs ka h2 bulk}
TLSMODES=$(tr ' ' '\n' <<<"$TLSMODES" | grep -vx 'flood' | paste -sd' ' -) || true
FLOODERS=${FLOODERS:-floor xdp nft iptables-nft iptables-legacy}
if [ -n "$ONLY" ]; then GOBENCH=0 IDLE_SESSIONS=""; fi
BUDGET=${BUDGET:-1200}            # seconds; the run stops itself after this
MAX_STEAL=${MAX_STEAL:-0.15}      # rounds above this steal share are left out when cleaner ones exist
SRV_CPU=0                         # the server under test
CLI_CPU=1                         # load generator, backends, flood sender

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root (namespaces, XDP, nftables)" >&2; exit 1; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
OUT=$BENCH/out
RESULTS=${RESULTS:-$BENCH/RESULTS.md}
# bench/RESULTS.md is rewritten by each run, except what follows this line.
KEEP_MARK='<!-- kept by bench/run.sh: written by hand below -->'

[ -z "$ONLY" ] || RESULTS=${RESULTS_ONLY:-$OUT/RESULTS-only.md}
W=$(mktemp -d /tmp/gatehouse-bench.XXXXXX)
LOGS=$W/logs
RAW=$W/raw.txt
mkdir -p "$OUT" "$LOGS"
: >"$RAW"
T0=$(date +%s)

PIDS=()     # every background process this script started
declare -A PNAME=()  # their names, for the report
NSS=()      # every namespace it created
MOUNTS=()   # bpffs mounts
WATCHDOG=""

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
	for ((i = ${#NSS[@]} - 1; i >= 0; i--)); do ip netns del "${NSS[i]}" 2>/dev/null || true; done
	for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
	[ -n "$WATCHDOG" ] && { kill "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true; }
	rm -rf "$OUT/logs" && cp -r "$LOGS" "$OUT/logs" 2>/dev/null || true
	cp "$RAW" "$OUT/raw.txt" 2>/dev/null || true
	rm -rf "$W"
	[ "$rc" = 0 ] || echo "bench/run.sh: stopped (exit $rc); logs in $OUT/logs" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench/run.sh: interrupted" >&2; exit 130' INT TERM

# stop_pid: SIGTERM, up to 5 s, then SIGKILL: only PIDs this script started.
stop_pid() {
	local p=$1 i
	kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
	kill -TERM "$p" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
	local rc=0
	wait "$p" 2>/dev/null || rc=$?
	# 143 and 137 are our own TERM and KILL; another signal is a crash.
	if [ "$rc" -gt 128 ] && [ "$rc" != 143 ] && [ "$rc" != 137 ]; then
		say "${PNAME[$p]:-pid $p} ended by signal $((rc - 128)) when stopped"
		raw "crash/${PNAME[$p]:-$p}" "ended by signal $((rc - 128)) when stopped with SIGTERM"
	fi
}

# bg NAME CMD…: start in the background, logs to $LOGS/NAME.{out,err}; sets LAST.
bg() {
	local name=$1
	shift
	"$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" &
	LAST=$!
	PIDS+=("$LAST")
	PNAME[$LAST]=$name
}

say() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
raw() { printf '%s\t%s\n' "$1" "$2" >>"$RAW"; }

# median of the numbers on stdin (empty when there are none).
median() { sort -g | awk '{v[NR]=$1} END{if(NR) printf "%.6g\n", (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
# med KEY: median of the values recorded under KEY.
med() { awk -F'\t' -v k="$1" '$1==k{print $2}' "$RAW" | median; }
# kv LINE KEY: the value of key=value in a line.
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -1; }
# fmt NUMBER [DIGITS]: a readable number, "n/a" when empty.
num() { [ -n "${1:-}" ] && awk -v x="$1" -v d="${2:-0}" 'BEGIN{printf "%.*f", d, x}' || echo "n/a"; }
ratio() { [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN{if(b+0==0) print "n/a"; else printf "%.*f×", d, a/b}' || echo "n/a"; }
frac() { [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v a="$1" -v b="$2" 'BEGIN{if(b+0==0) print "n/a"; else printf "%.0f %%", 100*a/b}' || echo "n/a"; }

# stealnow: "total steal" jiffies from /proc/stat.
stealnow() { awk '/^cpu /{t=0; for(i=2;i<=9;i++) t+=$i; print t, $9; exit}' /proc/stat; }
# steal_sample: the steal share over one second, in per cent.
steal_sample() {
	local a b
	a=$(stealnow); sleep 1; b=$(stealnow)
	awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); d=y[1]-x[1]; v=0; if(d>0) v=100*(y[2]-x[2])/d; printf("%.0f", v)}'
}
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# tree PID: the PID and its children (nginx workers), comma-separated.
tree() { { echo "$1"; pgrep -P "$1" || true; } | paste -sd, -; }
# wait_port NS PORT SECONDS PID: until something listens, or the PID died.
wait_port() {
	local i
	for i in $(seq $(($3 * 10))); do
		ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
		kill -0 "$4" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}
# logtail FILE [N]: its last lines on one line; nothing when there is no file
# (a server that never started), which must not stop the run.
logtail() { { tail -n "${2:-4}" "$1" 2>/dev/null || true; } | tr '\n|' '  ' | cut -c1-300; }
newns() { ip netns add "$1"; NSS+=("$1"); ip -n "$1" link set lo up; }
delns() { ip netns del "$1" 2>/dev/null || true; }

# The sessions runs need many descriptors; without CAP_SYS_RESOURCE the hard
# limit is the ceiling, and a proxy holds two per session.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
MAXCONN=$(( (NOFILE - 200) / 2 ))
# The watchdog stops the run after $BUDGET seconds; stopping the watchdog
# stops its sleep too.
(
	trap 'kill "$sp" 2>/dev/null; exit 0' TERM
	sleep "$BUDGET" &
	sp=$!
	wait "$sp"
	echo "bench/run.sh: time budget of ${BUDGET}s spent, stopping" >&2
	kill -TERM $$
) &
WATCHDOG=$!

say "building"
G=$OUT/gatehouse
(cd "$ROOT" && go build -trimpath -o "$G" ./cmd/gatehouse)
(cd "$BENCH" && go build -o "$OUT/loadgen" ./loadgen && go build -o "$OUT/flood" ./flood)
clang -O2 -g -target bpf -nostdinc -I"$ROOT/bpf/include" -c "$BENCH/xdpdrop/xdpdrop.c" -o "$OUT/xdpdrop.o"
LG=$OUT/loadgen
if [ "$GOBENCH" = 1 ]; then
	for p in bpf enforcer/nft certs rules; do
		# A package that does not build is reported, not fatal: the rest runs.
		rm -f "$OUT/$(basename "$p").test"
		if ! (cd "$ROOT" && go test -c -o "$OUT/$(basename "$p").test" "./$p") >"$LOGS/build-$(basename "$p").log" 2>&1; then
			raw "fail/go/$p/build" "does not build: $(logtail "$LOGS/build-$(basename "$p").log" 2)"
		fi
	done
fi

STEAL_BEFORE=$(steal_sample)
S0=$(stealnow)

# ---------------------------------------------------------------- PKI
say "certificates"
P=$W/pki
mkdir -p "$P"
q() { "$@" >/dev/null; }
q "$G" certs init-ca --dir "$P/sca" --cn "bench server CA"
q "$G" certs init-ca --dir "$P/cca" --cn "bench client CA"
q "$G" certs issue --ca "$P/sca" --server --dns bench.example --ip 127.0.0.1 --out "$P/server"
TENANTS="t1 t2 t3 t4 t5 t6"   # the proxy holds at most 2,000 sessions per tenant
for t in $TENANTS; do q "$G" certs issue --ca "$P/cca" --client --tenant "$t" --cn "$t" --out "$P/$t"; done
cat "$P/server.pem" "$P/server.key" >"$P/server-combined.pem"
CERT1=$P/t1.pem KEY1=$P/t1.key
CERTS=$(for t in $TENANTS; do printf '%s,' "$P/$t.pem"; done | sed 's/,$//')
KEYS=$(for t in $TENANTS; do printf '%s,' "$P/$t.key"; done | sed 's/,$//')
CA=$P/cca/ca.pem SCA=$P/sca/ca.pem

# gatehouse_config FILE XDP NFT IFACE PINDIR: a small configuration. With an
# interface (the flood runs) the https listener takes :443, else loopback.
gatehouse_config() {
	local t
	{
		echo "interface: \"$4\""
		echo "state_dir: $W/state"
		echo "admin_socket: \"\""
		echo "shutdown_grace: 1s"
		echo "enforcement: {xdp: \"$2\", nftables: $3, pin_dir: \"$5\", mode: listeners}"
		echo "metrics: {listen: \"127.0.0.1:9477\"}"
		echo "static_ranges: [203.0.113.0/24]"
		echo "tenants:"
		for t in $TENANTS; do echo "  - {id: $t, client_ca: $CA, identities: {cn: [\"$t\"]}}"; done
		echo "listeners:"
		echo "  - name: web"
		echo "    listen: \"127.0.0.1:8443\""
		echo "    protocol: https"
		echo "    server_cert: $P/server.pem"
		echo "    server_key: $P/server.key"
		[ -z "$HTTP_ENGINE" ] || echo "    limits: {http: {engine: $HTTP_ENGINE}}"
		echo "    routes:"
		for t in $TENANTS; do echo "      - {tenant: $t, backend: \"http://127.0.0.1:8080\"}"; done
		echo "  - name: stream"
		echo "    listen: \"127.0.0.1:8450\""
		echo "    protocol: tcp"
		echo "    server_cert: $P/server.pem"
		echo "    server_key: $P/server.key"
		echo "    routes:"
		for t in $TENANTS; do echo "      - {tenant: $t, backend: \"127.0.0.1:8081\"}"; done
		echo "  - name: echo"
		echo "    listen: \"127.0.0.1:8452\""
		echo "    protocol: tcp"
		echo "    server_cert: $P/server.pem"
		echo "    server_key: $P/server.key"
		echo "    routes:"
		for t in $TENANTS; do echo "      - {tenant: $t, backend: \"127.0.0.1:8082\"}"; done
	} >"$1"
	if [ -n "$4" ]; then sed -i 's/127.0.0.1:8443/:443/' "$1"; fi
}
mkdir -p "$W/state"

# ---------------------------------------------------------------- machine limits
say "openssl speed (core $SRV_CPU)"
SPEED=$(timeout 60 taskset -c $SRV_CPU openssl speed -seconds 2 ecdsap256 ecdhx25519 2>/dev/null || true)
OSSL_SIGN=$(awk '/ecdsa \(nistp256\)/{print $(NF-1)}' <<<"$SPEED")
OSSL_VERIFY=$(awk '/ecdsa \(nistp256\)/{print $NF}' <<<"$SPEED")
OSSL_X25519=$(awk '/ecdh \(X25519\)/{print $NF}' <<<"$SPEED")
AES=$(timeout 60 taskset -c $SRV_CPU openssl speed -seconds 2 -bytes 16384 -evp aes-128-gcm 2>/dev/null || true)
OSSL_AES_MIB=$(awk '/^AES-128-GCM/{v=$NF; sub(/k$/, "", v); printf "%.0f", v*1000/1048576}' <<<"$AES")
# The server's share of a TLS 1.3 mTLS handshake: one ECDSA sign, two
# verifies (client CertificateVerify and the client certificate), and an
# X25519 key pair plus shared secret.
OSSL_HS=$(awk -v s="$OSSL_SIGN" -v v="$OSSL_VERIFY" -v x="$OSSL_X25519" 'BEGIN{if(s>0&&v>0&&x>0) printf "%.0f", 1/(1/s+2/v+2/x)}')

# ---------------------------------------------------------------- Go benchmarks
# gobench PKG PATTERN BENCHTIME [ENV…]: run a compiled test binary pinned to the
# server core; record every reported metric as go/<name>/<unit>.
gobench() {
	local pkg=$1 pat=$2 bt=$3 bin log
	shift 3
	bin=$OUT/$(basename "$pkg").test
	log=$LOGS/go-$(basename "$pkg")-$(tr -c 'a-zA-Z0-9' _ <<<"$pat").log
	[ -x "$bin" ] || return 0
	if ! (cd "$ROOT/$pkg" && env "$@" timeout 300 taskset -c $SRV_CPU "$bin" -test.run '^$' -test.bench "$pat" \
		-test.benchtime "$bt" -test.cpu 1 -test.timeout 290s) >"$log" 2>&1; then
		say "go benchmark $pkg $pat failed (see $log)"
		raw "fail/go/$pkg/$pat" "$(logtail "$log" 3)"
	fi
	awk '/^Benchmark/{n=$1; sub(/-[0-9]+$/, "", n); for(i=3;i<NF;i+=2) printf "go/%s/%s\t%s\n", n, $(i+1), $i}' "$log" >>"$RAW"
}
if [ "$GOBENCH" = 1 ]; then
	say "XDP per-packet cost (bpf, BPF_PROG_TEST_RUN)"
	gobench bpf 'BenchmarkLookup$|BenchmarkEmpty$' 5x
	say "policy apply (XDP, nftables, nft -f)"
	gobench bpf 'BenchmarkApply$' 3x
	gobench enforcer/nft 'BenchmarkApplyFull$|BenchmarkApplyDiff$|BenchmarkNftFileFull$' 3x
	# nft -f of a 1 % diff into a 100k interval set takes minutes here: once.
	gobench enforcer/nft 'BenchmarkNftFileDiff$' 1x
	say "Go's own TLS limit (certs BenchmarkHandshakeServer, client on core $CLI_CPU)"
	gobench certs 'BenchmarkHandshakeServer$' 3000x GATEHOUSE_BENCH_CLIENT_CPUS=$CLI_CPU
	say "feed pipeline (rules BenchmarkAzure)"
	gobench rules 'BenchmarkAzure$' 5x
fi

# ---------------------------------------------------------------- feed files
say "feed pipeline: gatehouse feed verify on every real file"
FEEDS=$ROOT/../shared/testdata/feeds
q "$G" feed keygen --out "$W/feedkey" --unencrypted
FEEDPUB=$(grep -v '^untrusted' "$W/feedkey.pub" | head -1)
FEEDLIST=""
for f in "$FEEDS"/*; do
	[ -z "$ONLY" ] || break
	b=$(basename "$f")
	case $b in
	aws-*) fmt=aws ;; azure-*) fmt=azure ;; gcp-*) fmt=gcp ;; oracle-*) fmt=oracle ;; cloudflare-*) fmt=cidr ;; *) continue ;;
	esac
	d=$W/feed-$b
	mkdir -p "$d"
	cp "$f" "$d/"
	if ! "$G" feed sign --dir "$d" --key "$W/feedkey.key" --source bench --format "$fmt" "$b" >"$LOGS/feed-$b.log" 2>&1; then
		raw "fail/feed/$b" "$(logtail "$LOGS/feed-$b.log" 2)"
		continue
	fi
	FEEDLIST="$FEEDLIST $b"
	for r in 1 2 3; do
		t=$( { TIMEFORMAT='%R %U %S'; time taskset -c $SRV_CPU "$G" feed verify --name bench --format "$fmt" --key "$FEEDPUB" "$d" \
			>"$LOGS/feed-$b.verify" 2>&1; } 2>&1 ) || { raw "fail/feed/$b" "$(logtail "$LOGS/feed-$b.verify" 2)"; break; }
		read -r real user sys <<<"$t"
		raw "feed/$b/ms" "$(awk -v x="$real" 'BEGIN{print x*1000}')"
		raw "feed/$b/cpu-ms" "$(awk -v u="$user" -v s="$sys" 'BEGIN{print (u+s)*1000}')"
	done
	raw "feed/$b/summary" "$(grep -io '[0-9,]* prefix[a-z]*' "$LOGS/feed-$b.verify" | head -2 | paste -sd' ' -)"
done

# ---------------------------------------------------------------- flood
# One fresh pair of namespaces per run, so no contender leaves hooks behind
# for the next: "flood" sends across a veth into "appliance". The sender
# generates the frames inside the kernel (bench/flood -mode live: an XDP
# program run with BPF_PROG_RUN in live-frames mode, XDP_TX out of its
# veth), pinned to core $CLI_CPU. The receiving veth runs its NAPI poll in
# a kernel thread (threaded NAPI; GRO on gives the veth NAPI without an XDP
# program), pinned to core $SRV_CPU and raised to SCHED_FIFO so the load
# of the machine does not decide when it runs: everything the receiver
# does with a frame (XDP, or skb, conntrack, nftables or iptables) is that
# thread's CPU time, read from its schedstat. What it cannot take in time
# overflows the veth's ring and is counted there, never by the filter.
FLOOD_MODE=${FLOOD_MODE:-live}    # live (in-kernel sender) or packet (AF_PACKET, the old sender)
FLOOD_RT=${FLOOD_RT:-1}           # 0: leave the receiver's NAPI thread at normal priority
BPFFS=$W/bpffs
mkdir -p "$BPFFS"
mount -t bpf bpf "$BPFFS"
MOUNTS+=("$BPFFS")

metric() { # NS NAME-AND-LABELS…: a counter from the daemon's /metrics
	local ns=$1
	shift
	local out
	out=$(ip netns exec "$ns" curl -sf --max-time 5 http://127.0.0.1:9477/metrics) || true
	awk -v want="$*" 'BEGIN{n=split(want, w, " ")} /^#/{next} {ok=1; for(i=1;i<=n;i++) if(index($1, w[i])==0) ok=0; if(ok){s+=$2}} END{printf "%.0f\n", s}' <<<"$out"
}
ipt_count() {
	local out
	out=$(ip netns exec "$1" "$2" -t raw -L PREROUTING -n -v -x) || true
	awk 'NR==3{v=$1} END{print v+0}' <<<"$out"
}
# vstat NS DEV NAME: one of the veth's ethtool counters (0 when absent).
vstat() { ip netns exec "$1" ethtool -S "$2" 2>/dev/null | awk -v k="$3:" '$1==k{v=$2} END{print v+0}'; }
# oncpu TID: nanoseconds the thread ran, from its schedstat.
oncpu() { awk '{print $1}' "/proc/$1/schedstat" 2>/dev/null || echo 0; }

# dropcount C NS DEV LINE: what contender C counted as dropped so far.
dropcount() {
	case $1 in
	xdp) metric "$2" gatehouse_xdp_packets_total 'action="drop"' 'reason="not_admitted"' ;;
	nft) metric "$2" gatehouse_nft_packets_total 'rule="not_admitted"' ;;
	floor) vstat "$2" "$3" rx_queue_0_xdp_drops ;; # it drops every frame it sees
	*) ipt_count "$2" "$1" ;;
	esac
}

flood_run() { # CONTENDER ROUND
	local c=$1 r=$2 fl=ghb-$$-flood ap=ghb-$$-appliance rv=gh$$r mac cfg gpid="" before after line sent secs ok=1 tid ns0 ns1 ov0 ov1 d cpu
	newns "$fl"
	newns "$ap"
	ip -n "$fl" link add name vf type veth peer name "$rv" netns "$ap"
	ip -n "$ap" addr add 192.0.2.1/24 dev "$rv"
	ip netns exec "$ap" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	ip netns exec "$ap" ethtool -K "$rv" gro on >/dev/null
	ip netns exec "$ap" ip link set dev "$rv" up
	ip -n "$ap" route add 198.51.100.0/24 dev "$rv"
	ip netns exec "$fl" ip link set dev vf up
	mac=$(ip netns exec "$ap" cat "/sys/class/net/$rv/address")
	# The receiver's NAPI thread, named napi/<dev>-<id>.
	tid=""
	if ip netns exec "$ap" sh -c "echo 1 >/sys/class/net/$rv/threaded" 2>>"$LOGS/flood-$c-$r.err"; then
		tid=$(ps -eLo tid=,comm= | awk -v n="napi/$rv-" 'index($2, n)==1{print $1; exit}')
	fi
	if [ -z "$tid" ]; then
		ok=0
		echo "no NAPI thread for $rv (threaded NAPI on a veth needs Linux 5.12 or later)" >>"$LOGS/flood-$c-$r.err"
	else
		taskset -p -c $SRV_CPU "$tid" >/dev/null
		[ "$FLOOD_RT" = 1 ] && chrt -f -p 50 "$tid"
	fi
	cfg=$W/flood-$c.yaml
	case $ok:$c in
	1:xdp | 1:nft)
		rm -rf "${BPFFS:?}/$c-$r"
		if [ "$c" = xdp ]; then gatehouse_config "$cfg" native false "$rv" "$BPFFS/$c-$r"; else gatehouse_config "$cfg" off true "$rv" "$BPFFS/$c-$r"; fi
		bg "flood-$c-$r-gatehouse" ip netns exec "$ap" taskset -c $CLI_CPU "$G" run -c "$cfg"
		gpid=$LAST
		for _ in $(seq 100); do
			ip netns exec "$ap" curl -sf --max-time 1 http://127.0.0.1:9477/readyz >/dev/null 2>&1 && break
			kill -0 "$gpid" 2>/dev/null || break
			sleep 0.2
		done
		ip netns exec "$ap" curl -sf --max-time 1 http://127.0.0.1:9477/readyz >/dev/null 2>&1 || ok=0
		;;
	1:floor)
		ip netns exec "$ap" ip link set dev "$rv" xdp obj "$OUT/xdpdrop.o" sec xdp >>"$LOGS/flood-$c-$r.err" 2>&1 || ok=0
		;;
	1:iptables-nft | 1:iptables-legacy)
		ip netns exec "$ap" "$c" -t raw -A PREROUTING -p tcp --dport 443 ! -s 203.0.113.0/24 -j DROP \
			>>"$LOGS/flood-$c-$r.err" 2>&1 || ok=0
		;;
	esac
	if [ "$ok" = 0 ]; then
		say "flood $c round $r: the filter did not start"
		raw "fail/flood/$c" "$(logtail "$LOGS/flood-$c-$r-gatehouse.err" 4)$(logtail "$LOGS/flood-$c-$r.err" 4)"
	else
		before=$(dropcount "$c" "$ap" "$rv")
		ov0=$(vstat "$fl" vf tx_queue_0_xdp_xmit_errors)
		ns0=$(oncpu "$tid")
		line=$(ip netns exec "$fl" timeout $((FLOOD_SECS + 30)) taskset -c $CLI_CPU "$OUT/flood" -mode "$FLOOD_MODE" -if vf -dstmac "$mac" \
			-count "$FLOOD_COUNT" -dur "${FLOOD_SECS}s" 2>"$LOGS/flood-$c-$r.sender.err") || true
		ns1=$(oncpu "$tid")
		ov1=$(vstat "$fl" vf tx_queue_0_xdp_xmit_errors)
		sleep 0.5 # the daemon's counters are read from the kernel on scrape
		after=$(dropcount "$c" "$ap" "$rv")
		sent=$(kv "$line" sent)
		secs=$(kv "$line" secs)
		d=$((after - before))
		cpu=$((ns1 - ns0))
		if [ -z "$sent" ] || [ "$sent" = 0 ]; then
			raw "fail/flood/$c" "sender: $(logtail "$LOGS/flood-$c-$r.sender.err" 3)"
		elif [ "$d" -le 0 ] || [ "$cpu" -le 0 ]; then
			raw "fail/flood/$c" "nothing dropped ($d) or no receiver CPU ($cpu ns) of $sent frames sent"
		else
			raw "flood/$c/sent-pps" "$(kv "$line" pps)"
			raw "flood/$c/drop-pps" "$(awk -v d="$d" -v t="$secs" 'BEGIN{print d/t}')"
			raw "flood/$c/dropped-share" "$(awk -v d="$d" -v s="$sent" 'BEGIN{print d/s}')"
			raw "flood/$c/ring-share" "$(awk -v o=$((ov1 - ov0)) -v s="$sent" 'BEGIN{print o/s}')"
			raw "flood/$c/cpu-ns-pkt" "$(awk -v c="$cpu" -v d="$d" 'BEGIN{print c/d}')"
			raw "flood/$c/drops-per-core-s" "$(awk -v c="$cpu" -v d="$d" 'BEGIN{print d*1e9/c}')"
			raw "flood/$c/cpu" "$(awk -v c="$cpu" -v t="$secs" 'BEGIN{print c/1e9/t}')"
			say "flood $c round $r: $line dropped=$d receiver-cpu=${cpu}ns ring-overflow=$((ov1 - ov0))"
		fi
	fi
	if [ -n "$gpid" ]; then
		stop_pid "$gpid"
		ip netns exec "$ap" "$G" teardown --yes -c "$cfg" >>"$LOGS/flood-$c-$r-teardown.log" 2>&1 || true
	fi
	delns "$fl"
	delns "$ap"
	rm -rf "${BPFFS:?}/$c-$r"
}

[ -z "$ONLY" ] || grep -qw flood <<<"$ONLY" || FLOODERS=""
say "flood: $FLOODERS × $ROUNDS rounds, $FLOOD_COUNT frames or ${FLOOD_SECS}s each"
for r in $(seq "$ROUNDS"); do
	for c in $FLOODERS; do flood_run "$c" "$r"; done
done

# ---------------------------------------------------------------- TLS servers
NS=ghb-$$-tls
newns "$NS"
inns() { ip netns exec "$NS" "$@"; }
bg backend ip netns exec "$NS" taskset -c $CLI_CPU "$LG" serve -addr 127.0.0.1:8080
BACKEND_PID=$LAST
bg sink ip netns exec "$NS" taskset -c $CLI_CPU "$LG" sink -addr 127.0.0.1:8081
wait_port "$NS" 8080 10 "$BACKEND_PID" || { echo "backend did not start: $(logtail "$LOGS/backend.err")" >&2; exit 1; }
wait_port "$NS" 8081 10 "$LAST" || { echo "sink did not start: $(logtail "$LOGS/sink.err")" >&2; exit 1; }
bg echoserve ip netns exec "$NS" taskset -c $CLI_CPU "$LG" echoserve -addr 127.0.0.1:8082
wait_port "$NS" 8082 10 "$LAST" || { echo "echo backend did not start: $(logtail "$LOGS/echoserve.err")" >&2; exit 1; }

SUITES=TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
mkdir -p "$W/nginx/tmp" "$W/haproxy" "$W/stunnel"

gatehouse_config "$W/gatehouse.yaml" off false "" "$BPFFS/tls"
cat >"$W/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
    ssl-default-bind-ciphersuites $SUITES
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always
frontend https
    bind 127.0.0.1:8444 ssl crt $P/server-combined.pem ca-file $CA verify required alpn http/1.1
    default_backend be
frontend h2
    bind 127.0.0.1:8448 ssl crt $P/server-combined.pem ca-file $CA verify required alpn h2
    default_backend be
backend be
    server backend 127.0.0.1:8080
EOF
cat >"$W/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
error_log $W/nginx/error.log warn;
pid $W/nginx/nginx.pid;
events { worker_connections $MAXCONN; }
http {
    access_log off;
    client_body_temp_path $W/nginx/tmp/body;
    proxy_temp_path $W/nginx/tmp/proxy;
    fastcgi_temp_path $W/nginx/tmp/fastcgi;
    uwsgi_temp_path $W/nginx/tmp/uwsgi;
    scgi_temp_path $W/nginx/tmp/scgi;
    upstream be { server 127.0.0.1:8080; keepalive 64; }
    server {
        listen 127.0.0.1:8445 ssl;
        server_name bench.example;
        ssl_certificate $P/server.pem;
        ssl_certificate_key $P/server.key;
        ssl_client_certificate $CA;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }
    }
    # The same server speaking HTTP/2 (the h2 rows).
    server {
        listen 127.0.0.1:8447 ssl http2;
        server_name bench.example;
        ssl_certificate $P/server.pem;
        ssl_certificate_key $P/server.key;
        ssl_client_certificate $CA;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
        http2_max_requests 1000000;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }
    }
}
stream {
    server {
        listen 127.0.0.1:8453 ssl;
        ssl_certificate $P/server.pem;
        ssl_certificate_key $P/server.key;
        ssl_client_certificate $CA;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        proxy_pass 127.0.0.1:8082;
    }
}
EOF
# stunnel has no HTTP mode: it is compared in TCP mode (a blind TLS tunnel).
cat >"$W/stunnel/stunnel.conf" <<EOF
foreground = yes
pid =
output = $LOGS/stunnel.log
debug = warning
[https]
accept = 127.0.0.1:8446
connect = 127.0.0.1:8080
cert = $P/server.pem
key = $P/server.key
CAfile = $CA
requireCert = yes
verifyChain = yes
sslVersionMin = TLSv1.2
ciphersuites = $SUITES
[stream]
accept = 127.0.0.1:8451
connect = 127.0.0.1:8081
cert = $P/server.pem
key = $P/server.key
CAfile = $CA
requireCert = yes
verifyChain = yes
sslVersionMin = TLSv1.2
ciphersuites = $SUITES
[echo]
accept = 127.0.0.1:8454
connect = 127.0.0.1:8082
cert = $P/server.pem
key = $P/server.key
CAfile = $CA
requireCert = yes
verifyChain = yes
sslVersionMin = TLSv1.2
ciphersuites = $SUITES
EOF

declare -A PORT=([gatehouse]=8443 [haproxy]=8444 [nginx]=8445 [stunnel]=8446)
# HTTP/2: gatehouse offers h2 on its https listener; stunnel is a blind TCP
# tunnel to an HTTP/1.1 backend and has no h2 row.
declare -A H2PORT=([gatehouse]=8443 [haproxy]=8448 [nginx]=8447)
declare -A SPID=()
declare -A MODE=([gatehouse]="HTTP" [haproxy]="HTTP" [nginx]="HTTP" [stunnel]="TCP")
SERVERS="gatehouse haproxy nginx stunnel"
[ -z "$ONLY" ] || [ -n "$TLSMODES" ] || SERVERS="" # ONLY=flood: no TLS rows
start_server() {
	local s=$1
	case $s in
	gatehouse) bg gatehouse ip netns exec "$NS" taskset -c $SRV_CPU "$G" run -c "$W/gatehouse.yaml" ;;
	haproxy) bg haproxy ip netns exec "$NS" taskset -c $SRV_CPU haproxy -db -f "$W/haproxy/haproxy.cfg" ;;
	nginx) bg nginx ip netns exec "$NS" taskset -c $SRV_CPU nginx -e "$W/nginx/error.log" -p "$W/nginx" -c "$W/nginx/nginx.conf" -g 'daemon off;' ;;
	stunnel) bg stunnel ip netns exec "$NS" taskset -c $SRV_CPU stunnel4 "$W/stunnel/stunnel.conf" ;;
	esac
	SPID[$s]=$LAST
	if ! wait_port "$NS" "${PORT[$s]}" 15 "$LAST"; then
		say "$s did not start"
		local extra=""
		[ "$s" = nginx ] && extra=$(logtail "$W/nginx/error.log" 4)
		[ "$s" = stunnel ] && extra=$(logtail "$LOGS/stunnel.log" 4)
		raw "fail/tls/$s" "$(logtail "$LOGS/$s.err" 4) $extra"
		cp "$W/nginx/error.log" "$LOGS/nginx-error.log" 2>/dev/null || true
		stop_pid "$LAST"
		unset "SPID[$s]"
	fi
}
say "starting TLS servers on core $SRV_CPU"
for s in $SERVERS; do start_server "$s"; done
if [ -n "${SPID[gatehouse]:-}" ]; then wait_port "$NS" 8450 10 "${SPID[gatehouse]}" || true; fi

# load SERVER MODE [PORT]: one load-generator run against a server; records
# rate, MiB/s, server CPU share, p50/p99 and steal under tls/<mode>/<server>/….
load() {
	local s=$1 m=$2 port=${3:-${PORT[$1]}} pid=${SPID[$1]:-} conc line key
	[ -n "$pid" ] || return 0
	if [ "$m" = h2 ]; then
		[ -n "${H2PORT[$s]:-}" ] || return 0
		port=${H2PORT[$s]}
	fi
	case $m in hs) conc=8 ;; ka | h2 | echo) conc=4 ;; *) conc=2 ;; esac
	key=tls/$m/$s
	if ! line=$(inns timeout $((DUR + 60)) taskset -c $CLI_CPU "$LG" "$m" -target "127.0.0.1:$port" -cert "$CERT1" -key "$KEY1" \
		-ca "$SCA" -dur "${DUR}s" -conc "$conc" -pids "$(tree "$pid")" 2>>"$LOGS/loadgen-$s.err"); then
		raw "fail/$key" "loadgen: $(logtail "$LOGS/loadgen-$s.err" 2)"
		return 0
	fi
	say "$s $m: $line"
	printf '%s\t%s\n' "$key" "$line" >>"$W/runs.txt"
	[ "$(kv "$line" errors)" = 0 ] || raw "errors/$key" "$(kv "$line" errors)"
	raw "tls/$key/tls" "$(kv "$line" tls)"
}

# pick KEY FIELD: the median of FIELD over the runs of KEY, leaving out runs
# whose steal share was above MAX_STEAL when at least two cleaner ones exist.
pick() {
	local clean
	clean=$(awk -F'\t' -v k="$1" -v m="$MAX_STEAL" '$1==k && match($2, /steal=[0-9.]+/) && substr($2, RSTART+6, RLENGTH-6)+0 <= m' "$W/runs.txt" | wc -l)
	awk -F'\t' -v k="$1" -v f="$2" -v m="$MAX_STEAL" -v c="$clean" '$1==k {
		n=split($2, a, " "); v=""; st=0
		for(i=1;i<=n;i++){split(a[i], p, "="); if(p[1]==f) v=p[2]; if(p[1]=="steal") st=p[2]+0}
		if(v!="" && (c<2 || st<=m)) print v }' "$W/runs.txt" | median
}
: >"$W/runs.txt"

say "mTLS termination: $SERVERS × $ROUNDS rounds × ($TLSMODES), ${DUR}s each"
ORDER=($SERVERS)
for r in $(seq "$ROUNDS"); do
	for m in $TLSMODES; do
		for ((i = 0; i < ${#ORDER[@]}; i++)); do
			load "${ORDER[(i + r - 1) % ${#ORDER[@]}]}" "$m"
		done
	done
	[ "$(left)" -gt 300 ] || { say "time budget: stopping the TLS rounds after round $r"; break; }
done

# ---------------------------------------------------------------- stream proxy
declare -A STREAMPORT=([gatehouse]=8450 [stunnel]=8451)
say "TLS stream to a sink: gatehouse tcp listener vs stunnel"
for r in $(seq "$ROUNDS"); do
	[ -z "$ONLY" ] || break
	for s in gatehouse stunnel; do load "$s" stream "${STREAMPORT[$s]}"; done
done
# Keys for the stream runs.
sed -i 's#^tls/stream/#stream/#' "$W/runs.txt"

# ---------------------------------------------------------------- terminal echo
# The terminal pattern: 256 bytes over TLS, echoed by the backend, the
# next only after the echo. gatehouse's tcp listener against nginx's
# stream module and stunnel, then the system calls each makes per round
# trip (bench/strace-count.sh, strace -c on every thread, a fixed count).
declare -A ECHOPORT=([gatehouse]=8452 [nginx]=8453 [stunnel]=8454)
ECHO_SERVERS="gatehouse nginx stunnel"
[ -n "$SERVERS" ] || ECHO_SERVERS=""
ECHO_COUNT=${ECHO_COUNT:-20000}
say "TLS echo round trips: $ECHO_SERVERS × $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
	for s in $ECHO_SERVERS; do load "$s" echo "${ECHOPORT[$s]}"; done
done
for s in $ECHO_SERVERS; do
	pid=${SPID[$s]:-}
	[ -n "$pid" ] || continue
	if sc=$("$BENCH/strace-count.sh" "$ECHO_COUNT" "$(tree "$pid")" -- ip netns exec "$NS" taskset -c $CLI_CPU "$LG" echo \
		-target "127.0.0.1:${ECHOPORT[$s]}" -cert "$CERT1" -key "$KEY1" -ca "$SCA" -dur 120s -warm 0 -conc 1 -max "$ECHO_COUNT" 2>>"$LOGS/syscalls-$s.err"); then
		raw "syscalls/$s" "$sc"
		say "syscalls $s: $sc"
	else
		raw "fail/syscalls/$s" "$(logtail "$LOGS/syscalls-$s.err" 2)"
	fi
done

for want in $IDLE_SESSIONS; do
	n=$(( want < MAXCONN ? want : MAXCONN ))
	for s in gatehouse stunnel; do
		pid=${SPID[$s]:-}
		[ -n "$pid" ] || continue
		[ "$(left)" -gt 120 ] || { say "time budget: skipping idle sessions"; break 2; }
		sleep 2
		rss0=$(rss_kib "$pid")
		bg "idle-$s-$n" ip netns exec "$NS" taskset -c $CLI_CPU "$LG" idle -target "127.0.0.1:${STREAMPORT[$s]}" -cert "$CERTS" -key "$KEYS" -ca "$SCA" -n "$n"
		ipid=$LAST
		for _ in $(seq 900); do
			grep -q '^ready' "$LOGS/idle-$s-$n.out" 2>/dev/null && break
			kill -0 "$ipid" 2>/dev/null || break
			sleep 0.1
		done
		held=$(awk '/^ready/{print $2}' "$LOGS/idle-$s-$n.out" 2>/dev/null)
		if [ -z "$held" ] || [ "$held" = 0 ]; then
			raw "fail/idle/$s/$want" "$(logtail "$LOGS/idle-$s-$n.err" 2)"
		else
			sleep 2
			rss1=$(rss_kib "$pid")
			raw "idle/$s/$want/held" "$held of $n"
			raw "idle/$s/$want/kib" "$(awk -v a="$rss0" -v b="$rss1" -v n="$held" 'BEGIN{print (b-a)/n}')"
			raw "idle/$s/$want/rss-mib" "$(awk -v b="$rss1" 'BEGIN{print b/1024}')"
			say "idle $s $n: held $held, RSS $rss0 → $rss1 KiB"
		fi
		stop_pid "$ipid"
	done
done

# A server that died during the run is reported with its log.
for s in $SERVERS; do
	[ -n "${SPID[$s]:-}" ] || continue
	if ! kill -0 "${SPID[$s]}" 2>/dev/null; then
		wait "${SPID[$s]}" 2>/dev/null && rc=0 || rc=$?
		say "$s exited during the run (status $rc)"
		extra=""
		[ "$s" = nginx ] && extra=$(logtail "$W/nginx/error.log" 3)
		[ "$s" = stunnel ] && extra=$(logtail "$LOGS/stunnel.log" 3)
		raw "died/$s" "exited during the run with status $rc (after: $(tail -n 1 "$W/runs.txt" | cut -f1)): $(logtail "$LOGS/$s.err" 3) $extra"
	fi
	stop_pid "${SPID[$s]}"
done
cp "$W/nginx/error.log" "$LOGS/nginx-error.log" 2>/dev/null || true
stop_pid "$BACKEND_PID"
BACKEND_CONNS=$(sed -n 's/^backend connections=//p' "$LOGS/backend.err")

S1=$(stealnow)
STEAL_AFTER=$(steal_sample)
STEAL_RUN=$(awk -v a="$S0" -v b="$S1" 'BEGIN{split(a,x," "); split(b,y," "); d=y[1]-x[1]; v=0; if(d>0) v=100*(y[2]-x[2])/d; printf("%.0f", v)}')

# ---------------------------------------------------------------- the table
say "writing $RESULTS"
fails() { awk -F'\t' -v k="fail/$1" 'index($1, k)==1{print $2}' "$RAW" | head -1; }
ROWS=$W/rows.md
: >"$ROWS"
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@" >>"$ROWS"; }

# 1. XDP per packet
for fam in v4 v6; do
	for n in 1k 10k 100k; do
		k="go/BenchmarkLookup/$fam/$n"
		f=$(med "$k/ns/pkt")
		l=$(med "$k/lpm-ns/pkt")
		row "XDP per packet" "$fam, $n prefixes: gatehouse lookup vs plain LPM trie" "$(num "$f" 1) ns vs $(num "$l" 1) ns" \
			"$(ratio "$l" "$f" 1) faster" "goal ≤ 40 ns (v4 100k), ≤ 70 ns (v6 100k), ≥ 3×" \
			"BPF_PROG_TEST_RUN, whole program (parse, verdict, counter), median; 32 packets rotated, 16 admitted ($(num "$(med "$k/hit-ns/pkt")" 1) ns) and 16 not ($(num "$(med "$k/miss-ns/pkt")" 1) ns); an empty program on the same packets in the same iterations: $(num "$(med "$k/empty-ns/pkt")" 1) ns"
	done
done
e=$(med "go/BenchmarkEmpty/ns/pkt")
a=$(med "go/BenchmarkEmpty/arp-ns/pkt")
f100=$(med "go/BenchmarkLookup/v4/100k/ns/pkt")
row "XDP per packet" "limit: empty XDP program (return XDP_PASS)" "$(num "$e" 1) ns" "v4 100k = $(ratio "$f100" "$e" 1) the empty program" "" "gatehouse on an ARP frame (parse + counter): $(num "$a" 1) ns"
if [ -n "$(fails go/bpf)" ]; then row "XDP per packet" "bpf benchmarks" "FAILED" "" "" "$(fails go/bpf)"; fi

# 2. flood
xper=$(med flood/xdp/drops-per-core-s)
for c in $FLOODERS; do
	d=$(med "flood/$c/drop-pps")
	if [ -z "$d" ]; then
		row "Drop under flood" "$c" "did not run" "" "" "$(fails "flood/$c")"
		continue
	fi
	per=$(med "flood/$c/drops-per-core-s")
	case $c in
	floor) label="floor: a bare XDP_DROP program (bench/xdpdrop), native on the veth" ;;
	xdp) label="gatehouse XDP filter (gatehouse run, nftables off, native on the veth)" ;;
	nft) label="gatehouse nftables table alone (gatehouse run, XDP off)" ;;
	iptables-nft) label="iptables raw PREROUTING DROP ($(iptables-nft -V | awk '{print $2, $3}'))" ;;
	iptables-legacy) label="iptables raw PREROUTING DROP ($(iptables-legacy -V | awk '{print $2, $3}'))" ;;
	esac
	vs=""
	case $c in
	floor) vs="the veth's own receive cost (ring, frame return) is in every row" ;;
	xdp) vs="$(frac "$xper" "$(med flood/floor/drops-per-core-s)") of the bare XDP_DROP per core-s (goal ≥ 80 %)" ;;
	*) vs="XDP drops $(ratio "$xper" "$per" 2) this per core-s (goal ≥ 5× nftables)" ;;
	esac
	row "Drop under flood" "$label" \
		"$(num "$(awk -v x="$d" 'BEGIN{print x/1e6}')" 2) Mpps dropped of $(num "$(awk -v x="$(med "flood/$c/sent-pps")" 'BEGIN{print x/1e6}')" 2) Mpps sent ($(num "$(awk -v x="$(med "flood/$c/ring-share")" 'BEGIN{print 100*x}')" 0) % overflowed the veth ring)" \
		"$(num "$(med "flood/$c/cpu-ns-pkt")" 0) CPU-ns/pkt on the receiver's core, $(num "$(awk -v x="$per" 'BEGIN{print x/1e6}')" 2) M drops per core-s (receiver $(num "$(med "flood/$c/cpu")" 2) cores)" "$vs" \
		"SYNs to :443 from 64 non-admitted sources; sender: bench/flood -mode $FLOOD_MODE (BPF_PROG_RUN live frames, XDP_TX) on core $CLI_CPU; receiver: the veth's threaded NAPI poll on core $SRV_CPU$([ "$FLOOD_RT" = 1 ] && echo ", SCHED_FIFO"), its CPU from schedstat; ≤ $FLOOD_COUNT frames or ${FLOOD_SECS}s"
done

# 3. policy apply
row "Policy apply" "XDP: 100k v4 + 20k v6 prefixes, encode + new map + swap" "$(num "$(med go/BenchmarkApply/ms/apply)" 0) ms" "" "" "bpf BenchmarkApply (random aggregated prefixes)"
nf=$(med go/BenchmarkNftFileFull/ms/apply)
nd=$(med go/BenchmarkNftFileDiff/ms/apply)
row "Policy apply" "nftables: full table with 100k v4 prefixes vs nft -f of the set alone" "$(num "$(med go/BenchmarkApplyFull/ms/apply)" 0) ms vs $(num "$nf" 0) ms" \
	"nft -f takes $(ratio "$nf" "$(med go/BenchmarkApplyFull/ms/apply)") as long" "" "enforcer/nft benchmarks: 100k random prefixes, one netlink batch. The real Azure file aggregates to $(num "$(med go/BenchmarkAzure/all/prefixes)") prefixes (Feed pipeline rows), so 100k is synthetic"
row "Policy apply" "nftables: 1 % diff of 100k vs nft -f add/delete element" "$(num "$(med go/BenchmarkApplyDiff/ms/apply)" 1) ms vs $(num "$nd" 1) ms" \
	"nft -f takes $(ratio "$nd" "$(med go/BenchmarkApplyDiff/ms/apply)" 0) as long" "" "nft -f of a few hundred add/delete element lines into a 100k interval set, run once"
if [ -n "$(fails go/enforcer)" ]; then row "Policy apply" "nft benchmarks" "FAILED" "" "" "$(fails go/enforcer)"; fi

# 4. mTLS
row "Machine limit" "OpenSSL $(openssl version | awk '{print $2}'), one core" "ECDSA P-256 $(num "$OSSL_SIGN") sign/s, $(num "$OSSL_VERIFY") verify/s; X25519 $(num "$OSSL_X25519")/s; AES-128-GCM $(num "$OSSL_AES_MIB") MiB/s" \
	"server mTLS handshake bound: $(num "$OSSL_HS")/s" "" "bound = 1/(1/sign + 2/verify + 2/X25519): the server's share of a TLS 1.3 handshake with a client certificate"
gl=$(med go/BenchmarkHandshakeServer/x25519/handshakes/cpu-s)
row "Machine limit" "Go crypto/tls server handshake, X25519, 4 clients on core $CLI_CPU" "$(num "$gl") handshakes per core-second" "$(frac "$gl" "$OSSL_HS") of the OpenSSL bound" "" \
	"certs BenchmarkHandshakeServer (default curves: $(num "$(med go/BenchmarkHandshakeServer/default/handshakes/cpu-s)")/core-s)"
if [ -n "$(fails go/certs)" ]; then row "Machine limit" "certs benchmarks" "FAILED" "" "" "$(fails go/certs)"; fi
for m in $TLSMODES; do
	case $m in
	hs) what="new mTLS handshakes/s (1 KiB, Connection: close, 8 clients)" unit="/s" f=rate lim=$OSSL_HS ;;
	ka) what="keep-alive GET 1 KiB, 4 connections" unit=" req/s" f=rate lim="" ;;
	h2) what="HTTP/2 GET 1 KiB, 4 connections, 1 stream each" unit=" req/s" f=rate lim="" ;;
	bulk) what="bulk GET 1 MiB, 2 connections" unit=" MiB/s" f=mibps lim=$OSSL_AES_MIB ;;
	esac
	best="" bestper="" bestp99=""
	for s in haproxy nginx stunnel; do
		v=$(pick "tls/$m/$s" "$f")
		cpu=$(pick "tls/$m/$s" cpu)
		if [ -n "$v" ]; then
			best=$(awk -v a="$best" -v b="$v" 'BEGIN{if(a=="" || b+0 > a+0) a=b; print a}')
			per=$(awk -v v="$v" -v c="$cpu" 'BEGIN{if(c>0) print v/c}')
			[ -n "$per" ] && bestper=$(awk -v a="$bestper" -v b="$per" 'BEGIN{if(a=="" || b+0 > a+0) a=b; print a}')
			p99=$(pick "tls/$m/$s" p99us)
			[ -n "$p99" ] && bestp99=$(awk -v a="${bestp99:-}" -v b="$p99" 'BEGIN{if(a=="" || b+0 < a+0) a=b; print a}')
		fi
	done
	for s in $SERVERS; do
		[ "$m" != h2 ] || [ -n "${H2PORT[$s]:-}" ] || continue
		if [ -z "$(pick "tls/$m/$s" "$f")" ]; then
			row "mTLS $m" "$s (${MODE[$s]} mode)" "did not run" "" "" "$(fails "tls/$s")$(fails "tls/$m/$s")"
			continue
		fi
		v=$(pick "tls/$m/$s" "$f")
		cpu=$(pick "tls/$m/$s" cpu)
		per=$(awk -v v="$v" -v c="$cpu" 'BEGIN{if(c>0) print v/c}')
		lat=""
		[ "$m" = ka ] || [ "$m" = h2 ] && lat=", p50 $(num "$(pick "tls/$m/$s" p50us)") µs, p99 $(num "$(pick "tls/$m/$s" p99us)") µs"
		note="$(awk -F'\t' -v k="tls/tls/$m/$s/tls" '$1==k{print $2; exit}' "$RAW")"
		errs=$(awk -F'\t' -v k="errors/tls/$m/$s" '$1==k{s+=$2} END{if(s) print s}' "$RAW")
		[ -n "$errs" ] && note="$note; $errs failed requests: $(logtail "$LOGS/loadgen-$s.err" 1)"
		vs=""
		[ "$s" = gatehouse ] && vs="$(ratio "$v" "$best") the best peer's rate, $(ratio "$per" "$bestper") its rate per core-s"
		[ -n "$lim" ] && vs="${vs:+$vs; }$(frac "$per" "$lim") of the machine limit"
		if [ "$s" = gatehouse ] && [ "$m" = hs ]; then vs="$vs, $(frac "$per" "$gl") of Go's own handshake limit"; fi
		if [ "$s" = gatehouse ] && { [ "$m" = ka ] || [ "$m" = h2 ]; }; then
			vs="$vs; p99 $(ratio "$(pick "tls/$m/$s" p99us)" "$bestp99") the lowest peer p99"
			# The goal of issue 21 is against nginx: rate per core-s ≥ 1×, p99 ≤ 1.5×.
			nper=$(awk -v v="$(pick "tls/$m/nginx" "$f")" -v c="$(pick "tls/$m/nginx" cpu)" 'BEGIN{if(c>0) print v/c}')
			vs="$vs; ÷ nginx: $(ratio "$per" "$nper") per core-s, p99 $(ratio "$(pick "tls/$m/$s" p99us)" "$(pick "tls/$m/nginx" p99us)")"
		fi
		row "mTLS $m" "$s (${MODE[$s]} mode): $what" "$(num "$v")$unit$lat" "CPU $(num "$cpu" 2) cores, $(num "$per")$unit per core-s" "$vs" "$note"
	done
done

# 5. stream
for s in gatehouse stunnel; do
	v=$(pick "stream/$s" mibps)
	if [ -z "$v" ]; then
		row "TLS stream" "$s" "did not run" "" "" "$(fails "tls/$s")$(fails "tls/stream/$s")"
		continue
	fi
	cpu=$(pick "stream/$s" cpu)
	vs=""
	[ "$s" = gatehouse ] && vs="$(ratio "$(awk -v v="$v" -v c="$cpu" 'BEGIN{if(c>0) print v/c}')" "$(awk -v v="$(pick stream/stunnel mibps)" -v c="$(pick stream/stunnel cpu)" 'BEGIN{if(c>0) print v/c}')") stunnel per core-s (goal ≥ 1×)"
	row "TLS stream" "$s: TLS-terminated TCP stream to a sink (64 KiB writes)" "$(num "$v") MiB/s" \
		"CPU $(num "$cpu" 2) cores, $(num "$(awk -v v="$v" -v c="$cpu" 'BEGIN{if(c>0) print v/c}')") MiB/s per core-s" "$vs" \
		"gatehouse: listener protocol tcp (a blind tunnel, as stunnel does; the tn3270/tn5250 listeners add Telnet parsing, see proxy/telnet benchmarks); stunnel: same blind tunnel"
done
for s in nginx stunnel; do
	v=$(pick "tls/echo/$s" rate)
	c=$(pick "tls/echo/$s" cpu)
	[ -n "$v" ] && declare "echoper_$s=$(awk -v v="$v" -v c="$c" 'BEGIN{if(c>0) print v/c}')"
done
for s in $ECHO_SERVERS; do
	v=$(pick "tls/echo/$s" rate)
	if [ -z "$v" ]; then
		row "TLS echo" "$s" "did not run" "" "" "$(fails "tls/$s")$(fails "tls/echo/$s")"
		continue
	fi
	cpu=$(pick "tls/echo/$s" cpu)
	per=$(awk -v v="$v" -v c="$cpu" 'BEGIN{if(c>0) print v/c}')
	vs=""
	[ "$s" = gatehouse ] && vs="$(ratio "$per" "${echoper_nginx:-}") nginx stream per core-s (goal ≥ 1×), $(ratio "$per" "${echoper_stunnel:-}") stunnel"
	sc=$(awk -F'\t' -v k="syscalls/$s" '$1==k{print $2; exit}' "$RAW")
	note="listener protocol tcp (gatehouse), stream module (nginx), a service (stunnel), 4 connections"
	[ -n "$sc" ] && note="$note; system calls per round trip ($ECHO_COUNT on one connection, strace -c): $(kv "$sc" per) ($(cut -d' ' -f3- <<<"$sc"))"
	row "TLS echo" "$s: 256-byte echo round trips over TLS" "$(num "$v")/s, p50 $(num "$(pick "tls/echo/$s" p50us)") µs, p99 $(num "$(pick "tls/echo/$s" p99us)") µs" \
		"CPU $(num "$cpu" 2) cores, $(num "$per") per core-s" "$vs" "$note"
done
for n in $IDLE_SESSIONS; do
	for s in gatehouse stunnel; do
		k=$(med "idle/$s/$n/kib")
		if [ -z "$k" ]; then
			row "Idle sessions" "$s, $n sessions" "did not run" "" "" "$(fails "idle/$s/$n")"
			continue
		fi
		vs=""
		[ "$s" = gatehouse ] && vs="$(ratio "$k" "$(med "idle/stunnel/$n/kib")") stunnel's"
		row "Idle sessions" "$s, $n TLS sessions held open (each with its backend connection)" "$(num "$k" 1) KiB RSS per session" \
			"RSS $(num "$(med "idle/$s/$n/rss-mib")") MiB" "$vs" "held $(awk -F'\t' -v k="idle/$s/$n/held" '$1==k{print $2; exit}' "$RAW") (descriptor hard limit $NOFILE, two per proxied session)"
	done
done

awk -F'\t' 'index($1, "died/")==1{print substr($1, 6)"\t"$2}' "$RAW" | while IFS=$'\t' read -r s l; do
	row "Server exits" "$s" "exited during the run" "" "" "$l"
done

awk -F'\t' 'index($1, "crash/")==1{print substr($1, 7)"\t"$2}' "$RAW" | while IFS=$'\t' read -r s l; do
	row "Server exits" "$s" "crashed when stopped" "" "" "$l (figures above were taken before)"
done

# 6. feeds
row "Feed pipeline" "Azure (90,493 entries): signature + SHA-256 + strict parse + guards + aggregation" \
	"$(num "$(med go/BenchmarkAzure/all/ms/op)" 0) ms (all), $(num "$(med go/BenchmarkAzure/AzureCloud/ms/op)" 0) ms (AzureCloud)" \
	"$(num "$(med go/BenchmarkAzure/all/cpu-ms/op)" 0) CPU-ms, heap ≤ $(num "$(med go/BenchmarkAzure/all/MiB-heap-bound)") MiB" "" "rules BenchmarkAzure, $(num "$(med go/BenchmarkAzure/all/prefixes)") prefixes after aggregation"
if [ -n "$(fails go/rules)" ]; then row "Feed pipeline" "rules benchmarks" "FAILED" "" "" "$(fails go/rules)"; fi
for b in $FEEDLIST; do
	row "Feed pipeline" "gatehouse feed verify $b" "$(num "$(med "feed/$b/ms")") ms" "$(num "$(med "feed/$b/cpu-ms")") CPU-ms" "" \
		"whole command (process start included), median of 3; $(awk -F'\t' -v k="feed/$b/summary" '$1==k{print $2}' "$RAW")"
done
awk -F'\t' 'index($1, "fail/feed/")==1{print $1": "$2}' "$RAW" | while read -r l; do row "Feed pipeline" "${l%%:*}" "FAILED" "" "" "${l#*: }"; done

{
	echo "# gatehouse benchmarks"
	echo
	echo "Written by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') in $(( $(date +%s) - T0 )) s, tree $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)."
	echo "Machine: $(nproc) vCPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)," \
		"$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo); Go $(go env GOVERSION | sed 's/^go//');" \
		"steal $STEAL_BEFORE % before, $STEAL_AFTER % after, $STEAL_RUN % over the run."
	echo "Servers pinned to core $SRV_CPU, load generator, backend and flood sender to core $CLI_CPU; $ROUNDS interleaved rounds" \
		"(A B C D, rotated), ${DUR}s each, medians (rounds with steal above $(awk -v m="$MAX_STEAL" 'BEGIN{print 100*m}') % left out when two cleaner ones exist)." \
		"CPU is the server's utime+stime from /proc/<pid>/stat (nginx: master and worker); a rate per core-second is rate ÷ CPU."
	echo "Client: Go crypto/tls, ECDSA P-256 certificates from one client CA, TLS 1.3, X25519, no session resumption;" \
		"backend: Go net/http on loopback (it accepted ${BACKEND_CONNS:-?} connections in all)."
	echo
	echo "| area | measurement | figure | cost | ratio | note |"
	echo "|---|---|---|---|---|---|"
	if [ -n "$ONLY" ]; then grep -E '^\| (Drop under flood|mTLS|Server exits)' "$ROWS" || true; else cat "$ROWS"; fi
	# What follows the marker in the previous file (profiles written by
	# hand) is kept.
	if [ -f "$RESULTS" ] && grep -qxF "$KEEP_MARK" "$RESULTS"; then
		echo
		awk -v m="$KEEP_MARK" '$0 == m {k = 1} k' "$RESULTS"
	fi
} >"$RESULTS.new"
mv "$RESULTS.new" "$RESULTS"
say "done: $RESULTS"
