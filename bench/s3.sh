#!/usr/bin/env bash
# bench/s3.sh: regmirror with its cache in a bucket, side by side with
# distribution's proxy on the same S3 server, in one command.
#
#   bench/s3.sh               # the full benchmark, from the repository root (or anywhere)
#   bench/s3.sh --smoke       # every scenario with tiny sizes and every check, for CI
#   DELAY=20ms bench/s3.sh    # a bucket further away
#
# It installs what it needs (Debian: docker-registry, wrk, curl, jq, openssl,
# iproute2; Go module proxy: hey, built into its temp dir; versitygw comes
# from .ci/clients.sh), builds regmirror, bench/seed and bench/s3proxy, and
# starts on free 127.0.0.1 ports, each with its own temp dir:
#   upstream   Debian's docker-registry (distribution 2.8), filesystem storage;
#              bench/seed pushes library/big (one layer of BIG bytes) and
#              library/small (one layer of SMALL bytes), pseudo-random bytes
#   versitygw  the S3 server, posix backend, buckets "regmirror" and "peer"
#   s3proxy    in front of versitygw: holds every request DELAY before passing
#              it on (so that loopback does not flatter the bucket) and counts
#              the requests by S3 operation; every mirror talks to it
#   reg        regmirror, REGMIRROR_STORAGE=s3, its local copy as configured
#   reg-bucket regmirror on the same bucket with a local copy too small to hold
#              the blobs (REGMIRROR_LOCAL_MAX_SIZE=1MB): what it serves comes
#              from the bucket
#   peer       docker-registry with the s3-aws driver and `proxy: remoteurl:`
#              the upstream, redirects off (it would send clients to presigned
#              URLs of the bucket otherwise): distribution's pull-through cache
# The scenarios:
#   1. cold: one client GETs the uncached big blob, then the small one, then
#      the small image's manifest by tag, through a fresh server: S3 requests
#      by operation until the bucket holds the content and the store is quiet
#   2. warm: CLIENTS clients x ROUNDS rounds of the cached big blob from reg
#      (local copy), reg-bucket and the peer, interleaved; S3 requests per GET
#   3. manifests: HEAD by tag (hey) and GET by digest (wrk), CONNS connections
#      for LOAD each, Docker's Accept header; S3 requests during the load
# It exits non-zero if a server does not start, any server sends wrong bytes
# or an error, or the bucket holds an object that is not the content its key
# names.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" # free_port, fetch, need, log …

smoke_mode "$@"
if [ "$SMOKE" = 1 ]; then
	BIG=${BIG:-20000000} SMALL=${SMALL:-300000} CLIENTS=${CLIENTS:-2} ROUNDS=${ROUNDS:-1} LOAD=${LOAD:-1s} SETTLE=${SETTLE:-5}
else
	BIG=${BIG:-200000000} SMALL=${SMALL:-3000000} CLIENTS=${CLIENTS:-8} ROUNDS=${ROUNDS:-3} LOAD=${LOAD:-10s} SETTLE=${SETTLE:-10}
fi
CONNS=${CONNS:-16}
DELAY=${DELAY:-5ms}
# SETTLE: tenths of a second without a new S3 request before counting them.
HEY_VERSION=v0.1.5 # as bench/run.sh
S3_ACCESS=regmirror-bench
S3_SECRET=regmirror-bench-secret

bench_init s3

# --- servers ------------------------------------------------------------------

# start_reg NAME [VAR=VALUE...]: a regmirror on the bucket "regmirror", on a fresh data dir.
start_reg() {
	start_regmirror "$@" REGMIRROR_STORAGE=s3 REGMIRROR_S3_ENDPOINT="$S3_URL" REGMIRROR_S3_BUCKET=regmirror \
		REGMIRROR_S3_REGION=us-east-1 AWS_ACCESS_KEY_ID=$S3_ACCESS AWS_SECRET_ACCESS_KEY=$S3_SECRET
}

# start_peer NAME: distribution's proxy with its storage in the bucket "peer".
start_peer() {
	local name=$1
	read -r PID[$name] URL[$name] < <(s3_peer "$name" peer "$UP_URL")
	PIDS+=("${PID[$name]}")
	KIND[$name]=peer
}

