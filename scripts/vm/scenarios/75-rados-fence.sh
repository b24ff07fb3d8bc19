#!/bin/sh
# Fencing on a RADOS image: server A has ext4 mounted and synced; server B
# (as if on another host: its own journal and read cache) takes the image
# over with `attach --force`, which blocklists A. A's later writes must
# fail (hard_flush: its fsync waits for RADOS, which refuses it), and the
# file system seen through B must be consistent: it mounts (replaying the
# ext4 journal A left), holds every file A synced before the takeover and
# nothing A wrote after it, and fsck is clean.
. /lib/lsvd-vm-lib.sh

rados_setup
IMG=lsvd/rfence
MA=/mnt/fence-a
MB=/mnt/fence-b
mkdir -p $MA $MB
DMESG0=$(dmesg | wc -l)
export LSVD_RADOS_CONFIG='"hard_flush":true'
must create lsvd create $IMG --size 1G
attach attach-a $IMG || finish
DEVA=$DEV
must mkfs mkfs.ext4 -q -F "$DEVA"
must mount-a mount -t ext4 -o barrier=1 "$DEVA" $MA
rand_files $MA/before 30 75 && sync && pass write-before || fail write-before "writing files failed"
(cd $MA && find before -type f | sort | xargs sha256sum) >"$STATE/before.sums"
PIDA=$(server_pid "$DEVA")
info "server A: pid $PIDA, $DEVA"

# B, as another host would: its own journal, read cache and device
# registry (LSVD_RUN_DIR; with A's, attach refuses an image attached here).
export LSVD_RADOS_CONFIG='"wlog_dir":"/data/wlog-b","rcache_dir":"/data/rcache-b"'
export LSVD_RUN_DIR=/run/lsvd-ublk-b
attach attach-b-force $IMG --force || finish
DEVB=$DEV
unset LSVD_RADOS_CONFIG LSVD_RUN_DIR
info "server B: $DEVB, registry /run/lsvd-ublk-b"
[ "$DEVB" != "$DEVA" ] && pass two-devices || fail two-devices "B got A's device $DEVA"

# A writes after the takeover: the data may reach A's journal, but the
# fsync must fail (hard_flush: RADOS refuses the fenced client).
t0=$(now)
if timeout 120 dd if=/dev/urandom of=$MA/after bs=64k count=16 conv=fsync 2>"$STATE/dd-a.err"; then
    fail a-fenced "A's write + fsync after the takeover succeeded"
else
    pass a-fenced
fi
info "A's write after the takeover ended after $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}') s: $(tr '\n' ' ' <"$STATE/dd-a.err")"
# A raw write past the file system's data, O_DIRECT + fsync, for good measure.
if timeout 120 dd if=/dev/zero of="$DEVA" bs=1M count=1 seek=1000 oflag=direct conv=fsync 2>"$STATE/dd-a.err"; then
    fail a-raw-fenced "A's O_DIRECT write + fsync after the takeover succeeded"
else
    pass a-raw-fenced
fi
info "A's raw write: $(tr '\n' ' ' <"$STATE/dd-a.err")"
# The failures are the fencing (librados: blocklisted), said in A's log.
ALOG=/run/lsvd-ublk/lsvd-rfence.log
if grep -qiE 'blocklisted|fenced' "$ALOG" 2>/dev/null; then
    pass a-log-fenced
    info "A's log: $(grep -iE 'blocklisted|fenced' "$ALOG" | head -n 1 | cut -c1-300)"
else
    fail a-log-fenced "A's log $ALOG does not say it was fenced: $(tail -n 3 "$ALOG" 2>/dev/null | tr '\n' ' ')"
fi
running "$PIDA" && info "server A (pid $PIDA) still running" || info "server A (pid $PIDA) exited"

# B: mount (replays the ext4 journal), everything synced before is there,
# nothing from after.
if check mount-b mount -t ext4 -o barrier=1 "$DEVB" $MB; then
    sums_verify b-verify-before $MB "$STATE/before.sums"
    [ -e $MB/after ] && fail b-no-late-file "A's file written after the takeover is visible through B" || pass b-no-late-file
    check b-write dd if=/dev/urandom of=$MB/by-b bs=64k count=16 conv=fsync
    check umount-b umount $MB
fi
check fsck-b e2fsck -fn "$DEVB"
dmesg | tail -n +$((DMESG0 + 1)) | grep -E 'EXT4-fs (error|warning)|I/O error' | grep "$(basename "$DEVB")" | tail -n 3 >"$STATE/dmesg-errors"
[ -s "$STATE/dmesg-errors" ] && fail b-no-kernel-errors "$(tr '\n' ' ' <"$STATE/dmesg-errors")" || pass b-no-kernel-errors

# Clean up: A cannot destage (fenced): force its device away.
umount -l $MA 2>/dev/null
out=$(lsvd detach "$DEVA" --force --timeout 30 2>&1) || info "detach --force $DEVA: $(errsum "$out")"
export LSVD_RUN_DIR=/run/lsvd-ublk-b
detach detach-b "$DEVB"
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"

finish
