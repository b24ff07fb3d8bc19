#!/bin/sh
# A RADOS image (vm-test.sh --rados: Ceph in the guest, on its loopback):
# create, attach, mkfs.ext4, mount, fio with crc32c verification on a file,
# unmount, detach (everything destaged to RADOS), re-attach with the read
# cache removed (so every block comes back from the OSD), mount,
# fio --verify_only, fsck.
# CLI contract assumed: create / attach (prints /dev/ublkbN) / detach, see lib.sh.
. /lib/lsvd-vm-lib.sh

rados_setup
IMG=lsvd/rfs
MNT=/mnt/rfs
mkdir -p $MNT
must create lsvd create $IMG --size 1G
attach attach $IMG || finish
must mkfs mkfs.ext4 -q -F "$DEV"
must mount mount -t ext4 -o barrier=1 "$DEV" $MNT

# One file, random writes of 4k..256k with fsync (FLUSH) every 8, QD8.
cat >"$STATE/rfs.fio" <<JOBS
[rfs]
filename=$MNT/data
size=96m
rw=randwrite
bsrange=4k-256k
ioengine=psync
direct=1
fsync=8
verify=crc32c
verify_fatal=1
randseed=6060
JOBS
snap=$(io_snapshot "$DEV")
check fio-write-verify fio "$STATE/rfs.fio"
io_moved io-write "$DEV" "$snap" wf
check umount umount $MNT
detach detach $IMG || finish
n=$(rados_objects rfs)
if [ "${n:-0}" -gt 1 ]; then pass objects-in-rados; info "$n objects named rfs* in pool lsvd"; else fail objects-in-rados "pool lsvd holds ${n:-0} objects named rfs*"; fi

# No read cache: the data must come back from RADOS.
rm -rf /data/rcache/lsvd
attach reattach $IMG || finish
check fsck e2fsck -fn "$DEV"
must mount-2 mount -t ext4 -o barrier=1 "$DEV" $MNT
snap=$(io_snapshot "$DEV")
check verify-after-reattach fio --verify_only "$STATE/rfs.fio"
io_moved io-verify "$DEV" "$snap" r
check umount-2 umount $MNT
detach detach-2 $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"

finish
