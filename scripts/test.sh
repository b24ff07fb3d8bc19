#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run) and what a newcomer runs on a
# fresh Debian machine. Installs what it needs, then runs, in order:
#   1. formatting and lints,
#   2. the default `cargo test` suite (unit, integration, property tests),
#   3. every fuzz target (scripts/fuzz.sh, fuzz/) for LSVD_FUZZ_SECONDS
#      each (default 20),
#   3b. the crash tester (lsvd-crash-test) for a bounded number of iterations,
#      plain kills, journal wipes and lost objects, with a slow backend,
#      power cuts (--power-loss: what no flush covered lost or torn), also
#      with a slow backend and with GC on one image,
#      then with aggressive garbage collection (--gc: store size bounded,
#      with journal wipes and lost objects too) and a crash at every step
#      of a GC cycle (tests/gc_failpoints.rs),
#   4. the property test with more cases, in release mode,
#   5. the NBD export against real clients (scripts/nbd-test.sh: nbdinfo,
#      qemu-io and qemu-img compare, fio --ioengine=nbd with verify, and
#      ext4 through nbdfuse and a loop device across a kill -9 of the
#      server),
#   6. the RADOS backend against a single-node Ceph cluster built here
#      (scripts/ceph-test-cluster.sh; stopped again on exit, also on
#      failure): the backend conformance suite, fencing, faults (OSD
#      stopped mid-run, full cluster, bad configuration), the crash tester
#      and the property test, with bounded iterations,
#   7. the block device in a real kernel: a QEMU guest (TCG) boots Debian's
#      6.12 backports kernel with ublk and runs scripts/vm/scenarios/, then
#      the same on the newest 7.x kernel the Debian mirror has (live resize
#      with UPDATE_SIZE); an unreachable mirror with no cached 7.x kernel
#      fails the run (tests/vm.rs runs scripts/vm-test.sh once per kernel;
#      it fetches and caches the kernels with a private apt configuration
#      and installs qemu, busybox, fio, nvme-cli, e2fsprogs if missing).
# Knobs: LSVD_FUZZ_SECONDS (default 20), LSVD_CRASH_ITERATIONS (default 300), LSVD_POWER_CRASH_ITERATIONS (default 100),
# LSVD_PROPTEST_CASES (default 256),
# LSVD_GC_CRASH_ITERATIONS (default 150), LSVD_RADOS_CRASH_ITERATIONS (default 40),
# LSVD_PROPTEST_RADOS_CASES (default 64).
# LSVD_VM_KERNELS (default 6.12.95+deb12-amd64,7: the guest kernels).
# One guest scenario alone: scripts/vm-test.sh [--kernel 7] --scenario NAME.
set -euo pipefail
cd "$(dirname "$0")/.."

# A C toolchain and libclang (libublk's bindgen), librados-dev (the rados
# feature links librados), and systemd for systemd-analyze (tests/systemd.rs).
bash scripts/install-build-deps.sh systemd librados-dev

# Test data must live on a real file system: the journal uses O_DIRECT and
# tmpfs would hide alignment bugs.
export TMPDIR="${TMPDIR:-/tmp}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
echo "== cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings

echo "== cargo test"
cargo test --all-features 2>&1 | tee /tmp/lsvd-cargo-test.log
grep -q "test result: FAILED" /tmp/lsvd-cargo-test.log && exit 1

echo "== fuzzing (scripts/fuzz.sh: every target for a bounded time)"
bash scripts/fuzz.sh "${LSVD_FUZZ_SECONDS:-20}"

echo "== crash tester"
cargo build --release --features rados --bin lsvd-crash-test
iters="${LSVD_CRASH_ITERATIONS:-300}"
crash=target/release/lsvd-crash-test
"$crash" --iterations "$iters" --seed 1 --quiet
"$crash" --iterations $((iters / 3)) --seed 2 --wipe-journal-every 2 --quiet
"$crash" --iterations $((iters / 3)) --seed 3 --lose-objects 2 --lose-objects-every 3 --quiet
"$crash" --iterations $((iters / 3)) --seed 4 --backend-delay 5 --quiet
"$crash" --iterations $((iters / 3)) --seed 5 --lane --quiet

