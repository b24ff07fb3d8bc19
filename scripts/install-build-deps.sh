#!/usr/bin/env bash
# Install the Debian packages needed to build lsvd-ublk, if missing:
# a C toolchain, and libclang for libublk's generated bindings (bindgen).
# Extra package names given as arguments are installed the same way.
set -euo pipefail
need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (install Rust with rustup: https://rustup.rs)" >&2
    exit 1
fi
