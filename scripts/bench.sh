#!/usr/bin/env bash
# Benchmarks of the engine against the local disk, as ratios taken in one run.
#
#   scripts/bench.sh            # REPS=3 repetitions, writes docs/benchmarks.md
#   REPS=1 scripts/bench.sh     # quicker
#   NO_DOC=1 scripts/bench.sh   # print the table only
#
# Builds release, then in a temporary directory under /tmp (must be a real
# disk file system such as ext4, never tmpfs) measures, REPS times each and
# interleaved so that noise from other load hits both sides of a ratio:
#   a. 4K random writes QD32 through `lsvd-ublk bench` vs. fio 4K sequential
#      O_DIRECT writes QD32 (io_uring) on the same file system;
#   b. backend puts per 10k client writes and backend bytes per client byte
#      (from the same bench JSON);
#   c. 4K random reads QD32 through `lsvd-ublk bench` after the writes, vs.
#      fio 4K random reads QD32 of the fio file;
#   d. map memory (examples/map_memory.rs, 10M extents, run once: deterministic);
#   e. recovery time of a full 1 GiB journal (examples/recovery_time.rs);
#   f. read cache: 4K random reads QD32 of a 1 GiB image held entirely in the
#      read cache (warm) vs. fio 4K random reads QD32 (O_DIRECT) of the cache
#      file itself; and with the cache file deleted first (cold) vs. the
#      backend's own 4K ranged reads (examples/backend_reads.rs);
#   g. garbage collection (examples/write_amp.rs, run once): fill 80% of an
#      image, 4K random overwrites of 3x its size; write amplification,
#      stored bytes per live byte, and write IOPS with GC on vs. off;
#   h. FUA 4K random writes at QD1 through `lsvd-ublk bench --fua` (what an
#      O_SYNC writer sends a disk) vs. fio 4K random O_DSYNC writes at QD1
#      on the fio file.
# CPU per operation is put beside each baseline's in (a), (c) and (f):
# lsvd's is user + system CPU of the whole bench process over the measured
# phase (getrusage: the journal, destage, GC and cache threads count; open
# and close do not), divided by its operations; fio's is (usr_cpu + sys_cpu)
# / 100 x job_runtime / I/Os of its job; backend_reads' is the CPU of the
# example process less that of the same process doing no reads (its start
# and object listing), divided by its reads.
# The table goes to stdout and docs/benchmarks.md. Environment:
#   CARGO_TARGET_DIR  build directory (default: <repo>/target)
#   REPS              repetitions (default 3)
#   BENCH_TMP         parent of the temporary directory (default /tmp)
#   KEEP=1            keep the temporary directory
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REPS=${REPS:-3}
PY=$(command -v python3)
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
# with_cpu FILE CMD...: run CMD (stdout and stderr untouched) and write the
# user and system CPU seconds it and its children used to FILE as key=value.
with_cpu() {
    "$PY" -c '
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    print(f"cpu_user_secs={u.ru_utime:.6f} cpu_sys_secs={u.ru_stime:.6f}", file=f)
sys.exit(rc)' "$@"
}

if ! command -v fio >/dev/null; then
    log "installing fio"
    apt-get install -y fio >&2
fi

log "building release (target dir $CARGO_TARGET_DIR)"
cargo build --release --bin lsvd-ublk --example map_memory --example recovery_time \
    --example backend_reads --example write_amp >&2
BIN=$CARGO_TARGET_DIR/release/lsvd-ublk
EX=$CARGO_TARGET_DIR/release/examples

T=$(mktemp -d "${BENCH_TMP:-/tmp}/lsvd-bench.XXXXXX")
cleanup() { if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$T"; else log "kept $T"; fi; }
trap cleanup EXIT
FSTYPE=$(df -T "$T" | awk 'NR==2 {print $2}')
case "$FSTYPE" in
    tmpfs | ramfs | fuse*) echo "bench.sh: $T is on $FSTYPE; use a disk file system (BENCH_TMP=...)" >&2; exit 1 ;;
esac
R=$T/results
mkdir -p "$R"
log "working in $T ($FSTYPE), $REPS repetitions"