echo "== crash tester with power cuts (lsvd::powercut: unflushed writes and directory changes lost or torn)"
power_iters="${LSVD_POWER_CRASH_ITERATIONS:-100}"
"$crash" --power-loss --iterations "$power_iters" --seed 10 --quiet
"$crash" --power-loss --iterations $((power_iters / 2)) --seed 11 --backend-delay 5 --quiet
# The journal driven from the writer's own ring (a lane, as a ublk queue does).
"$crash" --power-loss --lane --iterations $((power_iters / 2)) --seed 13 --quiet
# Several cuts in a row on one image, with GC collecting between them.
"$crash" --power-loss --gc --iterations $((power_iters / 2)) --seed 12 --fresh-every 0 \
    --max-stored-ratio 8 --quiet

echo "== crash tester with aggressive garbage collection"
gc_iters="${LSVD_GC_CRASH_ITERATIONS:-150}"
# One image for the whole run: GC must keep the store bounded.
"$crash" --gc --iterations "$gc_iters" --seed 7 --fresh-every 0 --max-stored-ratio 8 --quiet
"$crash" --gc --iterations $((gc_iters / 3)) --seed 8 --fresh-every 0 --max-stored-ratio 8 \
    --wipe-journal-every 5 --lose-objects 1 --lose-objects-every 7 --quiet
echo "== a crash at every step of a GC cycle"
cargo test --release --test gc_failpoints -- --ignored --nocapture

echo "== property test, more cases"
LSVD_PROPTEST_CASES="${LSVD_PROPTEST_CASES:-256}" cargo test --release --test proptest_oracle

echo "== NBD export with real clients"
bash scripts/nbd-test.sh

echo "== RADOS backend on a single-node Ceph test cluster"
ceph_dir="$TMPDIR/lsvd-ceph-test"
# Stop our cluster whatever happens from here (the script kills only the
# daemons named by its own pid files).
trap 'bash scripts/ceph-test-cluster.sh stop "$ceph_dir" || true' EXIT
bash scripts/ceph-test-cluster.sh start "$ceph_dir"
eval "$(bash scripts/ceph-test-cluster.sh env "$ceph_dir")"
cargo test --release --features rados --test backend_conformance --test rados_fencing \
    --test rados --test crash_test -- --ignored --nocapture --test-threads 1
cargo build --release --features rados --bin lsvd-crash-test
rados_iters="${LSVD_RADOS_CRASH_ITERATIONS:-40}"
"$crash" --backend rados --iterations "$rados_iters" --seed 5 --quiet
"$crash" --backend rados --iterations $((rados_iters / 2)) --seed 6 --lose-objects 2 \
    --lose-objects-every 3 --quiet
"$crash" --backend rados --gc --iterations $((rados_iters / 2)) --seed 9 --fresh-every 0 \
    --max-stored-ratio 8 --quiet
LSVD_PROPTEST_RADOS_CASES="${LSVD_PROPTEST_RADOS_CASES:-64}" \
    cargo test --release --features rados --test proptest_oracle -- --ignored --nocapture \
    proptest_rados
bash scripts/ceph-test-cluster.sh stop "$ceph_dir"
trap - EXIT

echo "== block device in a QEMU guest (real kernel with ublk)"
cargo test --release --test vm -- --ignored --nocapture

echo "== a RADOS image in a QEMU guest (Ceph inside the guest: scripts/vm-test.sh --rados)"
# The default guest kernel only (about 3-6 minutes under TCG): the
# scenarios exercise the RADOS backend under a real kernel, not the kernel.
LSVD_VM_QUIET=1 bash scripts/vm-test.sh --rados

echo "== all tests passed"
