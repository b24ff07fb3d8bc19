#!/bin/sh
# Server crash (kill -9) on a RADOS image with ext4 mounted, then user
# recovery (`lsvd-ublk recover`): the device stays (quiesced), the new
# server replays the journal over what RADOS holds, the writer carries on
# without I/O errors, every file verifies and fsck is clean. The RADOS
# counterpart of phase 2 of 30-recover.sh; the old server's librados
# session dies with it (its image lock is taken over by the new server).
. /lib/lsvd-vm-lib.sh

rados_setup
IMG=lsvd/rrec
MNT=/mnt/rrec
mkdir -p $MNT
DMESG0=$(dmesg | wc -l)
must create lsvd create $IMG --size 1G
attach attach $IMG || finish
must mkfs mkfs.ext4 -q -F "$DEV"
must mount mount -t ext4 -o barrier=1 "$DEV" $MNT
rand_files $MNT/before 40 65 && sync && pass fs-write-before || fail fs-write-before "writing files failed"
(cd $MNT && find before -type f | sort | xargs sha256sum) >"$STATE/before.sums"
# Background writer: 512 KiB files of random data, each followed by sync.
(
    i=0
    while [ $i -lt 30 ]; do
        i=$((i + 1))
        dd if=/dev/urandom of=$MNT/bg.tmp bs=64k count=8 2>/dev/null || exit 1
        sync || exit 1
        sha256sum $MNT/bg.tmp | sed "s#$MNT/bg.tmp#during/g$i#" >>"$STATE/during.sums"
        mkdir -p $MNT/during && mv $MNT/bg.tmp $MNT/during/g$i || exit 1
    done
) &
BG=$!
trap 'kill -9 $BG 2>/dev/null' EXIT
sleep 3
pid=$(server_pid "$DEV")
[ -n "$pid" ] || abort find-server "no server pid for $DEV (list --json / pidof)"
info "killing server pid $pid of $DEV"
kill -9 "$pid"
wait_for 10 test ! -d "/proc/$pid" || abort kill "pid $pid still alive"
pass kill
expect_state quiesced "$DEV" quiesced 15
if [ -b "$DEV" ]; then pass node-kept; else fail node-kept "$DEV vanished after the server died"; fi
r0=$(now)
out=$(lsvd recover "$IMG" 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ]; then pass recover; else fail recover "recover $IMG exited $rc: $(errsum "$out")"; diag; fi
expect_state live "$DEV" live 30
info "recover took $(awk -v a="$r0" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}') s"
newpid=$(server_pid "$DEV")
[ -n "$newpid" ] && [ "$newpid" != "$pid" ] && pass new-server ||
    fail new-server "server pid after recover is '$newpid' (was $pid)"
wait_bg writer-finished $BG 150 "the background file writer (after recovery; an I/O error on the recovered device?)"
sums_verify verify-before $MNT "$STATE/before.sums"
sums_verify verify-during $MNT "$STATE/during.sums"
dmesg | tail -n +$((DMESG0 + 1)) | grep -E 'EXT4-fs (error|warning)|I/O error' | tail -n 3 >"$STATE/dmesg-errors"
[ -s "$STATE/dmesg-errors" ] && fail no-kernel-errors "$(tr '\n' ' ' <"$STATE/dmesg-errors")" || pass no-kernel-errors
check umount umount $MNT
check fsck e2fsck -fn "$DEV"
detach detach $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"

finish
