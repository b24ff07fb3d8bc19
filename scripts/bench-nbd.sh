#!/usr/bin/env bash
# NBD export benchmark, one run, same disk: fio --ioengine=nbd 4 KiB random
# writes then random reads at QD32 against
#   a) lsvd-ublk serve-nbd (dir backend; journal, store and read cache in
#      the work directory), and
#   b) qemu-nbd -f raw --cache=none --aio=native serving a zero-filled raw
#      file in the same directory,
# each on a unix socket, and prints IOPS and the ratio lsvd / qemu-nbd.
# Knobs: LSVD_BENCH_SECONDS (20 per run), LSVD_BENCH_SIZE (1G, the region
# fio touches), TMPDIR (where the data goes: a real disk, not tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-build-deps.sh qemu-utils fio python3
export TMPDIR="${TMPDIR:-/tmp}"
secs="${LSVD_BENCH_SECONDS:-20}"
size="${LSVD_BENCH_SIZE:-1G}"

cargo build --release --bin lsvd-ublk
bin="$PWD/target/release/lsvd-ublk"
work="$(mktemp -d "$TMPDIR/lsvd-bench-nbd.XXXXXX")"
lsvd_pid=""
qemu_pid=""
cleanup() {
    set +e
    for p in $lsvd_pid $qemu_pid; do
        kill -TERM "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT

cfg="{\"store_dir\":\"$work/store\",\"wlog_dir\":\"$work/wlog\",\"rcache_dir\":\"$work/rcache\"}"
"$bin" --config "$cfg" create bench/img --size "$size"
"$bin" --config "$cfg" serve-nbd bench/img --listen "unix:$work/lsvd.sock" >"$work/lsvd.uri" \
    2>"$work/lsvd.log" &
lsvd_pid=$!

# A raw file written in full first (writes into unwritten extents are
# slower), served with O_DIRECT and Linux AIO.
bytes="$(python3 -c "import sys; u={'K':1<<10,'M':1<<20,'G':1<<30}; s=sys.argv[1]; print(int(s[:-1])*u[s[-1]] if s[-1] in u else int(s))" "$size")"
dd if=/dev/zero of="$work/qemu.raw" bs=1M count=$((bytes >> 20)) oflag=direct status=none
qemu-nbd -f raw --cache=none --aio=native --shared=8 --persistent -x img \
    --socket="$work/qemu.sock" "$work/qemu.raw" 2>"$work/qemu.log" &
qemu_pid=$!

for _ in $(seq 300); do
    [ -s "$work/lsvd.uri" ] && [ -S "$work/qemu.sock" ] && break
    sleep 0.1
done
lsvd_uri="$(head -n1 "$work/lsvd.uri")"
qemu_uri="nbd+unix:///img?socket=$work/qemu.sock"
[ -n "$lsvd_uri" ] || { cat "$work/lsvd.log"; exit 1; }

# fio 4K at QD32 for $secs seconds; prints the IOPS.
run() {
    local uri=$1 rw=$2
    fio --name=b --ioengine=nbd "--uri=$uri" --rw="$rw" --bs=4k --iodepth=32 \
        --size="$size" --time_based --runtime="$secs" --ramp_time=2 --randrepeat=0 \
        --output-format=json --output="$work/fio.json" >/dev/null
    python3 -c "import json,sys; j=json.load(open(sys.argv[1]))['jobs'][0]; print(int(j['write']['iops'] + j['read']['iops']))" "$work/fio.json"
}

echo "== fio --ioengine=nbd, 4 KiB, iodepth 32, ${secs} s each, region $size, in $TMPDIR"
lw="$(run "$lsvd_uri" randwrite)"
qw="$(run "$qemu_uri" randwrite)"
lr="$(run "$lsvd_uri" randread)"
qr="$(run "$qemu_uri" randread)"
ratio() { python3 -c "import sys; print(f'{int(sys.argv[1]) / max(1, int(sys.argv[2])):.2f}')" "$1" "$2"; }
printf '%-10s %16s %28s %8s\n' "workload" "lsvd serve-nbd" "qemu-nbd cache=none,native" "ratio"
printf '%-10s %16s %28s %8s\n' "randwrite" "$lw" "$qw" "$(ratio "$lw" "$qw")"
printf '%-10s %16s %28s %8s\n' "randread" "$lr" "$qr" "$(ratio "$lr" "$qr")"