CFG="{\"store_dir\":\"$T/store\",\"wlog_dir\":\"$T/wlog\",\"wlog_bytes\":\"2G\",\"rcache_dir\":\"$T/rcache\",\"rcache_bytes\":\"2G\"}"
IMG=bench/img
IMG_SIZE=1G
"$BIN" --config "$CFG" create "$IMG" --size "$IMG_SIZE"

FIO_W="fio --name=j --filename=$T/fio.dat --size=2G --rw=write --bs=4k --iodepth=32 --direct=1 --ioengine=io_uring --runtime=20 --time_based=0"
FIO_R="fio --name=r --filename=$T/fio.dat --size=2G --rw=randread --bs=4k --iodepth=32 --direct=1 --ioengine=io_uring --runtime=10 --time_based=1"
LSVD_W="$BIN --config $CFG bench $IMG --io-type write --io-size 4K --io-pattern rand --io-threads 32 --io-total 1G --json"
LSVD_R="$BIN --config $CFG bench $IMG --io-type read --io-size 4K --io-pattern rand --io-threads 32 --io-total 512M --json"
MAPMEM="$EX/map_memory 10000000"
DD_R="dd of=/dev/null bs=2M iflag=direct"

log "laying out the fio file (2 GiB, written once so later runs overwrite allocated blocks)"
fio --name=layout --filename="$T/fio.dat" --size=2G --rw=write --bs=1M --iodepth=8 \
    --direct=1 --ioengine=io_uring --output="$R/fio_layout.json" --output-format=json >/dev/null

# Write runs are interleaved with their baseline. --output only redirects
# fio's report; the measured I/O is exactly the command shown.
for i in $(seq 1 "$REPS"); do
    log "write $i/$REPS: fio seq write baseline"
    $FIO_W --output-format=json --output="$R/fio_w_$i.json" >/dev/null
    log "write $i/$REPS: lsvd-ublk bench rand write"
    $LSVD_W >"$R/lsvd_w_$i.json"
done
# After the writes the 1 GiB image is almost fully written (1 - e^-REPS).
for i in $(seq 1 "$REPS"); do
    log "read $i/$REPS: fio rand read baseline"
    $FIO_R --output-format=json --output="$R/fio_r_$i.json" >/dev/null
    log "read $i/$REPS: lsvd-ublk bench rand read"
    $LSVD_R >"$R/lsvd_r_$i.json"
done
# h. FUA writes at QD1 against O_DSYNC writes at QD1, interleaved.
FIO_S="fio --name=s --filename=$T/fio.dat --size=2G --rw=randwrite --bs=4k --iodepth=1 --direct=1 --sync=dsync --ioengine=psync --runtime=8 --time_based=1"
LSVD_S="$BIN --config $CFG bench $IMG --io-type write --io-size 4K --io-pattern rand --io-threads 1 --fua --io-total 24M --json"
for i in $(seq 1 "$REPS"); do
    log "fua $i/$REPS: fio O_DSYNC rand write QD1 baseline"
    $FIO_S --output-format=json --output="$R/fio_s_$i.json" >/dev/null
    log "fua $i/$REPS: lsvd-ublk bench rand FUA write QD1"
    $LSVD_S >"$R/lsvd_s_$i.json"
