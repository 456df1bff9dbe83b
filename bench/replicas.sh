#!/usr/bin/env bash
# bench/replicas.sh: a cold herd over three regmirror replicas on one bucket,
# against the same herd on one replica, and against three of distribution's
# proxies on one bucket, in one command.
#
#   bench/replicas.sh            # the full benchmark, from the repository root (or anywhere)
#   bench/replicas.sh --smoke    # tiny sizes, every check, for CI
#   DELAY=20ms bench/replicas.sh # a bucket further away
#
# It installs what it needs (Debian: docker-registry, curl, jq, openssl,
# iproute2; versitygw comes from .ci/clients.sh), builds regmirror,
# bench/upstream and bench/s3proxy, and starts on free 127.0.0.1 ports:
#   upstream   bench/upstream: one blob of BIG pseudo-random bytes, counting
#              every request it gets
#   versitygw  the S3 server, posix backend, a fresh bucket per scenario
#   s3proxy    in front of versitygw: holds every request DELAY and counts the
#              requests by S3 operation; every server talks to it
# The scenarios, each on a cold bucket and fresh data dirs:
#   fleet   3 regmirror replicas, REGMIRROR_PEER_TOKEN_FILE set (multi-replica
#           mode); client i goes to replica i mod 3, as a round-robin front would
#   single  1 regmirror (the same settings), every client on it
#   peer    3 docker-registry processes with the s3-aws driver and `proxy:`
#           on one bucket (distribution's pull-through cache), redirects off,
#           client i on process i mod 3
# CLIENTS clients start the blob at once. Reported: time to last byte (the
# slowest client), the median client's, upstream GETs of the blob, bytes one
# replica sent the others (their access logs' peer requests), and S3 requests
# from the herd's start until the store is quiet (the blob's upload, leases,
# lookups), by operation.
# It exits non-zero if a server does not start, or a client gets a wrong body
# or an error.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

smoke_mode "$@"
if [ "$SMOKE" = 1 ]; then
	BIG=${BIG:-8000000} CLIENTS=${CLIENTS:-12} SETTLE=${SETTLE:-5}
else
	BIG=${BIG:-200000000} CLIENTS=${CLIENTS:-12} SETTLE=${SETTLE:-10}
fi
DELAY=${DELAY:-5ms}
S3_ACCESS=regmirror-bench
S3_SECRET=regmirror-bench-secret

bench_init replicas

up_blob_gets() { curl -sS "$UP_URL/_counts" | jq "[to_entries[] | select(.key == \"GET $BLOB_UPSTREAM_PATH\") | .value] | add // 0"; }
up_reset() { curl -sS -X DELETE "$UP_URL/_counts" >/dev/null; }

SERVERS=() # URLs of the current scenario's servers
SPIDS=()   # and their pids

# start_reg BUCKET NAME [VAR=VALUE...]: a regmirror replica on BUCKET in
# multi-replica mode (its access log on, for the bytes between replicas).
start_reg() {
	local bucket=$1 name=$2
	shift 2
	start_regmirror "$name" REGMIRROR_LOG_LEVEL=info \
		REGMIRROR_STORAGE=s3 REGMIRROR_S3_ENDPOINT="$S3_URL" REGMIRROR_S3_BUCKET="$bucket" REGMIRROR_S3_REGION=us-east-1 \
		REGMIRROR_PEER_TOKEN_FILE="$WORK/peer-token" AWS_ACCESS_KEY_ID=$S3_ACCESS AWS_SECRET_ACCESS_KEY=$S3_SECRET "$@"
	SPIDS+=("${PID[$name]}")
	SERVERS+=("${URL[$name]}")
}

# start_peer BUCKET NAME: distribution's proxy with its storage in BUCKET.
start_peer() {
	local pid url
	read -r pid url < <(s3_peer "$2" "$1" "$UP_URL")
	SPIDS+=("$pid")
	PIDS+=("$pid")
	SERVERS+=("$url")
}

stop_servers() {
	local p
	for p in "${SPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${SPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	SERVERS=() SPIDS=()
}

ROW='  %-8s %8s %9s %9s %11s %10s  %s\n'

