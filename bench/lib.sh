# shellcheck shell=bash
# Shared by the bench scripts: source it, don't run it.

# bench_init PREFIX: REPO_ROOT, a temp dir WORK (regmirror-PREFIX.*) and PIDS.
# On exit the script's cleanup_extra runs, if it defines one, then every pid
# in PIDS is stopped and WORK removed.
bench_init() {
	# shellcheck disable=SC2034 # used by the scripts that source this file
	REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/regmirror-$1.XXXXXX")
	PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

bench_cleanup() {
	local p
	if declare -F cleanup_extra >/dev/null; then
		cleanup_extra
	fi
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$WORK"
}

die() { log "$(basename "$0"): $*"; exit 1; }

# free_port prints a TCP port that no socket uses at the moment, below the
# kernel's ephemeral range, so that no client connection can take it before
# the server binds it (the herds open many connections).
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
		if ! ss -Htan "sport = :$p" | grep -q .; then
			echo "$p"
			return
		fi
	done
}

log() { printf '%s\n' "$*" >&2; }

# fail records a failed check; it works in subshells too, and the script exits 1 at the end.
fail() {
	log "FAIL: $*"
	echo "$*" >>"$WORK/failures"
}

# need CMD PKG: install the Debian package PKG if CMD is missing.
APT_UPDATED=0
need() {
	if command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; then
		return
	fi
	log "installing $2 (apt-get)"
	if [ "$APT_UPDATED" = 0 ]; then
		apt-get update -qq >&2
		APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >&2
}

now_ns() { date +%s%N; }

secs() { awk -v ns="$1" 'BEGIN { printf "%.2f", ns / 1e9 }'; }

mbps() { awk -v b="$1" -v ns="$2" 'BEGIN { printf "%.0f", b / 1e6 / (ns / 1e9) }'; }

# fetch N URL OUT HASH: N curl clients at once. OUT.i gets each client's curl
# errors and, as its last line, "status ttfb total bytes". With HASH=1 the body
# is piped to openssl and OUT.i.sum gets its sha256; otherwise it is discarded.
# Prints the wall time in ns, from the start of the first to the end of the last.
fetch() {
	local n=$1 url=$2 out=$3 hash=$4 i start pids=()
	local fmt='%{http_code} %{time_starttransfer} %{time_total} %{size_download}\n'
	start=$(now_ns)
	for i in $(seq "$n"); do
		if [ "$hash" = 1 ]; then
			(curl -sS -w "%{stderr}$fmt" "$url" 2>"$out.$i" | openssl dgst -sha256 -r >"$out.$i.sum") &
		else
			curl -sS -o /dev/null -w "$fmt" "$url" >"$out.$i" 2>&1 &
		fi
		pids+=($!)
	done
	for i in "${pids[@]}"; do
		wait "$i" || true
	done
	echo $(($(now_ns) - start))
}

# fill_beside FILLURL DIR N URL OUT HASH: a cold herd's work done apart. The
# herd of fetch N URL OUT HASH, from a mirror that has the blob, with
# bench/fill (built as WORK/fill) storing FILLURL in DIR meanwhile: the
# download, hash and write of a cold herd, done by a program of their own. Prints "NS CPU":
# the wall time until both ended, and fill's own CPU in ms.
fill_beside() {
	local start fpid
	mkdir -p "$2"
	start=$(now_ns)
	"$WORK/fill" -url "$1" -dir "$2" >"$WORK/fill.out" &
	fpid=$!
	fetch "$3" "$4" "$5" "$6" >/dev/null
	wait "$fpid" || fail "bench/fill of $1 failed"
	echo "$(($(now_ns) - start)) $(awk '{ c = $4 } END { printf "%d", c / 1e6 }' "$WORK/fill.out")"
	rm -rf "$2"
}

# ttfbs N OUT: the clients' times to first byte in ms, in client order.
ttfbs() {
	local i
	for i in $(seq "$1"); do
		tail -n1 "$2.$i" | awk '{ printf "%.1f ", $2 * 1000 }'
	done
}

