# Helpers for guest scenarios (busybox sh). Sourced by each scenario as
# /lib/lsvd-vm-lib.sh. Output protocol read by scripts/vm-test.sh on the host:
#   PASS <scenario>/<step>
#   FAIL <scenario>/<step>: <reason>
#   MEASURE <what> <key>=<value> ...
#   INFO ...  (free text)
# A scenario's exit status is the number of failed steps (capped at 255);
# /init also prints PASS/FAIL for the scenario as a whole.

SCENARIO=${SCENARIO:-$(basename "$0" .sh | sed 's/^[0-9]*-//')}
LSVD=${LSVD:-/usr/bin/lsvd-ublk}
FAILED=0
# Files kept outside the device under test (on the ext4 of vda).
STATE=/data/state/$SCENARIO
mkdir -p "$STATE"

info() { echo "INFO $SCENARIO: $*"; }

# errsum TEXT: a one-line summary of command output for a FAIL reason: the
# first lines mentioning an error (clap and anyhow put the cause first, the
# usage text last), else the last 3 lines.
errsum() {
    local e
    e=$(echo "$1" | grep -iE 'error|caused by|fail' | head -n 3)
    [ -z "$e" ] && e=$(echo "$1" | tail -n 3)
    echo "$e" | tr '\n' ' '
}

# pass STEP
pass() { echo "PASS $SCENARIO/$1"; }

# fail STEP REASON: record a failure and continue.
fail() {
    local step=$1; shift
    echo "FAIL $SCENARIO/$step: $*"
    FAILED=$((FAILED + 1))
}

# abort STEP REASON: record a failure and end the scenario now (runs the
# scenario's cleanup via the EXIT trap if it set one).
abort() {
    fail "$@"
    exit "$(finish_status)"
}

finish_status() { [ "$FAILED" -gt 255 ] && echo 255 || echo "$FAILED"; }

# finish: last line of every scenario.
finish() { exit "$(finish_status)"; }

# check STEP CMD...: run CMD; pass STEP if it succeeds, else fail with the
# exit status and the last lines of its output.
check() {
    local step=$1 out rc
    shift
    out=$("$@" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ]; then
        pass "$step"
    else
        fail "$step" "'$*' exited $rc: $(errsum "$out")"
    fi
    return "$rc"
}

# must STEP CMD...: like check, but abort the scenario on failure.
must() {
    check "$@" || exit "$(finish_status)"
}

# now: seconds since boot with centiseconds (busybox date has no %N; uptime
# is monotonic, which is what comparisons across a kill need anyway).
now() { cut -d' ' -f1 /proc/uptime; }

# Sector counters of a block device from /sys/block/DEV/stat:
# field 3 = sectors read, field 7 = sectors written.
dev_name() { basename "$1"; }
sectors_read() { awk '{print $3}' "/sys/block/$(dev_name "$1")/stat"; }
sectors_written() { awk '{print $7}' "/sys/block/$(dev_name "$1")/stat"; }
# FLUSH requests completed (field 16 in kernels >= 5.5; 0 if absent).
flushes() { awk '{print ($16 == "" ? 0 : $16)}' "/sys/block/$(dev_name "$1")/stat"; }

# io_snapshot DEV: print "read written flushes" for later io_moved.
io_snapshot() { echo "$(sectors_read "$1") $(sectors_written "$1") $(flushes "$1")"; }

# io_moved STEP DEV SNAPSHOT [r|w|rw|f ...]: assert the device's counters
# increased since SNAPSHOT (from io_snapshot), proving the I/O really went
# through this device and not, say, only the page cache.
io_moved() {
    local step=$1 dev=$2 snap=$3 what=${4:-rw} r0 w0 f0 r1 w1 f1 bad=""
    set -- $snap
    r0=$1 w0=$2 f0=$3
    set -- $(io_snapshot "$dev")
    r1=$1 w1=$2 f1=$3
    case "$what" in *r*) [ "$r1" -gt "$r0" ] || bad="$bad read-sectors $r0->$r1" ;; esac
    case "$what" in *w*) [ "$w1" -gt "$w0" ] || bad="$bad written-sectors $w0->$w1" ;; esac
    case "$what" in *f*) [ "$f1" -gt "$f0" ] || bad="$bad flushes $f0->$f1" ;; esac
    if [ -z "$bad" ]; then
        pass "$step"
        info "$dev I/O: read $((r1 - r0)) sectors, wrote $((w1 - w0)) sectors, $((f1 - f0)) flushes"
    else
        fail "$step" "$dev counters did not move:$bad"
    fi
}

