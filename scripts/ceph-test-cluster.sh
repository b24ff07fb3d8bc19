#!/usr/bin/env bash
# A throwaway single-node Ceph cluster for testing the RADOS backend:
# one monitor and one OSD on 127.0.0.1, no mgr, a pool named `lsvd` with
# one replica. Everything (config, keys, data, logs, sockets, pid files)
# lives in one directory, so several clusters can coexist on one machine.
#
# Usage: scripts/ceph-test-cluster.sh start|stop|env|status|osd-stop|osd-start [DIR]
#   start      install missing Debian packages, build and start the cluster
#              (says so and exits 0 if it is already running; wipes and
#              rebuilds a DIR left by a dead cluster)
#   stop       stop this cluster's daemons (by their pid files) and remove DIR
#   env        print `export CEPH_CONF=...` lines, for `eval "$(... env)"`
#   status     a rados put/get/rm round trip; exits non-zero if it fails
#   osd-stop   stop the OSD only (SIGTERM by its pid file), wait until it has
#              exited and the monitor marks it down: I/O to the pool then
#              waits (fault tests); the monitor keeps running
#   osd-start  start that OSD again with the same arguments as `start` and
#              wait until the monitor marks it up
#
# DIR defaults to /tmp/lsvd-ceph and must be on a real file system (not
# tmpfs: bluestore uses O_DIRECT on its block file).
#
# Knobs (environment):
#   LSVD_CEPH_PORT         monitor port (default: a free one in 40000-49999)
#   LSVD_CEPH_OBJECTSTORE  bluestore (default; an 8 GiB sparse file) or
#                          memstore (a little faster to start, but its RAM
#                          use grows with the data written and is never freed)
#   LSVD_CEPH_BLOCK_SIZE   size of bluestore's sparse block file (default 8G)
#
# Without a mgr, commands that need one (`ceph osd df`, `ceph pg stat`, PG
# states in `ceph -s`) hang or show nothing useful: wrap every ceph CLI call
# in `timeout`. The client section of ceph.conf sets op timeouts so that
# librados calls fail after 30 s rather than hang forever.
set -euo pipefail

# Ceph reads these from the environment and they override ceph.conf; a
# CEPH_KEYRING left over from a client session would make the daemons use
# the admin key (and ceph-osd --mkfs then hunts for a mon for 5 minutes).
unset CEPH_CONF CEPH_KEYRING CEPH_ARGS

# The file that marks a directory as one of ours: nothing is ever deleted
# from a directory without it.
MARKER=.lsvd-ceph-test-cluster
POOL=lsvd
PACKAGES=(ceph-mon ceph-osd ceph-common librados-dev)

die() {
    echo "ceph-test-cluster: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start|stop|env|status|osd-stop|osd-start [DIR]" >&2
    exit 2
}

# The cluster directory as an absolute path (it need not exist yet).
cluster_dir() {
    local dir=${1:-/tmp/lsvd-ceph}
    case $dir in
        /*) ;;
        *) dir=$PWD/$dir ;;
    esac
    # Strip trailing slashes (but keep "/" itself, which is refused later).
    while [[ $dir == */ && $dir != / ]]; do dir=${dir%/}; done
    printf '%s\n' "$dir"
}

# Install whichever of PACKAGES are missing (dpkg -s first, so an
# already-provisioned machine never touches apt).
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing packages ${missing[*]}; run as root or install them"
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    local log
    log=$(mktemp)
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends \
        "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "apt-get failed installing ${missing[*]}"
    fi
    rm -f "$log"
}

# Whether the daemon whose pid file is $1 is alive and is one of ours: the
# pid must be running a ceph daemon binary whose command line names this
# cluster's ceph.conf (guards against pid reuse and other clusters).
daemon_pid() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    # NUL-separated argv; look for the -c argument.
    if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$CONF"; then
        echo "$pid"
        return 0
    fi
    return 1
}

pidfiles() {
    echo "$DIR/run/mon.a.pid"
    echo "$DIR/run/osd.0.pid"
}

# Exit status 0 when every daemon of the cluster in DIR is alive.
all_running() {
    local f
    [[ -f $DIR/$MARKER ]] || return 1
    for f in $(pidfiles); do
        daemon_pid "$f" >/dev/null || return 1
    done
}

