#!/usr/bin/env bash
# bench/run.sh: regmirror side by side with distribution's proxy and nginx, in one command.
#
#   bench/run.sh              # the full benchmark, from the repository root (or anywhere)
#   bench/run.sh --smoke      # every scenario with tiny sizes and every check, for CI
#   PERF=1 bench/run.sh       # also perf-profile regmirror in the herd, the warm run and the HEAD load
#
# It installs what it needs (Debian: docker-registry, nginx, wrk, curl, jq,
# openssl, iproute2; Go module proxy: hey and crane, built into its temp dir),
# builds regmirror and bench/seed, and starts on free 127.0.0.1 ports, each
# with its own temp dir:
#   upstream   Debian's docker-registry (distribution 2.8), filesystem storage,
#              its access log counting every request; bench/seed pushes
#              library/big (one layer of BIG bytes), library/small (one layer
#              of SMALL bytes) and library/fifty (LAYERS layers, FIFTY bytes in
#              all), all pseudo-random, so nothing compresses
#   peer       a second docker-registry with `proxy: remoteurl:` the upstream:
#              distribution's pull-through cache, what people run today
#   regmirror  the binary built from this repository (REGMIRROR_LOG_LEVEL=warn)
#   nginx      library/big's layer as a static file (sendfile, 2 workers),
#              the reference for disk and loopback speed
#   bare       bench/bare, a net/http handler answering library/small's
#              manifest with fixed headers from memory: the reference for
#              what Go's net/http serves at all on this machine
# Both mirrors are asked for two-component names (library/big), which both
# pass upstream unchanged. The scenarios, each for regmirror and the peer:
#   1. cold herd: CLIENTS curl clients start the uncached big blob at once on a
#      fresh mirror (bodies hashed by openssl in a pipe), then the same clients
#      again from its cache (the warm herd: the reference for the cold herd's
#      wall time and mirror CPU), then once more with bench/fill storing the
#      blob from the upstream meanwhile (apart: the cold herd's download, hash
#      and write done by a program of their own, the work it cannot avoid
#      without any coordination with the clients), and one
#      client alone; the same with bodies discarded; upstream requests and
#      bytes counted
#   2. warm: CLIENTS clients x ROUNDS rounds of the cached big blob, servers
#      interleaved per round, nginx included
#   3. manifests: HEAD by tag (hey -m HEAD) and GET by digest (wrk), CONNS
#      connections for LOAD each, with Docker's Accept header; bare with the
#      same load right before regmirror, and the ratio regmirror/bare
#   4. a whole pull of library/fifty with crane, cold and then warm
#   5. peak RSS (VmHWM) of each mirror in each phase
# and then the targets. Settings (environment): BIG, SMALL, LAYERS, FIFTY,
# CLIENTS, ROUNDS, LOAD, CONNS. It exits non-zero if a server does not start,
# any server sends wrong bytes or an error, or regmirror downloads a blob from
# the upstream more than once (or at all when it has it).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" # free_port, fetch, need, log …

smoke_mode "$@"
if [ "$SMOKE" = 1 ]; then
	BIG=${BIG:-5000000} SMALL=${SMALL:-300000} LAYERS=${LAYERS:-50} FIFTY=${FIFTY:-1000000}
	CLIENTS=${CLIENTS:-2} ROUNDS=${ROUNDS:-1} LOAD=${LOAD:-2s} SETTLE=${SETTLE:-3}
else
	BIG=${BIG:-200000000} SMALL=${SMALL:-3000000} LAYERS=${LAYERS:-50} FIFTY=${FIFTY:-50000000}
	CLIENTS=${CLIENTS:-8} ROUNDS=${ROUNDS:-3} LOAD=${LOAD:-10s} SETTLE=${SETTLE:-10}
fi
CONNS=${CONNS:-16}
PERF=${PERF:-0}
# SETTLE: tenths of a second without a new upstream request before counting them.
HEY_VERSION=v0.1.5      # what @latest is; pinned so that runs compare
CRANE_VERSION=v0.22.1   # the go-containerregistry of go.mod

bench_init run


# cpu_ticks PID: user+system CPU time of PID (and its children: nginx's workers) in clock ticks.
cpu_ticks() {
	local t=0 p
	for p in "$1" $(pgrep -P "$1" || true); do
		t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
	done
	echo "$t"
}
HZ=$(getconf CLK_TCK)
cpu_secs() { awk -v t="$1" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }'; }

# --- servers -------------------------------------------------------------

