#!/usr/bin/env bash
# Side-by-side benchmark of lsvd-ublk's RADOS backend and Ceph RBD, on the
# same single-node test cluster (scripts/ceph-test-cluster.sh) in one run.
#
# Usage: scripts/bench-rados.sh [--rbd-only|--lsvd-only] [--keep] [--out FILE] [DIR]
#   --rbd-only   measure RBD only (lsvd is otherwise measured when
#                target/release/lsvd-ublk accepts the rados backend, and
#                skipped with a warning when it does not)
#   --lsvd-only  measure lsvd only (an error if the binary cannot)
#   --keep       leave the cluster, the images and the temporary directory
#   --out FILE   JSON summary (default: ${TMPDIR:-/tmp}/lsvd-bench-rados.json)
#   DIR          cluster directory (default /tmp/lsvd-bench-ceph); the
#                cluster is started there unless it is already running, and
#                stopped on exit if this script started it
#
# Pool `lsvd` holds both images: lsvd/bench-lsvd and lsvd/bench-rbd, both
# IMG_SIZE. Each image is first filled sequentially (so that reads hit
# written data), then REPS times, interleaved:
#   writes: lsvd-ublk bench, rbd bench with rbd cache off, rbd bench with rbd
#           cache on (writeback), 4K random, 16 in flight, WRITE_TOTAL each;
#   reads:  lsvd-ublk bench cold (read cache emptied first) and warm (same
#           seed, right after), rbd bench (rbd cache off), READ_TOTAL each.
# Every run is bracketed by the OSD's op counters (`perf dump` on its admin
# socket), giving backend ops per client op for both sides, and by the CPU
# time of the OSD and the monitor daemons (utime + stime of /proc/PID/stat,
# in clock ticks of `getconf CLK_TCK`, usually 10 ms; the pids come from the
# cluster's pid files), giving daemon CPU seconds per 1,000 client ops:
#   OSD CPU s/1k   ceph-osd's CPU seconds per 1,000 client ops (writes in
#                  the write rows, reads in the read rows)
#   mon CPU s/1k   ceph-mon's, the same way
#   sum CPU s/1k   the two added
# (CPU seconds per 1,000 ops is milliseconds per op: 0.0065 is 6.5 us.)
# Both count the whole process: open, run, and close (lsvd's final destage,
# rbd's flush). The daemons also burn CPU when idle (heartbeats, ticks): a
# slow run is charged more of it per op. Before the runs the script samples
# them for IDLE_SECS with no client, and reports that idle rate, so the
# idle share of a row is its wall time times the rate.
# The table goes to stdout, the JSON summary to --out.
#
# Knobs (environment):
#   REPS         repetitions (default 2)
#   IMG_SIZE     size of each image (default 2G)
#   WRITE_TOTAL  bytes per write run (default 256M)
#   READ_TOTAL   bytes per read run (default 128M)
#   IO_SIZE      bytes per operation (default 4K)
#   IO_THREADS   operations in flight (default 16)
#   FILL         1 (default): fill both images sequentially first
#   LSVD_BIN     our binary (default <repo>/target/release/lsvd-ublk; not built
#                here: run `cargo build --release` first)
#   LSVD_CONFIG_EXTRA  JSON object merged into lsvd's config, e.g.
#                '{"wlog_bytes":"2G"}'
#   RBD_CACHE_ON_OPTS  rbd options of the cache-on write runs (default
#                "--rbd-cache=true --rbd-cache-policy=writeback
#                --rbd-cache-writethrough-until-flush=false": a real writeback
#                cache. rbd bench flushes only at its end, so with the default
#                writethrough-until-flush a writeback cache would stay in
#                writethrough for the whole run. "--rbd-cache=true" alone
#                gives librbd's defaults: policy writearound, which acks
#                writes in flight up to rbd_cache_max_dirty)
#   RUN_TIMEOUT  seconds allowed per benchmark command (default 1800)
#   IDLE_SECS    seconds of the idle daemon CPU sample (default 10; 0: none)
#   BENCH_TMP    parent of the temporary directory (journal, read cache,
#                raw results; default /tmp; a real file system, not tmpfs)
#   LSVD_CEPH_BLOCK_SIZE  OSD block file of a cluster started here (sparse;
#                default 16G: both images, lsvd's garbage and the fills fit)
#
# No mgr runs: every ceph/rbd/rados call is bounded by `timeout`.
set -euo pipefail