# spread: "min/median/max" of the numbers on stdin.
spread() {
	tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 }
		END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f/%.1f/%.1f", v[1], m, v[NR] }'
}

# hwm PID: peak RSS in MB; reset_hwm PID starts a new peak (clear_refs 5).
hwm() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || log "note: cannot reset VmHWM of $1"; }

# wait_http URL PID LOG: wait up to 30 s for URL to answer 200 while PID lives.
wait_http() {
	for _ in $(seq 300); do
		if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ]; then
			return
		fi
		kill -0 "$2" 2>/dev/null || break
		sleep 0.1
	done
	die "$1 did not answer 200 within 30s; its log: $(tail -c 2000 "$3")"
}

# start_nginx: nginx (NGINX, the binary) serving WORK/www with sendfile on a
# free port, the reference for disk and loopback speed. Sets NG_PID and
# NG_URL (WORK/www/blob) and adds the pid to PIDS.
start_nginx() {
	local port
	port=$(free_port)
	mkdir -p "$WORK/nginx"
	chmod 755 "$WORK" "$WORK/www"
	cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 256; }
http {
	sendfile on;
	tcp_nopush on;
	access_log off;
	client_body_temp_path $WORK/nginx/tmp;
	proxy_temp_path $WORK/nginx/tmp;
	fastcgi_temp_path $WORK/nginx/tmp;
	uwsgi_temp_path $WORK/nginx/tmp;
	scgi_temp_path $WORK/nginx/tmp;
	server {
		listen 127.0.0.1:$port;
		root $WORK/www;
	}
}
EOF
	"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr" &
	NG_PID=$!
	PIDS+=("$NG_PID")
	NG_URL=http://127.0.0.1:$port/blob
	wait_http "$NG_URL" "$NG_PID" "$WORK/nginx/error.log"
}

# check_bodies N OUT WHAT SIZE DIGEST: every client (curl output OUT.1 … OUT.N,
# its last line "code … … bytes") got 200 and SIZE bytes and, where it hashed
# (OUT.i.sum), a body that hashes to DIGEST. Prints how many bodies matched.
check_bodies() {
	local i code bytes sum ok=0
	for i in $(seq "$1"); do
		read -r code _ _ bytes < <(tail -n1 "$2.$i")
		if [ "${code:-}" != 200 ] || [ "${bytes:-}" != "$4" ]; then
			fail "$3 client $i: status ${code:-none}, ${bytes:-0} bytes, want 200 and $4; curl said: $(head -c 300 "$2.$i")"
		fi
		if [ -f "$2.$i.sum" ]; then
			sum=sha256:$(cut -d' ' -f1 "$2.$i.sum")
			if [ "$sum" = "$5" ]; then
				ok=$((ok + 1))
			else
				fail "$3 client $i: body hashes to $sum, want $5"
			fi
		fi
	done
	echo "$ok"
}

# recycle_memory BYTES: write BYTES to a file in large pieces and BYTES in 4 KiB
# pieces to another, and remove both, so that the page cache a cold download
# then fills is memory the hypervisor already backs, in large folios and in
# single pages alike (the mirror's writes take either). In this VM memory
# freed for a few seconds goes back to the host, and touching it again costs
# far more than the write into it: dd of 100 MB to a new file takes 0.28-0.32 s
# of system time then, 0.05-0.12 s right after a file was removed
# (bench/RESULTS.md, "Cold herd against warm herd"). Without it that cost
# lands at random in a cold herd's CPU. Harmless elsewhere.
recycle_memory() {
	dd if=/dev/zero of="$WORK/recycle" bs=256k count=$(($1 / 262144 + 1)) 2>/dev/null
	dd if=/dev/zero of="$WORK/recycle.small" bs=4k count=$(($1 / 4096 + 1)) 2>/dev/null
	rm -f "$WORK/recycle" "$WORK/recycle.small"
}