# in_bucket NAME DIGEST: where server NAME's bucket keeps blob DIGEST, in versitygw's directory.
in_bucket() {
	local hex=${2#sha256:}
	if [ "${KIND[$1]}" = regmirror ]; then
		echo "$S3_ROOT/regmirror/blobs/sha256/$hex"
	else
		echo "$S3_ROOT/peer/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
	fi
}

# wait_in_bucket NAME DIGEST: wait up to 60 s until the bucket of server NAME holds DIGEST.
wait_in_bucket() {
	local f
	f=$(in_bucket "$1" "$2")
	for _ in $(seq 600); do
		[ -e "$f" ] && return
		sleep 0.1
	done
	fail "$1 did not put $2 into its bucket within 60 s"
}

# --- 1. cold ------------------------------------------------------------------

COLD_ROW='  %-15s %-9s %7s %11s %6s  %s\n'

# cold WHAT NAME PATH DIGEST SIZE: one GET of PATH through server NAME (a
# blob's body hashed against DIGEST), then the S3 requests until the store
# is quiet. For a blob, also how long from the request until its object was
# in the bucket (polled every 0.1 s).
cold() {
	local what=$1 name=$2 path=$3 digest=$4 size=$5 got t0 wall stored=-
	s3_settle
	s3_reset
	t0=$(now_ns)
	if [ "$what" != "${what%manifest}" ]; then
		read -r got wall < <(curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' -H "Accept: $ACCEPT" "${URL[$name]}$path" || true)
		[ "${got:-}" = 200 ] || fail "cold $what through $name: status ${got:-none}"
		wall=$(awk -v s="${wall:-0}" 'BEGIN { printf "%.3f", s }')
	else
		wall=$(secs "$(fetch 1 "${URL[$name]}$path" "$WORK/cold-$what-$name" 1)")
		check_bodies 1 "$WORK/cold-$what-$name" "cold $what $name" "$size" "$digest" >/dev/null
		if [ "$what" != "${what#fresh}" ]; then
			stored=-   # a fresh host reads what the bucket has
		else
			wait_in_bucket "$name" "$digest"
			stored=$(secs $(($(now_ns) - t0)))
		fi
	fi
	s3_settle
	# shellcheck disable=SC2059
	printf "$COLD_ROW" "$what" "$name" "$wall" "$stored" "$(s3_total)" "$(s3_counts)"
}

# --- 2. warm ------------------------------------------------------------------

# warm NAME...: CLIENTS clients at once against each server in turn, ROUNDS
# times (interleaved, so drift on the machine affects all alike).
warm() {
	local name r ns bytes=$((BIG * CLIENTS * ROUNDS))
	local -A total=() rounds=() s3=() reqs=()
	for r in $(seq "$ROUNDS"); do
		for name in "$@"; do
			s3_settle
			s3_reset
			ns=$(fetch "$CLIENTS" "${URL[$name]}$BIG_PATH" "$WORK/warm-$name-$r" 0)
			check_bodies "$CLIENTS" "$WORK/warm-$name-$r" "warm $name round $r" "$BIG" "$BIG_LAYER" >/dev/null
			s3_settle
			total[$name]=$((${total[$name]:-0} + ns))
			rounds[$name]+="$(secs "$ns") "
			s3[$name]="$(s3_counts)"
			reqs[$name]=$(( ${reqs[$name]:-0} + $(s3_total) ))
		done
	done
	printf '  %-11s %7s  %-20s %12s  %s\n' server "MB/s" "round times s" "S3 req/GET" "S3 requests in the last round"
	for name in "$@"; do
		MBPS[$name]=$(mbps "$bytes" "${total[$name]}")
		printf '  %-11s %7s  %-20s %12s  %s\n' "$name" "${MBPS[$name]}" "${rounds[$name]}" \
			"$(ratio "${reqs[$name]}" $((CLIENTS * ROUNDS)))" "${s3[$name]}"
	done
}

# --- 3. manifests ---------------------------------------------------------------

LOAD_ROW='  %-12s %-11s %9s %8s %9s  %s\n'

# load TOOL WHAT NAME URL: TOOL (hey: HEAD, wrk: GET) with CONNS connections
# for LOAD against URL on server NAME; the S3 requests during the load.
load() {
	local tool=$1 what=$2 name=$3 url=$4 out rps p99 n
	out=$WORK/$tool-$what-$name.txt
	s3_settle
	s3_reset
	read -r rps p99 n <<<"$(run_load "$tool" "$url" "$out" "$tool $what against $name")"
	s3_settle
	# shellcheck disable=SC2059
	printf "$LOAD_ROW" "$what" "$name" "$rps" "$p99" "$n" "$(s3_counts)"
}

# --- setup ----------------------------------------------------------------------

need curl curl
need jq jq
need ss iproute2
need openssl openssl
need docker-registry docker-registry
need wrk wrk
command -v versitygw >/dev/null || die "versitygw is not installed: bash .ci/clients.sh"

log "building regmirror, bench/seed and bench/s3proxy; hey $HEY_VERSION (Go module proxy)"
(cd "$REPO_ROOT" && go build -o "$WORK/regmirror" ./cmd/regmirror && go build -o "$WORK/seed" ./bench/seed &&
	go build -o "$WORK/s3proxy" ./bench/s3proxy)
(cd "$WORK" && GOBIN=$WORK/bin go install "github.com/rakyll/hey@$HEY_VERSION")
HEY=$WORK/bin/hey

# The upstream.
UP_PORT=$(free_port)
UP_URL=http://127.0.0.1:$UP_PORT
mkdir -p "$WORK/www"
registry_config "$WORK/upstream.yml" "127.0.0.1:$UP_PORT" "$WORK/data-upstream" off
docker-registry serve "$WORK/upstream.yml" >"$WORK/log-upstream" 2>&1 &
PID[upstream]=$!
PIDS+=("${PID[upstream]}")
wait_http "$UP_URL/v2/" "${PID[upstream]}" "$WORK/log-upstream"
log "seeding the upstream"
"$WORK/seed" -registry "127.0.0.1:$UP_PORT" -big "$BIG" -small "$SMALL" -layers 1 -fifty 1000 \
	>"$WORK/seed.json" || die "seeding failed"
BIG_LAYER=$(jq -r '.big.layers[0]' "$WORK/seed.json")
SMALL_LAYER=$(jq -r '.small.layers[0]' "$WORK/seed.json")
SMALL_MANIFEST=$(jq -r '.small.manifest' "$WORK/seed.json")
BIG_PATH=/v2/library/big/blobs/$BIG_LAYER

# The S3 server (a bucket of versitygw's posix backend is a directory) and the proxy.
S3_ROOT=$WORK/s3
start_s3 "$S3_ROOT" regmirror peer

mode=full
[ "$SMOKE" = 1 ] && mode=smoke
echo "regmirror on a bucket side by side with distribution's proxy on the same bucket server ($mode), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
machine
echo "$(s3_versions), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), hey $HEY_VERSION"
commit_line
echo "every S3 request is held $DELAY by bench/s3proxy before it reaches versitygw"
echo "images: library/big $BIG bytes in one layer ($BIG_LAYER); library/small $SMALL bytes in one layer"
echo "clients $CLIENTS, rounds $ROUNDS, load $LOAD with $CONNS connections; MB = 10^6 bytes; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

declare -A MBPS=()

# --- 1 ----------------------------------------------------------------------------
echo
echo "1. cold: one client, a fresh server; S3 requests until the bucket holds the content and the store is quiet"
# shellcheck disable=SC2059
printf "$COLD_ROW" what server "wall s" "in bucket s" "S3 req" "S3 requests by operation"
start_reg reg
start_peer peer
for name in reg peer; do
	cold "big blob" "$name" "$BIG_PATH" "$BIG_LAYER" "$BIG"
	cold "small blob" "$name" "/v2/library/small/blobs/$SMALL_LAYER" "$SMALL_LAYER" "$SMALL"
	cold manifest "$name" /v2/library/small/manifests/latest "" 0
done
# A new host on the same bucket, empty data dir: the first reads come from the bucket.
s3_settle
s3_reset
t0=$(now_ns)
start_reg reg-fresh
s3_settle
# shellcheck disable=SC2059
printf "$COLD_ROW" "fresh start-up" reg-fresh "$(secs $(($(now_ns) - t0)))" - "$(s3_total)" "$(s3_counts)"
cold "fresh big blob" reg-fresh "$BIG_PATH" "$BIG_LAYER" "$BIG"
cold "fresh manifest" reg-fresh /v2/library/small/manifests/latest "" 0
stop_server reg-fresh
echo "  (fresh: a second regmirror, started on an empty data dir once the first had filled the bucket: its first reads)"

# --- 2 ----------------------------------------------------------------------------
echo
echo "2. warm: $CLIENTS clients at once x $ROUNDS rounds of the big blob, bodies discarded, servers interleaved"
echo "   (reg: from its local copy; reg-bucket: a second regmirror on the same bucket whose local copy cannot hold the blob)"
start_reg reg-bucket REGMIRROR_LOCAL_MAX_SIZE=1MB
warm reg reg-bucket peer
echo "  reg/peer $(ratio "${MBPS[reg]}" "${MBPS[peer]}"), reg-bucket/peer $(ratio "${MBPS[reg-bucket]}" "${MBPS[peer]}")"

# --- 3 ----------------------------------------------------------------------------
echo
echo "3. manifests of library/small, $CONNS connections for $LOAD each, Docker's Accept header"
# shellcheck disable=SC2059
printf "$LOAD_ROW" request server "req/s" "p99 ms" requests "S3 requests during the load"
for name in reg reg-bucket peer; do
	load hey head-tag "$name" "${URL[$name]}/v2/library/small/manifests/latest"
done
for name in reg reg-bucket peer; do
	load wrk get-digest "$name" "${URL[$name]}/v2/library/small/manifests/$SMALL_MANIFEST"
done

# --- checks ---------------------------------------------------------------------
for name in reg reg-bucket; do stop_server "$name"; done
bad=0
while IFS= read -r -d '' f; do
	[ "sha256:$(openssl dgst -sha256 -r <"$f" | cut -d' ' -f1)" = "sha256:$(basename "$f")" ] || {
		fail "the bucket's object $f does not hash to its key"
		bad=$((bad + 1))
	}
done < <(find "$S3_ROOT/regmirror/blobs/sha256" -type f -print0 2>/dev/null)
echo
echo "the bucket holds $(find "$S3_ROOT/regmirror/blobs/sha256" -type f 2>/dev/null | wc -l) content objects of regmirror's, $bad not hashing to their key"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
logs=$(cat "$WORK"/log-reg* 2>/dev/null || true)
if [ -n "$logs" ]; then
	echo "regmirror logged at warn or above (first 10 lines):"
	head -n 10 <<<"$logs" | cut -c1-300 | sed 's/^/  /'
fi
if [ -s "$WORK/failures" ]; then
	echo
	echo "FAILED checks:"
	sed 's/^/  /' "$WORK/failures"
	exit 1
fi
echo "all checks passed"