# Ceph honours these over ceph.conf (see ceph-test-cluster.sh).
unset CEPH_KEYRING CEPH_ARGS

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=$ROOT/scripts/ceph-test-cluster.sh
POOL=lsvd
RBD_IMG=$POOL/bench-rbd
LSVD_IMG=$POOL/bench-lsvd

REPS=${REPS:-2}
IMG_SIZE=${IMG_SIZE:-2G}
WRITE_TOTAL=${WRITE_TOTAL:-256M}
READ_TOTAL=${READ_TOTAL:-128M}
IO_SIZE=${IO_SIZE:-4K}
IO_THREADS=${IO_THREADS:-16}
FILL=${FILL:-1}
LSVD_BIN=${LSVD_BIN:-$ROOT/target/release/lsvd-ublk}
LSVD_CONFIG_EXTRA=${LSVD_CONFIG_EXTRA:-}
RBD_CACHE_ON_OPTS=${RBD_CACHE_ON_OPTS:---rbd-cache=true --rbd-cache-policy=writeback --rbd-cache-writethrough-until-flush=false}
RBD_CACHE_OFF_OPTS=--rbd-cache=false
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
IDLE_SECS=${IDLE_SECS:-10}

log() { printf '[bench-rados %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    echo "bench-rados: $*" >&2
    exit 1
}
usage() {
    echo "usage: $0 [--rbd-only|--lsvd-only] [--keep] [--out FILE] [DIR]" >&2
    exit 2
}

MODE=both
KEEP=0
OUT=${TMPDIR:-/tmp}/lsvd-bench-rados.json
DIR=
while (($#)); do
    case $1 in
        --rbd-only) MODE=rbd ;;
        --lsvd-only) MODE=lsvd ;;
        --keep) KEEP=1 ;;
        --out)
            (($# >= 2)) || usage
            OUT=$2
            shift
            ;;
        -h | --help) usage ;;
        -*) usage ;;
        *)
            [[ -z $DIR ]] || usage
            DIR=$1
            ;;
    esac
    shift