# start_peer NAME: distribution's proxy on a fresh storage dir, in front of the upstream.
start_peer() {
	local name=$1 port
	port=$(free_port)
	DATA[$name]=$WORK/data-$name
	registry_config "$WORK/$name.yml" "127.0.0.1:$port" "${DATA[$name]}" off "$UP_URL"
	docker-registry serve "$WORK/$name.yml" >"$WORK/log-$name" 2>&1 &
	PID[$name]=$!
	PIDS+=("${PID[$name]}")
	KIND[$name]=peer
	URL[$name]=http://127.0.0.1:$port
	wait_http "${URL[$name]}/v2/" "${PID[$name]}" "$WORK/log-$name"
}

start_server() {
	if [ "$1" = regmirror ]; then start_regmirror "$2"; else start_peer "$2"; fi
}

# stored_path NAME DIGEST: where server NAME keeps blob DIGEST once it has it.
stored_path() {
	local hex=${2#sha256:}
	if [ "${KIND[$1]}" = regmirror ]; then
		echo "${DATA[$1]}/blobs/sha256/${hex:0:2}/$hex"
	else
		echo "${DATA[$1]}/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
	fi
}

# wait_stored NAME DIGEST...: wait up to 60 s until server NAME has stored every
# blob (the peer stores in the background after the clients are served). Prints
# how many are missing.
wait_stored() {
	local name=$1 d missing
	shift
	for _ in $(seq 600); do
		missing=0
		for d in "$@"; do
			[ -e "$(stored_path "$name" "$d")" ] || missing=$((missing + 1))
		done
		[ "$missing" = 0 ] && break
		sleep 0.1
	done
	echo "$missing"
}

# --- the upstream's access log ----------------------------------------------
# docker-registry writes one line per finished request, combined log format:
# 127.0.0.1 - - [date +0000] "GET /v2/... HTTP/1.1" 200 bytes "" "agent"

up_mark() { wc -l <"$WORK/upstream.access"; }
# settle: wait (at most 60 s) until the upstream's log has not grown for SETTLE tenths of a second.
settle() { settle_on up_mark; }
# up_gets MARK: "n bytes" of the upstream's blob GETs since line MARK.
up_gets() {
	awk -v m="$1" 'NR > m && $6 == "\"GET" && $7 ~ /\/blobs\/sha256:/ { n++; b += $10 } END { printf "%d %d\n", n, b }' "$WORK/upstream.access"
}
# up_max_per_blob MARK: the most GETs any one blob got since line MARK.
up_max_per_blob() {
	awk -v m="$1" 'NR > m && $6 == "\"GET" && $7 ~ /\/blobs\/sha256:/ { if (++c[$7] > max) max = c[$7] } END { print max + 0 }' "$WORK/upstream.access"
}
# up_summary MARK: the upstream's requests since line MARK, by method and kind.
up_summary() {
	awk -v m="$1" 'NR > m {
		u = $7; k = u == "/v2/" ? "/v2/" : u ~ /\/blobs\/uploads/ ? "upload" : u ~ /\/blobs\// ? "blob" : u ~ /\/manifests\// ? "manifest" : "other"
		c[substr($6, 2) " " k]++
	} END { for (x in c) print x "=" c[x] }' "$WORK/upstream.access" | sort | paste -sd, | sed 's/,/, /g; s/^$/none/'
}

# --- clients -----------------------------------------------------------------

# check N OUT WHAT: check_bodies against the BIG-byte blob.
check() { check_bodies "$1" "$2" "$3" "$BIG" "$BIG_LAYER"; }

# Results, by "scenario server" keys.
declare -A WALL=() GETS=() RSS=() RPS=() P99=() MBPS=() CPU=()

# --- 1. cold ------------------------------------------------------------------

COLD_ROW='  %-15s %-9s %7s %-9s %7s %6s  %-18s %7s %8s %6s %6s  %s\n'

