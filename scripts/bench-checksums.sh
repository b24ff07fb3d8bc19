#!/usr/bin/env bash
# The cost of end-to-end data checksums, and scrub throughput, as ratios
# taken in one run with interleaved repetitions.
#
#   BASE_BIN=/tmp/base/target/release/lsvd-ublk scripts/bench-checksums.sh
#
# BASE_BIN is an lsvd-ublk built from the commit before chunk checksums
# (e.g. `git worktree add /tmp/base eeb3667 && cd /tmp/base &&
# cargo build --release`); this tree's release binary is built here. Each
# binary works on its own images (the base cannot open a version-2 image),
# written with the same workload and seeds. REPS times each (default 3):
#   a. scrub throughput: `lsvd-ublk scrub` of a 4 GiB image (8 MiB objects)
#      vs. `cat` of the same object files into /dev/null, both warm (page
#      cache) and, where `echo 3 > /proc/sys/vm/drop_caches` works, both
#      after dropping the caches;
#   b. cold 4 KiB random reads, 32 threads, of a 1 GiB image: with the
#      read-cache file deleted first (misses fetch 64 KiB chunks), and with
#      `no_rcache` (every read goes to the store), base vs. new, alternating;
#   c. GC copy rate: a 512 MiB image filled, then 512 MiB of 4 KiB random
#      overwrites (GC off), the cache file deleted, then `lsvd-ublk gc`:
#      bytes copied per second of the whole command, base vs. new; and the
#      same on a copy of the image with `no_rcache`.
# Prints one line per measure and run, then a summary. Environment:
#   REPS (3), PARTS (abc: which measures), BENCH_TMP (/tmp; a disk file
#   system), KEEP=1 keeps the files.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REPS=${REPS:-3}
PARTS=${PARTS:-abc}
BASE_BIN=${BASE_BIN:?set BASE_BIN to an lsvd-ublk built from the base commit}
log() { printf '[bench-checksums %s] %s\n' "$(date +%T)" "$*" >&2; }

cargo build --release --bin lsvd-ublk >&2
NEW_BIN=$CARGO_TARGET_DIR/release/lsvd-ublk

T=$(mktemp -d "${BENCH_TMP:-/tmp}/lsvd-cksum.XXXXXX")
cleanup() { if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$T"; else log "kept $T"; fi; }
trap cleanup EXIT
R=$T/results
mkdir -p "$R"
# At most about 8 GiB at a time (the 4 GiB scrub image is removed before
# the rest); refuse to fill a shared disk.
FREE_GIB=$(df -B1G --output=avail "$T" | tail -1 | tr -d ' ')
if ((FREE_GIB < 16)); then
    echo "bench-checksums.sh: only ${FREE_GIB} GiB free under $T; need 16" >&2
    exit 1
fi

cfg() { # cfg DIR [EXTRA_JSON_MEMBERS]
    echo "{\"store_dir\":\"$1/store\",\"wlog_dir\":\"$1/wlog\",\"wlog_bytes\":\"256M\",\"rcache_dir\":\"$1/rcache\",\"rcache_bytes\":\"2G\",\"no_gc\":true${2:+,$2}}"
}
now() { date +%s.%N; }
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }
CAN_DROP=0
if drop_caches; then CAN_DROP=1; fi

# a. Scrub vs cat (this tree only).
if [[ $PARTS == *a* ]]; then
A=$T/scrub
CA=$(cfg "$A")
log "a: writing a 4 GiB image"
"$NEW_BIN" --config "$CA" create pool/img --size 4G
"$NEW_BIN" --config "$CA" bench pool/img --io-type write --io-pattern seq --io-size 1M \
    --io-threads 8 --io-total 4G --seed 1 --json >/dev/null
OBJ_BYTES=$(cat "$A"/store/pool/img.* | wc -c)
cat "$A"/store/pool/img.* >/dev/null
for i in $(seq 1 "$REPS"); do
    for mode in warm cold; do
        if [[ $mode == cold && $CAN_DROP == 0 ]]; then continue; fi
        for what in cat scrub scrub1; do
            [[ $mode == cold ]] && drop_caches
            t0=$(now)
            case $what in
                cat) cat "$A"/store/pool/img.* >/dev/null ;;
                scrub) "$NEW_BIN" --config "$CA" scrub pool/img --json >"$R/scrub_${mode}_$i.json" ;;
                scrub1) "$NEW_BIN" --config "$CA" scrub pool/img --threads 1 --json >/dev/null ;;
            esac
            t1=$(now)
            echo "a $mode $what $i $OBJ_BYTES $t0 $t1" | tee -a "$R/a.txt" >&2
        done
    done
done

rm -rf "$A"
fi

# b. Cold 4 KiB random reads, and c. GC copy rate: base vs new.
for side in base new; do
    mkdir -p "$T/$side"
done
bin_of() { if [[ $1 == base ]]; then echo "$BASE_BIN"; else echo "$NEW_BIN"; fi; }
if [[ $PARTS == *b* ]]; then
log "b: writing a 1 GiB image with each binary"
for side in base new; do
    B=$(bin_of $side)
    C=$(cfg "$T/$side/r")
    "$B" --config "$C" create pool/rd --size 1G
    "$B" --config "$C" bench pool/rd --io-type write --io-pattern seq --io-size 1M \
        --io-threads 8 --io-total 1G --seed 2 --json >/dev/null
