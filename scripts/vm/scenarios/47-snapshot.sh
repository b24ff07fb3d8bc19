#!/bin/sh
# Snapshots and clones on real devices: a golden ext4 image is snapshotted;
# an attached clone is snapshotted through its server;
# the snapshot attaches read-only (the kernel marks the device read-only and
# its content is the golden one); two clones of it attach at once, each
# mounts the golden file system, gets its own files, and neither sees the
# other's, the base's or a change to the snapshot.
. /lib/lsvd-vm-lib.sh

IMG=p/gold
MNT=/mnt/snap
SUMS=$STATE/sums
mkdir -p $MNT/a $MNT/b $MNT/s

must create lsvd create $IMG --size 256M
attach attach $IMG || finish
must mkfs mkfs.ext4 -q -F "$DEV"
must mount mount -t ext4 "$DEV" $MNT/a
if rand_files $MNT/a/gold 40 8; then pass write-gold; else fail write-gold "dd into $MNT/a failed"; fi
check sync sync
(cd $MNT/a && find gold -type f | sort | xargs sha256sum) >"$SUMS"
check umount umount $MNT/a
detach detach $IMG || finish
must snap-create lsvd snap create $IMG@v1

# The base moves on after the snapshot.
attach reattach $IMG || finish
must mount-base mount -t ext4 "$DEV" $MNT/a
must base-change sh -c "rm -rf $MNT/a/gold && echo changed > $MNT/a/base-only"
check umount-base umount $MNT/a
detach detach-base $IMG || finish

# The snapshot: read-only device with the golden content.
attach attach-snap $IMG@v1 || finish
SNAPDEV=$DEV
# `status` of the image names the snapshot's device and its server.
out=$(lsvd status $IMG 2>&1)
case "$out" in
    *"$IMG@v1: ublk device $SNAPDEV pid "*", live"*) pass status-snap ;;
    *) fail status-snap "status $IMG does not name $SNAPDEV as live: $(errsum "$out")" ;;
esac
[ "$(cat "/sys/block/$(dev_name "$SNAPDEV")/ro")" = 1 ] && pass snap-ro ||
    fail snap-ro "/sys/block/$(dev_name "$SNAPDEV")/ro is not 1"
if dd if=/dev/zero of="$SNAPDEV" bs=4k count=1 oflag=direct 2>/dev/null; then
    fail snap-write-refused "a write to the snapshot device succeeded"
else
    pass snap-write-refused
fi
must mount-snap mount -t ext4 -o ro,noload "$SNAPDEV" $MNT/s
sums_verify snap-content $MNT/s "$SUMS"
[ ! -e $MNT/s/base-only ] && pass snap-isolated || fail snap-isolated "the snapshot shows a file written after it"
check umount-snap umount $MNT/s
detach detach-snap $IMG@v1

# Two clones at once.
must clone-a lsvd clone $IMG@v1 p/vm-a
must clone-b lsvd clone $IMG@v1 p/vm-b
attach attach-a p/vm-a || finish
DEVA=$DEV
attach attach-b p/vm-b || finish
DEVB=$DEV
must mount-a mount -t ext4 "$DEVA" $MNT/a
must mount-b mount -t ext4 "$DEVB" $MNT/b
sums_verify clone-a-content $MNT/a "$SUMS"
sums_verify clone-b-content $MNT/b "$SUMS"
must write-a sh -c "echo a > $MNT/a/only-a && rm $MNT/a/gold/f1"
must write-b sh -c "echo b > $MNT/b/only-b"
check sync-clones sync
check umount-a umount $MNT/a
check umount-b umount $MNT/b
# A snapshot of an attached image, taken by its server.
must live-snap lsvd snap create p/vm-b@live
attach attach-live p/vm-b@live || finish
must mount-live mount -t ext4 -o ro,noload "$DEV" $MNT/s
[ -e $MNT/s/only-b ] && [ -e $MNT/s/gold/f1 ] && pass live-snap-content ||
    fail live-snap-content "the live snapshot lacks clone b's files"
check umount-live umount $MNT/s
detach detach-live p/vm-b@live
must live-snap-rm lsvd snap rm p/vm-b@live
DEV=$DEVA detach detach-a p/vm-a
DEV=$DEVB detach detach-b p/vm-b
attach reattach-b p/vm-b || finish
must remount-b mount -t ext4 "$DEV" $MNT/b
[ -e $MNT/b/only-b ] && [ ! -e $MNT/b/only-a ] && [ -e $MNT/b/gold/f1 ] &&
    pass clones-isolated || fail clones-isolated "clone b sees clone a's changes or lost its own"
check umount-b2 umount $MNT/b
check fsck-b e2fsck -fn "$DEV"
detach detach-b2 p/vm-b

# Removal rules, then clean up.
if lsvd snap rm $IMG@v1 >"$STATE/rm.out" 2>&1; then
    fail snap-rm-refused "snap rm succeeded while clones depend on the snapshot"
else
    grep -q "vm-a, vm-b" "$STATE/rm.out" && pass snap-rm-refused ||
        fail snap-rm-refused "the error does not name the clones: $(cat "$STATE/rm.out")"
fi
must flatten-a lsvd flatten p/vm-a
lsvd rm p/vm-b >/dev/null 2>&1 || info "rm p/vm-b failed"
must snap-rm lsvd snap rm $IMG@v1
attach attach-flat p/vm-a || finish
must mount-flat mount -t ext4 "$DEV" $MNT/a
[ -e $MNT/a/only-a ] && [ ! -e $MNT/a/gold/f1 ] && pass flattened ||
    fail flattened "the flattened clone lost its content"
check umount-flat umount $MNT/a
detach detach-flat p/vm-a
lsvd rm p/vm-a >/dev/null 2>&1 || info "rm p/vm-a failed"
lsvd rm $IMG >/dev/null 2>&1 || info "rm $IMG failed"
finish