# cold SCENARIO KIND N HASH: N clients at once fetch the uncached big blob from
# a fresh server of KIND on a fresh data dir, which is then stopped. A herd is
# then fetched again from the cache (again).
cold() {
	local scen=$1 kind=$2 n=$3 hash=$4 name=$1-$2 pid mark ns t0 t1 ok gets bytes missing bodies=discarded note=
	start_server "$kind" "$name"
	pid=${PID[$name]}
	settle
	mark=$(up_mark)
	recycle_memory "$BIG"
	sync
	t0=$(cpu_ticks "$pid")
	if [ "$scen" = herd ] && [ "$kind" = regmirror ]; then
		perf_start all herd
	fi
	ns=$(fetch "$n" "${URL[$name]}$BIG_PATH" "$WORK/$name" "$hash")
	perf_stop
	missing=$(wait_stored "$name" "$BIG_LAYER")
	[ "$missing" = 0 ] || note="; did not store the blob within 60 s"
	settle
	t1=$(cpu_ticks "$pid")
	ok=$(check "$n" "$WORK/$name" "cold $scen $kind")
	read -r gets bytes <<<"$(up_gets "$mark")"
	if [ "$kind" = regmirror ] && [ "$gets" != 1 ]; then
		fail "cold $scen regmirror: the upstream got $gets GETs of the blob, want 1 ($(up_summary "$mark"))"
	fi
	if [ "$hash" = 1 ]; then
		bodies="$ok/$n ok"
	fi
	WALL[$scen $kind]=$(secs "$ns")
	CPU[$scen $kind]=$(cpu_secs $((t1 - t0)))
	GETS[$scen $kind]=$gets
	RSS[$scen $kind]=$(hwm "$pid")
	# shellcheck disable=SC2059
	printf "$COLD_ROW" "$scen" "$kind" "$n" "$bodies" "${WALL[$scen $kind]}" "$(mbps $((BIG * n)) "$ns")" \
		"$(ttfbs "$n" "$WORK/$name" | spread)" "$gets" "$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')" \
		"${CPU[$scen $kind]}" "${RSS[$scen $kind]}" "$(up_summary "$mark")$note"
	if [[ $scen == herd* ]]; then
		again "$scen" "$kind" "$n" "$hash"
		if [ "$kind" = regmirror ]; then
			apart "$scen" "$kind" "$n" "$hash"
		fi
	fi
	stop_server "$name"
	rm -rf "${DATA[$name]}"
}

# again SCENARIO KIND N HASH: the same clients again against the same server,
# which now has the blob (the warm herd): what delivering these bodies costs on
# this machine without the upstream, the reference of the cold herd's wall time
# and mirror CPU.
again() {
	local scen=$1 kind=$2 n=$3 hash=$4 name=$1-$2 pid mark ns t0 t1 ok gets bytes bodies=discarded
	pid=${PID[$name]}
	mark=$(up_mark)
	sync
	t0=$(cpu_ticks "$pid")
	ns=$(fetch "$n" "${URL[$name]}$BIG_PATH" "$WORK/$name-again" "$hash")
	settle
	t1=$(cpu_ticks "$pid")
	ok=$(check "$n" "$WORK/$name-again" "$scen again $kind")
	read -r gets bytes <<<"$(up_gets "$mark")"
	if [ "$kind" = regmirror ] && [ "$gets" != 0 ]; then
		fail "$scen again regmirror: the upstream got $gets GETs of the blob, want 0"
	fi
	if [ "$hash" = 1 ]; then
		bodies="$ok/$n ok"
	fi
	WALL[$scen-again $kind]=$(secs "$ns")
	CPU[$scen-again $kind]=$(cpu_secs $((t1 - t0)))
	# shellcheck disable=SC2059
	printf "$COLD_ROW" "  again, cached" "$kind" "$n" "$bodies" "${WALL[$scen-again $kind]}" "$(mbps $((BIG * n)) "$ns")" \
		"$(ttfbs "$n" "$WORK/$name-again" | spread)" "$gets" "$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')" \
		"${CPU[$scen-again $kind]}" - "$(up_summary "$mark")"
}

# apart SCENARIO KIND N HASH: the warm herd once more, with bench/fill storing
# the blob from the upstream meanwhile (fill_beside): the cold herd's work done
# by two programs that do not coordinate, the reference that tells the cost
# of the work from the cost of coordinating it (CPU: the mirror's plus fill's).
apart() {
	local scen=$1 kind=$2 n=$3 hash=$4 name=$1-$2 pid mark out t0 t1 ok gets bytes bodies=discarded
	pid=${PID[$name]}
	mark=$(up_mark)
	recycle_memory "$BIG"
	sync
	t0=$(cpu_ticks "$pid")
	out=$(fill_beside "$UP_URL$BIG_PATH" "$WORK/filled" "$n" "${URL[$name]}$BIG_PATH" "$WORK/$name-apart" "$hash")
	settle
	t1=$(cpu_ticks "$pid")
	ok=$(check "$n" "$WORK/$name-apart" "$scen apart $kind")
	read -r gets bytes <<<"$(up_gets "$mark")"
	if [ "$hash" = 1 ]; then
		bodies="$ok/$n ok"
	fi
	WALL[$scen-apart $kind]=$(secs "${out% *}")
	CPU[$scen-apart $kind]=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v f="${out#* }" 'BEGIN { printf "%.2f", t / hz + f / 1e3 }')
	# shellcheck disable=SC2059
	printf "$COLD_ROW" "  again + fill" "$kind" "$n" "$bodies" "${WALL[$scen-apart $kind]}" "$(mbps $((BIG * n)) "${out% *}")" \
		"$(ttfbs "$n" "$WORK/$name-apart" | spread)" "$gets" "$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')" \
		"${CPU[$scen-apart $kind]}" - "$(up_summary "$mark") (bench/fill's; CPU s: the mirror's and fill's)"
}

