#!/usr/bin/env bash
# Overhead of live metrics: fio --ioengine=nbd 4 KiB random writes at QD32
# against two lsvd-ublk serve-nbd servers of two images on the same disk,
# one with metrics on (the default unix socket, scraped about twice a second
# during its runs) and one with "metrics_listen": "off" (no
# timing at all), alternated in one run (pairs
# on-off, off-on, ...). Prints each run's IOPS and,
# per pair, the ratio on / off of IOPS and of the server's CPU time per I/O,
# then their medians.
# Knobs: LSVD_BENCH_SECONDS (10 per run), LSVD_BENCH_ROUNDS (4 pairs),
# LSVD_BENCH_SIZE (1G, the region fio touches), TMPDIR (a real disk).
set -euo pipefail
cd "$(dirname "$0")/.."

export TMPDIR="${TMPDIR:-/tmp}"
secs="${LSVD_BENCH_SECONDS:-10}"
rounds="${LSVD_BENCH_ROUNDS:-4}"
size="${LSVD_BENCH_SIZE:-1G}"

[ -n "${LSVD_BENCH_NO_BUILD:-}" ] || cargo build --release --bin lsvd-ublk
bin="$PWD/target/release/lsvd-ublk"
work="$(mktemp -d "$TMPDIR/lsvd-bench-metrics.XXXXXX")"
pids=""
cleanup() {
    set +e
    for p in $pids; do
        kill -TERM "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT
export LSVD_RUN_DIR="$work/run"

base="\"store_dir\":\"$work/store\",\"wlog_dir\":\"$work/wlog\",\"rcache_dir\":\"$work/rcache\""
on="{$base}"
off="{$base,\"metrics_listen\":\"off\"}"
"$bin" --config "$on" create bench/on --size "$size"
"$bin" --config "$on" create bench/off --size "$size"
"$bin" --config "$on" serve-nbd bench/on --listen "unix:$work/on.sock" >"$work/on.uri" 2>"$work/on.log" &
pid_on=$!
"$bin" --config "$off" serve-nbd bench/off --listen "unix:$work/off.sock" >"$work/off.uri" 2>"$work/off.log" &
pid_off=$!
pids="$pid_on $pid_off"
for _ in $(seq 300); do
    [ -s "$work/on.uri" ] && [ -s "$work/off.uri" ] && break
    sleep 0.1
done
metrics_sock="$LSVD_RUN_DIR/nbd-$pid_on.metrics.sock"
[ -S "$metrics_sock" ] || { echo "no metrics socket $metrics_sock"; cat "$work/on.log"; exit 1; }
[ ! -e "$LSVD_RUN_DIR/nbd-${pids#* }.metrics.sock" ] || { echo "metrics not off"; exit 1; }

# The server's CPU time (user + system, in clock ticks) so far.
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"

# One fio run against server `pid` at `uri`: prints "IOPS CPU-us-per-I/O"
# (the server's CPU time over the run, ramp included, divided by every I/O
# fio issued, ramp included).
run() {
    local uri=$1 pid=$2 c0 c1
    c0="$(cpu_of "$pid")"
    fio --name=b --ioengine=nbd "--uri=$uri" --rw=randwrite --bs=4k --iodepth=32 \
        --size="$size" --time_based --runtime="$secs" --randrepeat=0 \
        --output-format=json --output="$work/fio.json" >/dev/null
    c1="$(cpu_of "$pid")"
    python3 -c "
import json, sys
j = json.load(open(sys.argv[1]))['jobs'][0]['write']
ios = max(1, int(j['total_ios']))
print(int(j['iops']), f'{(int(sys.argv[3]) - int(sys.argv[2])) * 1e6 / int(sys.argv[4]) / ios:.2f}')
" "$work/fio.json" "$c0" "$c1" "$hz"
}

echo "== fio --ioengine=nbd randwrite 4 KiB QD32, ${secs} s per run, $rounds pairs (metrics on, off), region $size, in $TMPDIR"
echo "   (IOPS, and the server's CPU time per I/O: the steadier measure on a busy machine)"
ratios=""
cpu_ratios=""
run_on() {
    # Scraped during the run, about twice a second (iostat scrapes twice).
    ( while :; do "$bin" iostat "unix:$metrics_sock" --count 1 --interval 0.5 >/dev/null 2>&1 || true; done ) &
    local scraper=$!
    run "$(head -n1 "$work/on.uri")" "$pid_on"
    kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null || true
}
run_off() { run "$(head -n1 "$work/off.uri")" "$pid_off"; }
# A first short run of each, not counted: both images get their first
# objects and both servers their warm caches before the pairs.
secs_main="$secs"; secs=2; run_on >/dev/null; run_off >/dev/null; secs="$secs_main"
for r in $(seq "$rounds"); do
    # Order alternates (on off, off on, ...) so drift within a pair cancels.
    if [ $((r % 2)) -eq 1 ]; then
        a="$(run_on)"; b="$(run_off)"
    else
        b="$(run_off)"; a="$(run_on)"
    fi
    read -r a_iops a_cpu <<<"$a"
    read -r b_iops b_cpu <<<"$b"
    ratio="$(python3 -c "import sys; print(f'{int(sys.argv[1]) / max(1, int(sys.argv[2])):.3f}')" "$a_iops" "$b_iops")"
    cpu_ratio="$(python3 -c "import sys; print(f'{float(sys.argv[1]) / max(1e-9, float(sys.argv[2])):.3f}')" "$a_cpu" "$b_cpu")"
    ratios="$ratios $ratio"
    cpu_ratios="$cpu_ratios $cpu_ratio"
    printf 'pair %d: on %7d IOPS %6.2f us/io  off %7d IOPS %6.2f us/io  IOPS on/off %s  CPU/io on/off %s\n' \
        "$r" "$a_iops" "$a_cpu" "$b_iops" "$b_cpu" "$ratio" "$cpu_ratio"
done
python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'IOPS on/off: median {statistics.median(v):.3f}, min {min(v):.3f}, max {max(v):.3f}')" $ratios
python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'server CPU per I/O on/off: median {statistics.median(v):.3f}, min {min(v):.3f}, max {max(v):.3f}')" $cpu_ratios
"$bin" iostat "unix:$metrics_sock" --count 1 --interval 1 >/dev/null
curl -s --unix-socket "$metrics_sock" http://x/metrics 2>/dev/null | grep -E '^lsvd_io_requests_total\{op="write"\}' || true
