#!/usr/bin/env bash
# bench/herd.sh: the cold herd against the warm herd only, repeated, to compare
# builds of regmirror on a shared machine in a few seconds a run.
#
#   bench/herd.sh                          # 5 runs of the regmirror of this tree
#   bench/herd.sh 8 old=/tmp/a new=/tmp/b  # 8 runs of each binary, interleaved
#
# Each run starts a fresh regmirror on an empty data dir in front of
# bench/upstream (one SIZE-byte blob in memory), recycles memory as run.sh
# does (recycle_memory: write and remove a file), and lets CLIENTS curl
# clients (hashing the bodies, or with HASH=0 discarding them) start the blob at once (the cold herd), then the same clients again
# from the cache (the warm herd), then the warm herd once more with bench/fill
# beside it (apart: the download, hash and write of the blob done by a
# program of their own, the work a cold herd cannot avoid done without any
# coordination with the clients; its CPU is the mirror's plus fill's own). The
# mirror's CPU is the sum over its threads of /proc/PID/task/*/schedstat
# (nanoseconds, where /proc/PID/stat counts ticks of 10 ms). Then per binary:
# min, median and max of each figure and of the ratios cold/warm and
# apart/warm. Settings (environment): SIZE (100000000),
# CLIENTS (8), HASH (1), RECYCLE (1; 0 skips recycle_memory), PERF (1: perf-profile the
# mirror during each binary's first cold herd; PERF_FREQ, 999). It exits non-zero if a body is wrong or the upstream is asked
# for the blob more than once.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" # free_port, fetch, check_bodies, need, log …

RUNS=${1:-5}
shift || true
SIZE=${SIZE:-100000000}
CLIENTS=${CLIENTS:-8}
RECYCLE=${RECYCLE:-1}
HASH=${HASH:-1}

bench_init herd

need curl curl
need jq jq
need ss iproute2
need openssl openssl
if [ "${PERF:-0}" = 1 ]; then
	need perf linux-perf
fi

