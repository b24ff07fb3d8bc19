#!/bin/sh
# Errors a user can make, each must fail with a non-zero exit and a clear
# message.
# CLI contract assumed (see lib.sh):
#   attach of an image that is already attached: non-zero, message mentions
#     "attached" or "lock"
#   detach of a ublk device we do not serve (/dev/ublkb99): non-zero
#   attach of an unknown image: non-zero, message names the image
#   attach without /dev/ublk-control: non-zero, message mentions ublk_drv,
#     the oldest supported kernel (Linux 6.4) and the running one
#   attach of an image locked by a server this host does not know: "lock"
#   detach of a mounted device: non-zero, "in use"
#   attach as a non-root user: non-zero, "needs root"
. /lib/lsvd-vm-lib.sh

# expect_error STEP PATTERN CMD...: CMD must fail and its stderr/stdout
# must match the (case-insensitive, extended) regex PATTERN.
expect_error() {
    local step=$1 pat=$2 out rc
    shift 2
    out=$("$@" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ]; then
        fail "$step" "'$*' succeeded, expected an error"
    elif ! echo "$out" | grep -qiE "$pat"; then
        fail "$step" "'$*' exited $rc but the message does not match /$pat/: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    else
        pass "$step"
        info "$step: $(echo "$out" | head -n 1)"
    fi
}

IMG=p/bad
must create lsvd create $IMG --size 64M
attach attach $IMG || finish
FIRST=$DEV
expect_error attach-twice 'attached|lock' lsvd attach $IMG
# The failed attach must not have hurt the live device.
[ "$(dev_state "$FIRST")" = live ] && pass first-still-live || fail first-still-live "state of $FIRST is '$(dev_state "$FIRST")' after the second attach"
check first-still-readable dd if="$FIRST" of=/dev/null bs=4k count=16 iflag=direct

# Attached "elsewhere": a server that this host's registry does not know
# (another run directory stands for another host) is stopped by the image
# lock in the store, which names the holder.
mkdir -p /tmp/elsewhere
expect_error attach-elsewhere 'lock|held|attached' env LSVD_RUN_DIR=/tmp/elsewhere "$LSVD" attach $IMG
[ "$(dev_state "$FIRST")" = live ] && pass first-still-live-2 || fail first-still-live-2 "state of $FIRST is '$(dev_state "$FIRST")'"

# A mounted device is not detached from under its file system.
mkdir -p /mnt/bad
must mkfs mkfs.ext4 -q -F "$FIRST"
must mount mount -t ext4 "$FIRST" /mnt/bad
expect_error detach-busy 'in use' lsvd detach $IMG
[ "$(dev_state "$FIRST")" = live ] && pass busy-still-live || fail busy-still-live "state of $FIRST is '$(dev_state "$FIRST")'"
check umount umount /mnt/bad

# Not root: the error says why.
grep -q '^nobody:' /etc/passwd 2>/dev/null || echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >>/etc/passwd
grep -q '^nogroup:' /etc/group 2>/dev/null || echo 'nogroup:x:65534:' >>/etc/group
expect_error attach-not-root 'needs root' su -s /bin/sh nobody -c "$LSVD attach p/bad-user"

expect_error detach-foreign 'ublkb99|not|no such|unknown' lsvd detach /dev/ublkb99
expect_error attach-unknown 'p/nosuch|nosuch|not found|no such|does not exist' lsvd attach p/nosuch

# "Driver missing": hide the control node (rmmod is impossible while a
# device exists), try to attach, always put it back.
mv /dev/ublk-control /dev/ublk-control.hidden
expect_error attach-no-driver 'ublk_drv' lsvd attach p/bad2-never-created
mv /dev/ublk-control.hidden /dev/ublk-control
[ -c /dev/ublk-control ] && pass control-restored || fail control-restored "/dev/ublk-control not restored"
# Same, with an image that exists, so the error cannot be "unknown image".
must create-2 lsvd create p/bad2 --size 64M
mv /dev/ublk-control /dev/ublk-control.hidden
rel_re=$(uname -r | sed 's/[.+]/\\&/g')
expect_error attach-no-driver-2 "ublk_drv.*$rel_re.*Linux 6\.4 or later" lsvd attach p/bad2
mv /dev/ublk-control.hidden /dev/ublk-control

detach detach $IMG

# Free the space on /data for later scenarios (not an assertion).
for i in $IMG p/bad2; do lsvd rm "$i" >/dev/null 2>&1 || info "lsvd-ublk rm $i failed"; done

finish
