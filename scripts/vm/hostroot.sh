# The host's root file system in the guest (vm-test.sh --rados), for Ceph
# and librados. Sourced by /init (busybox sh) as /lib/lsvd-vm-hostroot.sh.
#
# QEMU shares the host's / read-only over virtio-9p (mount tag hostroot).
# /newroot is a tmpfs holding one bind mount of each top-level directory of
# that share, except the ones the guest must own and write: /data (the ext4
# of vda), /tmp, /run, /dev, /proc and /sys are the guest's own, bound in,
# so a path means the same file inside the chroot and out. The scenarios
# keep running in the busybox initramfs; what needs the host's programs and
# libraries (ceph-mon, ceph-osd, the ceph and rados tools, the rados build
# of lsvd-ublk) runs through `in_host` (chroot /newroot).
#
# /usr/local/lsvd (from the initramfs: the lsvd-ublk binary under test and
# ceph-test-cluster.sh) is bound at /newroot/lsvd; the guest's
# /usr/local/etc (lsvd.json) over the host's. /usr/bin/lsvd-ublk becomes a
# wrapper that runs the binary in the chroot with the guest's config, and
# /usr/bin/lsvd-rados one that adds the rados backend on the guest cluster.

HOSTROOT_CEPH_DIR=/data/ceph

# hostroot_setup: mount and build /newroot, bring up lo, write the wrappers.
# Returns non-zero (with a message on stdout) if anything is missing.
hostroot_setup() {
    local e n
    mkdir -p /host /newroot
    # cache=loose: the share is read-only and does not change under us, and
    # every ceph process maps ~100 MB of libraries: read them once.
    if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host; then
        echo "mount of the 9p share hostroot failed"
        return 1
    fi
    [ -x /host/usr/bin/ceph-mon ] || { echo "the host root has no /usr/bin/ceph-mon"; return 1; }
    mount -t tmpfs -o mode=755 tmpfs /newroot || return 1
    for e in /host/* /host/.[!.]*; do
        [ -e "$e" ] || [ -L "$e" ] || continue
        n=${e#/host/}
        case "$n" in
            data | tmp | run | dev | proc | sys) continue ;;
        esac
        if [ -L "$e" ]; then
            ln -s "$(readlink "$e")" "/newroot/$n"
        elif [ -d "$e" ]; then
            mkdir -p "/newroot/$n" && mount --bind "$e" "/newroot/$n" || return 1
        fi
    done
    for n in data tmp run dev proc sys; do
        mkdir -p "/newroot/$n" && mount --bind "/$n" "/newroot/$n" || return 1
    done
    # /dev/pts and /dev/shm are not part of the devtmpfs bind.
    mount -t devpts devpts /newroot/dev/pts 2>/dev/null
    mount -t tmpfs tmpfs /newroot/dev/shm 2>/dev/null
    mount --bind /usr/local/etc /newroot/usr/local/etc || return 1
    mkdir -p /newroot/lsvd && mount --bind /usr/local/lsvd /newroot/lsvd || return 1
    # Ceph puts the host name in the OSD's CRUSH location; the kernel's
    # default, "(none)", is not a valid CRUSH name.
    hostname lsvd-guest
    # The guest's only network: its loopback (QEMU gives it no NIC).
    ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || return 1

    cat >/usr/bin/lsvd-ublk <<'EOF'
#!/bin/sh
# lsvd-ublk (rados build) in the chroot into the host's root. LSVD_RUN_DIR
# (its device registry, default /run/lsvd-ublk) passes through: a second
# registry stands for a second host.
exec chroot /newroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LSVD_LOG="${LSVD_LOG:-warn}" ${LSVD_RUN_DIR:+LSVD_RUN_DIR=$LSVD_RUN_DIR} /lsvd/lsvd-ublk "$@"
EOF
    cat >/usr/bin/lsvd-rados <<EOF
#!/bin/sh
# lsvd-ublk on the guest's Ceph cluster (pool lsvd). LSVD_RADOS_CONFIG:
# more config members, e.g. '"hard_flush":true,"wlog_dir":"/data/wlog-b"'.
exec /usr/bin/lsvd-ublk --config "{\"backend\":\"rados\",\"ceph_conf\":\"$HOSTROOT_CEPH_DIR/ceph.conf\"\${LSVD_RADOS_CONFIG:+,\$LSVD_RADOS_CONFIG}}" "\$@"
EOF
    chmod +x /usr/bin/lsvd-ublk /usr/bin/lsvd-rados
}

# in_host CMD...: run CMD in the chroot, with a clean environment that
# points the ceph tools at the guest cluster.
in_host() {
    chroot /newroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C \
        CEPH_CONF=$HOSTROOT_CEPH_DIR/ceph.conf "$@"
}

# ceph_cluster start|stop|status|osd-stop|osd-start: scripts/ceph-test-cluster.sh
# on the guest cluster in /data/ceph (ext4: bluestore needs O_DIRECT). The
# objectstore comes from lsvd.ceph_store= (vm-test.sh LSVD_VM_CEPH_STORE).
ceph_cluster() {
    local store
    store=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^lsvd.ceph_store=//p' | tail -1)
    chroot /newroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C \
        LSVD_CEPH_PORT=6789 LSVD_CEPH_BLOCK_SIZE=4G LSVD_CEPH_OBJECTSTORE="${store:-bluestore}" \
        bash /lsvd/ceph-test-cluster.sh "$1" "$HOSTROOT_CEPH_DIR"
}
