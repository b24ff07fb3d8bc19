#!/bin/sh
# The systemd way: `attach --foreground` prints the device once it is live
# and stays in the foreground; SIGTERM is a clean detach (exit 0, device
# deleted, image marked clean, data kept).
. /lib/lsvd-vm-lib.sh

IMG=p/fg
must create lsvd create $IMG --size 64M
"$LSVD" attach --foreground $IMG >"$STATE/fg.out" 2>"$STATE/fg.err" &
SRV=$!
trap 'kill -9 $SRV 2>/dev/null' EXIT
if wait_for 60 grep -q /dev/ublkb "$STATE/fg.out"; then
    DEV=$(grep -o '/dev/ublkb[0-9]*' "$STATE/fg.out" | head -1)
    pass ready
else
    abort ready "attach --foreground printed no device: $(errsum "$(cat "$STATE/fg.err")")"
fi
[ "$(dev_state "$DEV")" = live ] && pass live || fail live "state of $DEV is '$(dev_state "$DEV")'"
[ "$(list_field "$DEV" pid)" = "$SRV" ] && pass pid || fail pid "list shows pid '$(list_field "$DEV" pid)', the server is $SRV"

dd if=/dev/urandom of="$STATE/pattern" bs=64k count=32 2>/dev/null
snap=$(io_snapshot "$DEV")
check write dd if="$STATE/pattern" of="$DEV" bs=64k oflag=direct conv=fsync
io_moved write-io "$DEV" "$snap" w

kill -TERM $SRV
rc=0
wait $SRV || rc=$?
[ "$rc" = 0 ] && pass sigterm-exit || fail sigterm-exit "server exited $rc after SIGTERM: $(errsum "$(cat "$STATE/fg.err")")"
wait_for 10 test ! -e "$DEV" && pass device-gone || fail device-gone "$DEV still exists after the server exited"
[ -z "$(list_field "$DEV" state)" ] && pass unlisted || fail unlisted "$DEV still listed as '$(list_field "$DEV" state)'"
lsvd info $IMG --json | grep -q '"clean": *true' && pass image-clean || fail image-clean "image not marked clean: $(lsvd info $IMG 2>&1 | tr '\n' ' ')"

attach reattach $IMG || finish
dd if="$DEV" of="$STATE/readback" bs=64k count=32 iflag=direct 2>/dev/null
cmp -s "$STATE/pattern" "$STATE/readback" && pass data-kept || fail data-kept "data read back after SIGTERM and re-attach differs"
detach detach $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
