#!/bin/sh
# DISCARD and WRITE_ZEROES reach the server, read back as zeros, leave the
# neighbours alone and survive a detach and re-attach (they are journaled
# like writes).
. /lib/lsvd-vm-lib.sh

IMG=p/discard
must create lsvd create $IMG --size 64M
attach attach $IMG || finish
MiB=1048576
dd if=/dev/urandom of="$STATE/pattern" bs=1M count=4 2>/dev/null
dd if=/dev/zero of="$STATE/zero1m" bs=1M count=1 2>/dev/null
must write dd if="$STATE/pattern" of="$DEV" bs=1M oflag=direct conv=fsync
# Discard I/Os completed: field 12 of /sys/block/DEV/stat.
discards() { awk '{print $12}' "/sys/block/$(dev_name "$1")/stat"; }
d0=$(discards "$DEV")
check discard blkdiscard -o $MiB -l $MiB "$DEV"
[ "$(discards "$DEV")" -gt "$d0" ] && pass discard-io || fail discard-io "no DISCARD reached $DEV (stat field 12 stayed $d0)"
check write-zeroes blkdiscard-util-linux -z -o $((2 * MiB)) -l $MiB "$DEV"
grep -q . "/sys/block/$(dev_name "$DEV")/queue/write_zeroes_max_bytes" &&
    [ "$(cat "/sys/block/$(dev_name "$DEV")/queue/write_zeroes_max_bytes")" -gt 0 ] &&
    pass write-zeroes-supported || fail write-zeroes-supported "the device does not advertise WRITE_ZEROES"
check flush sync

# verify_layout STEP: MiB 0 and 3 hold the pattern, MiB 1 and 2 are zeros.
verify_layout() {
    local step=$1 i bad=""
    for i in 0 1 2 3; do
        dd if="$DEV" of="$STATE/got" bs=1M skip=$i count=1 iflag=direct 2>/dev/null
        case $i in
            1|2) cmp -s "$STATE/got" "$STATE/zero1m" || bad="$bad MiB$i-not-zero" ;;
            *) dd if="$STATE/pattern" of="$STATE/want" bs=1M skip=$i count=1 2>/dev/null
               cmp -s "$STATE/got" "$STATE/want" || bad="$bad MiB$i-changed" ;;
        esac
    done
    [ -z "$bad" ] && pass "$step" || fail "$step" "$bad"
}
verify_layout layout
detach detach $IMG
attach reattach $IMG || finish
verify_layout layout-after-reattach
detach detach-2 $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
