#!/bin/sh
# The guest kernel, and what `attach` says on a kernel without ublk.
# CLI contract assumed: without /dev/ublk-control, attach exits non-zero
# with a message naming ublk_drv, the oldest supported kernel (Linux 6.4)
# and the running one (`uname -r`). On a kernel with the driver (6.12, 7.x)
# that is checked by hiding the control node (50-badinput); here, on
# Debian 12's own 6.1, which has no ublk at all
# (`scripts/vm-test.sh --kernel 6.1.0-57-amd64 --scenario kernel`).
. /lib/lsvd-vm-lib.sh

rel=$(uname -r)
info "kernel $rel"
if [ -c /dev/ublk-control ]; then
    pass driver-present
    finish
fi
info "no /dev/ublk-control: this kernel has no ublk driver"
must create lsvd create p/nodrv --size 64M
out=$(lsvd attach p/nodrv 2>&1) && rc=0 || rc=$?
echo "$out" | sed "s/^/INFO $SCENARIO: attach printed: /"
info "attach exit status $rc"
if [ "$rc" = 0 ]; then
    fail attach-fails "attach succeeded without /dev/ublk-control"
elif ! echo "$out" | grep -q 'ublk_drv'; then
    fail attach-names-driver "the message does not name ublk_drv"
elif ! echo "$out" | grep -q 'Linux 6\.4 or later'; then
    fail attach-names-minimum "the message does not name Linux 6.4"
elif ! echo "$out" | grep -qF "$rel"; then
    fail attach-names-kernel "the message does not name the running kernel $rel"
else
    pass attach-explains
fi
lsvd rm p/nodrv >/dev/null 2>&1 || info "lsvd-ublk rm p/nodrv failed"
finish
