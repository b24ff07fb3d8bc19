#!/bin/sh
# A read that waits on the backend does not hold up other requests of its
# queue. The server runs with one queue and LSVD_FAULT_GET_DELAY_MS (a test
# hook that delays every backend read); while a read of data that lives only
# in backend objects is stuck there, a write and a FLUSH on the same queue
# complete. Ordering, not timing, is asserted: the write must finish while
# the read is still waiting.
. /lib/lsvd-vm-lib.sh

IMG=p/stall
DELAY_MS=4000
must create lsvd create $IMG --size 64M
attach attach $IMG --queues 1 || finish
dd if=/dev/urandom of="$STATE/a" bs=1M count=4 2>/dev/null
must write-a dd if="$STATE/a" of="$DEV" bs=1M oflag=direct conv=fsync
# Detach: the data now lives only in backend objects.
detach detach $IMG

export LSVD_FAULT_GET_DELAY_MS=$DELAY_MS
# No read cache: it holds the data since its destage (read-after-write), and
# the read must go to the delayed backend.
attach slow-attach $IMG --queues 1 --config '{"no_rcache": true}' || finish
unset LSVD_FAULT_GET_DELAY_MS
grep -q "LSVD_FAULT_GET_DELAY_MS=$DELAY_MS" /run/lsvd-ublk/p-stall.log &&
    pass hook-active || fail hook-active "the server did not report the read delay"

dd if="$DEV" of="$STATE/got" bs=4k count=1 iflag=direct 2>/dev/null &
READER=$!
sleep 0.5
running $READER && pass read-waiting || fail read-waiting "the backend read finished within 0.5 s: the delay hook is not working"
dd if=/dev/urandom of="$STATE/b" bs=4k count=1 2>/dev/null
snap=$(io_snapshot "$DEV")
check write-during-read dd if="$STATE/b" of="$DEV" bs=4k seek=4096 oflag=direct conv=fsync
io_moved write-io "$DEV" "$snap" wf
if running $READER; then
    pass no-stall
else
    fail no-stall "the write and FLUSH completed only after the backend read (which takes ${DELAY_MS} ms)"
fi
wait $READER && pass read-done || fail read-done "the slow read failed"
dd if="$STATE/a" of="$STATE/want" bs=4k count=1 2>/dev/null
cmp -s "$STATE/got" "$STATE/want" && pass read-data || fail read-data "the slow read returned wrong data"
detach detach-2 $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
