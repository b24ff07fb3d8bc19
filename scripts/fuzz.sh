#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/) for a bounded time each:
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 20 s, every target; LSVD_FUZZ_SECONDS also sets the time).
# Installs cargo-fuzz (from crates.io) if missing; needs the nightly
# toolchain. The corpus of each target starts from fuzz/seeds/TARGET and
# valid encodings (tests/data/, the golden vectors of src/format/) and grows
# in fuzz/corpus/TARGET (not committed). A crash leaves its input in
# fuzz/artifacts/TARGET and fails the run; turn it into a unit test.
#
# The bounds every target runs under: no input longer than 256 KiB, no
# single allocation over 64 MiB (-malloc_limit_mb), at most 2 GiB of RSS,
# no input that takes over 10 s (-timeout): each of these counts as a
# failure, like a panic.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-${LSVD_FUZZ_SECONDS:-20}}"
shift || true

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain (cargo fuzz needs it)"
    rustup toolchain install nightly --profile minimal || {
        echo "fuzz: no nightly toolchain and rustup could not install one" >&2
        exit 1
    }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

# Seeds: the committed ones, plus the golden vectors (with the selector
# byte the journal and read-cache targets read first).
seed() { # TARGET FILE [PREFIX_HEX]
    local dir=fuzz/corpus/$1 out
    mkdir -p "$dir"
    out="$dir/seed-$(basename "$2")"
    if [ -n "${3:-}" ]; then
        { printf "$3"; cat "$2"; } > "$out"
    else
        cp "$2" "$out"
    fi
}
for t in fuzz/seeds/*/; do
    t=$(basename "$t")
    for f in fuzz/seeds/$t/*; do seed "$t" "$f"; done
done
for f in tests/data/superblock-*.bin tests/data/hwm-*.bin tests/data/pool-*.bin; do seed format_superblock "$f"; done
for f in tests/data/object-*.bin; do seed format_object "$f"; done
for f in tests/data/gcobject-*.bin; do seed format_gcobject "$f"; done
for f in tests/data/checkpoint-*.bin; do seed format_checkpoint "$f"; done
for f in tests/data/journal-super-*.bin; do seed format_journal "$f" '\x00'; done
# Generation 99 (odd: a record) is the golden records' generation.
for f in tests/data/journal-record-*.bin; do seed format_journal "$f" '\x63'; done
seed format_rcache tests/data/rcache-super-v2.bin '\x00'
# Index block 7 of generation 3 under the golden superblock's cache UUID.
uuid_hex=$(od -An -tx1 -j16 -N16 tests/data/rcache-super-v2.bin | tr -d ' \n' | sed 's/../\\x&/g')
seed format_rcache tests/data/rcache-index-v1.bin \
    "\\x01${uuid_hex}\\x03\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x07\\x00\\x00\\x00"

echo "== fuzz: building ${#targets[@]} targets (debug assertions on)"
# (`cargo fuzz build` takes one target or none: build them all.)
(cd fuzz && cargo +nightly fuzz build -O -a 2>&1 | tail -3)
fail=0
for t in "${targets[@]}"; do
    echo "== fuzz: $t for ${secs}s"
    # (A target with no seeds starts from an empty corpus.)
    mkdir -p "fuzz/corpus/$t"
    log=$(mktemp)
    if (cd fuzz && cargo +nightly fuzz run -O -a "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=262144 -malloc_limit_mb=64 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1) > "$log" 2>&1; then
        grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov: " "$log" | tail -3 |
            sed "s/^/   $t: /"
    else
        fail=1
        tail -40 "$log"
        echo "FAIL fuzz $t: see fuzz/artifacts/$t" >&2
    fi
    rm -f "$log"
done
exit $fail