# perf_start PID NAME: with PERF=1, profile PID (or with "all", every process)
# into WORK/NAME.perf until perf_stop. PERFS lists the profiles taken.
PERF_PID=
PERFS=()
perf_start() {
	PERF_PID=
	if [ "${PERF:-0}" = 1 ]; then
		if [ "$1" = all ]; then
			perf record -q -F "${PERF_FREQ:-999}" -g -a -o "$WORK/$2.perf" >/dev/null 2>&1 &
		else
			perf record -q -F "${PERF_FREQ:-999}" -g -p "$1" -o "$WORK/$2.perf" >/dev/null 2>&1 &
		fi
		PERF_PID=$!
		PIDS+=("$PERF_PID")
		PERFS+=("$2")
		sleep 0.5 # let perf attach
	fi
}
perf_stop() {
	if [ -n "$PERF_PID" ]; then
		kill -INT "$PERF_PID"
		wait "$PERF_PID" 2>/dev/null || true
		PERF_PID=
	fi
}

# registry_config FILE ADDR ROOT ACCESSLOG [REMOTEURL]: a config of Debian's
# docker-registry (distribution 2.8) serving ROOT on ADDR, its access log on
# when ACCESSLOG is on; with REMOTEURL, a pull-through proxy of it.
registry_config() {
	local disabled=true
	[ "$4" = on ] && disabled=false
	cat >"$1" <<CONF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: $disabled
storage:
  filesystem:
    rootdirectory: $3
  cache:
    blobdescriptor: inmemory
http:
  addr: $2
  secret: regmirror-bench-$(basename "$1" .yml)
CONF
	if [ -n "${5:-}" ]; then
		printf 'proxy:\n  remoteurl: %s\n' "$5" >>"$1"
	fi
}

# ratio A B: A/B to two decimals, or - when either is missing or B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

# ms VALUE: wrk's latency (95.00us, 1.23ms, 1.02s) in ms.
ms() {
	awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}

# The Accept header Docker sends for manifests.
# shellcheck disable=SC2034 # used by the scripts that source this file
ACCEPT='application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json'

# run_load TOOL URL OUT LABEL: TOOL (hey: HEAD, wrk: GET) with CONNS connections
# for LOAD against URL with Docker's Accept, its output in OUT. Prints
# "req/s p99-ms requests"; errors and answers other than 200 are failures
# named LABEL. HEY is hey's binary.
run_load() {
	local tool=$1 url=$2 out=$3 label=$4 rps p99 n bad
	if [ "$tool" = hey ]; then
		"$HEY" -z "$LOAD" -c "$CONNS" -m HEAD -A "$ACCEPT" "$url" >"$out" 2>&1 || fail "$label: hey exited non-zero: $(tail -n 5 "$out")"
		rps=$(awk '/Requests\/sec:/ { printf "%.0f", $2 }' "$out")
		p99=$(awk '$1 ~ /^99%/ && $2 == "in" { printf "%.2f", $3 * 1000 }' "$out") # hey prints "99%% in"
		n=$(awk '/^ *\[[0-9]+\]/ { n += $2 } END { print n + 0 }' "$out")
		bad=$(awk '/^ *\[[0-9]+\]/ && $1 != "[200]" { b += $2 } END { print b + 0 }' "$out")
		if grep -q 'Error distribution' "$out"; then
			fail "$label: errors: $(sed -n '/Error distribution/,$p' "$out" | head -n 5 | tr '\n' ' ')"
		fi
	else
		wrk -t2 -c"$CONNS" -d"$LOAD" --latency -H "Accept: $ACCEPT" "$url" >"$out" 2>&1 || fail "$label: wrk exited non-zero: $(tail -n 5 "$out")"
		rps=$(awk '/Requests\/sec:/ { printf "%.0f", $2 }' "$out")
		p99=$(ms "$(awk '$1 == "99%" { print $2 }' "$out")")
		n=$(awk '/requests in/ { print $1 }' "$out")
		bad=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
		bad=${bad:-0}
		if grep -q 'Socket errors' "$out"; then
			log "note: $label: $(grep 'Socket errors' "$out")"
		fi
	fi
	[ "$bad" = 0 ] || fail "$label: $bad of $n responses were not 200"
	echo "${rps:--} ${p99:--} ${n:--}" # a figure hey did not print (too few requests for a p99) stays in its column
}