# diag [FILE]: dump diagnostics after a failure: the tail of FILE, the
# lsvd-ublk processes with their kernel stacks, ublk devices, recent dmesg.
diag() {
    local p
    [ -n "${1:-}" ] && [ -f "$1" ] && tail -n 20 "$1" | sed "s/^/INFO $SCENARIO: | /"
    # All lsvd-ublk processes by comm (pidof skips some, e.g. zombies).
    for p in $(grep -l '^lsvd-ublk$' /proc/[0-9]*/comm 2>/dev/null | cut -d/ -f3); do
        echo "INFO $SCENARIO: pid $p: $(tr '\0' ' ' </proc/$p/cmdline) state $(awk '/^State/{print $2}' /proc/$p/status)"
        for t in /proc/$p/task/*; do
            echo "INFO $SCENARIO:   task $(basename $t) $(cat $t/comm): $(head -n 4 $t/stack 2>/dev/null | awk '{print $2}' | tr '\n' ' ')"
        done
    done
    echo "INFO $SCENARIO: devices: $(ls /dev | grep ublk | tr '\n' ' ')"
    for p in /run/lsvd-ublk/*.log; do
        [ -f "$p" ] && tail -n 15 "$p" | sed "s|^|INFO $SCENARIO: $(basename "$p"): |"
    done
    for p in /run/lsvd-ublk/*.json; do
        [ -f "$p" ] && echo "INFO $SCENARIO: $(basename "$p"): $(tr -d '\n' <"$p")"
    done
    dmesg | tail -n 10 | sed "s/^/INFO $SCENARIO: dmesg /"
}

# running PID: the process exists and has not exited (kill -0 also succeeds
# on a zombie that the shell has not reaped yet).
running() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# wait_bg STEP PID SECONDS WHAT: wait up to SECONDS for background job PID
# to end; pass STEP if it exited 0, else fail (killing it if it is still
# running). WHAT names the job in messages.
wait_bg() {
    local step=$1 pid=$2 limit=$3 what=$4 i=0
    while running "$pid" && [ $i -lt $((limit * 5)) ]; do sleep 0.2; i=$((i + 1)); done
    if running "$pid"; then
        kill -9 "$pid"
        fail "$step" "$what still running after $limit s"
        return 1
    elif wait "$pid"; then
        pass "$step"
    else
        fail "$step" "$what exited non-zero"
        return 1
    fi
}

# wait_for TIMEOUT_S CMD...: poll CMD every 0.2 s until it succeeds.
wait_for() {
    local limit=$1 i=0
    shift
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -ge $((limit * 5)) ] && return 1
        sleep 0.2
    done
}

# Pick an fio ioengine that works in this guest for O_DIRECT on DEV.
fio_engine() {
    local dev=$1 e
    for e in io_uring libaio; do
        if fio --name=probe --filename="$dev" --ioengine="$e" --direct=1 --rw=read \
            --bs=4k --size=64k --readonly >/dev/null 2>&1; then
            echo "$e"; return 0
        fi
    done
    echo psync
}

# fio_iops DEV RW [SECONDS] [SIZE]: 4 KiB random RW (randwrite|randread) at
# QD32, O_DIRECT; prints the IOPS (integer). Parameters shared by the virtio
# and ublk measurements so the two are comparable. Terse v3: field 8 is read
# IOPS, field 49 write IOPS.
FIO_MEASURE_RUNTIME=${FIO_MEASURE_RUNTIME:-15}
FIO_MEASURE_SIZE=${FIO_MEASURE_SIZE:-1G}
fio_iops() {
    local dev=$1 rw=$2 rt=${3:-$FIO_MEASURE_RUNTIME} size=${4:-$FIO_MEASURE_SIZE} engine out
    engine=$(fio_engine "$dev")
    out=$(fio --name=measure --filename="$dev" --ioengine="$engine" --direct=1 \
        --rw="$rw" --bs=4k --iodepth=32 --size="$size" --time_based \
        --runtime="$rt" --ramp_time=2 --randrepeat=0 --norandommap \
        --group_reporting --output-format=terse --terse-version=3) || return 1
    echo "$out" | awk -F';' -v rw="$rw" '
        NF > 50 { v = (rw ~ /read/) ? $8 : $49; printf "%d engine='"$engine"'\n", v; found = 1 }
        END { exit !found }'
}

# fio_fill DEV [SIZE]: write the first SIZE bytes of DEV sequentially, then
# read them back sequentially (1 MiB O_DIRECT I/O at QD8), so the read
# phase after it finds every block written, and on lsvd in the read cache
# (its steady state: hot data on the local tier), on every device alike.
# The random-write phase before it is time-based: a faster device writes
# more of the region, and on lsvd a block never written reads as zeros from
# memory, so without the fill the read ratios would depend on how fast the
# writes were; and a block lsvd has destaged but not cached is a backend
# fetch of its 64 KiB chunk, which the cold-read benchmark measures, not
# this one.
FIO_READ_SIZE=${FIO_READ_SIZE:-512M}
fio_fill() {
    local dev=$1 size=${2:-$FIO_READ_SIZE} rw engine
    engine=$(fio_engine "$dev")
    for rw in write read; do
        fio --name=fill --filename="$dev" --ioengine="$engine" --direct=1 \
            --rw=$rw --bs=1M --iodepth=8 --size="$size" --output-format=terse \
            --terse-version=3 >/dev/null || return 1
    done
}

# fio_sync_iops DEV [SECONDS]: 4 KiB random O_SYNC writes at QD1 (each one
# a FUA write on a device that supports FUA, a write plus FLUSH otherwise):
# the latency of a durable write. Prints the IOPS (integer).
fio_sync_iops() {
    local dev=$1 rt=${2:-8} out
    out=$(fio --name=measure-sync --filename="$dev" --ioengine=psync --direct=1 --sync=1 \
        --rw=randwrite --bs=4k --iodepth=1 --size=256M --time_based --runtime="$rt" \
        --randrepeat=0 --norandommap --output-format=terse --terse-version=3) || return 1
    echo "$out" | awk -F';' 'NF > 50 { printf "%d\n", $49; found = 1 } END { exit !found }'
}

# fio_read_lat_qd1 DEV [SECONDS] [SIZE]: 4 KiB random O_DIRECT reads at QD1;
# prints "lat_us=MEAN p99_us=P99 iops=N" (terse v3: field 8 is read IOPS,
# 40 the mean total latency in µs, 30 the 99th percentile of completion
# latency as "99.000000%=N").
fio_read_lat_qd1() {
    local dev=$1 rt=${2:-8} size=${3:-$FIO_MEASURE_SIZE} out
    out=$(fio --name=measure-lat --filename="$dev" --ioengine=psync --direct=1 \
        --rw=randread --bs=4k --iodepth=1 --size="$size" --time_based --runtime="$rt" \
        --ramp_time=1 --randrepeat=0 --norandommap \
        --output-format=terse --terse-version=3) || return 1
    echo "$out" | awk -F';' 'NF > 50 {
        split($30, p, "="); printf "lat_us=%d p99_us=%d iops=%d\n", $40, p[2], $8; found = 1 }
        END { exit !found }'
}

# cpu_snapshot DEV [PID]: print "busy ios server" for cpu_per_io: busy
# clock ticks of the whole guest (/proc/stat: user, nice, system, irq,
# softirq, steal; not idle or iowait), reads plus writes completed on DEV
# (/sys/block/DEV/stat fields 1 and 5), and the user + system ticks of
# process PID (0 without one).
cpu_snapshot() {
    local busy ios srv=0
    busy=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat)
    ios=$(awk '{ print $1 + $5 }' "/sys/block/$(dev_name "$1")/stat")
    # Fields 14 and 15 of /proc/PID/stat (comm holds no space here).
    [ -n "${2:-}" ] && srv=$(awk '{ print $14 + $15 }' "/proc/$2/stat" 2>/dev/null || echo 0)
    echo "$busy $ios ${srv:-0}"
}

# cpu_per_io DEV SNAPSHOT [PID]: print "cpu_us_per_io=N server_us_per_io=M
# ios=K" since SNAPSHOT (from cpu_snapshot): the whole guest's busy CPU per
# I/O completed on DEV (fio, the block layer, the driver and, for ublk, the
# server and the virtio disk under it), and the server's own share. Ticks
# are USER_HZ, 100 per second on x86 (busybox has no getconf).
cpu_per_io() {
    local dev=$1 snap=$2 pid=${3:-}
    set -- $snap
    local b0=$1 i0=$2 s0=$3
    set -- $(cpu_snapshot "$dev" "$pid")
    awk -v b="$(($1 - b0))" -v i="$(($2 - i0))" -v s="$(($3 - s0))" 'BEGIN {
        if (i <= 0) { print "cpu_us_per_io=0 server_us_per_io=0 ios=0"; exit }
        printf "cpu_us_per_io=%.1f server_us_per_io=%.1f ios=%d\n", b * 10000 / i, s * 10000 / i, i }'
}

# Leave the lsvd-ublk config for the guest in one place.
LSVD_CONFIG_FILE=/usr/local/etc/lsvd.json

# ---------------------------------------------------------------------------
# lsvd-ublk CLI wrappers. Contract assumed (the ublk server commands):
#   lsvd-ublk create POOL/IMG --size S
#   lsvd-ublk attach POOL/IMG [--config JSON]
#       prints the device path (/dev/ublkbN) on stdout and returns once the
#       device is live; the server keeps running in the background (it must
#       not keep our stdout open).
#   lsvd-ublk detach POOL/IMG|/dev/ublkbN [--force]
#       returns after a clean shutdown; the node is gone afterwards. For a
#       quiesced device whose server is dead it deletes the device.
#   lsvd-ublk recover POOL/IMG|/dev/ublkbN   restart a server for a quiesced
#       device (ublk USER_RECOVERY); the device node stays.
#   lsvd-ublk list --json
#       [{"image":"p/x","device":"/dev/ublkb0","pid":123,"state":"live",
#         "flags":["user-recovery","reissue"]},...]
#       state is live|quiesced|dead; flags are the device's ublk flags.
# ---------------------------------------------------------------------------
LSVD_CMD_TIMEOUT=${LSVD_CMD_TIMEOUT:-60}

# lsvd ARGS...: run the CLI under a time limit; stdout/stderr as usual.
# On a hang, dump diagnostics (stacks of every lsvd-ublk process, server
# logs) to the console while the hung command still exists, then kill it
# and return 124.
lsvd() {
    local p i=0
    "$LSVD" "$@" &
    p=$!
    while running "$p"; do
        i=$((i + 1))
        if [ "$i" -ge $((LSVD_CMD_TIMEOUT * 10)) ]; then
            echo "INFO $SCENARIO: 'lsvd-ublk $*' (pid $p, $(grep -E '^(State|PPid)' /proc/$p/status 2>/dev/null | tr '\n\t' '  ')) did not exit within ${LSVD_CMD_TIMEOUT}s" >/dev/console
            echo "INFO $SCENARIO:   stack of $p: $(awk '{print $2}' /proc/$p/stack 2>/dev/null | tr '\n' ' ')" >/dev/console
            ps -o pid,ppid,stat,comm,args 2>/dev/null | sed "s/^/INFO $SCENARIO: ps: /" >/dev/console
            diag >/dev/console 2>&1
            kill -9 "$p" 2>/dev/null
            wait "$p" 2>/dev/null
            echo "lsvd-ublk $*: timed out after ${LSVD_CMD_TIMEOUT}s (killed)" >&2
            return 124
        fi
        sleep 0.1
    done
    wait "$p"
}

# attach STEP IMAGE [ARGS...]: attach and set DEV to the printed device path.
# stdout goes to a file, not a pipe, so a server that forgot to close its
# inherited stdout cannot hang us. Passes/fails STEP; returns non-zero on
# failure.
attach() {
    local step=$1 img=$2 rc
    shift 2
    DEV=""
    lsvd attach "$img" "$@" >"$STATE/attach.out" 2>"$STATE/attach.err" && rc=0 || rc=$?
    DEV=$(grep -o '/dev/ublkb[0-9]*' "$STATE/attach.out" | head -1)
    if [ "$rc" != 0 ]; then
        fail "$step" "attach $img exited $rc: $(errsum "$(cat "$STATE/attach.err")")"
        diag "$STATE/attach.err"
        return 1
    fi
    if [ -z "$DEV" ]; then
        fail "$step" "attach $img printed no /dev/ublkbN: '$(cat "$STATE/attach.out")'"
        return 1
    fi
    if [ ! -b "$DEV" ]; then
        fail "$step" "attach returned but $DEV is not a block device"
        return 1
    fi
    pass "$step"
    info "$img attached at $DEV"
}

# detach STEP TARGET [ARGS...]: detach and wait until the node is gone.
detach() {
    local step=$1 target=$2 dev rc out
    shift 2
    dev=${DEV:-}
    case "$target" in /dev/*) dev=$target ;; esac
    out=$(lsvd detach "$target" "$@" 2>&1) && rc=0 || rc=$?
    if [ "$rc" != 0 ]; then
        fail "$step" "detach $target exited $rc: $(errsum "$out")"
        diag
        return 1
    fi
    if [ -n "$dev" ] && ! wait_for 10 test ! -e "$dev"; then
        fail "$step" "detach $target returned but $dev still exists after 10 s"
        return 1
    fi
    pass "$step"
}

# list_field DEV FIELD: FIELD (state, pid, image) of DEV from `list --json`
# (no jq in busybox: split the array into one object per line, pick ours).
list_field() {
    lsvd list --json 2>/dev/null | tr -d '\n' | sed 's/}/}\n/g' |
        grep "\"device\" *: *\"$1\"" | head -1 |
        sed -n "s/.*\"$2\" *: *\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p"
}
dev_state() { list_field "$1" state; }
# dev_flags DEV: DEV's ublk flags from `list --json`, comma separated
# (e.g. "user-recovery,reissue,update-size").
dev_flags() {
    lsvd list --json 2>/dev/null | tr -d '\n' | sed 's/}/}\n/g' |
        grep "\"device\" *: *\"$1\"" | head -1 |
        sed -n 's/.*"flags" *: *\[\([^]]*\)\].*/\1/p' | tr -d ' "'
}

