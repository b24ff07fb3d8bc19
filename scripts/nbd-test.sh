#!/usr/bin/env bash
# `lsvd-ublk serve-nbd` against real NBD clients, on the dir backend in a
# temporary directory, serving on a unix socket:
#   1. nbdinfo: size, block size constraints and flags as advertised;
#   2. qemu-io: pattern writes (plain and FUA), write-zeroes, discard and
#      pattern reads, the same ops on a local raw file, then qemu-img
#      compare of the export with that file, and of a qemu-img convert copy;
#   3. fio --ioengine=nbd: 4K random writes at QD32 with crc32c verify, and
#      the verify pass again after a clean restart of the server;
#   4. a file system without the kernel nbd module: nbdfuse -> losetup
#      --direct-io=on -> mkfs.ext4 -> mount -> files + sha256 -> sync ->
#      umount; then kill -9 of the server, a restart, e2fsck -fn and every
#      sha256 checked again;
#   5. snapshot and clone exports;
#   6. conformance with libnbd's own tools on a fresh 64 MiB image: nbdsh
#      scripts (scripts/nbd/*.py) for every handshake option, structured
#      replies and base:allocation included (options.py), every command against a
#      byte-array oracle (commands.py), `--read-only` (readonly.py); an
#      nbdcopy round trip over 8 connections; 8 connections writing at
#      once, one flush, kill -9, and every write read back (multiconn.py).
#      Every script runs even when an earlier one failed; the stage then
#      fails naming them;
#   7. block status (base:allocation): nbdinfo --map and qemu-img map show
#      data exactly where qemu-io wrote and holes elsewhere, and nbdcopy to
#      a file allocates only the data.
# Installs what it needs (Debian packages). Every mount, loop device and
# process it starts is cleaned up on exit, also on failure. A few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-build-deps.sh qemu-utils libnbd-bin python3-libnbd fio e2fsprogs fuse3

export TMPDIR="${TMPDIR:-/tmp}"
stage() { printf '\n== nbd-test: %s\n' "$*"; }
fail() {
    echo "nbd-test: FAIL: $*" >&2
    exit 1
}

stage "build"
cargo build --release --bin lsvd-ublk
bin="$PWD/target/release/lsvd-ublk"
if ! fio --enghelp 2>/dev/null | grep -qw nbd; then
    fail "this fio has no nbd engine (Debian's fio is built with libnbd)"
fi

work="$(mktemp -d "$TMPDIR/lsvd-nbd-test.XXXXXX")"
sock="$work/nbd.sock"
uri="nbd+unix:///img?socket=$sock"
cfg="{\"store_dir\":\"$work/store\",\"wlog_dir\":\"$work/wlog\",\"rcache_dir\":\"$work/rcache\",\"wlog_bytes\":\"256M\",\"rcache_bytes\":\"64M\"}"
size=$((1 << 30))
server_pid=""
fuse_pid=""
extra_pids=()
fuse_mnt="$work/fuse"
fs_mnt="$work/fs"
loopdev=""
ok=0

cleanup() {
    set +e
    if mountpoint -q "$fs_mnt" 2>/dev/null; then umount "$fs_mnt"; fi
    if [ -n "$loopdev" ]; then losetup -d "$loopdev"; fi
    if mountpoint -q "$fuse_mnt" 2>/dev/null; then fusermount3 -u "$fuse_mnt"; fi
    if [ -n "$fuse_pid" ]; then wait "$fuse_pid" 2>/dev/null; fi
    if [ -n "$server_pid" ]; then
        kill -9 "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    for p in "${extra_pids[@]}"; do
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ "$ok" = 1 ]; then
        rm -rf "$work"
    else
        echo "nbd-test: work directory kept: $work (server log: $work/server.log)" >&2
        tail -n 30 "$work/server.log" >&2 2>/dev/null
    fi
}
trap cleanup EXIT

lsvd() { "$bin" --config "$cfg" "$@"; }

# Start the server and wait for the address line it prints when ready.
start_server() {
    : >"$work/uri"
    # The binary itself in the background (not a shell function), so that
    # $! is the server's pid and our signals reach it.
    "$bin" --config "$cfg" serve-nbd nbd/img --listen "unix:$sock" >"$work/uri" \
        2>>"$work/server.log" &
    server_pid=$!
    for _ in $(seq 300); do
        if [ -s "$work/uri" ]; then break; fi
        kill -0 "$server_pid" 2>/dev/null || fail "serve-nbd exited during start"
        sleep 0.1
    done
    [ "$(head -n1 "$work/uri")" = "$uri" ] || fail "serve-nbd printed '$(cat "$work/uri")', not $uri"
}

