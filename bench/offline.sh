#!/usr/bin/env bash
# bench/offline.sh: a warm pull through the mirror, with the upstream up and down.
#
#   bench/offline.sh          # from the repository root (or anywhere); run as root
#
# It builds regmirror, bench/upstream and bench/offlinepull, starts the upstream
# and the mirror on free loopback ports with temp dirs, seeds an image of LAYERS
# layers (SIZE bytes in all) upstream, pulls it once through the mirror to
# cache it, and then times PULLS whole pulls of it (bench/offlinepull: ggcr's
# remote, a new client per pull, manifest by tag, config and layers three at a
# time, every byte read and digest-checked) in three phases:
#   online:  REGMIRROR_TAG_TTL=0s, upstream up: each pull revalidates the tag
#            with a HEAD upstream, and gets everything else from the cache
#   offline: the same mirror after the upstream process is killed (its port
#            closed): one pull that finds out, then PULLS timed pulls, then
#            pulls back to back for SOAK seconds, to see the probe's attempts
#   fresh:   for reference, the mirror restarted with REGMIRROR_TAG_TTL=1h on
#            the same data dir: the tag is fresh, upstream is never asked
#   blackhole: (with iptables) the mirror restarted with REGMIRROR_TAG_TTL=0s and
#            REGMIRROR_UPSTREAM_TIMEOUT=5s while SYNs to the upstream's port are
#            dropped, as when a network link is down: the first pull waits out
#            the timeout, then PULLS timed pulls
# and counts the mirror's connection attempts (TCP SYNs) to the upstream's port
# in each phase with an iptables rule (root only; without it they are not
# counted). Settings (environment): LAYERS (50), SIZE (5000000), PULLS (20),
# SOAK (seconds, 10).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" # free_port, fetch, need, log …

LAYERS=${LAYERS:-50}
SIZE=${SIZE:-5000000}
PULLS=${PULLS:-20}
SOAK=${SOAK:-10}

bench_init offline
RULE=()
DROP=()

# cleanup_extra removes the iptables rules this script added.
cleanup_extra() {
	if [ "${#DROP[@]}" -gt 0 ]; then
		iptables -D "${DROP[@]}" 2>/dev/null || true
	fi
	if [ "${#RULE[@]}" -gt 0 ]; then
		iptables -D "${RULE[@]}" 2>/dev/null || true
	fi
}

# start_mirror TAG_TTL LOGFILE [UPSTREAM_TIMEOUT]: regmirror on WORK/data; sets
# MIRROR_PID, MIRROR_HOST.
start_mirror() {
	local port
	port=$(free_port)
	REGMIRROR_ADDR=127.0.0.1:$port REGMIRROR_ADMIN_ADDR=off REGMIRROR_MIN_FREE=0 REGMIRROR_DATA_DIR=$WORK/data REGMIRROR_UPSTREAM=$UP_URL \
		REGMIRROR_TAG_TTL=$1 REGMIRROR_UPSTREAM_TIMEOUT=${3:-30s} REGMIRROR_LOG_LEVEL=warn "$WORK/regmirror" 2>"$2" &
	MIRROR_PID=$!
	PIDS+=("$MIRROR_PID")
	MIRROR_HOST=127.0.0.1:$port
	wait_http "http://$MIRROR_HOST/v2/" "$MIRROR_PID" "$2"
}

stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# syns: TCP SYNs sent to the upstream's port since the rule went in, or "n/a".
syns() {
	if [ "${#RULE[@]}" -eq 0 ]; then
		echo n/a
		return
	fi
	iptables -L OUTPUT -v -x -n | awk -v c="regmirror-offline-$UP_PORT" '$0 ~ c { print $1; found = 1 } END { if (!found) print "n/a" }'
}

# delta A B: B - A, or n/a when either is.
delta() {
	if [ "$1" = n/a ] || [ "$2" = n/a ]; then
		echo n/a
	else
		echo $(($2 - $1))
	fi
}

# counts: the upstream's request counts, "METHOD /path=n, …".
counts() {
	curl -sf "$UP_URL/_counts" | jq -r 'to_entries | map("\(.key)=\(.value)") | join(", ")'
}

# timed NAME [FLAGS]: PULLS pulls through the mirror (or as FLAGS say); prints
# the summary line and keeps every line in WORK/NAME.out.
timed() {
	local name=$1
	shift
	"$WORK/offlinepull" pull -registry "$MIRROR_HOST" -image library/fifty:latest -want "$DIGEST" -n "$PULLS" "$@" \
		>"$WORK/$name.out" 2>&1 || die "$name pulls failed: $(tail -n 5 "$WORK/$name.out")"
	tail -n 1 "$WORK/$name.out"
}

# --- setup ---------------------------------------------------------------

for c in curl jq ss; do
	command -v "$c" >/dev/null || die "$c is needed (Debian: curl, jq, iproute2)"
done

log "building regmirror, bench/upstream and bench/offlinepull"
(cd "$REPO_ROOT" && go build -o "$WORK/regmirror" ./cmd/regmirror && go build -o "$WORK/upstream" ./bench/upstream &&
	go build -o "$WORK/offlinepull" ./bench/offlinepull)

