#!/bin/sh
# NVMe-oF gateway: an attached /dev/ublkbN exported through the kernel's NVMe
# target (nvmet, nvmet-tcp) on the guest's loopback with `lsvd-ublk
# nvmf-export`, connected from the same guest with nvme-cli (`nvme connect`,
# nvme-tcp); ext4 and a verifying fio on the /dev/nvmeXnY it gets; a kill -9
# of the lsvd server under a verifying fio on the initiator, then `recover`
# (the initiator must see delayed I/O, not errors); then disconnect,
# `nvmf-unexport`, detach. Also the helper's errors (configfs not mounted,
# image not attached), a repeated export (no change), detach refusing an
# exported device, a repeated unexport (nothing to do).
# Skipped (PASS skipped-no-nvmet) on a kernel without the modules:
# vm-test.sh loads nvmet, nvmet-tcp and nvme-tcp when the kernel has them.
. /lib/lsvd-vm-lib.sh

if [ ! -d /sys/module/nvmet ] || [ ! -d /sys/module/nvmet_tcp ] || [ ! -d /sys/module/nvme_tcp ]; then
    info "SKIP: no nvmet, nvmet_tcp or nvme_tcp module in this kernel ($(uname -r))"
    pass skipped-no-nvmet
    finish
fi
command -v nvme >/dev/null 2>&1 || abort nvme-cli "no nvme program in the guest (host package nvme-cli)"
NVMET=/sys/kernel/config/nvmet

# The guest's only network is its loopback.
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$(cat /proc/sys/kernel/random/uuid)
HOSTID=$(cat /proc/sys/kernel/random/uuid)

# expect_fail STEP TEXT CMD...: CMD must fail and say TEXT.
expect_fail() {
    local step=$1 text=$2 out
    shift 2
    if out=$("$@" 2>&1); then
        fail "$step" "'$*' succeeded; expected an error saying '$text'"
    elif echo "$out" | grep -qF "$text"; then
        pass "$step"
    else
        fail "$step" "'$*' failed without saying '$text': $(errsum "$out")"
    fi
}

IMG=p/nv
NQN=nqn.2024-01.io.lsvd:p.nv
expect_fail not-attached "is not attached" lsvd nvmf-export $IMG
must create lsvd create $IMG --size 1G
attach attach $IMG || finish
UDEV=$DEV

# configfs: not mounted yet in this guest (systemd mounts it on a real host).
if ! awk '$3 == "configfs"' /proc/mounts | grep -q .; then
    expect_fail configfs-unmounted "configfs is not mounted" lsvd nvmf-export $IMG
    must mount-configfs mount -t configfs none /sys/kernel/config
fi

out=$(lsvd nvmf-export $IMG 2>"$STATE/export.err") || abort export "nvmf-export $IMG failed: $(errsum "$(cat "$STATE/export.err")")"
[ "$out" = "$NQN" ] && pass export || fail export "nvmf-export printed '$out', expected $NQN"
[ "$(cat $NVMET/subsystems/$NQN/namespaces/1/device_path)" = "$UDEV" ] &&
    [ "$(cat $NVMET/subsystems/$NQN/namespaces/1/enable)" = 1 ] &&
    [ -L "$NVMET/ports/1/subsystems/$NQN" ] &&
    [ "$(cat $NVMET/ports/1/addr_traddr)" = 127.0.0.1 ] && pass export-configfs ||
    fail export-configfs "configfs: $(find $NVMET -maxdepth 4 | tr '\n' ' ')"
check export-again lsvd nvmf-export $IMG
[ "$(ls $NVMET/ports | wc -l)" = 1 ] && [ "$(ls $NVMET/subsystems | wc -l)" = 1 ] &&
    pass export-again-no-change || fail export-again-no-change "ports: $(ls $NVMET/ports), subsystems: $(ls $NVMET/subsystems)"
expect_fail detach-refused "nvmf-unexport" lsvd detach $IMG

# --- the initiator, in the same guest ---------------------------------------
before=$(ls /sys/block | grep -E '^nvme[0-9]+n[0-9]+$')
must connect nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$NQN" --hostnqn="$HOSTNQN" --hostid="$HOSTID"
new_nvme() { ls /sys/block | grep -E '^nvme[0-9]+n[0-9]+$' | grep -vxF "$before" | head -1; }
have_new_nvme() { [ -n "$(new_nvme)" ]; }
wait_for 30 have_new_nvme || true
NV=$(new_nvme)
[ -n "$NV" ] && wait_for 10 test -b "/dev/$NV" || abort nvme-device "no new /dev/nvmeXnY 30 s after nvme connect ($(ls /sys/block | tr '\n' ' '))"
NDEV=/dev/$NV
pass nvme-device
info "$NQN connected as $NDEV (subsystem nqn $(cat /sys/block/$NV/device/subsysnqn 2>/dev/null), model '$(cat /sys/block/$NV/device/model 2>/dev/null | sed 's/ *$//')')"
[ "$(cat /sys/block/$NV/size)" = "$(cat /sys/block/$(dev_name $UDEV)/size)" ] && pass nvme-size ||
    fail nvme-size "$NDEV has $(cat /sys/block/$NV/size) sectors, $UDEV $(cat /sys/block/$(dev_name $UDEV)/size)"

