#!/usr/bin/env bash
# bench/core.sh: the core mirror benchmark, in one command.
#
#   bench/core.sh             # from the repository root (or anywhere)
#   PERF=1 bench/core.sh      # also profile regmirror with perf during the herd and the warm run
#
# It builds regmirror and bench/upstream, starts them on free loopback ports
# with temp dirs, and measures:
#   a. cold herd: CLIENTS curl clients start the same uncached blob at once
#   b. one cold client on a fresh data dir, for comparison
#   c. warm throughput: CLIENTS parallel clients x ROUNDS rounds from the cache,
#      and the same against the upstream and nginx (sendfile) for reference
#   d. regmirror's peak RSS (VmHWM) in the herd and in the warm run
# Settings (environment): SIZE (bytes, default 200000000), CLIENTS (8), ROUNDS (3).
# It exits non-zero if the mirror serves wrong bytes, errors, or downloads
# the blob from upstream more than once in a phase.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" # free_port, fetch, need, log …

SIZE=${SIZE:-200000000}
CLIENTS=${CLIENTS:-8}
ROUNDS=${ROUNDS:-3}
PERF=${PERF:-0}

bench_init bench


# start_mirror DATADIR LOGFILE: starts regmirror; sets MIRROR_PID and MIRROR_URL.
start_mirror() {
	local port
	port=$(free_port)
	REGMIRROR_ADDR=127.0.0.1:$port REGMIRROR_ADMIN_ADDR=off REGMIRROR_MIN_FREE=0 REGMIRROR_DATA_DIR=$1 REGMIRROR_UPSTREAM=$UP_URL \
		REGMIRROR_LOG_LEVEL=warn "$WORK/regmirror" 2>"$2" &
	MIRROR_PID=$!
	PIDS+=("$MIRROR_PID")
	MIRROR_URL=http://127.0.0.1:$port
	wait_http "$MIRROR_URL/v2/" "$MIRROR_PID" "$2"
}

stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# cpu_ticks PID: user+system CPU time of PID in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
cpu_secs() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'; }

# counts: the upstream's HEAD and GET counts of the blob, and of everything.
counts() {
	curl -sf "$UP_URL/_counts" | jq -r --arg p "/v2/library/big/blobs/$DIGEST" '
		"\(.["HEAD " + $p] // 0) \(.["GET " + $p] // 0) \([.[]] | add // 0) \(to_entries | map("\(.key)=\(.value)") | join(", "))"'
}
reset_counts() { curl -sf -X DELETE "$UP_URL/_counts" >/dev/null; }

# check N OUT WHAT: check_bodies against the SIZE-byte blob.
check() { check_bodies "$1" "$2" "$3" "$SIZE" "$DIGEST"; }

ROW='  %-24s %7s %-9s %7s %7s  %-18s %-11s %7s %6s\n'
cold_header() {
	# shellcheck disable=SC2059
	printf "$ROW" scenario clients bodies "wall s" "MB/s" "TTFB ms min/med/max" "up HEAD/GET" "CPU s" "RSS MB"
}

# cold NAME CLIENTS HASH KEEP: CLIENTS clients fetch the blob at once from a
# fresh regmirror on a fresh data dir. With KEEP=1 that mirror keeps running
# (PRIMED_PID, PRIMED_URL); otherwise it is stopped and its data dir removed.
cold() {
	local name=$1 n=$2 hash=$3 keep=$4 pid ns t0 t1 ok head get all detail bodies=discarded
	start_mirror "$WORK/data-$name" "$WORK/mirror-$name.log"
	pid=$MIRROR_PID
	reset_counts
	sync
	t0=$(cpu_ticks "$pid")
	if [ "$keep" = 1 ]; then
		perf_start "$pid" "$name"
	fi
	ns=$(fetch "$n" "$MIRROR_URL$BLOB_PATH" "$WORK/$name" "$hash")
	perf_stop
	PERF_PID=
	t1=$(cpu_ticks "$pid")
	ok=$(check "$n" "$WORK/$name" "$name")
	read -r head get all detail <<<"$(counts)"
	[ "$get" = 1 ] || fail "$name: upstream got $get GETs for the blob, want 1 (all requests: $detail)"
	if [ "$hash" = 1 ]; then
		bodies="$ok/$n ok"
	fi
	LAST_HWM=$(hwm "$pid")
	# shellcheck disable=SC2059
	printf "$ROW" "$name" "$n" "$bodies" "$(secs "$ns")" "$(mbps $((SIZE * n)) "$ns")" \
		"$(ttfbs "$n" "$WORK/$name" | spread)" "$head/$get" "$(cpu_secs $((t1 - t0)))" "$LAST_HWM"
	DETAILS+=("$name: TTFB ms per client: $(ttfbs "$n" "$WORK/$name"); upstream requests: $detail")
	if [ "$keep" = 1 ]; then
		PRIMED_PID=$pid PRIMED_URL=$MIRROR_URL
	else
		stop "$pid"
		rm -rf "$WORK/data-$name"
	fi
}

# direct NAME CLIENTS HASH URL: the same clients against a server without the mirror.
direct() {
	local name=$1 n=$2 hash=$3 url=$4 ns ok bodies=discarded
	sync
	ns=$(fetch "$n" "$url" "$WORK/$name" "$hash")
	ok=$(check "$n" "$WORK/$name" "$name")
	if [ "$hash" = 1 ]; then
		bodies="$ok/$n ok"
	fi
	# shellcheck disable=SC2059
	printf "$ROW" "$name" "$n" "$bodies" "$(secs "$ns")" "$(mbps $((SIZE * n)) "$ns")" \
		"$(ttfbs "$n" "$WORK/$name" | spread)" - - -
}