# bench/upstream's own blob (library/big) is not used here: keep it tiny.
start_upstream 1000
DIGEST=$("$WORK/offlinepull" seed -registry "127.0.0.1:$UP_PORT" -image library/fifty:latest -layers "$LAYERS" -size "$SIZE")
[[ $DIGEST == sha256:* ]] || die "seeding printed no digest: $DIGEST"

if [ "$(id -u)" = 0 ] && command -v iptables >/dev/null &&
	iptables -I OUTPUT -o lo -p tcp --dport "$UP_PORT" --syn -m comment --comment "regmirror-offline-$UP_PORT" 2>/dev/null; then
	RULE=(OUTPUT -o lo -p tcp --dport "$UP_PORT" --syn -m comment --comment "regmirror-offline-$UP_PORT")
else
	log "note: not root or no iptables: connection attempts are not counted"
fi

echo "regmirror offline benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), $(go version | cut -d' ' -f3)"
changed=$(git -C "$REPO_ROOT" status --porcelain -- . ':(exclude)bench' ':(exclude)test' 2>/dev/null | wc -l)
echo "regmirror at commit $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), $changed uncommitted paths outside bench/ and test/"
echo "image library/fifty:latest $DIGEST: $LAYERS layers, $SIZE bytes in all; $PULLS timed pulls per phase"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

start_mirror 0s "$WORK/mirror.log"
"$WORK/offlinepull" pull -registry "$MIRROR_HOST" -image library/fifty:latest -want "$DIGEST" -n 1 >"$WORK/cold.out" 2>&1 ||
	die "cold pull failed: $(cat "$WORK/cold.out")"
echo
echo "cold pull (fills the cache):   $(head -n 1 "$WORK/cold.out")"

curl -sf -X DELETE "$UP_URL/_counts" >/dev/null
s0=$(syns)
echo "online  (TAG_TTL=0s, upstream up):     $(timed online)"
s1=$(syns)
echo "        upstream requests: $(counts)"
echo "        connection attempts to the upstream: $(delta "$s0" "$s1")"

stop "$UP_PID"
s2=$(syns)
t_fail=$(date +%s%N)
"$WORK/offlinepull" pull -registry "$MIRROR_HOST" -image library/fifty:latest -want "$DIGEST" -n 1 >"$WORK/first.out" 2>&1 ||
	die "the first pull with the upstream down failed: $(cat "$WORK/first.out")"
s3=$(syns)
echo "first pull after the upstream went away: $(head -n 1 "$WORK/first.out"); connection attempts: $(delta "$s2" "$s3")"
t0=$(date +%s%N)
echo "offline (TAG_TTL=0s, port closed):     $(timed offline)"
t1=$(date +%s%N)
s4=$(syns)
echo "        connection attempts to the upstream: $(delta "$s3" "$s4") in $(secs $((t1 - t0))) s"
echo "soak    (the same, back to back for ${SOAK} s): $(timed soak -for "${SOAK}s")"
t2=$(date +%s%N)
s5=$(syns)
echo "        connection attempts to the upstream: $(delta "$s4" "$s5"); from the first failure to the end of the soak: $(delta "$s2" "$s5") in $(secs $((t2 - t_fail))) s"
echo "        (the probe asks GET /v2/ 1, 3, 7, 15, 31 s … after the first failure, then every 30 s)"

stop "$MIRROR_PID"
start_mirror 1h "$WORK/mirror-fresh.log"
s6=$(syns)
echo "fresh   (TAG_TTL=1h, upstream down):   $(timed fresh)"
s7=$(syns)
echo "        connection attempts to the upstream: $(delta "$s6" "$s7")"
stop "$MIRROR_PID"

if [ "${#RULE[@]}" -gt 0 ]; then
	DROP=(OUTPUT -o lo -p tcp --dport "$UP_PORT" --syn -j DROP -m comment --comment "regmirror-offline-drop-$UP_PORT")
	iptables -A "${DROP[@]}" # after the counting rule, which still sees every SYN
	start_mirror 0s "$WORK/mirror-blackhole.log" 5s
	s8=$(syns)
	"$WORK/offlinepull" pull -registry "$MIRROR_HOST" -image library/fifty:latest -want "$DIGEST" -n 1 >"$WORK/blackhole-first.out" 2>&1 ||
		die "the first pull with SYNs dropped failed: $(cat "$WORK/blackhole-first.out")"
	s9=$(syns)
	echo "blackhole, first pull (UPSTREAM_TIMEOUT=5s, SYNs dropped): $(head -n 1 "$WORK/blackhole-first.out"); SYN packets: $(delta "$s8" "$s9") (the kernel resends an unanswered SYN)"
	echo "blackhole (the same mirror, then):     $(timed blackhole)"
	s10=$(syns)
	echo "        SYN packets to the upstream: $(delta "$s9" "$s10")"
	stop "$MIRROR_PID"
fi

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "regmirror logged at warn or above (first 10 lines):"
cat "$WORK"/mirror*.log | head -n 10 | cut -c1-300 | sed 's/^/  /'