# herd NAME: CLIENTS clients at once, client i on server i mod n; prints a row.
herd() {
	local name=$1 i n=${#SERVERS[@]} start end pids=() ttlbs=() code bytes total peer sum
	local fmt='%{http_code} %{time_starttransfer} %{time_total} %{size_download}\n'
	s3_settle
	s3_reset
	up_reset
	start=$(now_ns)
	for i in $(seq "$CLIENTS"); do
		(curl -sS -w "%{stderr}$fmt" "${SERVERS[$(((i - 1) % n))]}$BLOB_PATH" 2>"$WORK/$name.$i" | openssl dgst -sha256 -r >"$WORK/$name.$i.sum") &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i" || true; done
	end=$(now_ns)
	for i in $(seq "$CLIENTS"); do
		read -r code _ total bytes < <(tail -n1 "$WORK/$name.$i")
		sum=sha256:$(cut -d' ' -f1 "$WORK/$name.$i.sum")
		if [ "${code:-}" != 200 ] || [ "${bytes:-}" != "$BIG" ] || [ "$sum" != "$DIGEST" ]; then
			fail "$name client $i: status ${code:-none}, ${bytes:-0} bytes hashing to $sum; want 200, $BIG bytes, $DIGEST"
		fi
		ttlbs+=("$total")
	done
	s3_settle
	peer=-
	if [ "$name" != peer ]; then
		peer=$(cat "$WORK"/log-"$name"-* 2>/dev/null | jq -R 'fromjson? | select(.msg == "request" and (.path | startswith("/_regmirror/peer/"))) | .bytes' | jq -s 'add // 0')
		peer=$(awk -v b="$peer" 'BEGIN { printf "%.1f", b / 1e6 }')
	fi
	local median
	median=$(printf '%s\n' "${ttlbs[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
	# shellcheck disable=SC2059
	printf "$ROW" "$name" "$(secs $((end - start)))" "$median" "$(up_blob_gets)" "$peer" "$(s3_total)" "$(s3_counts)"
}

# --- setup ----------------------------------------------------------------------

need curl curl
need jq jq
need ss iproute2
need openssl openssl
need docker-registry docker-registry
command -v versitygw >/dev/null || die "versitygw is not installed: bash .ci/clients.sh"

log "building regmirror, bench/upstream and bench/s3proxy"
(cd "$REPO_ROOT" && go build -o "$WORK/regmirror" ./cmd/regmirror && go build -o "$WORK/upstream" ./bench/upstream &&
	go build -o "$WORK/s3proxy" ./bench/s3proxy)
head -c 32 /dev/urandom | base64 >"$WORK/peer-token"

start_upstream "$BIG"
BLOB_PATH=/v2/library/big/blobs/$DIGEST
BLOB_UPSTREAM_PATH=/v2/library/big/blobs/$DIGEST

start_s3 "$WORK/s3" fleet single peer

mode=full
[ "$SMOKE" = 1 ] && mode=smoke
echo "a cold herd over regmirror replicas on one bucket, one replica, and distribution's proxy x3 on one bucket ($mode), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
machine
s3_versions
commit_line
echo "every S3 request is held $DELAY by bench/s3proxy; blob $DIGEST, $BIG bytes; $CLIENTS clients at once, bodies hashed"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
# shellcheck disable=SC2059
printf "$ROW" server "TTLB s" "median s" "up GETs" "peer MB" "S3 req" "S3 requests by operation (herd start to quiet)"

for i in 1 2 3; do start_reg fleet "fleet-$i"; done
herd fleet
stop_servers

start_reg single "single-1"
herd single
stop_servers

for i in 1 2 3; do start_peer peer "peer-$i"; done
herd peer
stop_servers

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
warns=$(cat "$WORK"/log-fleet-* "$WORK"/log-single-* 2>/dev/null | jq -R 'fromjson? | select(.level == "warn" or .level == "error") | .msg' | sort | uniq -c || true)
if [ -n "$warns" ]; then
	echo "regmirror logged at warn or above:"
	sed 's/^/  /' <<<"$warns"
fi
if [ -s "$WORK/failures" ]; then
	echo
	echo "FAILED checks:"
	sed 's/^/  /' "$WORK/failures"
	exit 1
fi
echo "all checks passed"
