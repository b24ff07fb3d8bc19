#!/bin/sh
# Resize of an attached image through the server's control socket.
# Linux 6.16+ (the 7.x guest kernel): the driver offers UBLK_F_UPDATE_SIZE,
# the server asks for it at add (`list` shows "update-size"), and
# /dev/ublkbN follows a grow and a shrink live. Older kernels (the 6.12
# guest kernel) have no UBLK_F_UPDATE_SIZE: the device is added without it
# (`list` shows no "update-size"), a grow resizes the image and the device
# keeps its size until re-attached (the command says so and exits 0), and a
# shrink below the device's size is refused. Which one is expected follows
# from uname -r; getting the other is a failure. Either way, after a
# re-attach the device has the new size, the old data is intact and the
# grown range takes writes and reads back.
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

# The device's mode as `list` shows it.
flags=$(dev_flags "$DEV")
info "kernel $(uname -r), $DEV flags: ${flags:-<none>}"
case ",$flags," in
    *,user-recovery,*reissue,*) pass flags-recovery ;;
    *) fail flags-recovery "list shows flags '$flags' for $DEV, no user-recovery,reissue" ;;
esac
if kernel_at_least 6 16; then
    live=yes
    case ",$flags," in
        *,update-size,*) pass flags-update-size ;;
        *) fail flags-update-size "kernel $(uname -r) has UPDATE_SIZE but $DEV was added without it (flags '$flags')" ;;
    esac
else
    live=no
    case ",$flags," in
        *,update-size,*) fail flags-no-update-size "kernel $(uname -r) has no UPDATE_SIZE but list shows it (flags '$flags')" ;;
        *) pass flags-no-update-size ;;
    esac
fi

out=$(lsvd resize $IMG --size 128M 2>&1) && rc=0 || rc=$?
[ "$rc" = 0 ] && pass grow || fail grow "resize exited $rc: $(errsum "$out")"
info "resize said: $out"
if [ "$live" = yes ]; then
    [ "$(dev_bytes)" = $((128 * MiB)) ] && pass device-follows-grow ||
        fail device-follows-grow "$DEV has $(dev_bytes) bytes after the grow to 128 MiB, live resize expected on $(uname -r)"
    info "live resize: $DEV grew from $((64 * MiB)) to $(dev_bytes) bytes while attached"
else
    [ "$(dev_bytes)" = $((64 * MiB)) ] && pass device-keeps-size ||
        fail device-keeps-size "$DEV has $(dev_bytes) bytes after the grow, 64 MiB expected without UPDATE_SIZE"
    echo "$out" | grep -q "keeps its size of $((64 * MiB)) bytes until the image is attached again" &&
        pass device-keeps-size-and-says-so ||
        fail device-keeps-size-and-says-so "the message does not say that the device keeps its size: $out"
fi
lsvd info $IMG | grep -q "size 128 MiB" && pass info-grown || fail info-grown "$(lsvd info $IMG 2>&1 | grep size)"

if [ "$live" = yes ]; then
    # A shrink follows live too (the device first, then the image), and a
    # grow back; data below the cut stays.
    out=$(lsvd resize $IMG --size 96M --allow-shrink 2>&1) && rc=0 || rc=$?
    [ "$rc" = 0 ] && pass shrink-live || fail shrink-live "exit $rc: $(errsum "$out")"
    [ "$(dev_bytes)" = $((96 * MiB)) ] && pass device-follows-shrink ||
        fail device-follows-shrink "$DEV has $(dev_bytes) bytes after the shrink to 96 MiB"
    info "live resize: $DEV shrank to $(dev_bytes) bytes while attached"
    check grow-again lsvd resize $IMG --size 128M
    [ "$(dev_bytes)" = $((128 * MiB)) ] && pass device-follows-grow-again ||
        fail device-follows-grow-again "$DEV has $(dev_bytes) bytes after growing back to 128 MiB"
    # The new range is usable at once on the live device (MiB 110: the
    # checks after the re-attach use MiB 100 and 120-123).
    check write-past-old-end dd if="$STATE/a" of="$DEV" bs=1M seek=110 count=1 oflag=direct conv=fsync
    dd if="$DEV" of="$STATE/got" bs=1M skip=110 count=1 iflag=direct 2>/dev/null
    dd if="$STATE/a" of="$STATE/a1" bs=1M count=1 2>/dev/null
    cmp -s "$STATE/got" "$STATE/a1" && pass read-past-old-end || fail read-past-old-end "MiB 110 does not read back live"
else
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
