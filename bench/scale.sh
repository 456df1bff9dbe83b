#!/usr/bin/env bash
# bench/scale.sh: the cache's index at scale (issue #6, item 7), in one command.
#
#   bench/scale.sh                    # N="100000 1000000", from the repository root (or anywhere)
#   N=100000 bench/scale.sh           # one size
#   PROFILE=1 bench/scale.sh          # also a CPU profile of each measured phase, top 30 by cumulative time
#   FLATTEN=false bench/scale.sh      # measure with the seed's level-0 tables not yet compacted
#
# For each N it builds bench/scale and runs it on a fresh store directory in
# its temp dir under ${TMPDIR:-/tmp}: N blob records written straight into a
# badger index with the cache's key format (a tenth of them manifests), a
# 16-byte content file each, no clean-close mark; then, through the cache
# package, a crash start (reconciliation), a clean start, and eviction passes
# of EVICT percent (default "1,10") of the objects, each timed, with its peak
# RSS. The store is removed before the next N, and the temp dir at the end.
#
# Disk: every content file takes an inode and one block (4 KiB on ext4), so
# 1,000,000 records need about 4.5 GB and 1,000,000 free inodes, plus some
# 300 MB of index; the script checks df first. Writing and removing a million
# small files takes minutes, most of the run.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" # bench_init, log, die …

N=${N:-100000 1000000}
EVICT=${EVICT:-1,10}
PROFILE=${PROFILE:-0}
FLATTEN=${FLATTEN:-true}

bench_init scale

largest=0
for n in $N; do
	[ "$n" -gt "$largest" ] || continue
	largest=$n
done
need_kb=$((largest * 5)) # a 4 KiB block and a share of the index per record
avail_kb=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
avail_inodes=$(df -Pi "$WORK" | awk 'NR == 2 { print $4 }')
log "disk for $WORK: $((avail_kb / 1024)) MB and $avail_inodes inodes free; $largest records need about $((need_kb / 1024)) MB and $largest inodes"
if [ "$avail_kb" -lt "$need_kb" ]; then
	die "not enough free disk under $WORK for $largest records (set TMPDIR, or a smaller N)"
fi
if [[ "$avail_inodes" =~ ^[0-9]+$ ]] && [ "$avail_inodes" -lt $((largest + 10000)) ]; then
	die "not enough free inodes under $WORK for $largest records"
fi

log "building bench/scale"
(cd "$REPO_ROOT" && go build -o "$WORK/scale" ./bench/scale)

for n in $N; do
	log "n=$n"
	args=(-n "$n" -dir "$WORK/store" -evict "$EVICT" -flatten="$FLATTEN")
	if [ "$PROFILE" = 1 ]; then
		args+=(-cpuprofile "$WORK/cpu-$n.out")
	fi
	"$WORK/scale" "${args[@]}"
	if [ "$PROFILE" = 1 ]; then
		for p in "$WORK/cpu-$n.out"-*; do
			echo
			echo "CPU profile, n=$n, phase ${p##*.out-}, by cumulative time:"
			go tool pprof -top -cum -nodecount=30 "$WORK/scale" "$p" 2>/dev/null | sed -n '4,40p'
		done
	fi
	echo
	log "removing the store of $n records"
	rm -rf "$WORK/store"
done
