#!/usr/bin/env bash
# The main job on the embedded default backend (a local directory): build,
# create an image, import a file into it, export it back and compare, show
# `info`, run `bench`, serve it as /dev/ublkbN with ext4 on it (where the
# kernel has ublk), then remove the image. Everything lives under
# $LSVD_DEMO_DIR (default /tmp/lsvd-demo, which must not be tmpfs: the
# journal uses O_DIRECT).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${LSVD_DEMO_DIR:-/tmp/lsvd-demo}"
rm -rf "$dir"
mkdir -p "$dir"
bash scripts/install-build-deps.sh
cargo build --release --bin lsvd-ublk
bin=target/release/lsvd-ublk
cfg="{\"store_dir\":\"$dir/store\",\"wlog_dir\":\"$dir/wlog\",\"wlog_bytes\":\"512M\"}"
lsvd() { echo "+ lsvd-ublk $*" >&2; "$bin" --config "$cfg" "$@"; }

# A 256 MiB file: random data with 64 MiB holes (import skips zeros).
head -c $((96 << 20)) /dev/urandom > "$dir/src.img"
truncate -s $((160 << 20)) "$dir/src.img"
head -c $((96 << 20)) /dev/urandom >> "$dir/src.img"

lsvd import "$dir/src.img" demo/disk
lsvd info demo/disk
lsvd export demo/disk "$dir/out.img"
cmp "$dir/src.img" "$dir/out.img"
echo "export matches import"
lsvd bench demo/disk --io-type write --io-size 4K --io-pattern rand --io-threads 32 --io-total 256M
lsvd bench demo/disk --io-type read --io-size 4K --io-pattern rand --io-threads 32 --io-total 64M
lsvd ls demo

# The block device, where this kernel has ublk (Linux 6.0+, module ublk_drv)
# and we are root: attach, make a file system, write, detach, re-attach,
# check. Elsewhere (such as this project's CI hosts) the QEMU guest harness
# shows the same: scripts/vm-test.sh --scenario fs
modprobe ublk_drv 2>/dev/null || true
if [ -e /dev/ublk-control ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
    export LSVD_RUN_DIR="$dir/run"
    dev=$(lsvd attach demo/disk)
    echo "attached demo/disk as $dev"
    mkfs.ext4 -q -F "$dev"
    mkdir -p "$dir/mnt"
    mount "$dev" "$dir/mnt"
    head -c $((16 << 20)) /dev/urandom > "$dir/mnt/file"
    sum=$(sha256sum < "$dir/mnt/file")
    umount "$dir/mnt"
    lsvd list
    lsvd detach demo/disk
    dev=$(lsvd attach demo/disk)
    mount "$dev" "$dir/mnt"
    if [ "$(sha256sum < "$dir/mnt/file")" = "$sum" ]; then
        echo "file intact after detach and re-attach"
    else
        echo "file CHANGED after detach and re-attach" >&2
        exit 1
    fi
    umount "$dir/mnt"
    lsvd detach demo/disk
else
    echo "(no ublk driver here, or not root: skipping the block device; see scripts/vm-test.sh)"
fi
lsvd rm demo/disk
rm -rf "$dir"
echo "demo done"
