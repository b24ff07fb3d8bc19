#!/bin/sh
# The device tells the kernel what we implement (DESIGN contract point 8):
# a volatile write cache and FUA, 4096-byte physical blocks, 512-byte (or,
# with --logical-block-size 4096, 4096-byte) logical blocks, requests of at
# least 1 MiB, discard and write-zeroes limits; and where the queue threads
# may run (ublk_pin_queues).
. /lib/lsvd-vm-lib.sh

IMG=p/params
must create lsvd create $IMG --size 64M

# q FILE: a queue attribute of $DEV.
q() { cat "/sys/block/$(dev_name "$DEV")/queue/$1" 2>/dev/null; }
# expect STEP FILE WANT: attribute FILE equals WANT.
expect() {
    local got
    got=$(q "$2")
    [ "$got" = "$3" ] && pass "$1" || fail "$1" "queue/$2 is '$got', expected '$3'"
}
# at_least STEP FILE MIN: attribute FILE is a number >= MIN.
at_least() {
    local got
    got=$(q "$2")
    [ -n "$got" ] && [ "$got" -ge "$3" ] && pass "$1" || fail "$1" "queue/$2 is '$got', expected at least $3"
}

for lbs in 512 4096; do
    attach attach-$lbs $IMG --logical-block-size $lbs || finish
    expect lbs-$lbs logical_block_size $lbs
    expect pbs-$lbs physical_block_size 4096
    expect write-cache-$lbs write_cache "write back"
    expect fua-$lbs fua 1
    at_least max-io-$lbs max_sectors_kb 1024
    expect discard-gran-$lbs discard_granularity 4096
    at_least discard-max-$lbs discard_max_bytes $((1 << 30))
    at_least write-zeroes-max-$lbs write_zeroes_max_bytes $((1 << 30))
    expect size-$lbs ../size $((64 * 2048))
    # The 1 MiB requests really arrive whole: one direct 1 MiB write.
    check big-write-$lbs dd if=/dev/zero of="$DEV" bs=1M count=1 oflag=direct
    detach detach-$lbs $IMG
done

# Queue threads (ublk_pin_queues): by default every server thread may run on
# every CPU (libublk pins each queue thread to its queue's CPUs; the server
# lifts that once the device is live); with the key set, the queue threads
# keep the kernel's mapping, one CPU each when there are as many queues as
# CPUs.
# cpus_of_server: the Cpus_allowed_list of each thread of $DEV's server.
cpus_of_server() {
    local srv t
    srv=$(server_pid "$DEV")
    for t in /proc/$srv/task/*; do
        awk '/^Cpus_allowed_list/ { print $2 }' "$t/status"
    done
}
ALL=$(awk '/^Cpus_allowed_list/ { print $2 }' /proc/self/status)
NCPU=$(nproc)
attach attach-unpinned $IMG --queues "$NCPU" || finish
bad=$(cpus_of_server | grep -vx "$ALL" | tr '\n' ' ')
[ -z "$bad" ] && pass unpinned || fail unpinned "server threads limited to CPUs '$bad' (all: $ALL)"
detach detach-unpinned $IMG
attach attach-pinned $IMG --queues "$NCPU" --config '{"ublk_pin_queues": true}' || finish
if [ "$NCPU" -gt 1 ]; then
    pinned=$(cpus_of_server | grep -cvx "$ALL")
    [ "$pinned" -ge "$NCPU" ] && pass pinned ||
        fail pinned "$pinned threads pinned with ublk_pin_queues, expected the $NCPU queue threads"
else
    info "one CPU: nothing to pin"
fi
detach detach-pinned $IMG
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