# --- 2. warm ------------------------------------------------------------------

# warm NAME...: CLIENTS clients at once against each server in turn, ROUNDS
# times (interleaved, so drift on the machine affects all alike).
warm() {
	local name r ns t0 t1 bytes=$((BIG * CLIENTS * ROUNDS)) url
	local -A total=() rounds=() ticks=()
	for r in $(seq "$ROUNDS"); do
		for name in "$@"; do
			url=$NG_URL
			[ "$name" = nginx ] || url=${URL[$name]}$BIG_PATH
			sync
			t0=$(cpu_ticks "${PID[$name]}")
			ns=$(fetch "$CLIENTS" "$url" "$WORK/warm-$name-$r" 0)
			t1=$(cpu_ticks "${PID[$name]}")
			check "$CLIENTS" "$WORK/warm-$name-$r" "warm $name round $r" >/dev/null
			total[$name]=$((${total[$name]:-0} + ns))
			ticks[$name]=$((${ticks[$name]:-0} + t1 - t0))
			rounds[$name]+="$(secs "$ns") "
		done
	done
	printf '  %-10s %7s  %-20s %7s %9s\n' server "MB/s" "round times s" "CPU s" "CPU s/GB"
	for name in "$@"; do
		MBPS[$name]=$(mbps "$bytes" "${total[$name]}")
		printf '  %-10s %7s  %-20s %7s %9s\n' "$name" "${MBPS[$name]}" "${rounds[$name]}" \
			"$(cpu_secs "${ticks[$name]}")" "$(awk -v t="${ticks[$name]}" -v hz="$HZ" -v b="$bytes" 'BEGIN { printf "%.2f", t / hz / (b / 1e9) }')"
	done
}

# --- 3. manifests ---------------------------------------------------------------

LOAD_ROW='  %-22s %-16s %9s %8s %9s %9s  %s\n'

# load TOOL WHAT NAME URL: TOOL (hey: HEAD, wrk: GET) with CONNS connections for
# LOAD against URL on server NAME; records RPS and P99 under "WHAT NAME", and
# prints the server's CPU time per request.
load() {
	local tool=$1 what=$2 name=$3 url=$4 out mark rps p99 n t0 t1
	out=$WORK/$tool-$name.txt
	settle
	mark=$(up_mark)
	t0=$(cpu_ticks "${PID[$name]}")
	if [ "$what" = head-tag ] && [ "$name" = reg ]; then
		perf_start "${PID[$name]}" head
	fi
	read -r rps p99 n <<<"$(run_load "$tool" "$url" "$out" "$tool $what against $name")"
	perf_stop
	t1=$(cpu_ticks "${PID[$name]}")
	settle
	RPS[$what $name]=$rps
	P99[$what $name]=$p99
	# shellcheck disable=SC2059
	printf "$LOAD_ROW" "$what" "$name" "$rps" "$p99" "$n" \
		"$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f", t / hz / n * 1e6; else print "-" }')" "$(up_summary "$mark")"
}

# start_bare: bench/bare serving the manifest and media type regmirror answered
# prime_manifest with, under the same name and tag.
start_bare() {
	local port type
	port=$(free_port)
	type=$(awk 'tolower($1) == "content-type:" { print $2 }' "$WORK/manifest-reg.h" | tr -d '\r')
	"$WORK/bare" -addr "127.0.0.1:$port" -repo library/small -tag latest -manifest "$WORK/manifest-reg" -type "$type" 2>"$WORK/log-bare" &
	PID[bare]=$!
	PIDS+=("${PID[bare]}")
	URL[bare]=http://127.0.0.1:$port
	wait_http "${URL[bare]}/v2/" "${PID[bare]}" "$WORK/log-bare"
}

# prime_manifest NAME: GET library/small by tag through server NAME, and check it.
prime_manifest() {
	local name=$1 got sum
	got=$(curl -sS -D "$WORK/manifest-$name.h" -o "$WORK/manifest-$name" -w '%{http_code}' -H "Accept: $ACCEPT" \
		"${URL[$name]}/v2/library/small/manifests/latest") || true
	sum=sha256:$(openssl dgst -sha256 -r <"$WORK/manifest-$name" | cut -d' ' -f1)
	if [ "$got" != 200 ] || [ "$sum" != "$SMALL_MANIFEST" ]; then
		fail "GET library/small:latest from $name: status $got, body $sum, want 200 and $SMALL_MANIFEST"
	fi
	if ! grep -qi "^docker-content-digest: $SMALL_MANIFEST" "$WORK/manifest-$name.h"; then
		fail "GET library/small:latest from $name: no Docker-Content-Digest: $SMALL_MANIFEST"
	fi
}