# settle_on FN: wait (at most 60 s) until what FN prints (a count of
# requests) has not changed for SETTLE tenths of a second.
settle_on() {
	local last cur quiet=0
	last=$("$1")
	for _ in $(seq 600); do
		sleep 0.1
		cur=$("$1")
		if [ "$cur" = "$last" ]; then
			quiet=$((quiet + 1))
			[ "$quiet" -ge "$SETTLE" ] && return
		else
			quiet=0
			last=$cur
		fi
	done
}

# The servers of run.sh and s3.sh by name: their kind (regmirror or peer),
# pid, base URL, data dir.
declare -A KIND=() PID=() URL=() DATA=()

# start_regmirror NAME [VAR=VALUE...]: the regmirror built at WORK/regmirror
# on a fresh data dir, in front of UP_URL, with the settings given last winning.
start_regmirror() {
	local name=$1 port
	shift
	port=$(free_port)
	DATA[$name]=$WORK/data-$name
	env REGMIRROR_ADDR="127.0.0.1:$port" REGMIRROR_ADMIN_ADDR=off REGMIRROR_MIN_FREE=0 REGMIRROR_DATA_DIR="${DATA[$name]}" REGMIRROR_UPSTREAM="$UP_URL" \
		REGMIRROR_LOG_LEVEL=warn "$@" "$WORK/regmirror" 2>"$WORK/log-$name" &
	PID[$name]=$!
	PIDS+=("${PID[$name]}")
	KIND[$name]=regmirror
	URL[$name]=http://127.0.0.1:$port
	wait_http "${URL[$name]}/v2/" "${PID[$name]}" "$WORK/log-$name"
}

# stop_server NAME: stop a server started by name, and wait for it.
stop_server() {
	kill "${PID[$1]}" 2>/dev/null || true
	wait "${PID[$1]}" 2>/dev/null || true
}

# --- an S3 server for the bucket benchmarks (s3.sh, replicas.sh) ---------------

# start_s3 ROOT BUCKET...: versitygw (posix backend) serving ROOT, a bucket
# per directory, with credentials S3_ACCESS/S3_SECRET, behind bench/s3proxy
# (WORK/s3proxy), which holds every request DELAY and counts them by
# operation. Sets S3_URL (what servers talk to) and S3_CTL (the counts).
start_s3() {
	local root=$1 b vgw proxy ctl
	shift
	for b in "$@"; do mkdir -p "$root/$b"; done
	vgw=$(free_port)
	ROOT_ACCESS_KEY=$S3_ACCESS ROOT_SECRET_KEY=$S3_SECRET versitygw --port "127.0.0.1:$vgw" --quiet posix "$root" >"$WORK/log-versitygw" 2>&1 &
	PIDS+=($!)
	proxy=$(free_port)
	ctl=$(free_port)
	"$WORK/s3proxy" -listen "127.0.0.1:$proxy" -target "127.0.0.1:$vgw" -delay "$DELAY" -control "127.0.0.1:$ctl" >"$WORK/log-s3proxy" 2>&1 &
	PIDS+=($!)
	S3_URL=http://127.0.0.1:$proxy
	S3_CTL=http://127.0.0.1:$ctl
	wait_http "$S3_CTL/counts" "$!" "$WORK/log-s3proxy"
	for _ in $(seq 300); do # versitygw answers 403 to an unsigned request once it is up
		[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$vgw/" || true)" = 403 ] && break
		sleep 0.1
	done
}

