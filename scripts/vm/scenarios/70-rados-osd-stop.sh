#!/bin/sh
# The OSD stopped for 20 s while fio writes (and fsyncs) a file on ext4 on a
# RADOS image: with hard_flush every fsync waits for the backend, so I/O
# waits through the outage and resumes when the OSD is back; fio's verify
# pass, a re-attach without the read cache (every block from RADOS) and
# fsck show nothing was lost. The outage (osd-stop + 20 s + osd-start, which
# under TCG takes tens of seconds) is longer than the default 30 s of
# rados_op_timeout_secs and io_timeout_msec, which would turn the wait into
# I/O errors (DESIGN: no hang): this image gets 180 s.
. /lib/lsvd-vm-lib.sh

rados_setup
export LSVD_RADOS_CONFIG='"hard_flush":true,"io_timeout_msec":180000,"rados_op_timeout_secs":180'
IMG=lsvd/rosd
MNT=/mnt/rosd
mkdir -p $MNT
DMESG0=$(dmesg | wc -l)
must create lsvd create $IMG --size 1G
attach attach $IMG || finish
must mkfs mkfs.ext4 -q -F "$DEV"
must mount mount -t ext4 -o barrier=1 "$DEV" $MNT
# 48 MiB at 1 MiB/s: about 50 s of writes with an fsync every 4, then
# fio's own verify pass.
cat >"$STATE/rosd.fio" <<JOBS
[rosd]
filename=$MNT/data
size=48m
rw=randwrite
bsrange=4k-128k
ioengine=psync
direct=1
fsync=4
rate=1m
verify=crc32c
verify_fatal=1
randseed=7070
JOBS
fio "$STATE/rosd.fio" >"$STATE/fio.log" 2>&1 &
FIO=$!
trap 'kill -9 $FIO 2>/dev/null' EXIT
sleep 8
running $FIO && pass fio-running || fail fio-running "fio ended before the OSD stopped: $(tail -n 3 "$STATE/fio.log" | tr '\n' ' ')"
t0=$(now)
if out=$(ceph_cluster osd-stop 2>&1); then pass osd-stop; else fail osd-stop "$(errsum "$out")"; fi
t1=$(now)
w0=$(sectors_written "$DEV")
sleep 20
w1=$(sectors_written "$DEV")
info "osd-stop took $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}') s; $((w1 - w0)) sectors completed on $DEV during 20 s without the OSD"
running $FIO && pass fio-waits || fail fio-waits "fio ended while the OSD was down: $(tail -n 3 "$STATE/fio.log" | tr '\n' ' ')"
if out=$(ceph_cluster osd-start 2>&1); then pass osd-start; else fail osd-start "$(errsum "$out")"; fi
t2=$(now)
info "osd down for $(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.1f", b - a}') s (osd-start included)"
wait_bg fio-finished $FIO 200 "fio (after the OSD came back)" ||
    info "fio: $(grep -iE 'error|verify|bad' "$STATE/fio.log" | head -n 3 | tr '\n' ' ')"
dmesg | tail -n +$((DMESG0 + 1)) | grep -E 'EXT4-fs (error|warning)|I/O error' | tail -n 3 >"$STATE/dmesg-errors"
[ -s "$STATE/dmesg-errors" ] && fail no-kernel-errors "$(tr '\n' ' ' <"$STATE/dmesg-errors")" || pass no-kernel-errors
check umount umount $MNT
check fsck e2fsck -fn "$DEV"
detach detach $IMG || finish
rm -rf /data/rcache/lsvd
attach reattach $IMG || finish
must mount-2 mount -t ext4 -o barrier=1 "$DEV" $MNT
check verify-after-reattach fio --verify_only "$STATE/rosd.fio"
check umount-2 umount $MNT
detach detach-2 $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"

finish
