#!/bin/sh
# Smoke test of the guest environment itself (no ublk server needed):
# modules loaded, /dev/ublk-control present, the binary runs, ext4 mkfs and
# mount work on a scratch virtio disk (/dev/vdb), fio runs with O_DIRECT.
. /lib/lsvd-vm-lib.sh

# Modules: /proc/modules lists loadable modules that are live.
for m in ublk_drv ext4 jbd2 virtio_blk; do
    if grep -q "^$m " /proc/modules; then pass "module-$m"; else fail "module-$m" "$m not in /proc/modules"; fi
done
if [ -c /dev/ublk-control ]; then pass ublk-control; else fail ublk-control "/dev/ublk-control is not a character device"; fi

# The binary and its shared libraries are complete.
if v=$($LSVD --version 2>&1); then
    pass version
    info "$v"
else
    fail version "lsvd-ublk --version failed: $v"
fi

# /data (vda) is mounted ext4 for the store.
if awk '$2 == "/data" && $3 == "ext4"' /proc/mounts | grep -q .; then pass data-ext4; else fail data-ext4 "/data is not ext4"; fi

# ext4 on the scratch disk vdb, with barriers; write, sync, check it hit the disk.
mkdir -p /mnt/scratch
snap=$(io_snapshot /dev/vdb)
must mkfs-vdb mkfs.ext4 -q -F /dev/vdb
must mount-vdb mount -t ext4 -o barrier=1 /dev/vdb /mnt/scratch
check write-vdb dd if=/dev/urandom of=/mnt/scratch/f bs=64k count=16
sum1=$(sha256sum /mnt/scratch/f | cut -d' ' -f1)
sync
check umount-vdb umount /mnt/scratch
check remount-vdb mount -t ext4 -o barrier=1 /dev/vdb /mnt/scratch
sum2=$(sha256sum /mnt/scratch/f 2>/dev/null | cut -d' ' -f1)
if [ -n "$sum1" ] && [ "$sum1" = "$sum2" ]; then pass checksum-vdb; else fail checksum-vdb "checksum changed over remount: $sum1 vs $sum2"; fi
check umount-vdb-2 umount /mnt/scratch
io_moved io-vdb /dev/vdb "$snap" rwf

# fio: O_DIRECT with the best engine, and a verify pass.
engine=$(fio_engine /dev/vdb)
info "fio engine: $engine"
[ "$engine" = psync ] && fail fio-engine "neither io_uring nor libaio works with O_DIRECT on /dev/vdb"
check fio-verify fio --name=smoke --filename=/dev/vdb --ioengine="$engine" --direct=1 \
    --rw=randwrite --bs=4k --iodepth=8 --size=16M --verify=crc32c --do_verify=1 \
    --verify_fatal=1

finish