# s3_versions: the versions of the bucket benches' servers, versitygw and
# Debian's docker-registry (distribution), for a run's header.
s3_versions() {
	local vgw
	vgw=$(go version -m "$(command -v versitygw)" 2>/dev/null | awk '$1 == "mod" { print $3 }')
	echo "versitygw ${vgw:-unknown}, $(docker-registry --version | cut -d' ' -f2-)"
}

# s3_counts: the proxy's counts since the last reset, "Op=n, Op=n" by name.
s3_counts() {
	curl -sS "$S3_CTL/counts" | jq -r 'to_entries | sort_by(.key) | map("\(.key)=\(.value)") | join(", ") | if . == "" then "none" else . end'
}
s3_total() { curl -sS "$S3_CTL/counts" | jq '[.[]] | add // 0'; }
s3_reset() { curl -sS -X POST "$S3_CTL/reset"; }
# s3_settle: wait (at most 60 s) until no S3 request came for SETTLE tenths of a second.
s3_settle() { settle_on s3_total; }

# s3_peer NAME BUCKET REMOTEURL: Debian's docker-registry (distribution 2.8)
# as a pull-through proxy of REMOTEURL with its storage in BUCKET of S3_URL
# (the s3-aws driver, redirects off: it would send clients to presigned URLs
# of the bucket otherwise), on a free port. Prints "PID URL" once it answers.
s3_peer() {
	local name=$1 port
	port=$(free_port)
	cat >"$WORK/$name.yml" <<CONF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: $S3_ACCESS
    secretkey: $S3_SECRET
    region: us-east-1
    regionendpoint: $S3_URL
    bucket: $2
    secure: false
    v4auth: true
    rootdirectory: /
  redirect:
    disable: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: regmirror-bench-$name
proxy:
  remoteurl: $3
CONF
	# distribution's S3 driver panics at start when AWS_CA_BUNDLE is set.
	env -u AWS_CA_BUNDLE docker-registry serve "$WORK/$name.yml" >"$WORK/log-$name" 2>&1 &
	wait_http "http://127.0.0.1:$port/v2/" "$!" "$WORK/log-$name"
	echo "$! http://127.0.0.1:$port"
}

# smoke_mode ARGS…: SMOKE=1 for --smoke, 0 for no argument, usage otherwise.
smoke_mode() {
	SMOKE=0
	case "${1:-}" in
	--smoke) SMOKE=1 ;;
	"") ;;
	*)
		echo "usage: bench/$(basename "$0") [--smoke]" >&2
		exit 2
		;;
	esac
}

# start_upstream SIZE [ARGS…]: bench/upstream (built into $WORK) on a free
# port with its blob of SIZE bytes; sets UP_PORT, UP_URL, UP_PID and DIGEST.
start_upstream() {
	local size=$1
	shift
	UP_PORT=$(free_port)
	UP_URL=http://127.0.0.1:$UP_PORT
	"$WORK/upstream" -addr "127.0.0.1:$UP_PORT" -size "$size" "$@" >"$WORK/upstream.out" 2>"$WORK/upstream.log" &
	UP_PID=$!
	PIDS+=("$UP_PID")
	for _ in $(seq 600); do
		[ -s "$WORK/upstream.out" ] && break
		kill -0 "$UP_PID" 2>/dev/null || die "upstream exited: $(cat "$WORK/upstream.log")"
		sleep 0.1
	done
	DIGEST=$(head -n1 "$WORK/upstream.out")
	[[ $DIGEST == sha256:* ]] || die "upstream printed no digest: $(cat "$WORK/upstream.log")"
}

# machine: the line naming the machine a run measured (cores, memory, kernel, Go).
machine() {
	echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), $(go version | cut -d' ' -f3)"
}

# commit_line: the commit a run measured and how many paths outside bench/
# differ from it.
commit_line() {
	local changed
	changed=$(git -C "$REPO_ROOT" status --porcelain -- . ':(exclude)bench' 2>/dev/null | wc -l)
	echo "regmirror at commit $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), $changed uncommitted paths outside bench/"
}
