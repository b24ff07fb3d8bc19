#!/usr/bin/env bash
# Clone creation time and size against the parent's size (issue 6): fills a
# 1 GiB and a 10 GiB image on the dir backend, each in a pool of its own (4M
# sequential writes through `lsvd-ublk bench`), snapshots each, then REPS
# times creates a plain image and clones the snapshot in that pool. Prints
# the median wall times of `create` and `clone` (process start included),
# the objects and bytes a clone adds, and the ratios 10 GiB / 1 GiB (target:
# about 1). `create` is the baseline: both check the pool for stray objects
# of an earlier image of the same name, which lists the pool (its cost
# grows with the pool's object count, not with the parent's size).
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
declare -A MED CMED OBJ BYTES
median() { sort -n | sed -n "$(( (REPS + 1) / 2 ))p"; }
for size in 1G 10G; do
    pool=p$size
    L create "$pool/base" --size "$size"
    L bench "$pool/base" --io-type write --io-pattern seq --io-size 4M \
        --io-threads 8 --io-total "$size" >/dev/null
    L snap create "$pool/base@gold" >/dev/null
    times=(); ctimes=()
    for i in $(seq "$REPS"); do
        t0=$(date +%s%N)
        L create "$pool/plain$i" --size "$size"
        t1=$(date +%s%N)
        ctimes+=($(( (t1 - t0) / 1000 )))
        o0=$(find "$T/store/$pool" -type f | wc -l)
        b0=$(du -sb --apparent-size "$T/store/$pool" | cut -f1)
        t0=$(date +%s%N)
        L clone "$pool/base@gold" "$pool/c$i"
        t1=$(date +%s%N)
        times+=($(( (t1 - t0) / 1000 )))
        OBJ[$size]=$(( $(find "$T/store/$pool" -type f | wc -l) - o0 ))
        BYTES[$size]=$(( $(du -sb --apparent-size "$T/store/$pool" | cut -f1) - b0 ))
    done
    MED[$size]=$(printf '%s\n' "${times[@]}" | median)
    CMED[$size]=$(printf '%s\n' "${ctimes[@]}" | median)
    echo "parent $size: pool holds $(find "$T/store/$pool" -type f | wc -l) objects, $(du -sh "$T/store/$pool" | cut -f1); over $REPS: create median ${CMED[$size]} us, clone median ${MED[$size]} us; a clone adds ${OBJ[$size]} file(s), ${BYTES[$size]} bytes"
done
python3 -c "print(f'10G/1G: clone {${MED[10G]}/${MED[1G]}:.2f}, create {${CMED[10G]}/${CMED[1G]}:.2f}; clone/create: 1G {${MED[1G]}/${CMED[1G]}:.2f}, 10G {${MED[10G]}/${CMED[10G]}:.2f}')"
