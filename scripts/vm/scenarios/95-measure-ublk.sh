#!/bin/sh
# 4 KiB random write and read IOPS at QD32 on an lsvd-ublk device, with the
# same fio parameters as 90-measure-virtio.sh (fio_iops in lib.sh). Prints
#   MEASURE ublk randwrite iops=N engine=E cpu_us_per_io=C server_us_per_io=S ios=K
#   MEASURE ublk randread iops=N engine=E cpu_us_per_io=C server_us_per_io=S ios=K
#   MEASURE ublk syncwrite-qd1 iops=N cpu_us_per_io=C server_us_per_io=S ios=K
#     (O_SYNC 4 KiB writes at QD1)
#   MEASURE ublk randread-qd1 lat_us=N p99_us=N iops=N   (4 KiB reads at QD1)
# cpu_us_per_io is the whole guest's busy CPU per I/O on the device (see
# cpu_per_io in lib.sh); server_us_per_io the lsvd-ublk server's share.
# The store and journal are on /dev/vda (ext4), so compare with the virtio
# numbers for the cost of the ublk round trip plus lsvd itself.
# CLI contract assumed: create / attach (prints /dev/ublkbN) / detach, see
# lib.sh; wlog_bytes comes from /usr/local/etc/lsvd.json written by /init
# (256M; vda is 8 GiB).
. /lib/lsvd-vm-lib.sh

IMG=p/measure
must create lsvd create $IMG --size 2G
attach attach $IMG || finish
SRV=$(server_pid "$DEV")
for rw in randwrite randread; do
    # The reads cover a region every device has written whole and read
    # once just before (fio_fill).
    size=$FIO_MEASURE_SIZE
    if [ $rw = randread ]; then
        fio_fill "$DEV" || fail fill "fio sequential fill of $DEV failed"
        size=$FIO_READ_SIZE
    fi
    snap=$(io_snapshot "$DEV")
    csnap=$(cpu_snapshot "$DEV" "$SRV")
    if res=$(fio_iops "$DEV" $rw "" "$size"); then
        echo "MEASURE ublk $rw iops=$res $(cpu_per_io "$DEV" "$csnap" "$SRV")"
        case $rw in randwrite) io_moved "$rw-io" "$DEV" "$snap" w ;; *) io_moved "$rw-io" "$DEV" "$snap" r ;; esac
        pass "$rw"
    else
        fail "$rw" "fio $rw on $DEV failed"
    fi
done
# Read latency: 4 KiB random reads at QD1 over the region filled above.
if res=$(fio_read_lat_qd1 "$DEV" "" "$FIO_READ_SIZE"); then
    echo "MEASURE ublk randread-qd1 $res"
    pass readlat
else
    fail readlat "fio QD1 reads on $DEV failed"
fi
# Durable-write latency: O_SYNC writes at QD1 (FUA on a FUA device).
snap=$(io_snapshot "$DEV")
csnap=$(cpu_snapshot "$DEV" "$SRV")
if res=$(fio_sync_iops "$DEV"); then
    echo "MEASURE ublk syncwrite-qd1 iops=$res $(cpu_per_io "$DEV" "$csnap" "$SRV")"
    io_moved syncwrite-io "$DEV" "$snap" w
    pass syncwrite
else
    fail syncwrite "fio O_SYNC writes on "$DEV" failed"
fi
detach detach $IMG

# Free the space on /data for later scenarios (not an assertion).
for i in $IMG; do lsvd rm "$i" >/dev/null 2>&1 || info "lsvd-ublk rm $i failed"; done

finish