T_FS=$(now)
ENGINE=$(fio_engine "$NDEV")
MNT=/mnt/nvmf
mkdir -p $MNT
must mkfs mkfs.ext4 -q -F "$NDEV"
must mount mount -t ext4 -o barrier=1 "$NDEV" $MNT
# jobfile NAME SIZE SEED: a verifying random-write job on a file of the fs.
jobfile() {
    cat >"$STATE/$1.fio" <<JOBS
[$1]
filename=$MNT/$1.dat
ioengine=$ENGINE
direct=1
iodepth=16
rw=randwrite
bsrange=4k-256k
size=$2
fsync=16
verify=crc32c
verify_fatal=1
randseed=$3
JOBS
}
jobfile v 32m 5501
snap=$(io_snapshot "$UDEV")
if out=$(fio "$STATE/v.fio" 2>&1); then pass fio-write-verify; else
    fail fio-write-verify "fio: $(echo "$out" | grep -iE 'error|verify|bad' | head -n 3 | tr '\n' ' ')"
fi
io_moved io-through-ublk "$UDEV" "$snap" rwf
check umount umount $MNT
check remount mount -t ext4 -o barrier=1 "$NDEV" $MNT
check fio-verify-only fio --verify_only "$STATE/v.fio"

# --- the lsvd server dies under the initiator's I/O ------------------------
T_CRASH=$(now)
DMESG0=$(dmesg | wc -l)
jobfile c 64m 5502
fio "$STATE/c.fio" >"$STATE/fio-crash.log" 2>&1 &
FIO=$!
trap 'kill -9 $FIO 2>/dev/null' EXIT
w0=$(sectors_written "$UDEV")
i=0
while [ $(( $(sectors_written "$UDEV") - w0 )) -lt 32768 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
running $FIO && pass crash-writer-running || fail crash-writer-running "fio ended before the kill (see $STATE/fio-crash.log)"
pid=$(server_pid "$UDEV")
t0=$(now)
kill -9 "$pid"
wait_for 10 test ! -d "/proc/$pid" && pass kill || fail kill "server pid $pid still alive"
expect_state quiesced "$UDEV" quiesced 15
# The gateway does not notice: nvmet keeps its namespace on the device node.
[ "$(cat $NVMET/subsystems/$NQN/namespaces/1/enable)" = 1 ] && [ -b "$UDEV" ] && pass namespace-kept ||
    fail namespace-kept "enable=$(cat $NVMET/subsystems/$NQN/namespaces/1/enable), $UDEV $(test -b "$UDEV" && echo present || echo gone)"
check recover lsvd recover $IMG
expect_state live "$UDEV" live 15
t1=$(now)
info "server down for $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}') s (kill to live)"
wait_bg crash-writer-finished $FIO 180 "fio on $NDEV (after recovery)" ||
    info "fio: $(grep -iE 'error|verify|bad' "$STATE/fio-crash.log" | head -n 3 | tr '\n' ' ')"
check crash-verify-only fio --verify_only "$STATE/c.fio"
# What the initiator logged: a timeout/reset is tolerated within nvme-tcp's
# timeouts (the I/O is retried), an error that reached the file system not.
dmesg | tail -n +$((DMESG0 + 1)) | grep -iE 'nvme' | tail -n 5 | sed "s/^/INFO $SCENARIO: dmesg /"
dmesg | tail -n +$((DMESG0 + 1)) | grep -E 'EXT4-fs (error|warning)|I/O error' | tail -n 3 >"$STATE/dmesg-errors"
[ -s "$STATE/dmesg-errors" ] && fail no-io-errors "$(tr '\n' ' ' <"$STATE/dmesg-errors")" || pass no-io-errors

# --- teardown: initiator, gateway, device -----------------------------------
T_DOWN=$(now)
check final-umount umount $MNT
check fsck e2fsck -fn "$NDEV"
check disconnect nvme disconnect -n "$NQN"
wait_for 15 test ! -e "$NDEV" && pass nvme-device-gone || fail nvme-device-gone "$NDEV still there"
check unexport lsvd nvmf-unexport $IMG
[ ! -e "$NVMET/subsystems/$NQN" ] && [ -z "$(ls $NVMET/ports)" ] && pass unexport-configfs ||
    fail unexport-configfs "left: subsystems $(ls $NVMET/subsystems | tr '\n' ' '), ports $(ls $NVMET/ports | tr '\n' ' ')"
check unexport-again lsvd nvmf-unexport $IMG
detach detach $IMG
T_END=$(now)
info "phases: $(awk -v a="$T_FS" -v b="$T_CRASH" -v c="$T_DOWN" -v d="$T_END" 'BEGIN{printf "fs+fio %.0f s, crash+recover %.0f s, teardown %.0f s", b - a, c - b, d - c}')"
lsvd rm $IMG >/dev/null 2>&1 || info "lsvd-ublk rm $IMG failed"
finish