# --- 4. crane -------------------------------------------------------------------

CRANE_ROW='  %-10s %-16s %8s %7s %7s  %s\n'

# crane_pull WHAT NAME HOST: one whole pull of library/fifty with crane.
crane_pull() {
	local what=$1 name=$2 host=$3 mark t0 t1 gets bytes max missing note=
	settle
	mark=$(up_mark)
	t0=$(now_ns)
	"$CRANE" pull --insecure "$host/library/fifty:latest" /dev/null >"$WORK/crane-$what-$name.out" 2>&1 ||
		fail "crane pull ($what) from $name: $(tail -n 3 "$WORK/crane-$what-$name.out")"
	t1=$(now_ns)
	if [ "$name" != upstream ]; then
		missing=$(wait_stored "$name" "${FIFTY_BLOBS[@]}")
		[ "$missing" = 0 ] || note="; $missing blobs not stored after 60 s"
	fi
	settle
	read -r gets bytes <<<"$(up_gets "$mark")"
	max=$(up_max_per_blob "$mark")
	if [ "$name" = reg ]; then
		if [ "$what" = cold ] && [ "$max" -gt 1 ]; then
			fail "crane cold pull through regmirror: a blob was downloaded $max times ($(up_summary "$mark"))"
		fi
		if [ "$what" = warm ] && [ "$gets" != 0 ]; then
			fail "crane warm pull through regmirror: the upstream got $gets blob GETs, want 0"
		fi
	fi
	WALL[crane-$what $name]=$(secs $((t1 - t0)))
	# shellcheck disable=SC2059
	printf "$CRANE_ROW" "$what" "$name" "${WALL[crane-$what $name]}" "$gets" "$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1e6 }')" "$(up_summary "$mark")$note"
}

# --- setup ------------------------------------------------------------------------

need curl curl
need jq jq
need ss iproute2
need nginx nginx
need openssl openssl
need docker-registry docker-registry
need wrk wrk
if [ "$PERF" = 1 ]; then
	need perf linux-perf
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