# Wait up to $1 tenths of a second for the pids $2... to exit; sets
# `alive` to those still running. Succeeds when none are left.
wait_exit() {
    local tenths=$1 i pid
    shift
    for ((i = 0; i <= tenths; i++)); do
        alive=()
        for pid in "$@"; do
            [[ -d /proc/$pid ]] && alive+=("$pid")
        done
        ((${#alive[@]} == 0)) && return 0
        ((i < tenths)) && sleep 0.1
    done
    return 1
}

# Stop one daemon by its pid file: SIGTERM, wait up to 10 s, then SIGKILL
# and wait up to 5 s more. Only a pid from our own pid file is signalled.
stop_daemon() {
    local pid alive=()
    pid=$(daemon_pid "$1") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait_exit 100 "$pid" && return 0
    echo "ceph-test-cluster: $pid ignored SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit 50 "$pid" || die "daemon $pid did not exit"
}

# Stop the cluster's daemons, the OSD first: an OSD stopping tells the mon
# it is going down and, if the mon is gone, waits 5 s for it in vain.
kill_daemons() {
    stop_daemon "$DIR/run/osd.0.pid"
    stop_daemon "$DIR/run/mon.a.pid"
}

# Remove DIR, but only if it is ours (has the marker) or empty.
remove_dir() {
    [[ -e $DIR ]] || return 0
    [[ $DIR != / ]] || die "refusing to remove /"
    if [[ -f $DIR/$MARKER ]] || [[ -z $(ls -A "$DIR") ]]; then
        rm -rf -- "$DIR"
    else
        die "$DIR exists but was not made by this script; not touching it"
    fi
}

# A free TCP port for the monitor.
pick_port() {
    if [[ -n ${LSVD_CEPH_PORT:-} ]]; then
        echo "$LSVD_CEPH_PORT"
        return
    fi
    local port i
    for ((i = 0; i < 100; i++)); do
        port=$((40000 + RANDOM % 10000))
        if [[ -z $(ss -Htanl "sport = :$port") ]]; then
            echo "$port"
            return
        fi
    done
    die "no free port found in 40000-49999"
}

# ceph CLI against this cluster, always bounded in time.
ceph_() {
    timeout 20 ceph -c "$CONF" "$@"
}

write_conf() {
    local fsid=$1 port=$2 store=$3
    cat >"$CONF" <<EOF
# Generated by lsvd-ublk scripts/ceph-test-cluster.sh: a single-node test
# cluster, no mgr. Use with CEPH_CONF=$CONF.
[global]
fsid = $fsid
mon host = 127.0.0.1:$port
mon initial members = a
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $DIR/run
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
# Nothing under /var/lib/ceph, /var/log/ceph or /etc/ceph.
crash dir = $DIR/crash
mon cluster log file = default=$DIR/log/\$cluster.\$channel.log cluster=$DIR/log/\$cluster.log
# One OSD: pools with one replica, replicas chosen per OSD not per host.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# Test machines often have fairly full disks: do not warn, and do not stop
# the mon unless the disk is really full.
mon data avail warn = 2
mon data avail crit = 1
rados osd op timeout = 30
rados mon op timeout = 30
# Every client here is recent: no need for the insecure reclaim warning.
auth allow insecure global id reclaim = false

[mon]
mon data = $DIR/mon
keyring = $DIR/mon/keyring

[osd]
osd data = $DIR/osd0
keyring = $DIR/osd0/keyring
osd objectstore = $store
# Small memory footprint.
osd memory target = 939524096
# bluestore on a sparse file next to (not inside) the OSD data dir.
bluestore block path = $DIR/osd0-block
bluestore block create = true
bluestore block size = ${LSVD_CEPH_BLOCK_SIZE:-8G}
bluestore block db create = false
bluestore block wal create = false
bluestore cache autotune = false
bluestore cache size = 134217728
bluestore fsck on mount = false
# memstore (LSVD_CEPH_OBJECTSTORE=memstore): capacity reported to the mon.
memstore device bytes = 4294967296

[client]
keyring = $DIR/keyring
# Each client process gets its own socket and log, so that concurrent
# clients (tests, rados, ceph) do not collide.
admin socket = $DIR/client/\$name.\$pid.asok
log file = $DIR/client/\$name.\$pid.log
rados osd op timeout = 30
rados mon op timeout = 30
client mount timeout = 30
EOF
}

# Start osd.0 (already made by `start`); it forks into the background and
# writes its pid file. `start` and `osd-start` launch it the same way.
launch_osd() {
    timeout 60 ceph-osd -c "$CONF" -i 0 >>"$DIR/log/osd-start.out" 2>&1 ||
        die "ceph-osd failed to start; see $DIR/log/osd-start.out and osd.0.log"
}

# Wait up to $2 seconds until the OSD map shows osd.0 as $1 (up or down).
wait_osd_state() {
    local want=$1 secs=$2 i dump
    for ((i = 0; i < secs; i++)); do
        # Into a variable first: `grep -q` closing the pipe early would
        # make the pipeline fail under pipefail.
        dump=$(ceph_ osd dump 2>/dev/null) || dump=
        if grep -q "^osd\.0 $want " <<<"$dump"; then
            return 0
        fi
        sleep 1
    done
    return 1
}

cmd_start() {
    local store=${LSVD_CEPH_OBJECTSTORE:-bluestore}
    case $store in
        bluestore | memstore) ;;
        *) die "LSVD_CEPH_OBJECTSTORE must be bluestore or memstore, not $store" ;;
    esac

    install_packages

    if all_running; then
        echo "ceph test cluster already running in $DIR (eval \"\$($0 env $DIR)\")"
        return 0
    fi
    # Stale state (dead or half-dead cluster): stop what is left, wipe.
    if [[ -e $DIR ]]; then
        kill_daemons
        remove_dir
    fi

    local parent
    parent=$(dirname "$DIR")
    mkdir -p "$parent"
    if [[ $(stat -f -c %T "$parent") == tmpfs ]]; then
        die "$parent is tmpfs; put the cluster on a real file system"
    fi
    mkdir -p "$DIR"
    : >"$DIR/$MARKER"
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/client" "$DIR/crash" "$DIR/mon" "$DIR/osd0"

    # If anything below fails, leave nothing running (the state stays in
    # DIR for a look at the logs; the next start wipes it).
    trap 'echo "ceph-test-cluster: start failed; logs in $DIR/log" >&2; kill_daemons' EXIT

    local fsid port
    fsid=$(uuidgen)
    port=$(pick_port)
    write_conf "$fsid" "$port" "$store"

    # Keys: client.admin (DIR/keyring, what clients use) and mon.
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' \
        --cap mgr 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. \
        --cap mon 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring" >/dev/null

    # Monitor.
    monmaptool --create --fsid "$fsid" --add a "127.0.0.1:$port" \
        "$DIR/monmap" >/dev/null
    timeout 60 ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" \
        --keyring "$DIR/mon.keyring" >/dev/null
    rm -f "$DIR/mon.keyring" "$DIR/monmap"
    # Daemons fork into the background and write their pid files.
    timeout 60 ceph-mon -c "$CONF" -i a
    local i ok=0
    for ((i = 0; i < 30; i++)); do
        if timeout 10 ceph -c "$CONF" mon stat >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 1
    done
    ((ok)) || die "mon did not answer within 30 s"

    # OSD: register it and its key with the mon before mkfs.
    local osd_uuid osd_id
    osd_uuid=$(uuidgen)
    osd_id=$(ceph_ osd new "$osd_uuid")
    [[ $osd_id == 0 ]] || die "expected osd id 0, got $osd_id"
    ceph-authtool --create-keyring "$DIR/osd0/keyring" --gen-key -n osd.0 >/dev/null
    ceph_ auth add osd.0 osd 'allow *' mon 'allow profile osd' \
        mgr 'allow profile osd' -i "$DIR/osd0/keyring" 2>/dev/null
    timeout 120 ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" \
        >"$DIR/log/osd-mkfs.out" 2>&1 ||
        die "ceph-osd --mkfs failed; see $DIR/log/osd-mkfs.out and osd.0.log"
    launch_osd

    # The pool (one replica, from the defaults above).
    ceph_ osd pool create "$POOL" 8 8 >/dev/null 2>&1
    ceph_ osd pool set "$POOL" size 1 --yes-i-really-mean-it >/dev/null 2>&1
    ceph_ osd pool application enable "$POOL" lsvd >/dev/null 2>&1

    # Ready when an object round trip works (the OSD is up and the pool's
    # PGs are active); without a mgr, PG states are not reported.
    ok=0
    for ((i = 0; i < 90; i++)); do
        if timeout 10 rados -c "$CONF" -p "$POOL" put lsvd-ceph-probe /etc/hostname \
            2>/dev/null; then
            ok=1
            break
        fi
        sleep 1
    done
    ((ok)) || die "OSD not serving pool $POOL after 90 s; logs in $DIR/log"
    timeout 10 rados -c "$CONF" -p "$POOL" rm lsvd-ceph-probe
    trap - EXIT
    echo "ceph test cluster running in $DIR ($store, mon 127.0.0.1:$port, pool $POOL); eval \"\$($0 env $DIR)\""
}

cmd_stop() {
    [[ -e $DIR ]] || return 0
    [[ -f $DIR/$MARKER ]] || die "$DIR was not made by this script; not touching it"
    kill_daemons
    remove_dir
}

cmd_env() {
    [[ -f $CONF ]] || die "no cluster in $DIR (run: $0 start $DIR)"
    printf 'export CEPH_CONF=%q\n' "$CONF"
    # ceph.conf's [client] section names the keyring (client.admin); do
    # not export CEPH_KEYRING: ceph daemons honour it too, over ceph.conf.
    printf 'export LSVD_CEPH_POOL=%q\n' "$POOL"
    # For tests that stop and start the OSD (osd-stop/osd-start DIR).
    printf 'export LSVD_CEPH_DIR=%q\n' "$DIR"
}

cmd_status() {
    [[ -f $DIR/$MARKER && -f $CONF ]] || die "no cluster in $DIR (run: $0 start $DIR)"
    local f
    for f in $(pidfiles); do
        daemon_pid "$f" >/dev/null || die "$(basename "$f" .pid) of $DIR is not running"
    done
    local tmp
    tmp=$(mktemp)
    # shellcheck disable=SC2064
    trap "rm -f '$tmp'" RETURN
    local obj=lsvd-ceph-status.$$
    timeout 10 rados -c "$CONF" -p "$POOL" put "$obj" /etc/hostname ||
        die "rados put to pool $POOL failed"
    timeout 10 rados -c "$CONF" -p "$POOL" get "$obj" "$tmp" ||
        die "rados get from pool $POOL failed"
    timeout 10 rados -c "$CONF" -p "$POOL" rm "$obj" ||
        die "rados rm in pool $POOL failed"
    cmp -s /etc/hostname "$tmp" || die "object read back differs"
    echo "ceph test cluster in $DIR is healthy (pool $POOL round trip ok)"
}

cmd_osd_stop() {
    [[ -f $DIR/$MARKER && -f $CONF ]] || die "no cluster in $DIR (run: $0 start $DIR)"
    daemon_pid "$DIR/run/mon.a.pid" >/dev/null || die "mon.a of $DIR is not running"
    if daemon_pid "$DIR/run/osd.0.pid" >/dev/null; then
        # SIGTERM: the OSD tells the monitor it is going down, then exits.
        stop_daemon "$DIR/run/osd.0.pid"
    fi
    # A clean exit has already told the monitor. After a SIGKILL nobody
    # would (one OSD has no peers to report it) until the monitor's report
    # timeout, so say it ourselves: the process is gone.
    if ! wait_osd_state down 10; then
        ceph_ osd down 0 >/dev/null 2>&1 || true
        wait_osd_state down 20 || die "osd.0 of $DIR exited but the monitor still shows it up"
    fi
    echo "osd.0 of $DIR stopped"
}

cmd_osd_start() {
    [[ -f $DIR/$MARKER && -f $CONF ]] || die "no cluster in $DIR (run: $0 start $DIR)"
    daemon_pid "$DIR/run/mon.a.pid" >/dev/null || die "mon.a of $DIR is not running"
    if ! daemon_pid "$DIR/run/osd.0.pid" >/dev/null; then
        launch_osd
    fi
    wait_osd_state up 60 || die "osd.0 of $DIR is not up after 60 s; logs in $DIR/log"
    echo "osd.0 of $DIR running"
}

(($# >= 1 && $# <= 2)) || usage
DIR=$(cluster_dir "${2:-}")
CONF=$DIR/ceph.conf
case $1 in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) cmd_env ;;
    status) cmd_status ;;
    osd-stop) cmd_osd_stop ;;
    osd-start) cmd_osd_start ;;
    *) usage ;;
esac
