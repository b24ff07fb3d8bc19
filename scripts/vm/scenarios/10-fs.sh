#!/bin/sh
# ext4 on an lsvd-ublk device survives detach + re-attach.
# CLI contract assumed (see lib.sh for the full list):
#   lsvd-ublk create p/fs --size 1G
#   lsvd-ublk attach p/fs      -> prints /dev/ublkbN, returns when live,
#                                 server keeps running in the background
#   lsvd-ublk detach p/fs      -> returns after clean shutdown, node gone
# ext4 is mounted with barriers on (-o barrier=1, the default) so FLUSH
# requests reach the server.
. /lib/lsvd-vm-lib.sh

IMG=p/fs
MNT=/mnt/fs
SUMS=$STATE/sums    # on /data (vda), outside the device under test
mkdir -p $MNT

must create lsvd create $IMG --size 1G
attach attach $IMG || finish
snap=$(io_snapshot "$DEV")
must mkfs mkfs.ext4 -q -F "$DEV"
must mount mount -t ext4 -o barrier=1 "$DEV" $MNT

t0=$(now)
if rand_files $MNT/d 300 10; then pass write-files; else fail write-files "dd into $MNT failed"; fi
check sync sync
(cd $MNT && find d -type f | sort | xargs sha256sum) >"$SUMS"
info "300 files, $(du -sk $MNT/d | cut -f1) KiB written+synced in $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"
[ "$(wc -l <"$SUMS")" = 300 ] && pass sums-recorded || fail sums-recorded "expected 300 checksums, got $(wc -l <"$SUMS")"
check umount umount $MNT
io_moved io-first-attach "$DEV" "$snap" rwf
detach detach $IMG || finish

attach reattach $IMG || finish
snap=$(io_snapshot "$DEV")
must remount mount -t ext4 -o barrier=1 "$DEV" $MNT
sums_verify verify $MNT "$SUMS"
check umount-2 umount $MNT
io_moved io-reattach "$DEV" "$snap" r
check fsck e2fsck -fn "$DEV"
detach detach-2 $IMG

# Free the space on /data for later scenarios (not an assertion).
for i in $IMG; do lsvd rm "$i" >/dev/null 2>&1 || info "lsvd-ublk rm $i failed"; done

finish
