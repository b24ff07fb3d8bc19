#!/bin/sh
# Server crash (kill -9) during writes, then user recovery: the device stays
# (quiesced), `lsvd-ublk recover` starts a new server, the writer carries on
# without I/O errors and all data verifies. Phase 1 on the raw device with a
# verifying fio job, phase 2 with a mounted ext4 that stays mounted across
# the kill and the recovery.
# CLI contract assumed (see lib.sh):
#   lsvd-ublk list --json   -> [{"image","device","pid","state"}], state
#                              live|quiesced|dead
#   after kill -9 of the server the device is "quiesced" and its node stays
#   lsvd-ublk recover p/IMG -> new server, state "live" again, queued I/O
#                              is reissued
. /lib/lsvd-vm-lib.sh

# crash_and_recover PHASE IMG: kill -9 the server of $DEV, check quiesced,
# recover, check live.
crash_and_recover() {
    local ph=$1 img=$2 pid out rc
    pid=$(server_pid "$DEV")
    if [ -z "$pid" ]; then fail "$ph-find-server" "no server pid for $DEV (list --json / pidof)"; return 1; fi
    pass "$ph-find-server"
    info "killing server pid $pid of $DEV"
    kill -9 "$pid"
    wait_for 10 test ! -d "/proc/$pid" || { fail "$ph-kill" "pid $pid still alive"; return 1; }
    pass "$ph-kill"
    expect_state "$ph-quiesced" "$DEV" quiesced 15
    if [ -b "$DEV" ]; then pass "$ph-node-kept"; else fail "$ph-node-kept" "$DEV vanished after the server died"; fi
    out=$(lsvd recover "$img" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ]; then pass "$ph-recover"; else fail "$ph-recover" "recover $img exited $rc: $(errsum "$out")"; return 1; fi
    expect_state "$ph-live" "$DEV" live 15
    newpid=$(server_pid "$DEV")
    [ -n "$newpid" ] && [ "$newpid" != "$pid" ] && pass "$ph-new-server" ||
        fail "$ph-new-server" "server pid after recover is '$newpid' (was $pid)"
}

DMESG0=$(dmesg | wc -l)

# ---- phase 1: raw device, verifying fio writer ---------------------------
IMG=p/rec
must create lsvd create $IMG --size 1G
attach attach $IMG || finish
ENGINE=$(fio_engine "$DEV")
cat >"$STATE/rec.fio" <<JOBS
[w]
filename=$DEV
ioengine=$ENGINE
direct=1
iodepth=16
rw=randwrite
bsrange=4k-256k
size=256m
fsync=16
verify=crc32c
verify_fatal=1
randseed=777
JOBS
fio "$STATE/rec.fio" >"$STATE/fio-bg.log" 2>&1 &
FIO=$!
trap 'kill -9 $FIO 2>/dev/null' EXIT
# Let it get going (32 MiB acknowledged, more in flight) before the kill;
# waiting on the device's counters rather than a fixed sleep keeps the kill
# early in the job on fast and slow machines alike.
w0=$(sectors_written "$DEV")
i=0
while [ $(( $(sectors_written "$DEV") - w0 )) -lt 65536 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
if running $FIO; then pass raw-writer-running; else fail raw-writer-running "fio finished or died before the kill (too fast? see $STATE/fio-bg.log)"; fi
crash_and_recover raw $IMG
# fio must finish on its own with no errors (I/O reissued after recovery).
wait_bg raw-writer-finished $FIO 120 "fio (after recovery)" ||
    info "fio: $(grep -iE 'error|verify|bad' "$STATE/fio-bg.log" | head -n 3 | tr '\n' ' ')"
# Independent verify pass of everything the job wrote.
check raw-verify-only fio --verify_only "$STATE/rec.fio"

# ---- phase 2: ext4 mounted across kill + recover --------------------------
MNT=/mnt/rec
mkdir -p $MNT
must mkfs mkfs.ext4 -q -F "$DEV"
must mount mount -t ext4 -o barrier=1 "$DEV" $MNT
rand_files $MNT/before 60 30 && sync && pass fs-write-before || fail fs-write-before "writing files failed"
(cd $MNT && find before -type f | sort | xargs sha256sum) >"$STATE/before.sums"
# Background writer: files of a known pattern, each followed by sync.
(
    i=0
    while [ $i -lt 40 ]; do
        i=$((i + 1))
        dd if=/dev/urandom of=$MNT/bg.tmp bs=64k count=8 2>/dev/null || exit 1
        sync || exit 1
        sha256sum $MNT/bg.tmp | sed "s#$MNT/bg.tmp#during/g$i#" >>"$STATE/during.sums"
        mkdir -p $MNT/during && mv $MNT/bg.tmp $MNT/during/g$i || exit 1
    done
) &
BG=$!
# Never leave the writer running if this scenario ends early.
trap 'kill -9 $BG 2>/dev/null' EXIT
sleep 3
crash_and_recover fs $IMG
wait_bg fs-writer-finished $BG 120 "the background file writer (after recovery; an I/O error on the recovered device?)"
sums_verify fs-verify-before $MNT "$STATE/before.sums"
sums_verify fs-verify-during $MNT "$STATE/during.sums"
# Kernel errors since the start of the scenario (buffer I/O errors or ext4
# errors mean the recovery lost or failed I/O even if the writer survived).
dmesg | tail -n +$((DMESG0 + 1)) | grep -E 'EXT4-fs (error|warning)|I/O error' | tail -n 3 >"$STATE/dmesg-errors"
[ -s "$STATE/dmesg-errors" ] && fail fs-no-kernel-errors "$(tr '\n' ' ' <"$STATE/dmesg-errors")" || pass fs-no-kernel-errors
check fs-umount umount $MNT
check fs-fsck e2fsck -fn "$DEV"
detach detach $IMG

# Free the space on /data for later scenarios (not an assertion).
for i in $IMG; do lsvd rm "$i" >/dev/null 2>&1 || info "lsvd-ublk rm $i failed"; done

finish
