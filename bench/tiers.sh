#!/usr/bin/env bash
# Mirrors of mirrors: one whole pull of a 50-layer image with crane, cold and
# warm, through site → regional → origin against site → origin, everything on
# 127.0.0.1 (issue 16).
#
#   bash bench/tiers.sh            # 50 layers of 1 MB
#   LAYERS=50 FIFTY=200000000 bash bench/tiers.sh
#
# The origin is Debian's docker-registry (filesystem storage), seeded by
# bench/seed; every mirror is the regmirror built from this repository, each
# on its own data dir. Rows:
#
#   direct      crane → origin
#   site        crane → site → origin                     (cold, then warm)
#   tiered      crane → site → regional → origin           (all cold, then warm)
#   tiered/rw   crane → a new site → the warm regional → origin (site cold, regional warm)
#
# crane is installed from the Go module proxy into the temp dir.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_init tiers

LAYERS=${LAYERS:-50}
FIFTY=${FIFTY:-50000000}
CRANE_VERSION=v0.22.1

need curl curl
need ss iproute2
need docker-registry docker-registry
(cd "$REPO_ROOT" && go build -o "$WORK/regmirror" ./cmd/regmirror && go build -o "$WORK/seed" ./bench/seed)
(cd "$WORK" && GOBIN=$WORK/bin go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION")
CRANE=$WORK/bin/crane

UP_PORT=$(free_port)
UP_URL=http://127.0.0.1:$UP_PORT
registry_config "$WORK/origin.yml" "127.0.0.1:$UP_PORT" "$WORK/data-origin" off
docker-registry serve "$WORK/origin.yml" >"$WORK/log-origin" 2>&1 &
PIDS+=("$!")
wait_http "$UP_URL/v2/" "$!" "$WORK/log-origin"
"$WORK/seed" -registry "127.0.0.1:$UP_PORT" -big 1000 -small 1000 -layers "$LAYERS" -fifty "$FIFTY" \
	-blob-out "$WORK/blob" >"$WORK/seed.json" || die "seeding failed"

declare -A URL
# start NAME UPSTREAM_URL: a regmirror on a fresh data dir.
start() {
	local port
	port=$(free_port)
	env REGMIRROR_ADDR="127.0.0.1:$port" REGMIRROR_ADMIN_ADDR=off REGMIRROR_MIN_FREE=0 REGMIRROR_DATA_DIR="$WORK/data-$1" \
		REGMIRROR_UPSTREAM="$2" REGMIRROR_LOG_LEVEL=warn "$WORK/regmirror" 2>"$WORK/log-$1" &
	PIDS+=("$!")
	URL[$1]=http://127.0.0.1:$port
	wait_http "${URL[$1]}/readyz" "$!" "$WORK/log-$1"
}

# pull ROW HOST: one whole pull of library/fifty with crane to /dev/null.
pull() {
	local t0 t1
	t0=$(now_ns)
	"$CRANE" pull --insecure "$2/library/fifty:latest" /dev/null >"$WORK/crane.out" 2>&1 || die "crane pull ($1): $(tail -n 3 "$WORK/crane.out")"
	t1=$(now_ns)
	printf '| %s | %s s |\n' "$1" "$(secs $((t1 - t0)))"
}

echo "crane pull of library/fifty ($LAYERS layers, $((FIFTY / 1000000)) MB), $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| path | wall |"
echo "| --- | --- |"
pull "crane → origin" "127.0.0.1:$UP_PORT"
start site "$UP_URL"
pull "site → origin, cold" "${URL[site]#http://}"
pull "site → origin, warm" "${URL[site]#http://}"
start regional "$UP_URL"
start tsite "${URL[regional]}?ns=docker.io"
pull "site → regional → origin, cold" "${URL[tsite]#http://}"
pull "site → regional → origin, warm" "${URL[tsite]#http://}"
start tsite2 "${URL[regional]}?ns=docker.io"
pull "new site → warm regional → origin (site cold)" "${URL[tsite2]#http://}"
