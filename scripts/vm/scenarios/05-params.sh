#!/bin/sh
# The device tells the kernel what we implement (DESIGN contract point 8):
# a volatile write cache and FUA, 4096-byte physical blocks, 512-byte (or,
# with --logical-block-size 4096, 4096-byte) logical blocks, requests of at
# least 1 MiB, discard and write-zeroes limits.
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
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
