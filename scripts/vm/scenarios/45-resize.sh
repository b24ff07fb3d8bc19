#!/bin/sh
# Resize of an attached image through the server's control socket. This
# guest's 6.12 kernel has no UBLK_F_UPDATE_SIZE, so a grow resizes the image
# and the device keeps its size until re-attached (the command says so and
# exits 0), and a shrink below the device's size is refused; with a kernel
# that has it (6.16+) the device follows. Either way, after a re-attach the
# device has the new size, the old data is intact and the grown range
# takes writes and reads back.
. /lib/lsvd-vm-lib.sh

IMG=p/resize
MiB=1048576
dev_bytes() { echo $(($(cat "/sys/block/$(dev_name "$DEV")/size") * 512)); }
must create lsvd create $IMG --size 64M
attach attach $IMG || finish
dd if=/dev/urandom of="$STATE/a" bs=1M count=4 2>/dev/null
must write-a dd if="$STATE/a" of="$DEV" bs=1M oflag=direct conv=fsync
[ "$(dev_bytes)" = $((64 * MiB)) ] && pass size-before || fail size-before "$DEV has $(dev_bytes) bytes, not 64 MiB"
[ -S "/run/lsvd-ublk/$(dev_name "$DEV").sock" ] && pass control-socket ||
    fail control-socket "no /run/lsvd-ublk/$(dev_name "$DEV").sock"

out=$(lsvd resize $IMG --size 128M 2>&1) && rc=0 || rc=$?
[ "$rc" = 0 ] && pass grow || fail grow "resize exited $rc: $(errsum "$out")"
info "resize said: $out"
kept=no
case "$(dev_bytes)" in
    $((128 * MiB))) pass device-follows ;;
    $((64 * MiB))) kept=yes
        echo "$out" | grep -q "keeps its size of $((64 * MiB)) bytes until the image is attached again" &&
            pass device-keeps-size-and-says-so ||
            fail device-keeps-size-and-says-so "the device kept 64 MiB but the message does not say so: $out" ;;
    *) fail device-size "$DEV has $(dev_bytes) bytes after the grow" ;;
esac
lsvd info $IMG | grep -q "size 128 MiB" && pass info-grown || fail info-grown "$(lsvd info $IMG 2>&1 | grep size)"

if [ "$kept" = yes ]; then
    # The device (64 MiB) must never be bigger than the image.
    out=$(lsvd resize $IMG --size 32M --allow-shrink 2>&1) && rc=0 || rc=$?
    [ "$rc" != 0 ] && echo "$out" | grep -q UPDATE_SIZE && pass shrink-refused ||
        fail shrink-refused "exit $rc: $(errsum "$out")"
    # Down to the device's size is fine.
    check shrink-to-device-size lsvd resize $IMG --size 64M --allow-shrink
    check grow-again lsvd resize $IMG --size 128M
fi
# I/O still works on the live device.
snap=$(io_snapshot "$DEV")
check write-live dd if="$STATE/a" of="$DEV" bs=1M seek=8 count=1 oflag=direct conv=fsync
io_moved write-io "$DEV" "$snap" w

detach detach $IMG
attach reattach $IMG || finish
[ "$(dev_bytes)" = $((128 * MiB)) ] && pass size-after-reattach ||
    fail size-after-reattach "$DEV has $(dev_bytes) bytes, not 128 MiB"
dd if="$DEV" of="$STATE/got" bs=1M count=4 iflag=direct 2>/dev/null
cmp -s "$STATE/got" "$STATE/a" && pass data-kept || fail data-kept "the first 4 MiB changed"
# The grown range reads as zeros, then takes a write.
dd if=/dev/zero of="$STATE/z" bs=1M count=1 2>/dev/null
dd if="$DEV" of="$STATE/got" bs=1M skip=100 count=1 iflag=direct 2>/dev/null
cmp -s "$STATE/got" "$STATE/z" && pass grown-zeros || fail grown-zeros "MiB 100 is not zeros"
check write-grown dd if="$STATE/a" of="$DEV" bs=1M seek=120 count=4 oflag=direct conv=fsync
dd if="$DEV" of="$STATE/got" bs=1M skip=120 count=4 iflag=direct 2>/dev/null
cmp -s "$STATE/got" "$STATE/a" && pass read-grown || fail read-grown "MiB 120-123 do not read back"
detach detach-2 $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
