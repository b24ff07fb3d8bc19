#!/bin/sh
# fio with crc32c verification on the raw ublk device, with FLUSH traffic
# (fsync), O_SYNC writes (FUA/flush per write) and buffered writes with
# fdatasync; then detach + re-attach and a verify-only pass of the same jobs
# (same seeds, same layout) to prove the data survived.
# CLI contract assumed: create / attach (prints /dev/ublkbN) / detach, see lib.sh.
. /lib/lsvd-vm-lib.sh

IMG=p/fio
must create lsvd create $IMG --size 1G
attach attach $IMG || finish
ENGINE=$(fio_engine "$DEV")
info "fio engine $ENGINE"

# Three regions, one job each. Fixed randseed so --verify_only regenerates
# the same offsets, sizes and patterns.
#  A: O_DIRECT random writes 4k..1m, QD16, fsync every 8 writes (FLUSH)
#  B: O_DIRECT + O_SYNC (--sync=1), QD1, 4k..64k (small: each write is a
#     FLUSH/FUA round trip, a few per second under TCG)
#  C: buffered random writes with fdatasync every 4 writes
jobs() {
    cat <<JOBS
[global]
filename=$DEV
verify=crc32c
verify_fatal=1
randseed=4242
rw=randwrite
[a]
ioengine=$ENGINE
direct=1
iodepth=16
bsrange=4k-1m
offset=0
size=128m
fsync=8
[b]
ioengine=psync
direct=1
sync=1
bsrange=4k-64k
offset=256m
size=16m
[c]
ioengine=psync
direct=0
bsrange=4k-128k
offset=320m
size=32m
fdatasync=4
JOBS
}
jobs >"$STATE/verify.fio"

snap=$(io_snapshot "$DEV")
# jobstats TERSE: one INFO line per job (terse v3: 3 job name, 5 error,
# 48 write KiB/s, 49 write IOPS, 50 write runtime ms, 7 read KiB/s).
jobstats() {
    echo "$1" | awk -F';' -v s="$SCENARIO" 'NF > 50 {
        printf "INFO %s: job %s err=%s write %d KiB/s %d IOPS in %d ms, read %d KiB/s\n", s, $3, $5, $48, $49, $50, $7 }'
}
if out=$(fio --output-format=terse --terse-version=3 "$STATE/verify.fio" 2>&1); then
    jobstats "$out"
    pass write-and-verify
else
    fail write-and-verify "fio exited non-zero: $(echo "$out" | grep -iE 'error|verify|bad' | head -n 3 | tr '\n' ' ')"
fi
io_moved io-write "$DEV" "$snap" rwf

detach detach $IMG || finish
attach reattach $IMG || finish
snap=$(io_snapshot "$DEV")
if out=$(fio --output-format=terse --terse-version=3 --verify_only "$STATE/verify.fio" 2>&1); then
    jobstats "$out"
    pass verify-after-reattach
else
    fail verify-after-reattach "fio --verify_only failed: $(echo "$out" | grep -iE 'error|verify|bad' | head -n 3 | tr '\n' ' ')"
fi
io_moved io-verify "$DEV" "$snap" r
detach detach-2 $IMG

# Free the space on /data for later scenarios (not an assertion).
for i in $IMG; do lsvd rm "$i" >/dev/null 2>&1 || info "lsvd-ublk rm $i failed"; done

finish