done
for i in $(seq 1 "$REPS"); do
    order="base new"
    if ((i % 2 == 0)); then order="new base"; fi
    for kind in cache nocache; do
        for side in $order; do
            B=$(bin_of $side)
            if [[ $kind == cache ]]; then
                C=$(cfg "$T/$side/r")
                total=64M
            else
                C=$(cfg "$T/$side/r" '"no_rcache":true')
                total=512M
            fi
            rm -f "$T/$side/r/rcache/pool/rd.rcache"
            "$B" --config "$C" bench pool/rd --io-type read --io-pattern rand --io-size 4K \
                --io-threads 32 --io-total $total --seed $((10 + i)) --json >"$R/b_${kind}_${side}_$i.json"
            log "b $kind $side $i: $(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["ops_per_sec"]))' "$R/b_${kind}_${side}_$i.json") IOPS"
        done
    done
done

rm -rf "$T/base/r" "$T/new/r"
fi

if [[ $PARTS == *c* ]]; then
for i in $(seq 1 "$REPS"); do
    order="base new"
    if ((i % 2 == 0)); then order="new base"; fi
    for side in base new; do
        B=$(bin_of $side)
        D=$T/$side/gc$i
        C=$(cfg "$D")
        log "c $i: preparing the $side image"
        "$B" --config "$C" create pool/g --size 512M
        "$B" --config "$C" bench pool/g --io-type write --io-pattern seq --io-size 1M \
            --io-threads 8 --io-total 512M --seed 3 --json >/dev/null
        "$B" --config "$C" bench pool/g --io-type write --io-pattern rand --io-size 4K \
            --io-threads 32 --io-total 512M --seed 4 --json >/dev/null
        rm -f "$D/rcache/pool/g.rcache"
        # The same image again, for the run without a read cache.
        cp -a "$D" "${D}n"
    done
    for kind in cache nocache; do
        for side in $order; do
            B=$(bin_of $side)
            if [[ $kind == cache ]]; then
                D=$T/$side/gc$i
                C=$(cfg "$D")
            else
                D=$T/$side/gc${i}n
                C=$(cfg "$D" '"no_rcache":true')
            fi
            t0=$(now)
            "$B" --config "$C" gc pool/g --json >"$R/c_${kind}_${side}_$i.json"
            t1=$(now)
            echo "$t0 $t1" >"$R/c_${kind}_${side}_$i.time"
            log "c $kind $side $i: $(tr -d '\n ' <"$R/c_${kind}_${side}_$i.json"), $(python3 -c "print(round($t1 - $t0, 1))") s"
            rm -rf "$D"
        done
    done
done
fi

python3 - "$R" "$REPS" "$CAN_DROP" "$PARTS" <<'EOF'
import json, sys, statistics
R, reps, can_drop, parts = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
def rng(xs, f="{:.2f}"):
    return f"{f.format(min(xs))} - {f.format(max(xs))} (median {f.format(statistics.median(xs))})"
a = {}
for line in open(f"{R}/a.txt") if "a" in parts else []:
    _, mode, what, i, nbytes, t0, t1 = line.split()
    a[(mode, what, int(i))] = int(nbytes) / (float(t1) - float(t0)) / 2**30
if "a" in parts:
    print("a. scrub vs cat of the same objects (GiB/s, wall time incl. process start)")
for mode in (["warm", "cold"] if can_drop else ["warm"]) if "a" in parts else []:
    for what in ["cat", "scrub", "scrub1"]:
        print(f"   {mode} {what:7}", rng([a[(mode, what, i)] for i in range(1, reps + 1)]))
    print(f"   {mode} scrub/cat       ", rng([a[(mode, 'scrub', i)] / a[(mode, 'cat', i)] for i in range(1, reps + 1)]))
    print(f"   {mode} scrub1/cat      ", rng([a[(mode, 'scrub1', i)] / a[(mode, 'cat', i)] for i in range(1, reps + 1)]))
if not can_drop and "a" in parts:
    print("   (drop_caches not possible here: warm only)")
load = lambda p: json.load(open(p))
for kind in ["cache", "nocache"] if "b" in parts else []:
    b = [load(f"{R}/b_{kind}_base_{i}.json")["ops_per_sec"] for i in range(1, reps + 1)]
    n = [load(f"{R}/b_{kind}_new_{i}.json")["ops_per_sec"] for i in range(1, reps + 1)]
    print(f"b. cold 4K random reads, {kind}: base", rng(b, "{:.0f}"), "new", rng(n, "{:.0f}"),
          "new/base", rng([x / y for x, y in zip(n, b)]))
def gc_rate(kind, side, i):
    j = load(f"{R}/c_{kind}_{side}_{i}.json")
    t0, t1 = map(float, open(f"{R}/c_{kind}_{side}_{i}.time").read().split())
    return j["bytes_copied"] / (t1 - t0) / 2**20, j["bytes_copied"] / 2**20
for kind in ["cache", "nocache"] if "c" in parts else []:
    b = [gc_rate(kind, "base", i) for i in range(1, reps + 1)]
    n = [gc_rate(kind, "new", i) for i in range(1, reps + 1)]
    print(f"c. GC copy rate, {kind}, MiB/s (copied MiB): base", rng([x[0] for x in b], "{:.0f}"), f"({rng([x[1] for x in b], '{:.0f}')})",
          "new", rng([x[0] for x in n], "{:.0f}"), f"({rng([x[1] for x in n], '{:.0f}')})",
          "new/base", rng([x[0] / y[0] for x, y in zip(n, b)]))
EOF