# SIGTERM: a clean close, exit status 0, the socket removed.
stop_server() {
    kill -TERM "$server_pid"
    local rc=0
    wait "$server_pid" || rc=$?
    server_pid=""
    [ "$rc" = 0 ] || fail "serve-nbd exited with status $rc after SIGTERM"
    [ ! -e "$sock" ] || fail "the socket $sock was not removed"
}

kill_server() {
    kill -9 "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

stage "create a 1 GiB image on the dir backend in $work"
lsvd create nbd/img --size 1G
start_server
echo "serving $uri"

stage "nbdinfo"
nbdinfo "$uri" | tee "$work/nbdinfo.txt"
for want in "export-size: $size" "block_size_minimum: 512" "block_size_preferred: 4096" \
    "block_size_maximum: 33554432" "is_read_only: false" "can_flush: true" "can_fua: true" \
    "can_trim: true" "can_zero: true" "can_multi_conn: true"; do
    grep -q "$want" "$work/nbdinfo.txt" || fail "nbdinfo does not show '$want'"
done
nbdinfo --list "nbd+unix:///?socket=$sock" | grep -q 'export="img"' || fail "nbdinfo --list does not show img"

stage "qemu-io: writes (plain, FUA), write-zeroes, discard, pattern reads"
ops=(
    -c "write -P 0xa5 0 4M"
    -c "write -f -P 0x5a 1M 64k"
    -c "write -P 0x11 8M 1M"
    -c "write -z 2M 512k"
    -c "discard 3M 1M"
    -c "write -f -P 0x77 $((size - 65536)) 64k"
    -c "flush"
)
checks=(
    -c "read -P 0xa5 0 1M"
    -c "read -P 0x5a 1M 64k"
    -c "read -P 0xa5 $((1024 * 1024 + 65536)) $((1024 * 1024 - 65536))"
    -c "read -P 0 2M 512k"
    -c "read -P 0xa5 $((2 * 1024 * 1024 + 524288)) 512k"
    -c "read -P 0 3M 1M"
    -c "read -P 0x11 8M 1M"
    -c "read -P 0 9M 1M"
    -c "read -P 0x77 $((size - 65536)) 64k"
)
qemu_io() {
    local out
    out="$(timeout 120 qemu-io "$@" 2>&1)" || { echo "$out"; fail "qemu-io $* failed"; }
    echo "$out" | grep -v "^[0-9.]* [KMG]iB, " | head -n 40
    if echo "$out" | grep -qiE "fail|error|mismatch"; then
        fail "qemu-io reported a failure"
    fi
}
qemu_io -f raw "$uri" "${ops[@]}"
qemu_io -f raw "$uri" "${checks[@]}"

stage "the same ops on a local raw file; qemu-img compare"
truncate -s "$size" "$work/ref.raw"
qemu_io -f raw "$work/ref.raw" "${ops[@]}"
qemu-img compare -f raw -F raw "$uri" "$work/ref.raw"
qemu-img convert -f raw -O raw "$uri" "$work/copy.raw"
qemu-img compare -f raw -F raw "$work/copy.raw" "$work/ref.raw"
rm -f "$work/copy.raw" "$work/ref.raw"

fio_job=(--name=nbdverify --ioengine=nbd "--uri=$uri" --rw=randwrite --bs=4k --iodepth=32
    --offset=64M --size=192M --verify=crc32c --verify_fatal=1 --randrepeat=1 --group_reporting
    --verify_state_save=0)
stage "fio --ioengine=nbd: 4K random writes QD32 with crc32c verify"
timeout 300 fio "${fio_job[@]}" --do_verify=1 >"$work/fio-write.txt" ||
    { cat "$work/fio-write.txt"; fail "fio write+verify failed"; }
grep -E "IOPS|err=" "$work/fio-write.txt"
timeout 300 fio "${fio_job[@]}" --verify_only >"$work/fio-verify.txt" ||
    { cat "$work/fio-verify.txt"; fail "fio verify failed"; }

stage "clean restart (SIGTERM), then the fio verify pass again"
stop_server
lsvd info nbd/img | grep -q "clean yes" || fail "image not marked clean after SIGTERM"
start_server
timeout 300 fio "${fio_job[@]}" --verify_only >"$work/fio-verify.txt" ||
    { cat "$work/fio-verify.txt"; fail "fio verify after restart failed"; }
echo "verified after restart"

mkdir -p "$fuse_mnt" "$fs_mnt"
# nbdfuse (FUSE file MNT/nbd) -> loop device (direct I/O) -> ext4.
attach_fs() {
    rm -f "$work/nbdfuse.pid"
    nbdfuse -P "$work/nbdfuse.pid" "$fuse_mnt" "$uri" &
    fuse_pid=$!
    for _ in $(seq 300); do
        [ -s "$work/nbdfuse.pid" ] && break
        kill -0 "$fuse_pid" 2>/dev/null || fail "nbdfuse exited"
        sleep 0.1
    done
    [ -e "$fuse_mnt/nbd" ] || fail "nbdfuse did not expose $fuse_mnt/nbd"
    loopdev="$(losetup --direct-io=on --find --show "$fuse_mnt/nbd")"
    echo "loop device $loopdev on $fuse_mnt/nbd"
}
detach_fs() {
    umount "$fs_mnt"
    losetup -d "$loopdev"
    loopdev=""
    fusermount3 -u "$fuse_mnt"
    wait "$fuse_pid" || true
    fuse_pid=""
}

stage "file system: nbdfuse -> losetup --direct-io=on -> mkfs.ext4 -> mount -> files"
attach_fs
mkfs.ext4 -q -F "$loopdev"
mount "$loopdev" "$fs_mnt"
for i in $(seq 1 40); do
    head -c $(((i * 37 % 23 + 1) * 65536 + i * 512)) /dev/urandom >"$fs_mnt/file$i"
done
mkdir "$fs_mnt/dir"
for i in $(seq 1 200); do echo "small file $i" >"$fs_mnt/dir/s$i"; done
(cd "$fs_mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/sums"
sync
echo "$(wc -l <"$work/sums") files written and synced"
detach_fs

stage "kill -9 the server, restart it, remount and verify every sha256"
kill_server
start_server
attach_fs
e2fsck -fn "$loopdev"
mount "$loopdev" "$fs_mnt"
(cd "$fs_mnt" && sha256sum --quiet -c "$work/sums") || fail "files differ after kill -9 and restart"
echo "$(wc -l <"$work/sums") files verified"
detach_fs
stop_server

# Extra servers (snapshot, clone) on their own sockets; killed by cleanup.
extra_pids=()
# serve_extra NAME SOCK [ARG...]: serve NAME (POOL/IMG[@SNAP]) on SOCK in
# the background (with serve-nbd's ARGs), wait for its address line, set
# extra_uri.
serve_extra() {
    : >"$work/uri2"
    "$bin" --config "$cfg" serve-nbd "$1" --listen "unix:$2" "${@:3}" >"$work/uri2" \
        2>>"$work/server.log" &
    extra_pids+=($!)
    for _ in $(seq 300); do
        if [ -s "$work/uri2" ]; then break; fi
        kill -0 "${extra_pids[-1]}" 2>/dev/null || fail "serve-nbd $1 exited during start"
        sleep 0.1
    done
    extra_uri=$(head -n1 "$work/uri2")
}
stop_extras() {
    local p
    for p in "${extra_pids[@]}"; do
        kill -TERM "$p"
        wait "$p" || fail "serve-nbd pid $p exited with an error after SIGTERM"
    done
    extra_pids=()
}

stage "snapshot: served read-only beside the live image, equal to an export taken before"
lsvd export nbd/img "$work/ref.raw"
lsvd snap create nbd/img@s1
start_server
serve_extra nbd/img@s1 "$work/snap.sock"
snap_uri=$extra_uri
[ "$snap_uri" = "nbd+unix:///img@s1?socket=$work/snap.sock" ] || fail "snapshot served as '$snap_uri'"
nbdinfo "$snap_uri" | tee "$work/nbdinfo-snap.txt"
grep -q "is_read_only: true" "$work/nbdinfo-snap.txt" || fail "nbdinfo: the snapshot export is not read-only"
# The live image changes; the snapshot does not.
qemu_io -f raw "$uri" -c "write -P 0x5a 0 8M"
qemu-img compare -f raw -F raw "$snap_uri" "$work/ref.raw"
if qemu-io -f raw "$snap_uri" -c "write -P 0x11 0 4k" 2>&1 | grep -q "wrote"; then
    fail "a write to the snapshot export succeeded"
fi
stop_extras
stop_server

stage "clone: reads the snapshot, its writes stay out of the snapshot"
lsvd clone nbd/img@s1 nbd/c1
serve_extra nbd/c1 "$work/clone.sock"
clone_uri=$extra_uri
qemu-img compare -f raw -F raw "$clone_uri" "$work/ref.raw"
qemu_io -f raw "$clone_uri" -c "write -P 0xc1 1M 1M" -c "write -z 4M 1M" -c "discard 8M 1M" \
    -c "read -P 0xc1 1M 1M" -c "read -P 0 4M 1M" -c "read -P 0 8M 1M"
if qemu-img compare -q -f raw -F raw "$clone_uri" "$work/ref.raw"; then
    fail "the clone's writes did not change it"
fi
serve_extra nbd/img@s1 "$work/snap.sock"
qemu-img compare -f raw -F raw "$extra_uri" "$work/ref.raw"
stop_extras
if lsvd snap rm nbd/img@s1 2>"$work/snaprm.err"; then
    fail "snap rm succeeded while a clone depends on the snapshot"
fi
grep -q "has clones: c1" "$work/snaprm.err" || fail "snap rm did not name the clone: $(cat "$work/snaprm.err")"
lsvd flatten nbd/c1
lsvd snap rm nbd/img@s1
rm -f "$work/ref.raw"

# Conformance with libnbd's own tools (issue 15). A fresh image, so that
# the scripts' oracles start from zeros; its size is not a power of two.
conf_size=$((64 * 1024 * 1024 + 12 * 1024))
conf_sock="$work/conf.sock"
conf_failed=()
# nbdsh runs `python3 -m nbd`: the first python3 on PATH must see the
# python3-libnbd module (a pyenv or venv python3 does not).
nbdsh_path=$PATH
if ! python3 -c 'import nbd' 2>/dev/null; then
    /usr/bin/python3 -c 'import nbd' 2>/dev/null || fail "python3-libnbd's module nbd cannot be imported"
    nbdsh_path="/usr/bin:$PATH"
fi
# conf_nbdsh SCRIPT SOCK [VAR=VALUE...]: run scripts/nbd/SCRIPT under nbdsh
# against the conformance image on SOCK; a failure is recorded, not fatal.
conf_nbdsh() {
    local script=$1 sock=$2 label=$1 a
    shift 2
    for a in "$@"; do
        case $a in NBD_PHASE=*) label+=" (${a#NBD_PHASE=})" ;; esac
    done
    if ! env "$@" PATH="$nbdsh_path" PYTHONDONTWRITEBYTECODE=1 NBD_SOCK="$sock" NBD_NAME=conf NBD_ALIAS=nbd/conf \
        NBD_SIZE="$conf_size" NBD_DIGEST="$work/conf.sha256" \
        timeout 300 nbdsh -c "import sys; sys.path.insert(0, '$PWD/scripts/nbd')" -c - \
        <"scripts/nbd/$script"; then
        echo "nbd-test: scripts/nbd/$label FAILED" >&2
        conf_failed+=("$label")
    fi
}
# The NBD connections the servers have accepted so far.
connections() { grep -c "NBD connection [0-9]* from unix socket$" "$work/server.log" || true; }

stage "conformance: nbdsh options.py, commands.py on a fresh image"
lsvd create nbd/conf --size "$conf_size"
serve_extra nbd/conf "$conf_sock"
conf_uri=$extra_uri
[ "$conf_uri" = "nbd+unix:///conf?socket=$conf_sock" ] || fail "nbd/conf served as '$conf_uri'"
conf_nbdsh options.py "$conf_sock"
conf_nbdsh commands.py "$conf_sock"
stop_extras

stage "conformance: nbdsh readonly.py against serve-nbd --read-only"
if [ -s "$work/conf.sha256" ]; then
    serve_extra nbd/conf "$work/ro.sock" --read-only
    conf_nbdsh readonly.py "$work/ro.sock"
    stop_extras
else
    conf_failed+=("readonly.py (no digest from commands.py)")
fi

stage "conformance: nbdcopy round trip over 8 connections"
# Random data, explicit zeros and holes, and a tail below 64K.
truncate -s "$conf_size" "$work/conf-src.raw"
head -c 6M /dev/urandom | dd of="$work/conf-src.raw" conv=notrunc status=none
head -c 1M /dev/zero | dd of="$work/conf-src.raw" bs=1M seek=7 conv=notrunc status=none
head -c 9M /dev/urandom | dd of="$work/conf-src.raw" bs=1M seek=20 conv=notrunc status=none
head -c 12K /dev/urandom | dd of="$work/conf-src.raw" bs=1K seek=$((64 * 1024)) conv=notrunc status=none
serve_extra nbd/conf "$conf_sock"
before=$(connections)
nbdcopy --flush --connections=8 --threads=8 "$work/conf-src.raw" "$conf_uri"
used=$(($(connections) - before))
[ "$used" -ge 8 ] || fail "nbdcopy used $used connections, expected 8 (is can_multi_conn off?)"
nbdcopy "$conf_uri" "$work/conf-back.raw"
cmp "$work/conf-src.raw" "$work/conf-back.raw" || fail "nbdcopy: the copy back differs"
rm -f "$work/conf-back.raw"
echo "nbdcopy: $conf_size bytes there and back over $used connections, equal"

stage "conformance: multi-conn: 8 connections write, one flushes, kill -9, read back"
conf_pid=${extra_pids[-1]}
conf_nbdsh multiconn.py "$conf_sock" NBD_PHASE=write NBD_SERVER_PID="$conf_pid" \
    NBD_BASE="$work/conf-src.raw"
# multiconn.py killed the server after its flush; if it failed before
# that, the server is killed here.
kill -9 "$conf_pid" 2>/dev/null || true
wait "$conf_pid" 2>/dev/null || true
extra_pids=()
serve_extra nbd/conf "$conf_sock"
conf_nbdsh multiconn.py "$conf_sock" NBD_PHASE=verify NBD_BASE="$work/conf-src.raw"
stop_extras
rm -f "$work/conf-src.raw"

stage "block status: nbdinfo --map, qemu-img map and nbdcopy see the holes"
lsvd create nbd/sparse --size 64M
serve_extra nbd/sparse "$work/sparse.sock"
sparse_uri=$extra_uri
qemu-io -f raw -c "write -P 0x5a 1M 4K" -c "write -P 0x33 8M 64K" "$sparse_uri" >/dev/null
nbdinfo --map "$sparse_uri" | tee "$work/map.txt"
# offset length type description: data exactly where written, holes around.
awk '{print $1, $2, $3}' "$work/map.txt" >"$work/map.got"
printf '%s\n' "0 1048576 3" "1048576 4096 0" "1052672 7335936 3" "8388608 65536 0" \
    "8454144 58654720 3" >"$work/map.want"
cmp -s "$work/map.got" "$work/map.want" || fail "nbdinfo --map: not the expected extents"
qemu-img map --output=json -f raw "$sparse_uri" >"$work/qmap.json"
[ "$(grep -c '"data": true' "$work/qmap.json")" = 2 ] || fail "qemu-img map: not 2 data extents"
grep -q '"start": 1048576, "length": 4096,.*"data": true' "$work/qmap.json" ||
    fail "qemu-img map: no data extent at 1M"
grep -q '"start": 1052672, "length": 7335936,.*"zero": true, "data": false' "$work/qmap.json" ||
    fail "qemu-img map: no hole after the first write"
nbdcopy "$sparse_uri" "$work/sparse.raw"
alloc=$(($(stat -c %b "$work/sparse.raw") * 512))
[ "$alloc" -le $((256 * 1024)) ] || fail "nbdcopy: the copy allocates $alloc bytes for 68K of data"
echo "block status: 2 data extents of 64 MiB, nbdcopy allocated $alloc bytes"
stop_extras
if [ ${#conf_failed[@]} -gt 0 ]; then
    fail "conformance scripts failed: $(printf '%s; ' "${conf_failed[@]}")their FAIL lines are above"
fi

ok=1
stage "all NBD client tests passed"