done
# f. Read cache. A second image written sequentially, so its live data fits
# the 2 GiB cache; a sequential read pass makes sure every chunk is cached.
WIMG=bench/warm
"$BIN" --config "$CFG" create "$WIMG" --size 1G
"$BIN" --config "$CFG" bench "$WIMG" --io-type write --io-pattern seq --io-size 1M --io-total 1G --json >"$R/warm_fill.json"
"$BIN" --config "$CFG" bench "$WIMG" --io-type read --io-pattern seq --io-size 64K --io-total 1G --json >"$R/warm_pass.json"
# <rcache_dir>/<pool>/<image>.rcache
CACHE_FILE=$T/rcache/bench/warm.rcache
[[ -f "$CACHE_FILE" ]] || { echo "bench.sh: no read-cache file $CACHE_FILE" >&2; exit 1; }
FIO_C="fio --name=c --filename=$CACHE_FILE --size=1G --rw=randread --bs=4k --iodepth=32 --direct=1 --ioengine=io_uring --runtime=10 --time_based=1 --readonly"
LSVD_WARM="$BIN --config $CFG bench $WIMG --io-type read --io-size 4K --io-pattern rand --io-threads 32 --io-total 1G --json"
LSVD_COLD="$BIN --config $CFG bench $WIMG --io-type read --io-size 4K --io-pattern rand --io-threads 32 --io-total 64M --json"
BREADS="$EX/backend_reads $CFG $WIMG 32 16384"
# The same with no reads: its CPU (start, object listing) is taken off.
BREADS0="$EX/backend_reads $CFG $WIMG 32 0"
for i in $(seq 1 "$REPS"); do
    log "cache $i/$REPS: fio rand read of the cache file (baseline)"
    $FIO_C --output-format=json --output="$R/fio_c_$i.json" >/dev/null
    log "cache $i/$REPS: lsvd-ublk bench rand read, warm cache"
    $LSVD_WARM >"$R/lsvd_warm_$i.json"
done
for i in $(seq 1 "$REPS"); do
    log "cache $i/$REPS: backend 4K ranged reads (baseline)"
    with_cpu "$R/breads0_cpu_$i.txt" $BREADS0 >/dev/null
    with_cpu "$R/breads_cpu_$i.txt" $BREADS >"$R/breads_$i.txt"
    log "cache $i/$REPS: lsvd-ublk bench rand read, cache file deleted (cold)"
    rm -f "$CACHE_FILE"
    $LSVD_COLD >"$R/lsvd_cold_$i.json"
done
# g. Garbage collection (one run: it takes minutes).
WA_SIZE_MIB=${WA_SIZE_MIB:-1024}
WAMP="$EX/write_amp $T/wa $WA_SIZE_MIB off,60,70"
log "gc: write amplification and space, ${WA_SIZE_MIB} MiB image, modes off,60,70"
$WAMP >"$R/wamp.txt"
log "map memory (10M extents)"
$MAPMEM >"$R/map.txt"
for i in $(seq 1 "$REPS"); do
    log "recovery $i/$REPS: fill a 1 GiB journal, crash, reopen"
    "$EX/recovery_time" "$T/rec$i" 1024 >"$R/rec_$i.txt"
    # Baseline for the replay rate: the same journal file read sequentially
    # with O_DIRECT at QD1 in 2 MiB blocks (replay reads one record at a time).
    LC_ALL=C $DD_R if="$T/rec$i/wlog/img.wlog" 2>"$R/dd_$i.txt"
    rm -rf "$T/rec$i"
done

DOC=$ROOT/docs/benchmarks.md
export FIO_S LSVD_S FIO_W FIO_R LSVD_W LSVD_R MAPMEM DD_R BIN EX CFG IMG IMG_SIZE FIO_C LSVD_WARM LSVD_COLD BREADS BREADS0 WAMP
"$PY" - "$R" "$REPS" "$T" "$FSTYPE" <<'PYEOF' >"$R/table.md"
import json, os, re, subprocess, sys, datetime, platform

R, reps, T, fstype = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
env = os.environ

def load(name):
    with open(os.path.join(R, name)) as f:
        return json.load(f)

def kv(path):
    out = {}
    for line in open(os.path.join(R, path)):
        for k, v in re.findall(r"(\w+)=([0-9.]+)", line):
            out[k] = float(v)
    return out

