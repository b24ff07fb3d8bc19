#!/usr/bin/env bash
# The main job on the embedded default backend (a local directory): build,
# create an image, import a file into it, export it back and compare, show
# `info`, run `bench`, then remove the image. Everything lives under
# $LSVD_DEMO_DIR (default /tmp/lsvd-demo, which must not be tmpfs: the
# journal uses O_DIRECT).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${LSVD_DEMO_DIR:-/tmp/lsvd-demo}"
rm -rf "$dir"
mkdir -p "$dir"
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
lsvd rm demo/disk
rm -rf "$dir"
echo "demo done"