# tree_ticks PID: CPU ticks of PID and its children (nginx's workers).
tree_ticks() {
	local t=0 p
	for p in "$1" $(pgrep -P "$1"); do
		t=$((t + $(cpu_ticks "$p")))
	done
	echo "$t"
}

# warm NAME=URL=PID...: CLIENTS clients at once against each server in turn,
# ROUNDS times (interleaved, so drift on the machine affects all alike); PID is
# the server, whose CPU time is counted.
warm() {
	local spec name url pid r ns t0 t1 bytes=$((SIZE * CLIENTS * ROUNDS)) hz
	local -A total=() rounds=() ticks=()
	hz=$(getconf CLK_TCK)
	for r in $(seq "$ROUNDS"); do
		for spec in "$@"; do
			IFS='=' read -r name url pid <<<"$spec"
			sync
			t0=$(tree_ticks "$pid")
			ns=$(fetch "$CLIENTS" "$url" "$WORK/warm-$name-$r" 0)
			t1=$(tree_ticks "$pid")
			check "$CLIENTS" "$WORK/warm-$name-$r" "warm $name round $r" >/dev/null
			total[$name]=$((${total[$name]:-0} + ns))
			ticks[$name]=$((${ticks[$name]:-0} + t1 - t0))
			rounds[$name]+="$(secs "$ns") "
		done
	done
	printf '  %-10s %9s  %-20s %7s %9s\n' server "MB/s" "round times s" "CPU s" "CPU s/GB"
	for spec in "$@"; do
		IFS='=' read -r name _ _ <<<"$spec"
		printf '  %-10s %9s  %-20s %7s %9s\n' "$name" "$(mbps "$bytes" "${total[$name]}")" "${rounds[$name]}" \
			"$(cpu_secs "${ticks[$name]}")" "$(awk -v t="${ticks[$name]}" -v hz="$hz" -v b="$bytes" 'BEGIN { printf "%.2f", t / hz / (b / 1e9) }')"
	done
}

# --- setup ---------------------------------------------------------------

need curl curl
need jq jq
need ss iproute2
need nginx nginx
need openssl openssl
if [ "$PERF" = 1 ]; then
	need perf linux-perf
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

log "building regmirror and bench/upstream"
(cd "$REPO_ROOT" && go build -o "$WORK/regmirror" ./cmd/regmirror && go build -o "$WORK/upstream" ./bench/upstream)

mkdir -p "$WORK/www"
start_upstream "$SIZE" -blob-out "$WORK/www/blob"

start_nginx

BLOB_PATH=/v2/big/blobs/$DIGEST
DETAILS=()
echo "regmirror core benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "$(machine), $(curl --version | head -n1 | cut -d' ' -f1-2), $("$NGINX" -v 2>&1 | cut -d' ' -f3)"
commit_line
echo "blob $DIGEST, $SIZE bytes; MB = 10^6 bytes; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "a/b. cold: clients start the uncached blob at once, each mirror on a fresh data dir"
echo "     (bodies sha256-hashed by openssl as they arrive, or discarded; CPU and RSS are regmirror's)"
cold_header
cold herd "$CLIENTS" 1 1
HERD_HWM=$LAST_HWM
cold herd-discard "$CLIENTS" 0 0
cold single 1 1 0
cold single-discard 1 0 0
direct upstream-direct "$CLIENTS" 1 "$UP_URL/v2/library/big/blobs/$DIGEST"
for d in "${DETAILS[@]}"; do
	echo "  $d"
done

echo
echo "c. warm: $CLIENTS clients at once x $ROUNDS rounds, bodies discarded (regmirror primed by the herd)"
reset_counts
reset_hwm "$PRIMED_PID"
perf_start "$PRIMED_PID" warm
warm "regmirror=$PRIMED_URL$BLOB_PATH=$PRIMED_PID" "upstream=$UP_URL/v2/library/big/blobs/$DIGEST=$UP_PID" "nginx=$NG_URL=$NG_PID"
perf_stop
PERF_PID=
# The only upstream requests are the direct rounds' own.
read -r _ get all detail <<<"$(counts)"
[ "$all" = $((CLIENTS * ROUNDS)) ] || fail "warm: upstream got $all requests ($detail), want only the $((CLIENTS * ROUNDS)) direct GETs"
warm_hwm=$(hwm "$PRIMED_PID")
echo "  (CPU s is the server's user+system time, nginx's workers included)"

echo
echo "d. regmirror peak RSS (VmHWM): cold herd $HERD_HWM MB, warm run $warm_hwm MB (VmHWM reset before the warm run)"

if [ "$PERF" = 1 ]; then
	for f in herd warm; do
		echo
		echo "perf ($f): where regmirror's CPU time went, by object, then the top symbols (self time)"
		perf report -i "$WORK/$f.perf" --no-children --sort dso --stdio -q -g none 2>/dev/null |
			awk 'NF && n++ < 4 { printf "  %s %s\n", $1, $2 }'
		perf report -i "$WORK/$f.perf" --no-children --sort dso,symbol --stdio -q -g none 2>/dev/null |
			awk 'NF && n++ < 20 { printf "  %-7s %-18s %s\n", $1, $2, $4 }'
	done
fi

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

logs=$(cat "$WORK"/mirror-*.log)
if [ -n "$logs" ]; then
	echo
	echo "regmirror logged at warn or above:"
	head -n 20 <<<"$logs" | sed 's/^/  /'
fi
if [ -s "$WORK/failures" ]; then
	echo
	echo "FAILED checks:"
	sed 's/^/  /' "$WORK/failures"
	exit 1
fi
