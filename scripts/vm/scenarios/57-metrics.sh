#!/bin/sh
# Live metrics of a ublk server (issue 17 item 8): the server of an attached
# device serves its metrics on <run dir>/ublkbN.metrics.sock, and
# `lsvd-ublk iostat IMG` reads the writes and reads fio does on the device
# while it runs (the NBD server's metrics are checked on the host:
# tests/metrics.rs, scripts/bench-metrics.sh).
. /lib/lsvd-vm-lib.sh

IMG=p/metrics
must create lsvd create $IMG --size 256M
attach attach $IMG || finish
sock="${LSVD_RUN_DIR:-/run/lsvd-ublk}/$(basename "$DEV").metrics.sock"
[ -S "$sock" ] && pass socket || fail socket "no metrics socket $sock: $(ls "${LSVD_RUN_DIR:-/run/lsvd-ublk}" 2>&1 | tr '\n' ' ')"
engine=$(fio_engine "$DEV")

# iostat_during RW COLUMN: run fio RW on the device for 6 s, scrape `iostat
# IMG` over 2 s of it, print the row's COLUMN (2 WR, 3 RD: "N/s").
iostat_during() {
    fio --name=m --filename="$DEV" --ioengine="$engine" --direct=1 --rw="$1" --bs=4k \
        --iodepth=8 --size=64M --time_based --runtime=6 >/dev/null 2>&1 &
    fpid=$!
    sleep 1
    lsvd iostat "$IMG" --interval 2 --count 1 >"$STATE/iostat.out" 2>&1
    wait "$fpid"
    cat "$STATE/iostat.out" >&2
    awk -v img="$IMG" -v c="$2" '$1 == img { sub("/s", "", $c); print $c }' "$STATE/iostat.out"
}

wr=$(iostat_during randwrite 2)
if [ -n "$wr" ] && [ "$wr" -gt 0 ] 2>/dev/null; then
    pass iostat-writes
    info "iostat: $wr writes/s during fio randwrite"
else
    fail iostat-writes "no write rate for $IMG in iostat: $(tr '\n' '|' <"$STATE/iostat.out")"
fi
rd=$(iostat_during randread 3)
if [ -n "$rd" ] && [ "$rd" -gt 0 ] 2>/dev/null; then
    pass iostat-reads
    info "iostat: $rd reads/s during fio randread"
else
    fail iostat-reads "no read rate for $IMG in iostat: $(tr '\n' '|' <"$STATE/iostat.out")"
fi
detach detach $IMG
[ ! -e "$sock" ] && pass socket-removed || fail socket-removed "$sock left after detach"

lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