# kernel_at_least MAJOR MINOR: whether the guest kernel is MAJOR.MINOR or
# newer (from uname -r, e.g. 7.3.4+deb13-amd64).
kernel_at_least() {
    local maj min
    maj=$(uname -r | cut -d. -f1)
    min=$(uname -r | cut -d. -f2 | sed 's/[^0-9].*//')
    [ "$maj" -gt "$1" ] || { [ "$maj" -eq "$1" ] && [ "$min" -ge "$2" ]; }
}

# server_pid DEV: pid of the server for DEV (list --json, else pidof when
# exactly one lsvd-ublk process runs).
server_pid() {
    local pid
    pid=$(list_field "$1" pid)
    if [ -z "$pid" ] || [ "$pid" = null ]; then
        pid=$(pidof lsvd-ublk)
        case "$pid" in *" "*) pid="" ;; esac
    fi
    echo "$pid"
}

# expect_state STEP DEV STATE [TIMEOUT_S]: wait until list shows STATE.
expect_state() {
    local step=$1 dev=$2 want=$3 limit=${4:-10} i=0 st
    while :; do
        st=$(dev_state "$dev")
        [ "$st" = "$want" ] && { pass "$step"; return 0; }
        i=$((i + 1))
        if [ "$i" -ge $((limit * 5)) ]; then
            fail "$step" "state of $dev is '${st:-<not listed>}', expected $want"
            return 1
        fi
        sleep 0.2
    done
}

