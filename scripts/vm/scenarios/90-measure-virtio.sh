#!/bin/sh
# Baseline: 4 KiB random write and read IOPS at QD32, O_DIRECT, on the raw
# virtio disk /dev/vdb (the same parameters as 95-measure-ublk.sh, via
# fio_iops in lib.sh). Prints
#   MEASURE virtio randwrite iops=N engine=E
#   MEASURE virtio randread iops=N engine=E
# Reads follow the writes on the same region so they are not all holes.
. /lib/lsvd-vm-lib.sh

DEV=/dev/vdb
for rw in randwrite randread; do
    snap=$(io_snapshot $DEV)
    if res=$(fio_iops $DEV $rw); then
        echo "MEASURE virtio $rw iops=$res"
        case $rw in randwrite) io_moved "$rw-io" $DEV "$snap" w ;; *) io_moved "$rw-io" $DEV "$snap" r ;; esac
        pass "$rw"
    else
        fail "$rw" "fio $rw on $DEV failed"
    fi
done

finish