def rng(vals, fmt="{:.0f}"):
    vals = sorted(vals)
    if len(vals) == 1:
        return fmt.format(vals[0])
    mid = vals[len(vals) // 2]
    return f"{fmt.format(vals[0])} - {fmt.format(vals[-1])} (median {fmt.format(mid)})"

runs = range(1, reps + 1)

def fio_cpu_us_per_op(j, rw):
    # fio's usr_cpu/sys_cpu are percent of one CPU over the job's runtime (ms).
    job = j["jobs"][0]
    ios = job[rw]["total_ios"]
    return (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] * 1000 / max(ios, 1)

def fio_load(prefix, rw):
    js = [load(f"{prefix}_{i}.json") for i in runs]
    return [j["jobs"][0][rw]["iops"] for j in js], [fio_cpu_us_per_op(j, rw) for j in js]
fw, fwc = fio_load("fio_w", "write")
lw = [load(f"lsvd_w_{i}.json") for i in runs]
fr, frc = fio_load("fio_r", "read")
lr = [load(f"lsvd_r_{i}.json") for i in runs]
rec = [kv(f"rec_{i}.txt") for i in runs]
lwi = [x["ops_per_sec"] for x in lw]
lri = [x["ops_per_sec"] for x in lr]
wratio = [a / b for a, b in zip(lwi, fw)]
rratio = [a / b for a, b in zip(lri, fr)]
batch = [x["write_ops"] / max(x["journal_records"], 1) for x in lw]

mapmem = {}
for line in open(os.path.join(R, "map.txt")):
    m = re.match(r"(.+?) (random|sequential): extents=(\d+) .*bytes_per_extent=([0-9.]+)", line)
    if m:
        mapmem[(m.group(1), m.group(2))] = float(m.group(4))

def cmd(s):
    # Shell-ready: the config JSON quoted, paths relative to the temp dir $T.
    s = s.replace(env["CFG"], "'" + env["CFG"] + "'")
    s = s.replace(env["BIN"], "lsvd-ublk").replace(env["EX"] + "/", "target/release/examples/")
    return "`" + s.replace(T, "$T").replace("|", "\\|") + "`"

c = {k: env[k] for k in ["FIO_W", "FIO_R", "LSVD_W", "LSVD_R", "MAPMEM"]}
def ok(vals, target, ge):
    good = all(v >= target for v in vals) if ge else all(v <= target for v in vals)
    part = any(v >= target for v in vals) if ge else any(v <= target for v in vals)
    return "yes" if good else ("partly" if part else "**no**")

rows = []
rows.append(("a. fio 4K seq write QD32 IOPS (baseline)", cmd(c["FIO_W"]), rng(fw), "", ""))
rows.append(("a. lsvd 4K rand write QD32 IOPS", cmd(c["LSVD_W"]), rng(lwi), "", ""))
rows.append(("**a. write IOPS ratio lsvd / fio**", "pairs of the two rows above", rng(wratio, "{:.2f}"), ">= 1.0", ok(wratio, 1.0, True)))
lwc = [x["cpu_us_per_op"] for x in lw]
def cpu_pair(l, b):
    return " ; ".join(f"{x:.1f} / {y:.1f}" for x, y in zip(l, b))
rows.append(("a. CPU us per write, lsvd / fio (per pair; lsvd: whole process incl. background threads)", "same runs: bench JSON cpu_us_per_op; fio (usr_cpu+sys_cpu)/100 x job_runtime / total_ios", cpu_pair(lwc, fwc), "", ""))
rows.append(("**a. CPU per write ratio lsvd / fio**", "pairs of the row above", rng([a / b for a, b in zip(lwc, fwc)], "{:.2f}"), "", ""))
rows.append(("a. lsvd write latency p50 / p99 (us)", "same bench JSON", " ; ".join(f"{x['lat_p50_us']} / {x['lat_p99_us']}" for x in lw), "", ""))
rows.append(("a. client writes per journal record (group commit)", "same bench JSON: write_ops / journal_records", rng(batch, "{:.1f}"), "", ""))
p10k = [x["backend_puts_per_10k_writes"] for x in lw]
bpb = [x["backend_bytes_per_client_byte"] for x in lw]
rows.append(("**b. backend puts per 10k client 4K writes**", "same bench JSON", rng(p10k, "{:.2f}"), "<= 5", ok(p10k, 5.0, False)))
rows.append(("b. backend bytes per client byte", "same bench JSON", rng(bpb, "{:.3f}"), "", ""))
rows.append(("b. close after the write run (s)", "same bench JSON: close_secs", rng([x["close_secs"] for x in lw], "{:.2f}"), "", ""))
rows.append(("c. fio 4K rand read QD32 IOPS (baseline)", cmd(c["FIO_R"]), rng(fr), "", ""))
rows.append(("c. lsvd 4K rand read QD32 IOPS (after the writes)", cmd(c["LSVD_R"]), rng(lri), "", ""))
rows.append(("c. read IOPS ratio lsvd / fio", "pairs of the two rows above", rng(rratio, "{:.2f}"), "", ""))
lrc = [x["cpu_us_per_op"] for x in lr]
rows.append(("c. CPU us per read, lsvd / fio", "same runs", cpu_pair(lrc, frc), "", ""))
rows.append(("c. CPU per read ratio lsvd / fio", "pairs of the row above", rng([a / b for a, b in zip(lrc, frc)], "{:.2f}"), "", ""))
rows.append(("c. backend reads per client read", "same bench JSON", rng([x["backend_reads"] / max(x["read_ops"], 1) for x in lr], "{:.2f}"), "", ""))
om = [mapmem.get(("ObjectMap", o)) for o in ("random", "sequential")]
rows.append(("**d. map bytes per extent, ObjectMap, 10M extents (random / sequential)**", cmd(c["MAPMEM"]),
             " / ".join(f"{v:.2f}" if v is not None else "?" for v in om), "<= 32",
             ok([v for v in om if v is not None], 32.0, False) if all(v is not None for v in om) else "?"))
others = ", ".join(f"{k[0]} {k[1]} {v:.2f}" for k, v in mapmem.items() if k[0] != "ObjectMap")
if others:
    rows.append(("d. other structures (bytes per extent)", "same run", others, "", ""))
rcmd = cmd(os.path.join(env["EX"], "recovery_time") + f" {T}/recN 1024")
rows.append(("e. journal replayed (MiB) / ops", rcmd, rng([r["journal_bytes"] / 2**20 for r in rec]) + " / " + rng([r["replayed_ops"] for r in rec]), "", ""))
rows.append(("**e. recovery (open + replay) secs, 1 GiB journal**", "same", rng([r["recovery_secs"] for r in rec], "{:.2f}"), "", ""))
rows.append(("e. replay rate (GiB/s)", "same", rng([r["gib_per_sec"] for r in rec], "{:.2f}"), "", ""))
dd = []
for i in runs:
    m = re.search(r"(\d+) bytes .* copied, ([0-9.]+) s", open(os.path.join(R, f"dd_{i}.txt")).read())
    dd.append(int(m.group(1)) / 2**30 / float(m.group(2)) if m else float("nan"))
rows.append(("e. baseline: journal file read, O_DIRECT 2M QD1 (GiB/s)", cmd(env["DD_R"] + f" if={T}/recN/wlog/img.wlog"), rng(dd, "{:.2f}"), "", ""))
rows.append(("e. replay rate / baseline read rate", "pairs of the two rows above", rng([r["gib_per_sec"] / d for r, d in zip(rec, dd)], "{:.2f}"), "", ""))
rows.append(("e. close after recovery (destage all) secs", "same", rng([r["close_secs"] for r in rec], "{:.2f}"), "", ""))
fc, fcc = fio_load("fio_c", "read")
lwarm = [load(f"lsvd_warm_{i}.json") for i in runs]
lcold = [load(f"lsvd_cold_{i}.json") for i in runs]
br = [kv(f"breads_{i}.txt")["iops"] for i in runs]
brc = []
for i in runs:
    b, t, t0 = kv(f"breads_{i}.txt"), kv(f"breads_cpu_{i}.txt"), kv(f"breads0_cpu_{i}.txt")
    cpu_s = lambda t: t["cpu_user_secs"] + t["cpu_sys_secs"]
    brc.append(max(cpu_s(t) - cpu_s(t0), 0.0) * 1e6 / max(b["ops"], 1))
def hitrate(x):
    h, m = x.get("cache_hits", 0), x.get("cache_misses", 0)
    return h / max(h + m, 1)
rows.append(("f. fio 4K rand read QD32 of the cache file (baseline)", cmd(env["FIO_C"]), rng(fc), "", ""))
rows.append(("f. lsvd 4K rand read QD32, warm cache", cmd(env["LSVD_WARM"]), rng([x["ops_per_sec"] for x in lwarm]), "", ""))
wr = [x["ops_per_sec"] / b for x, b in zip(lwarm, fc)]
rows.append(("**f. warm read IOPS ratio lsvd / fio on the cache file**", "pairs of the two rows above", rng(wr, "{:.2f}"), ">= 0.8", ok(wr, 0.8, True)))
lwarmc = [x["cpu_us_per_op"] for x in lwarm]
rows.append(("f. warm: CPU us per read, lsvd / fio on the cache file", "same runs", cpu_pair(lwarmc, fcc), "", ""))
rows.append(("f. warm: CPU per read ratio lsvd / fio", "pairs of the row above", rng([a / b for a, b in zip(lwarmc, fcc)], "{:.2f}"), "", ""))
rows.append(("f. warm: cache hit rate / backend reads per client read", "same bench JSON",
             rng([hitrate(x) for x in lwarm], "{:.3f}") + " / " + rng([x["backend_reads"] / max(x["read_ops"], 1) for x in lwarm], "{:.3f}"), "", ""))
rows.append(("f. backend 4K ranged reads, 32 threads (baseline; dir store: buffered preads, mostly page cache)", cmd(env["BREADS"]), rng(br), "", ""))
rows.append(("f. lsvd 4K rand read QD32, cache file deleted first (cold)", cmd("rm CACHE_FILE; " + env["LSVD_COLD"]), rng([x["ops_per_sec"] for x in lcold]), "", ""))
rows.append(("f. cold read IOPS ratio lsvd / backend reads", "pairs of the two rows above", rng([x["ops_per_sec"] / b for x, b in zip(lcold, br)], "{:.2f}"), "", ""))
lcoldc = [x["cpu_us_per_op"] for x in lcold]
rows.append(("f. cold: CPU us per read, lsvd / backend reads (backend_reads: process CPU less that of a run with no reads)", "same runs; no-read run: " + cmd(env["BREADS0"]), cpu_pair(lcoldc, brc), "", ""))
rows.append(("f. cold: CPU per read ratio lsvd / backend reads", "pairs of the row above", rng([a / b for a, b in zip(lcoldc, brc)], "{:.2f}"), "", ""))
rows.append(("f. cold: cache hit rate within the run (64K chunks fetched per miss)", "same bench JSON", rng([hitrate(x) for x in lcold], "{:.3f}"), "", ""))
wa = {}
for line in open(os.path.join(R, "wamp.txt")):
    m = dict(re.findall(r"(\w+)=([0-9.]+|off)", line))
    if "mode" in m:
        wa[m["mode"]] = m
for mode in ("60", "70"):
    if mode not in wa:
        continue
    m = wa[mode]
    w, se, sm = float(m["wa"]), float(m["space_end"]), float(m["space_max"])
    rows.append((f"**g. write amplification, gc_threshold {mode}** (data + GC + checkpoint bytes put / client bytes)", cmd(env["WAMP"]),
                 f"{w:.2f} (data {float(m['wa_data']):.2f}, GC {float(m['wa_gc']):.2f}, checkpoints {float(m['wa_ckpt']):.2f})", "<= 1.5", ok([w], 1.5, False)))
    rows.append((f"**g. stored bytes per live byte, gc_threshold {mode}** (end; largest sample)", "same", f"{se:.2f}; {sm:.2f}", "<= 1.3", ok([se], 1.3, False)))
    if "iops_ratio_vs_off" in m:
        r_ = float(m["iops_ratio_vs_off"])
        rows.append((f"**g. write IOPS with GC (threshold {mode}) / GC off**", "same", f"{r_:.2f} ({float(m['iops']):.0f} vs {float(wa['off']['iops']):.0f})", ">= 0.9", ok([r_], 0.9, True)))
if "off" in wa:
    rows.append(("g. GC off: stored bytes per live byte at the end", "same", f"{float(wa['off']['space_end']):.2f}", "", ""))

fs_, fsc = fio_load("fio_s", "write")
ls_ = [load(f"lsvd_s_{i}.json") for i in runs]
lsi = [x["ops_per_sec"] for x in ls_]
rows.append(("h. fio 4K rand write O_DSYNC QD1 IOPS (baseline)", cmd(env["FIO_S"]), rng(fs_), "", ""))
rows.append(("h. lsvd 4K rand FUA write QD1 IOPS", cmd(env["LSVD_S"]), rng(lsi), "", ""))
sratio = [a / b for a, b in zip(lsi, fs_)]
rows.append(("**h. FUA QD1 IOPS ratio lsvd / fio O_DSYNC**", "pairs of the two rows above", rng(sratio, "{:.2f}"), "", ""))
lsc = [x["cpu_us_per_op"] for x in ls_]
rows.append(("h. CPU us per FUA write, lsvd / fio", "same runs", cpu_pair(lsc, fsc), "", ""))
rows.append(("h. lsvd journal fdatasyncs / RWF_DSYNC records / writes", "same bench JSON",
             " ; ".join(f"{x['journal_syncs']} / {x.get('journal_dsync_writes', 0)} / {x['write_ops']}" for x in ls_), "", ""))

def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "?"
cpu = "?"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print("# Benchmarks")
print()
print(f"Generated by `scripts/bench.sh` on {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}, "
      f"git `{sh('git', 'rev-parse', '--short', 'HEAD')}`{' (dirty tree)' if sh('git', 'status', '--porcelain') else ''}.")
print()
print(f"- machine: nproc {sh('nproc')}, {cpu}, kernel {platform.release()}, "
      f"memory {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB")
print(f"- file system of the temp dir `$T`: {fstype} ({sh('df', '--output=source', T).splitlines()[-1]}); "
      f"lsvd config `{env['CFG'].replace(T, '$T')}`, image {env['IMG']} of {env['IMG_SIZE']}")
print(f"- {reps} repetitions; write runs interleaved with their fio baseline (fio, lsvd, fio, lsvd, ...), then the read runs the same way; "
      "ratios are taken per pair. Ranges are min - max (median). The machine is shared: absolute numbers are noisy, ratios less so.")
print()
print("| Metric | Command | Result | Target | Met |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
print("Notes: (a) the local directory backend shares the disk with the journal, so every client byte is written "
      "twice to the same device (journal, then object); fio writes it once. (c) reads go through the read cache "
      "(2 GiB, filled as objects are destaged and on misses), misses read objects with buffered preads that may hit "
      "the page cache, while fio reads O_DIRECT: the read ratio is not like for like; (f) is the like-for-like cache "
      "measure. CPU per operation: lsvd's is getrusage(RUSAGE_SELF) of the whole bench process over the measured phase "
      "(every thread: submitters, journal, destage, checkpoint, GC, cache fill; open and close excluded) divided by "
      "its operations; fio's comes from its JSON (usr_cpu + sys_cpu, percent of one CPU over job_runtime); neither "
      "counts the kernel's block-layer and interrupt work done outside the process. (g) runs with the default `gc_rate_bytes` (32M/s), so GC falls behind during the overwrites "
      "(largest sample) and catches up when they stop (end). (e) `Volume::open` "
      "replays the journal while the destager already puts the replayed objects, so the open time includes most "
      "of the destage; `close` then has little left to do.")
PYEOF

cat "$R/table.md"
if [[ "${NO_DOC:-0}" != 1 ]]; then
    # The hand-written sections below the table (from the first "## "
    # heading on: the guest, RADOS, GC and cache runs) are kept.
    rest=$(grep -n '^## ' "$DOC" 2>/dev/null | head -1 | cut -d: -f1 || true)
    { cat "$R/table.md"; if [[ -n "$rest" ]]; then echo; tail -n +"$rest" "$DOC"; fi; } >"$R/doc.md"
    cp "$R/doc.md" "$DOC"
    log "wrote $DOC"
fi