log "building regmirror, bench/seed, bench/bare and bench/fill; hey $HEY_VERSION and crane $CRANE_VERSION (Go module proxy)"
(cd "$REPO_ROOT" && go build -o "$WORK/regmirror" ./cmd/regmirror && go build -o "$WORK/seed" ./bench/seed && go build -o "$WORK/bare" ./bench/bare && go build -o "$WORK/fill" ./bench/fill)
(cd "$WORK" && GOBIN=$WORK/bin go install "github.com/rakyll/hey@$HEY_VERSION" &&
	GOBIN=$WORK/bin go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION")
HEY=$WORK/bin/hey
CRANE=$WORK/bin/crane

# The upstream.
UP_PORT=$(free_port)
UP_URL=http://127.0.0.1:$UP_PORT
registry_config "$WORK/upstream.yml" "127.0.0.1:$UP_PORT" "$WORK/data-upstream" on
docker-registry serve "$WORK/upstream.yml" >"$WORK/upstream.access" 2>"$WORK/log-upstream" &
PID[upstream]=$!
PIDS+=("${PID[upstream]}")
wait_http "$UP_URL/v2/" "${PID[upstream]}" "$WORK/log-upstream"

mkdir -p "$WORK/www"
log "seeding the upstream"
"$WORK/seed" -registry "127.0.0.1:$UP_PORT" -big "$BIG" -small "$SMALL" -layers "$LAYERS" -fifty "$FIFTY" \
	-blob-out "$WORK/www/blob" >"$WORK/seed.json" || die "seeding failed"
BIG_LAYER=$(jq -r '.big.layers[0]' "$WORK/seed.json")
SMALL_MANIFEST=$(jq -r '.small.manifest' "$WORK/seed.json")
mapfile -t FIFTY_BLOBS < <(jq -r '.fifty.config, .fifty.layers[]' "$WORK/seed.json")
BIG_PATH=/v2/library/big/blobs/$BIG_LAYER
[ "sha256:$(openssl dgst -sha256 -r <"$WORK/www/blob" | cut -d' ' -f1)" = "$BIG_LAYER" ] || die "the blob file does not hash to $BIG_LAYER"

# nginx, serving the same blob from a file.
start_nginx
PID[nginx]=$NG_PID

mode=full
[ "$SMOKE" = 1 ] && mode=smoke
echo "regmirror side by side with distribution's proxy and nginx ($mode), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
machine
echo "$(docker-registry --version | cut -d' ' -f2-), $("$NGINX" -v 2>&1 | cut -d' ' -f3), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), hey $HEY_VERSION, crane $("$CRANE" version), $(curl --version | head -n1 | cut -d' ' -f1-2), $(openssl version | cut -d' ' -f1-2)"
commit_line
echo "images: library/big $BIG bytes in one layer ($BIG_LAYER); library/small $SMALL bytes; library/fifty $LAYERS layers, $FIFTY bytes in all"
echo "clients $CLIENTS, rounds $ROUNDS, load $LOAD with $CONNS connections; MB = 10^6 bytes; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- 1 ----------------------------------------------------------------------------
echo
echo "1. cold: clients start the uncached big blob at once, each mirror fresh on an empty data dir"
echo "   (hashed: bodies piped to openssl dgst -sha256; up GETs/MB: the upstream's blob GETs and bytes sent;"
echo "    CPU s and RSS MB are the mirror's own, counted until the upstream is quiet)"
# shellcheck disable=SC2059
printf "$COLD_ROW" scenario server clients bodies "wall s" "MB/s" "TTFB ms min/med/max" "up GETs" "up MB" "CPU s" "RSS MB" "all upstream requests"
for spec in "herd $CLIENTS 1" "single 1 1" "herd-discard $CLIENTS 0" "single-discard 1 0"; do
	read -r scen n hash <<<"$spec"
	for kind in regmirror peer; do
		cold "$scen" "$kind" "$n" "$hash"
	done
done
echo "  herd/single wall time: regmirror $(ratio "${WALL[herd regmirror]}" "${WALL[single regmirror]}") (discarded $(ratio "${WALL[herd-discard regmirror]}" "${WALL[single-discard regmirror]}")), peer $(ratio "${WALL[herd peer]}" "${WALL[single peer]}") (discarded $(ratio "${WALL[herd-discard peer]}" "${WALL[single-discard peer]}"))"
# herd_ratios WHAT: the cold herd against the warm herd, for each server and both kinds of bodies.
herd_ratios() {
	local -n of=$1
	local k sep=' '
	for k in regmirror peer; do
		printf '%s%s %s (discarded %s)' "$sep" "$k" "$(ratio "${of[herd $k]}" "${of[herd-again $k]}")" "$(ratio "${of[herd-discard $k]}" "${of[herd-discard-again $k]}")"
		sep=', '
	done
}
echo "  cold herd/warm herd (the same clients again, from the cache), wall time:$(herd_ratios WALL); mirror CPU:$(herd_ratios CPU)"
echo "  apart/warm herd (again + fill: the same work done apart, the warm herd with bench/fill beside it), regmirror, wall time: $(ratio "${WALL[herd-apart regmirror]}" "${WALL[herd-again regmirror]}") (discarded $(ratio "${WALL[herd-discard-apart regmirror]}" "${WALL[herd-discard-again regmirror]}")); CPU: $(ratio "${CPU[herd-apart regmirror]}" "${CPU[herd-again regmirror]}") (discarded $(ratio "${CPU[herd-discard-apart regmirror]}" "${CPU[herd-discard-again regmirror]}"))"
echo "  regmirror/peer wall time: herd $(ratio "${WALL[herd regmirror]}" "${WALL[herd peer]}"), single $(ratio "${WALL[single regmirror]}" "${WALL[single peer]}"), herd-discard $(ratio "${WALL[herd-discard regmirror]}" "${WALL[herd-discard peer]}"), single-discard $(ratio "${WALL[single-discard regmirror]}" "${WALL[single-discard peer]}")"

# --- 2 ----------------------------------------------------------------------------
echo
echo "2. warm: $CLIENTS clients at once x $ROUNDS rounds of the cached big blob, bodies discarded, servers interleaved"
start_regmirror reg
start_peer peer
for name in reg peer; do
	fetch 1 "${URL[$name]}$BIG_PATH" "$WORK/prime-$name" 1 >/dev/null
	check 1 "$WORK/prime-$name" "priming GET from $name" >/dev/null
done
[ "$(wait_stored peer "$BIG_LAYER")" = 0 ] || fail "the peer did not store the big blob within 60 s of the priming GET"
settle
mark=$(up_mark)
reset_hwm "${PID[reg]}"
reset_hwm "${PID[peer]}"
perf_start "${PID[reg]}" warm
warm reg peer nginx
perf_stop
settle
RSS[warm regmirror]=$(hwm "${PID[reg]}")
RSS[warm peer]=$(hwm "${PID[peer]}")
read -r gets _ <<<"$(up_gets "$mark")"
[ "$gets" = 0 ] || fail "warm: the upstream got $gets blob GETs, want 0 ($(up_summary "$mark"))"
echo "  (reg is regmirror; CPU s is the server's user+system time, nginx's workers included)"
echo "  regmirror/nginx $(ratio "${MBPS[reg]}" "${MBPS[nginx]}"), regmirror/peer $(ratio "${MBPS[reg]}" "${MBPS[peer]}"), peer/nginx $(ratio "${MBPS[peer]}" "${MBPS[nginx]}"); upstream requests during the rounds: $(up_summary "$mark")"

# --- 3 ----------------------------------------------------------------------------
echo
echo "3. manifests of library/small, $CONNS connections for $LOAD each, Docker's Accept header"
echo "   (bare is bench/bare, net/http answering the same manifest with fixed headers from memory, run right before reg;"
echo "    reg-ttl0 is a regmirror with REGMIRROR_TAG_TTL=0s, which asks upstream for the tag every time, as the peer does;"
echo "    CPU us/req is the server's user+system time per request)"
start_regmirror reg-ttl0 REGMIRROR_TAG_TTL=0s
for name in reg peer reg-ttl0; do
	prime_manifest "$name"
done
start_bare
prime_manifest bare
reset_hwm "${PID[reg]}"
reset_hwm "${PID[peer]}"
# shellcheck disable=SC2059
printf "$LOAD_ROW" "request (tool)" server "req/s" "p99 ms" requests "CPU us/req" "upstream requests during the load"
for name in bare reg peer reg-ttl0; do
	load hey head-tag "$name" "${URL[$name]}/v2/library/small/manifests/latest"
done
for name in bare reg peer; do
	load wrk get-digest "$name" "${URL[$name]}/v2/library/small/manifests/$SMALL_MANIFEST"
done
RSS[manifests regmirror]=$(hwm "${PID[reg]}")
RSS[manifests peer]=$(hwm "${PID[peer]}")
stop_server reg-ttl0
stop_server bare
echo "  regmirror/bare req/s: HEAD by tag $(ratio "${RPS[head-tag reg]}" "${RPS[head-tag bare]}"), GET by digest $(ratio "${RPS[get-digest reg]}" "${RPS[get-digest bare]}")"
echo "  regmirror/peer req/s: HEAD by tag $(ratio "${RPS[head-tag reg]}" "${RPS[head-tag peer]}") (TAG_TTL=0s: $(ratio "${RPS[head-tag reg-ttl0]}" "${RPS[head-tag peer]}")), GET by digest $(ratio "${RPS[get-digest reg]}" "${RPS[get-digest peer]}")"
echo "  regmirror/peer p99: HEAD by tag $(ratio "${P99[head-tag reg]}" "${P99[head-tag peer]}"), GET by digest $(ratio "${P99[get-digest reg]}" "${P99[get-digest peer]}")"

# --- 4 ----------------------------------------------------------------------------
echo
echo "4. crane pull of library/fifty ($LAYERS layers) to /dev/null, cold (first pull through each mirror) then warm"
reset_hwm "${PID[reg]}"
reset_hwm "${PID[peer]}"
# shellcheck disable=SC2059
printf "$CRANE_ROW" pull server "wall s" "up GETs" "up MB" "all upstream requests"
for what in cold warm; do
	for name in reg peer; do
		crane_pull "$what" "$name" "${URL[$name]#http://}"
	done
done
crane_pull direct upstream "127.0.0.1:$UP_PORT"
RSS[crane regmirror]=$(hwm "${PID[reg]}")
RSS[crane peer]=$(hwm "${PID[peer]}")
echo "  regmirror/peer wall time: cold $(ratio "${WALL[crane-cold reg]}" "${WALL[crane-cold peer]}"), warm $(ratio "${WALL[crane-warm reg]}" "${WALL[crane-warm peer]}")"

# --- 5 ----------------------------------------------------------------------------
echo
echo "5. peak RSS (VmHWM, MB); herd: a fresh process; later phases: VmHWM reset at the start of each"
printf '  %-10s %6s %6s %10s %6s\n' server herd warm manifests crane
for kind in regmirror peer; do
	printf '  %-10s %6s %6s %10s %6s\n' "$kind" "${RSS[herd $kind]}" "${RSS[warm $kind]}" "${RSS[manifests $kind]}" "${RSS[crane $kind]}"
done

# --- targets ------------------------------------------------------------------------
met() { if [ "$1" = 1 ]; then echo met; else echo MISSED; fi; }
echo
echo "targets"
t=$(awk -v a="${MBPS[reg]}" -v b="${MBPS[nginx]}" 'BEGIN { print (a >= 0.9 * b) ? 1 : 0 }')
echo "  warm blob throughput >= 0.9x nginx: $(met "$t") ($(ratio "${MBPS[reg]}" "${MBPS[nginx]}")x: ${MBPS[reg]} vs ${MBPS[nginx]} MB/s)"
t=$(awk -v a="${RPS[head-tag reg]}" -v b="${RPS[head-tag peer]}" 'BEGIN { print (a >= 10 * b) ? 1 : 0 }')
echo "  manifest HEAD by tag >= 10x the peer's req/s: $(met "$t") ($(ratio "${RPS[head-tag reg]}" "${RPS[head-tag peer]}")x: ${RPS[head-tag reg]} vs ${RPS[head-tag peer]})"
t=$(awk -v a="${RPS[head-tag reg]}" -v b="${RPS[head-tag bare]}" 'BEGIN { print (a >= 0.85 * b) ? 1 : 0 }')
echo "  manifest HEAD by tag >= 0.85x a bare net/http handler in the same run: $(met "$t") ($(ratio "${RPS[head-tag reg]}" "${RPS[head-tag bare]}")x: ${RPS[head-tag reg]} vs ${RPS[head-tag bare]})"
hs=$(ratio "${WALL[herd regmirror]}" "${WALL[single regmirror]}")
t=$(awk -v g="${GETS[herd regmirror]}" -v r="$hs" 'BEGIN { print (g == 1 && r != "-" && r <= 1.2) ? 1 : 0 }')
echo "  cold herd: one upstream download and <= 1.2x one client alone: $(met "$t") (${GETS[herd regmirror]} upstream GET; ${hs}x: ${WALL[herd regmirror]} s vs ${WALL[single regmirror]} s; the same clients from the cache: ${WALL[herd-again regmirror]} s)"
hw=$(ratio "${WALL[herd regmirror]}" "${WALL[herd-again regmirror]}")
t=$(awk -v r="$hw" 'BEGIN { print (r != "-" && r <= 1.15) ? 1 : 0 }')
echo "  cold herd wall <= 1.15x the warm herd's (the same clients from the cache): $(met "$t") (${hw}x: ${WALL[herd regmirror]} s vs ${WALL[herd-again regmirror]} s; the same work done apart, the warm herd with bench/fill beside it: $(ratio "${WALL[herd-apart regmirror]}" "${WALL[herd-again regmirror]}")x)"
hc=$(ratio "${CPU[herd regmirror]}" "${CPU[herd-again regmirror]}")
t=$(awk -v r="$hc" 'BEGIN { print (r != "-" && r <= 2.5) ? 1 : 0 }')
echo "  cold herd mirror CPU <= 2.5x the warm herd's: $(met "$t") (${hc}x: ${CPU[herd regmirror]} s vs ${CPU[herd-again regmirror]} s; the same work done apart, the warm herd with bench/fill beside it: $(ratio "${CPU[herd-apart regmirror]}" "${CPU[herd-again regmirror]}")x)"
maxrss=0
for p in herd warm manifests crane; do
	[ "${RSS[$p regmirror]}" -gt "$maxrss" ] && maxrss=${RSS[$p regmirror]}
done
t=$([ "$maxrss" -lt 100 ] && echo 1 || echo 0)
echo "  peak RSS < 100 MB in every scenario: $(met "$t") (regmirror's highest: $maxrss MB)"

if [ "$PERF" = 1 ]; then
	for f in "${PERFS[@]}"; do
		comms=()
		if [ "$f" = herd ]; then
			echo
			echo "perf (herd, every process on the machine): CPU time by command"
			perf report -i "$WORK/herd.perf" --no-children --sort comm --stdio -q -g none 2>/dev/null |
				awk 'NF && n++ < 8 { printf "  %s %s\n", $1, $2 }'
			comms=(--comms regmirror --percentage relative)
		fi
		echo
		echo "perf ($f): where regmirror's CPU time went, by object, then the top symbols (self time)"
		perf report -i "$WORK/$f.perf" "${comms[@]}" --no-children --sort dso --stdio -q -g none 2>/dev/null |
			awk 'NF && n++ < 4 { printf "  %s %s\n", $1, $2 }'
		perf report -i "$WORK/$f.perf" "${comms[@]}" --no-children --sort dso,symbol --stdio -q -g none 2>/dev/null |
			awk 'NF && n++ < 20 { printf "  %-7s %-18s %s\n", $1, $2, $4 }'
	done
fi

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
logs=$(cat "$WORK"/log-reg* "$WORK"/log-*-regmirror 2>/dev/null || true)
if [ -n "$logs" ]; then
	echo "regmirror logged at warn or above (first 10 lines):"
	head -n 10 <<<"$logs" | cut -c1-300 | sed 's/^/  /'
fi
logs=$(grep -hv -e 'No HTTP secret' -e 'RempositoryRemover' "$WORK"/log-peer* "$WORK"/log-*-peer 2>/dev/null | grep -c . || true)
echo "the peer logged $logs lines at warn or above besides its two start-up warnings"
if [ -s "$WORK/failures" ]; then
	echo
	echo "FAILED checks:"
	sed 's/^/  /' "$WORK/failures"
	exit 1
fi
echo "all checks passed"
