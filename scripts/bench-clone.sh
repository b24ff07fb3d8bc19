#!/usr/bin/env bash
# Clone creation time and size against the parent's size (issue 6): fills a
# 1 GiB and a 10 GiB image on the dir backend (4M sequential writes through
# `lsvd-ublk bench`), snapshots each, then clones each snapshot REPS times
# and prints the median `clone` wall time, the objects and bytes the clone
# adds to the pool, and the ratio 10 GiB / 1 GiB (target: about 1).
#   scripts/bench-clone.sh           # REPS=5
#   BENCH_TMP=/tmp KEEP=1 scripts/bench-clone.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REPS=${REPS:-5}
cargo build --release --quiet --bin lsvd-ublk
BIN=$CARGO_TARGET_DIR/release/lsvd-ublk
T=$(mktemp -d "${BENCH_TMP:-/tmp}/lsvd-bench-clone.XXXXXX")
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$T"' EXIT
CONF="{\"store_dir\":\"$T/store\",\"wlog_dir\":\"$T/wlog\",\"rcache_dir\":\"$T/rcache\",\"wlog_bytes\":\"1G\"}"
L() { "$BIN" --config "$CONF" "$@"; }
pool_bytes() { du -sb --apparent-size "$T/store/p" | cut -f1; }
pool_objects() { find "$T/store/p" -type f | wc -l; }
declare -A MED OBJ BYTES
for size in 1G 10G; do
    L create "p/base$size" --size "$size"
    L bench "p/base$size" --io-type write --io-pattern seq --io-size 4M \
        --io-threads 8 --io-total "$size" >/dev/null
    L snap create "p/base$size@gold" >/dev/null
    times=()
    for i in $(seq "$REPS"); do
        o0=$(pool_objects); b0=$(pool_bytes)
        t0=$(date +%s%N)
        L clone "p/base$size@gold" "p/c$size-$i"
        t1=$(date +%s%N)
        times+=($(( (t1 - t0) / 1000 )))
        OBJ[$size]=$(( $(pool_objects) - o0 )); BYTES[$size]=$(( $(pool_bytes) - b0 ))
    done
    MED[$size]=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (REPS + 1) / 2 ))p")
    echo "parent $size: stored $(du -sh "$T/store/p" | cut -f1) in pool; clone median ${MED[$size]} us over $REPS, adds ${OBJ[$size]} object(s), ${BYTES[$size]} bytes"
done
python3 -c "print(f'clone time 10G/1G: {${MED[10G]}/${MED[1G]}:.2f}')"
