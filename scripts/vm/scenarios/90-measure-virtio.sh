#!/bin/sh
# Baseline: 4 KiB random write and read IOPS at QD32, O_DIRECT, on the raw
# virtio disk /dev/vdb (the same parameters as 95-measure-ublk.sh, via
# fio_iops in lib.sh). Prints
#   MEASURE virtio randwrite iops=N engine=E cpu_us_per_io=C server_us_per_io=S ios=K
#   MEASURE virtio randread iops=N engine=E cpu_us_per_io=C server_us_per_io=S ios=K
#   MEASURE virtio syncwrite-qd1 iops=N cpu_us_per_io=C server_us_per_io=S ios=K
#     (O_SYNC 4 KiB writes at QD1)
#   MEASURE virtio randread-qd1 lat_us=N p99_us=N iops=N   (4 KiB reads at QD1)
# cpu_us_per_io is the whole guest's busy CPU per I/O on the device (see
# cpu_per_io in lib.sh) (server_us_per_io is 0: no server).
# Reads cover a region written whole and read once just before (fio_fill),
# as on ublk.
. /lib/lsvd-vm-lib.sh

DEV=/dev/vdb
for rw in randwrite randread; do
    # The reads cover a region every device has written whole and read
    # once just before (fio_fill).
    size=$FIO_MEASURE_SIZE
    if [ $rw = randread ]; then
        fio_fill $DEV || fail fill "fio sequential fill of $DEV failed"
        size=$FIO_READ_SIZE
    fi
    snap=$(io_snapshot $DEV)
    csnap=$(cpu_snapshot $DEV)
    if res=$(fio_iops $DEV $rw "" "$size"); then
        echo "MEASURE virtio $rw iops=$res $(cpu_per_io $DEV "$csnap")"
        case $rw in randwrite) io_moved "$rw-io" $DEV "$snap" w ;; *) io_moved "$rw-io" $DEV "$snap" r ;; esac
        pass "$rw"
    else
        fail "$rw" "fio $rw on $DEV failed"
    fi
done
# Read latency: 4 KiB random reads at QD1 over the region filled above.
if res=$(fio_read_lat_qd1 $DEV "" "$FIO_READ_SIZE"); then
    echo "MEASURE virtio randread-qd1 $res"
    pass readlat
else
    fail readlat "fio QD1 reads on $DEV failed"
fi
# Durable-write latency: O_SYNC writes at QD1 (FUA on a FUA device).
snap=$(io_snapshot $DEV)
csnap=$(cpu_snapshot $DEV)
if res=$(fio_sync_iops $DEV); then
    echo "MEASURE virtio syncwrite-qd1 iops=$res $(cpu_per_io $DEV "$csnap")"
    io_moved syncwrite-io $DEV "$snap" w
    pass syncwrite
else
    fail syncwrite "fio O_SYNC writes on $DEV failed"
fi

finish