# cpu_ms PID: CPU time of all of PID's threads, in ms.
cpu_ms() { cat "/proc/$1"/task/*/schedstat | awk '{ t += $1 } END { printf "%d", t / 1e6 }'; }

log "building bench/upstream${*:+ (the binaries are given)}"
(cd "$REPO_ROOT" && go build -o "$WORK/upstream" ./bench/upstream && go build -o "$WORK/fill" ./bench/fill)
BINS=("$@")
if [ ${#BINS[@]} = 0 ]; then
	(cd "$REPO_ROOT" && go build -o "$WORK/regmirror" ./cmd/regmirror)
	BINS=("regmirror=$WORK/regmirror")
fi

start_upstream "$SIZE"
gets() { curl -sf "$UP_URL/_counts" | jq -r --arg p "/v2/library/big/blobs/$DIGEST" '.["GET " + $p] // 0'; }

bodies=hashed
[ "$HASH" = 1 ] || bodies=discarded
echo "cold herd against warm herd: $CLIENTS clients (bodies $bodies), one $SIZE-byte blob, $RUNS runs; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
ROW='  %-10s %3s %7s %7s %7s %8s %8s %9s %7s %7s %8s %8s  %s\n'
# shellcheck disable=SC2059
printf "$ROW" binary run "cold s" "warm s" "apart s" "cold CPU" "warm CPU" "apart CPU" "wall x" "CPU x" "apart x" "wall ax" load
for run in $(seq "$RUNS"); do
	for spec in "${BINS[@]}"; do
		name=${spec%%=*} bin=${spec#*=}
		port=$(free_port)
		rm -rf "$WORK/data"
		REGMIRROR_ADDR=127.0.0.1:$port REGMIRROR_ADMIN_ADDR=off REGMIRROR_MIN_FREE=0 REGMIRROR_DATA_DIR=$WORK/data \
			REGMIRROR_UPSTREAM=$UP_URL REGMIRROR_LOG_LEVEL=warn "$bin" 2>>"$WORK/mirror.log" &
		pid=$!
		PIDS+=("$pid")
		wait_http "http://127.0.0.1:$port/v2/" "$pid" "$WORK/mirror.log"
		url=http://127.0.0.1:$port/v2/big/blobs/$DIGEST
		before=$(gets)
		[ "$RECYCLE" = 0 ] || recycle_memory "$SIZE"
		sync
		c0=$(cpu_ms "$pid")
		[ "$run" != 1 ] || perf_start "$pid" "cold-$name"
		cold=$(fetch "$CLIENTS" "$url" "$WORK/cold" "$HASH")
		perf_stop
		c1=$(cpu_ms "$pid")
		check_bodies "$CLIENTS" "$WORK/cold" "$name run $run cold" "$SIZE" "$DIGEST" >/dev/null
		sync
		w0=$(cpu_ms "$pid")
		warm=$(fetch "$CLIENTS" "$url" "$WORK/warm" "$HASH")
		w1=$(cpu_ms "$pid")
		check_bodies "$CLIENTS" "$WORK/warm" "$name run $run warm" "$SIZE" "$DIGEST" >/dev/null
		[ $(($(gets) - before)) = 1 ] || fail "$name run $run: the upstream got $(($(gets) - before)) GETs of the blob, want 1"
		[ "$RECYCLE" = 0 ] || recycle_memory "$SIZE"
		sync
		f0=$(cpu_ms "$pid")
		apart=$(fill_beside "$UP_URL/v2/library/big/blobs/$DIGEST" "$WORK/filled" "$CLIENTS" "$url" "$WORK/apart" "$HASH")
		f1=$(cpu_ms "$pid")
		check_bodies "$CLIENTS" "$WORK/apart" "$name run $run apart" "$SIZE" "$DIGEST" >/dev/null
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		awk -v n="$name" -v r="$run" -v c="$cold" -v w="$warm" -v f="${apart% *}" -v cc=$((c1 - c0)) -v wc=$((w1 - w0)) -v fc=$((f1 - f0 + ${apart#* })) \
			-v l="$(cut -d' ' -f1 /proc/loadavg)" -v row="$ROW" 'BEGIN {
			printf row, n, r, sprintf("%.2f", c / 1e9), sprintf("%.2f", w / 1e9), sprintf("%.2f", f / 1e9),
				sprintf("%.3f", cc / 1e3), sprintf("%.3f", wc / 1e3), sprintf("%.3f", fc / 1e3),
				sprintf("%.2f", c / w), sprintf("%.2f", cc / wc), sprintf("%.2f", fc / wc), sprintf("%.2f", f / w), l }' | tee -a "$WORK/rows"
	done
done

echo "min / median / max per binary"
for spec in "${BINS[@]}"; do
	name=${spec%%=*}
	printf '  %-10s' "$name"
	for col in 3 4 5 6 7 8 9 10 11 12; do
		awk -v n="$name" -v c="$col" '$1 == n { print $c }' "$WORK/rows" | sort -n |
			awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf " %s/%s/%s", v[1], m, v[NR] }'
	done
	echo
done
echo "  (columns: cold s, warm s, apart s, cold CPU s, warm CPU s, apart CPU s, wall cold/warm, CPU cold/warm, CPU apart/warm, wall apart/warm)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
for f in "${PERFS[@]}"; do
	echo "perf ($f, run 1, perf's own cost included above): self time, then time including callees"
	perf report -i "$WORK/$f.perf" --no-children --sort dso,symbol --stdio -q -g none 2>/dev/null |
		awk 'NF && n++ < 12 { printf "  %-7s %s\n", $1, $4 }'
	perf report -i "$WORK/$f.perf" --children --sort symbol --stdio -q -g none 2>/dev/null |
		grep -E '(\.fill|Writer\)\.Write|Verifier\)\.Write|generic_perform_write|ext4_da_write_begin|sendTo|do_splice_direct|tcp_recvmsg|ext4_sync_file|runtime\.sysmon) ' |
		awk '{ printf "  %-7s %s\n", $1, $4 }'
done
if [ -s "$WORK/mirror.log" ]; then
	echo "regmirror logged at warn or above (first 5 lines):"
	head -n 5 "$WORK/mirror.log" | cut -c1-300 | sed 's/^/  /'
fi
if [ -s "$WORK/failures" ]; then
	echo "FAILED checks:"
	sed 's/^/  /' "$WORK/failures"
	exit 1
fi