done
DIR=${DIR:-/tmp/lsvd-bench-ceph}
[[ $DIR == /* ]] || DIR=$PWD/$DIR
[[ $OUT == /* ]] || OUT=$PWD/$OUT
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"
[[ $IDLE_SECS =~ ^[0-9]+$ ]] || die "IDLE_SECS must be a whole number of seconds"
CLK_TCK=$(getconf CLK_TCK) || die "getconf CLK_TCK failed"
PY=$(command -v python3) || die "python3 is needed"

# Temporary directory: lsvd's journal (O_DIRECT) and read cache, raw results.
T=$(mktemp -d "${BENCH_TMP:-/tmp}/lsvd-bench-rados.XXXXXX")
R=$T/results
mkdir -p "$R"
case $(stat -f -c %T "$T") in
    tmpfs | ramfs) die "$T is on tmpfs; set BENCH_TMP to a real file system" ;;
esac

# What to undo on exit. STARTED: this script started the cluster (stop it);
# otherwise only remove the images it made.
STARTED=0
RBD_MADE=0
LSVD_MADE=0
cleanup() {
    local rc=$?
    set +e
    if ((KEEP)); then
        log "kept: cluster $DIR (eval \"\$($CLUSTER env $DIR)\"), images, $T"
        exit "$rc"
    fi
    if ((STARTED)); then
        log "stopping the cluster in $DIR"
        "$CLUSTER" stop "$DIR" >&2
    else
        ((RBD_MADE)) && timeout 120 rbd rm --no-progress "$RBD_IMG" >/dev/null 2>&1
        ((LSVD_MADE)) && timeout 300 "$LSVD_BIN" --config "$CFG" rm "$LSVD_IMG" >/dev/null 2>&1
    fi
    rm -rf -- "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- cluster ---------------------------------------------------------------
if "$CLUSTER" status "$DIR" >/dev/null 2>&1; then
    log "using the cluster already running in $DIR (left running at exit)"
else
    log "starting a test cluster in $DIR"
    STARTED=1
    LSVD_CEPH_BLOCK_SIZE=${LSVD_CEPH_BLOCK_SIZE:-16G} "$CLUSTER" start "$DIR" >&2
fi
eval "$("$CLUSTER" env "$DIR")"
ASOK=$DIR/run/osd.0.asok
[[ -S $ASOK ]] || die "no OSD admin socket at $ASOK"

# The OSD's op counters as one JSON object in file $1.
osd_counters() {
    timeout 10 ceph --admin-daemon "$ASOK" perf dump |
        "$PY" -c '
import json, sys
o = json.load(sys.stdin)["osd"]
keys = ("op", "op_r", "op_w", "op_rw", "op_in_bytes", "op_out_bytes")
json.dump({k: o[k] for k in keys}, open(sys.argv[1], "w"))
' "$1"
}

# The daemons whose CPU time is sampled: the pid in each pid file, checked
# to be a ceph daemon of this cluster (its argv names our ceph.conf, as
# ceph-test-cluster.sh checks before it signals one).
declare -A DAEMON_PID
for d in osd:osd.0 mon:mon.a; do
    pidfile=$DIR/run/${d#*:}.pid
    pid=$(<"$pidfile") || die "no pid file $pidfile"
    [[ $pid =~ ^[0-9]+$ ]] || die "$pidfile holds no pid"
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$CEPH_CONF" ||
        die "pid $pid of $pidfile is not a ceph daemon of $CEPH_CONF"
    DAEMON_PID[${d%%:*}]=$pid
done
unset d pidfile pid

# The daemons' CPU time so far as one JSON object in file $1:
# {"osd": {"pid", "start", "ticks"}, "mon": {...}}; ticks = utime + stime
# (fields 14 and 15 of /proc/PID/stat, every thread of the process), start =
# its start time (field 22), which tells a restarted daemon. Plain bash, so
# that the sample sits close to the run it brackets.
daemon_cpu() {
    local d pid stat sep=
    local -a f
    {
        printf '{'
        for d in osd mon; do
            pid=${DAEMON_PID[$d]}
            stat=$(<"/proc/$pid/stat") || die "$d (pid $pid) is gone"
            # After the command name, which may hold spaces and parentheses:
            # f[0] is field 3 (state).
            read -ra f <<<"${stat##*) }"
            printf '%s"%s": {"pid": %s, "start": %s, "ticks": %s}' \
                "$sep" "$d" "$pid" "${f[19]}" "$((f[11] + f[12]))"
            sep=', '
        done
        printf '}\n'
    } >"$1"
}

# Run "$@" as run $1 (the rest is the command): stdout to $R/NAME.out, stderr
# to $R/NAME.err, OSD counters and daemon CPU before and after, the command
# line and wall time to $R/NAME.meta.
measure() {
    local name=$1 t0 t1
    shift
    osd_counters "$R/$name.osd0"
    daemon_cpu "$R/$name.cpu0"
    t0=$(date +%s.%N)
    # --foreground: the command stays in our process group, so ^C reaches it.
    if ! timeout --foreground "$RUN_TIMEOUT" "$@" >"$R/$name.out" 2>"$R/$name.err"; then
        tail -n 20 "$R/$name.err" >&2
        die "run $name failed: $*"
    fi
    t1=$(date +%s.%N)
    daemon_cpu "$R/$name.cpu1"
    osd_counters "$R/$name.osd1"
    "$PY" -c '
import json, sys
out, t0, t1 = sys.argv[1:4]
json.dump({"argv": sys.argv[4:], "wall_secs": float(t1) - float(t0)}, open(out, "w"))
' "$R/$name.meta" "$t0" "$t1" "$@"
}

rbd_bench() { # NAME "RBD-OPTIONS" BENCH-ARGS...
    local name=$1 opts=$2
    shift 2
    # shellcheck disable=SC2086 # RBD options are a word list
    measure "$name" rbd bench $opts "$@" "$RBD_IMG"
}

lsvd_bench() { # NAME BENCH-ARGS...
    local name=$1
    shift
    measure "$name" "$LSVD_BIN" --config "$CFG" bench "$LSVD_IMG" "$@" --json
}

# --- RBD setup ------------------------------------------------------------
if [[ $MODE != lsvd ]]; then
    # `rbd pool init` needs no mgr; --force because the pool already has
    # the `lsvd` application (it adds `rbd` and writes rbd_info).
    timeout 60 rbd pool init --force "$POOL"
    if timeout 30 rbd info "$RBD_IMG" >/dev/null 2>&1; then
        log "removing $RBD_IMG left by an earlier run"
        timeout 300 rbd rm --no-progress "$RBD_IMG" >/dev/null
    fi
    timeout 60 rbd create "$RBD_IMG" --size "$IMG_SIZE"
    RBD_MADE=1
    log "rbd image $RBD_IMG: $(timeout 30 rbd info "$RBD_IMG" | sed -n 's/^\s*features: //p')"
fi

# --- lsvd setup -----------------------------------------------------------
CFG=$T/lsvd.json
"$PY" - "$CFG" "$CEPH_CONF" "$T" "$LSVD_CONFIG_EXTRA" <<'EOF'
import json, sys
path, conf, tmp, extra = sys.argv[1:]
cfg = {"backend": "rados", "ceph_conf": conf, "ceph_id": "admin",
       "wlog_dir": tmp + "/wlog", "rcache_dir": tmp + "/rcache"}
if extra.strip():
    cfg.update(json.loads(extra))
json.dump(cfg, open(path, "w"), indent=1)
EOF
LSVD=0
LSVD_SKIP=
if [[ $MODE != rbd ]]; then
    if [[ ! -x $LSVD_BIN ]]; then
        LSVD_SKIP="$LSVD_BIN not found (cargo build --release)"
    elif ! timeout 120 "$LSVD_BIN" --config "$CFG" ls "$POOL" >/dev/null 2>"$R/lsvd-probe.err"; then
        # A binary without the backend refuses the config (`unknown key
        # "ceph_conf"`, `backend "rados" is not built ...`): skip it. Any
        # other failure of a binary that has it is an error.
        grep -q 'configuration error' "$R/lsvd-probe.err" || {
            cat "$R/lsvd-probe.err" >&2
            die "$LSVD_BIN --config $CFG ls $POOL failed"
        }
        # The last line of the cause chain.
        # shellcheck disable=SC2016 # a sed script, not a shell expansion
        LSVD_SKIP="$LSVD_BIN cannot use the rados backend: $(sed -n 's/^[[:space:]]*//; /./h; ${x;p}' "$R/lsvd-probe.err")"
    else
        LSVD=1
    fi
    if ((!LSVD)); then
        [[ $MODE == lsvd ]] && die "$LSVD_SKIP"
        log "skipping lsvd: $LSVD_SKIP"
    fi
fi
if ((LSVD)); then
    if timeout 120 "$LSVD_BIN" --config "$CFG" info "$LSVD_IMG" >/dev/null 2>&1; then
        log "removing $LSVD_IMG left by an earlier run"
        timeout 600 "$LSVD_BIN" --config "$CFG" rm "$LSVD_IMG"
    fi
    timeout 120 "$LSVD_BIN" --config "$CFG" create "$LSVD_IMG" --size "$IMG_SIZE"
    LSVD_MADE=1
fi
RBD=1
[[ $MODE != lsvd ]] || RBD=0

# --- runs -----------------------------------------------------------------
# Load averages before and after, to tell a quiet run from a noisy one.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# The daemons' CPU with no client: the floor that every run pays per second
# of its wall time (a `measure` of `sleep`), before the fill and after the
# last run (when the OSD may still be compacting what the runs wrote).
idle_sample() { # NAME
    ((IDLE_SECS)) || return 0
    log "$1: daemon CPU over ${IDLE_SECS} s with no client"
    measure "$1" sleep "$IDLE_SECS"
}
idle_sample idle_before
COMMON=(--io-size "$IO_SIZE" --io-threads "$IO_THREADS")
if ((FILL)); then
    if ((LSVD)); then
        log "fill: lsvd $IMG_SIZE sequential 1M writes"
        lsvd_bench fill_lsvd --io-type write --io-pattern seq --io-size 1M \
            --io-threads "$IO_THREADS" --io-total "$IMG_SIZE"
    fi
    if ((RBD)); then
        log "fill: rbd $IMG_SIZE sequential 4M writes"
        rbd_bench fill_rbd "$RBD_CACHE_OFF_OPTS" --io-type write --io-pattern seq \
            --io-size 4M --io-threads "$IO_THREADS" --io-total "$IMG_SIZE"
    fi
fi

for ((i = 1; i <= REPS; i++)); do
    if ((LSVD)); then
        log "write $i/$REPS: lsvd"
        lsvd_bench "lsvd_write_$i" --io-type write --io-pattern rand "${COMMON[@]}" \
            --io-total "$WRITE_TOTAL"
    fi
    if ((RBD)); then
        log "write $i/$REPS: rbd, cache off"
        rbd_bench "rbd_write_nocache_$i" "$RBD_CACHE_OFF_OPTS" --io-type write \
            --io-pattern rand "${COMMON[@]}" --io-total "$WRITE_TOTAL"
        log "write $i/$REPS: rbd, cache on"
        rbd_bench "rbd_write_cache_$i" "$RBD_CACHE_ON_OPTS" --io-type write \
            --io-pattern rand "${COMMON[@]}" --io-total "$WRITE_TOTAL"
    fi
done

for ((i = 1; i <= REPS; i++)); do
    if ((LSVD)); then
        # Cold: an empty read cache; warm: the same offsets again.
        rm -rf -- "$T/rcache"
        mkdir -p "$T/rcache"
        log "read $i/$REPS: lsvd cold"
        lsvd_bench "lsvd_read_cold_$i" --io-type read --io-pattern rand "${COMMON[@]}" \
            --io-total "$READ_TOTAL" --seed "$((1000 + i))"
        log "read $i/$REPS: lsvd warm"
        lsvd_bench "lsvd_read_warm_$i" --io-type read --io-pattern rand "${COMMON[@]}" \
            --io-total "$READ_TOTAL" --seed "$((1000 + i))"
    fi
    if ((RBD)); then
        log "read $i/$REPS: rbd"
        rbd_bench "rbd_read_$i" "$RBD_CACHE_OFF_OPTS" --io-type read --io-pattern rand \
            "${COMMON[@]}" --io-total "$READ_TOTAL"
    fi
done

idle_sample idle_after

# --- report ---------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
export REPS IMG_SIZE WRITE_TOTAL READ_TOTAL IO_SIZE IO_THREADS FILL POOL RBD_IMG LSVD_IMG \
    LSVD_SKIP LOAD_BEFORE RBD_CACHE_ON_OPTS RBD_CACHE_OFF_OPTS LSVD_BIN T CLK_TCK IDLE_SECS
"$PY" - "$R" "$OUT" <<'PYEOF'
import datetime, json, os, platform, re, statistics, sys

R, out = sys.argv[1], sys.argv[2]
env = os.environ
reps = int(env["REPS"])
clk_tck = int(env["CLK_TCK"])
DAEMONS = ("osd", "mon")
load_after = " ".join(open("/proc/loadavg").read().split()[:3])

def load(path):
    with open(path) as f:
        return json.load(f)

def daemon_cpu(base):
    """CPU seconds (user + system) of each daemon over a run, and their sum."""
    p0, p1 = load(base + ".cpu0"), load(base + ".cpu1")
    cpu = {}
    for d in DAEMONS:
        if (p0[d]["pid"], p0[d]["start"]) != (p1[d]["pid"], p1[d]["start"]):
            sys.exit(f"bench-rados: the {d} daemon restarted during {base}")
        cpu[d] = (p1[d]["ticks"] - p0[d]["ticks"]) / clk_tck
    cpu["sum"] = sum(cpu[d] for d in DAEMONS)
    return cpu

def run(name):
    """One run's figures, or None if it was not run."""
    base = os.path.join(R, name)
    if not os.path.exists(base + ".meta"):
        return None
    meta = load(base + ".meta")
    c0, c1 = load(base + ".osd0"), load(base + ".osd1")
    osd = {k: c1[k] - c0[k] for k in c0}
    text = open(base + ".out").read()
    r = {"name": name, "argv": meta["argv"], "wall_secs": round(meta["wall_secs"], 3), "osd": osd,
         "daemon_cpu_secs": daemon_cpu(base)}
    if name.startswith(("lsvd", "fill_lsvd")):
        j = json.loads(text.strip().splitlines()[-1])
        r.update(iops=j["ops_per_sec"], client_ops=j["ops"], client_writes=j["write_ops"],
                 client_reads=j["read_ops"], elapsed_secs=j["elapsed_secs"], lsvd=j)
    else:
        m = re.search(r"elapsed:\s*(\d+)\s+ops:\s*(\d+)\s+ops/sec:\s*([0-9.]+)", text)
        if not m:
            sys.exit(f"bench-rados: no rbd bench summary line in {base}.out")
        ops = int(m.group(2))
        writes = "--io-type" in meta["argv"] and meta["argv"][meta["argv"].index("--io-type") + 1] == "write"
        r.update(iops=float(m.group(3)), client_ops=ops, client_writes=ops if writes else 0,
                 client_reads=0 if writes else ops, elapsed_secs=int(m.group(1)))
    r["osd_ops_per_client_op"] = osd["op"] / r["client_ops"] if r["client_ops"] else None
    # CPU seconds per 1,000 client ops (= ms per op).
    r["daemon_cpu_secs_per_1k_ops"] = {d: 1e3 * v / r["client_ops"] if r["client_ops"] else None
                                       for d, v in r["daemon_cpu_secs"].items()}
    return r

def idle(name):
    """The daemons' CPU seconds per wall second with no client, or None."""
    base = os.path.join(R, name)
    if not os.path.exists(base + ".meta"):
        return None
    wall = load(base + ".meta")["wall_secs"]
    cpu = daemon_cpu(base)
    return {"wall_secs": round(wall, 3), "cpu_secs": cpu,
            "cpu_secs_per_sec": {d: v / wall for d, v in cpu.items()}}

kinds = {
    "lsvd_write": "lsvd write",
    "rbd_write_nocache": "rbd write, rbd cache off",
    "rbd_write_cache": "rbd write, rbd cache on",
    "lsvd_read_cold": "lsvd read, cold",
    "lsvd_read_warm": "lsvd read, warm",
    "rbd_read": "rbd read",
}
runs = {k: [x for x in (run(f"{k}_{i}") for i in range(1, reps + 1)) if x] for k in kinds}
fills = [x for x in (run("fill_lsvd"), run("fill_rbd")) if x]
idle_rates = {k: v for k, v in ((k, idle(k)) for k in ("idle_before", "idle_after")) if v}

def mean(v):
    return statistics.mean(v) if v else None

def fmt_vals(v, f="{:.0f}"):
    if not v:
        return "-"
    s = ", ".join(f.format(x) for x in v)
    return s + (f" (mean {f.format(mean(v))})" if len(v) > 1 else "")

def pair_ratios(a, b):
    return [x["iops"] / y["iops"] for x, y in zip(runs[a], runs[b]) if y["iops"]]

def osd_per_op(rs):
    return fmt_vals([x["osd_ops_per_client_op"] for x in rs], "{:.4f}")

def osd_split(rs):
    """OSD write / read-modify-write / read ops per 10k client ops, all reps."""
    if not rs:
        return "-"
    n = sum(x["client_ops"] for x in rs)
    return " / ".join(f"{1e4 * sum(x['osd'][k] for x in rs) / n:.1f}" for k in ("op_w", "op_rw", "op_r"))

ratio_defs = [
    ("lsvd write / rbd write cache off", "lsvd_write", "rbd_write_nocache"),
    ("lsvd write / rbd write cache on", "lsvd_write", "rbd_write_cache"),
    ("lsvd read cold / rbd read", "lsvd_read_cold", "rbd_read"),
    ("lsvd read warm / rbd read", "lsvd_read_warm", "rbd_read"),
]
ratios = {label: pair_ratios(a, b) for label, a, b in ratio_defs}

def cpu_per_1k(x, d):
    return x["daemon_cpu_secs_per_1k_ops"][d]

def fmt_cpu(rs, d):
    return fmt_vals([cpu_per_1k(x, d) for x in rs], "{:.5f}")

# Daemon CPU per client op, rbd over lsvd, per rep pair (a run that used
# under one clock tick has no ratio).
for label, d, a, b in (("OSD CPU per write, rbd cache off / lsvd", "osd", "lsvd_write", "rbd_write_nocache"),
                       ("OSD CPU per write, rbd cache on / lsvd", "osd", "lsvd_write", "rbd_write_cache"),
                       ("OSD+mon CPU per write, rbd cache off / lsvd", "sum", "lsvd_write", "rbd_write_nocache"),
                       ("OSD+mon CPU per write, rbd cache on / lsvd", "sum", "lsvd_write", "rbd_write_cache"),
                       ("OSD CPU per read, rbd / lsvd cold", "osd", "lsvd_read_cold", "rbd_read"),
                       ("OSD+mon CPU per read, rbd / lsvd cold", "sum", "lsvd_read_cold", "rbd_read")):
    ratios[label] = [cpu_per_1k(y, d) / cpu_per_1k(x, d)
                     for x, y in zip(runs[a], runs[b]) if cpu_per_1k(x, d)]
# Backend efficiency: RBD's OSD ops per client write over lsvd's.
for label, b in (("OSD ops per write, rbd cache off / lsvd", "rbd_write_nocache"),
                 ("OSD ops per write, rbd cache on / lsvd", "rbd_write_cache")):
    ratios[label] = [y["osd_ops_per_client_op"] / x["osd_ops_per_client_op"]
                     for x, y in zip(runs["lsvd_write"], runs[b]) if x["osd_ops_per_client_op"]]

def cmd(argv):
    s = " ".join(argv).replace(env["LSVD_BIN"], "lsvd-ublk").replace(env["T"], "$T")
    return "`" + s + "`"

lines = []
p = lines.append
p(f"# lsvd-ublk (RADOS backend) vs Ceph RBD, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
p("")
p(f"Single-node test cluster (1 mon, 1 bluestore OSD on a sparse file, no mgr, pool `{env['POOL']}` size 1); "
  f"nproc {os.cpu_count()}, kernel {platform.release()}, load average {env['LOAD_BEFORE']} before "
  f"and {load_after} after the runs. Images of {env['IMG_SIZE']}"
  f"{', filled sequentially first' if env['FILL'] == '1' else ''}; {env['IO_SIZE']} random ops, "
  f"{env['IO_THREADS']} in flight; writes {env['WRITE_TOTAL']}, reads {env['READ_TOTAL']} per run; "
  f"{reps} repetitions, interleaved. OSD ops are the OSD's `op` counter over the whole process "
  f"(open, run, close or final flush) divided by the client ops. Daemon CPU: user + system "
  f"seconds of ceph-osd and ceph-mon (/proc/PID/stat, {clk_tck} ticks/s) over the same span, "
  f"per 1,000 client ops (= ms per op), idle CPU included.")
if env.get("LSVD_SKIP"):
    p("")
    p(f"lsvd not measured: {env['LSVD_SKIP']}")
p("")
p("| Workload | IOPS per rep | OSD ops per client op | OSD op_w / op_rw / op_r per 10k client ops "
  "| OSD CPU s per 1k client ops | mon CPU s per 1k | OSD+mon CPU s per 1k | Wall s per rep | Command (rep 1) |")
p("|---|---|---|---|---|---|---|---|---|")
for k, label in kinds.items():
    rs = runs[k]
    if not rs:
        continue
    p(f"| {label} | {fmt_vals([x['iops'] for x in rs])} | {osd_per_op(rs)} | {osd_split(rs)} "
      f"| {fmt_cpu(rs, 'osd')} | {fmt_cpu(rs, 'mon')} | {fmt_cpu(rs, 'sum')} "
      f"| {fmt_vals([x['wall_secs'] for x in rs], '{:.1f}')} | {cmd(rs[0]['argv'])} |")
if idle_rates:
    p("")
    p("Idle daemons (no client; CPU s per wall second, OSD / mon / sum): "
      + "; ".join(f"{k.replace('_', ' ')} the runs ({v['wall_secs']:.0f} s) "
                  + " / ".join(f"{v['cpu_secs_per_sec'][d]:.4f}" for d in DAEMONS + ('sum',))
                  for k, v in idle_rates.items())
      + ". A run's idle share per 1k ops is this rate times its wall time over its ops / 1000.")
have = [(label, v) for label, v in ratios.items() if v]
if have:
    p("")
    p("| Ratio (per rep pair) | Value |")
    p("|---|---|")
    for label, v in have:
        p(f"| {label} | {fmt_vals(v, '{:.2f}')} |")
lw = runs["lsvd_write"]
if lw:
    p("")
    p("lsvd's own counters in the write runs (bench JSON, run only, close excluded) vs the OSD (whole process):")
    for x in lw:
        j = x["lsvd"]
        p(f"- {x['name']}: backend puts per 10k writes {j['backend_puts_per_10k_writes']:.2f} (own), "
          f"OSD write ops per 10k writes {1e4 * (x['osd']['op_w'] + x['osd']['op_rw']) / max(j['write_ops'], 1):.2f}, "
          f"OSD ops per 10k writes {1e4 * x['osd']['op'] / max(j['write_ops'], 1):.2f}; "
          f"p50/p99 {j['lat_p50_us']}/{j['lat_p99_us']} us; close {j['close_secs']:.2f} s")
if fills:
    p("")
    p("Fill runs: " + "; ".join(f"{x['name']} {x['iops']:.0f} IOPS, {x['wall_secs']:.1f} s, "
                                f"{x['osd_ops_per_client_op']:.4f} OSD ops per client op, "
                                f"OSD / mon CPU {x['daemon_cpu_secs']['osd']:.2f} / "
                                f"{x['daemon_cpu_secs']['mon']:.2f} s" for x in fills))

table = "\n".join(lines)
print(table)

summary = {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "host": {"nproc": os.cpu_count(), "kernel": platform.release(),
             "loadavg_before": env["LOAD_BEFORE"], "loadavg_after": load_after},
    "params": {k.lower(): env[k] for k in ("REPS", "IMG_SIZE", "WRITE_TOTAL", "READ_TOTAL", "IO_SIZE",
                                             "IO_THREADS", "FILL", "RBD_CACHE_ON_OPTS", "RBD_CACHE_OFF_OPTS",
                                             "IDLE_SECS")},
    "images": {"rbd": env["RBD_IMG"], "lsvd": env["LSVD_IMG"]},
    "lsvd_skipped": env.get("LSVD_SKIP") or None,
    "summary": {k: {"label": kinds[k],
                    "iops": [x["iops"] for x in runs[k]],
                    "iops_mean": mean([x["iops"] for x in runs[k]]),
                    "osd_ops_per_client_op": [x["osd_ops_per_client_op"] for x in runs[k]],
                    **{f"{d}_cpu_secs_per_1k_ops": [cpu_per_1k(x, d) for x in runs[k]]
                       for d in DAEMONS + ("sum",)},
                    **{f"{d}_cpu_secs_per_1k_ops_mean": mean([cpu_per_1k(x, d) for x in runs[k]])
                       for d in DAEMONS + ("sum",)}}
                for k in kinds if runs[k]},
    "idle_daemon_cpu": idle_rates,
    "clk_tck": clk_tck,
    "ratios": {label: {"values": v, "mean": mean(v)} for label, v in ratios.items() if v},
    "runs": [x for k in kinds for x in runs[k]] + fills,
    "table_markdown": table,
}
with open(out, "w") as f:
    json.dump(summary, f, indent=1)
print(f"\nJSON summary: {out}", file=sys.stderr)
PYEOF