# sums_verify STEP DIR LIST: sha256sum -c LIST inside DIR.
sums_verify() {
    local step=$1 dir=$2 list=$3 out bad
    out=$(cd "$dir" && sha256sum -c "$list" 2>&1) && { pass "$step"; return 0; }
    bad=$(echo "$out" | grep -v ': OK$' | head -n 3 | tr '\n' ' ')
    fail "$step" "$(echo "$out" | grep -cE ': FAILED') of $(wc -l <"$list") files bad: $bad"
    return 1
}

# rand_files DIR COUNT SEED: COUNT files of random data, sizes 4 KiB..256 KiB
# in 4 KiB steps (sizes from awk's seeded PRNG, contents from /dev/urandom).
rand_files() {
    local dir=$1 n=$2 seed=$3 i=0 blocks
    mkdir -p "$dir"
    for blocks in $(awk -v n="$n" -v s="$seed" 'BEGIN{srand(s); for(i=0;i<n;i++) print 1 + int(rand()*64)}'); do
        i=$((i + 1))
        dd if=/dev/urandom of="$dir/f$i" bs=4096 count="$blocks" 2>/dev/null || return 1
    done
}

# ---------------------------------------------------------------------------
# RADOS in the guest (vm-test.sh --rados; see scripts/vm/hostroot.sh): the
# rados-* scenarios call rados_setup first. It checks the guest's Ceph
# cluster (starting it again if a scenario left it down), and points the
# lsvd wrappers above at /usr/bin/lsvd-rados: images POOL/NAME are then in
# the pool `lsvd` of that cluster.
# ---------------------------------------------------------------------------
[ -f /lib/lsvd-vm-hostroot.sh ] && . /lib/lsvd-vm-hostroot.sh
rados_setup() {
    [ -x /usr/bin/lsvd-rados ] || abort rados-setup "no host root in this guest (run vm-test.sh --rados)"
    if ! ceph_cluster status >"$STATE/ceph-status.log" 2>&1; then
        info "ceph cluster not healthy ($(tail -n 1 "$STATE/ceph-status.log")); starting it"
        must rados-ceph-start ceph_cluster start
    fi
    LSVD=/usr/bin/lsvd-rados
    pass rados-setup
}

# rados_objects PREFIX: how many objects of the pool lsvd start with PREFIX.
rados_objects() {
    in_host timeout 30 rados -p lsvd ls 2>/dev/null | grep -c "^$1" || true
}
