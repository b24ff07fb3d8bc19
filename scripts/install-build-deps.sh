#!/usr/bin/env bash
# Install the Debian packages needed to build lsvd-ublk, if missing:
# a C toolchain, and libclang for libublk's generated bindings (bindgen).
# Extra package names given as arguments are installed the same way.
#
# Usage: scripts/install-build-deps.sh [--no-install-recommends] [PKG...]
#
# QEMU packages (qemu-*) come from the suite of the QEMU already on the
# machine: with qemu-utils 10.0 from bookworm-backports installed, a plain
# `apt-get install qemu-system-x86` takes bookworm's 7.2 and removes
# qemu-utils (qemu-io and qemu-img vanish), so they are installed with
# `-t <that suite>` instead. Every install is simulated first
# (`apt-get -s`): one that would remove an installed package is refused,
# with the list, rather than done.
set -euo pipefail
recommends=()
if [ "${1:-}" = --no-install-recommends ]; then
    recommends=(--no-install-recommends)
    shift
fi
need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done

# The suite (e.g. bookworm-backports) the installed QEMU came from, from
# `apt-cache policy`: the repository lines under the "***" (installed)
# version. Empty when no QEMU is installed or its version is in no suite.
qemu_suite() {
    local p pol
    for p in qemu-utils qemu-system-x86 qemu-system-common qemu-block-extra; do
        dpkg -s "$p" >/dev/null 2>&1 || continue
        pol=$(apt-cache policy "$p" 2>/dev/null) || continue
        awk '/^ \*\*\* /{ mine = 1; next }
             /^     [^ ]/{ mine = 0 }
             mine && $2 ~ /:\/\// { split($3, s, "/"); print s[1]; exit }' <<<"$pol"
        return
    done
}

# When the installed QEMU is a backport (version ~bpoNN) but no configured
# source has backports (a machine whose QEMU came from an image, not from
# its apt sources), the backports suite of this release, e.g.
# bookworm-backports; empty otherwise.
qemu_backports() {
    local p v codename
    for p in qemu-utils qemu-system-x86 qemu-system-common qemu-block-extra; do
        v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) || continue
        [[ $v == *~bpo[0-9]* ]] || return
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
        [ -n "$codename" ] && echo "$codename-backports"
        return
    done
}

# Add SUITE (a backports suite) to apt's sources. Backports are never
# installed unless asked for with -t, so nothing else on the machine moves.
add_backports_source() {
    local f=/etc/apt/sources.list.d/lsvd-$1.sources
    [ -e "$f" ] && return
    echo "== adding $1 to apt's sources ($f) for QEMU"
    cat >"$f" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $1
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
}

# apt_install [-t SUITE] PKG...: simulate, refuse removals, then install.
apt_install() {
    local target=() sim removed
    if [ "$1" = -t ]; then target=(-t "$2"); shift 2; fi
    sim=$(apt-get -s install -y "${recommends[@]}" "${target[@]}" "$@" 2>&1) || {
        echo "$sim" >&2
        echo "install-build-deps: apt cannot install $* ${target[*]}" >&2
        exit 1
    }
    removed=$(sed -n 's/^Remv \([^ ]*\).*/\1/p' <<<"$sim" | tr '\n' ' ')
    if [ -n "$removed" ]; then
        echo "install-build-deps: installing $* ${target[*]} would remove: $removed" >&2
        echo "install-build-deps: refusing; install them by hand from a suite that keeps these" >&2
        exit 1
    fi
    apt-get install -y -qq "${recommends[@]}" "${target[@]}" "$@"
}

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    qemu=() other=()
    for p in "${need_apt[@]}"; do
        case "$p" in qemu-*) qemu+=("$p") ;; *) other+=("$p") ;; esac
    done
    [ ${#other[@]} -gt 0 ] && apt_install "${other[@]}"
    if [ ${#qemu[@]} -gt 0 ]; then
        suite=$(qemu_suite)
        if [ -z "$suite" ]; then
            suite=$(qemu_backports)
            [ -n "$suite" ] && add_backports_source "$suite"
        fi
        if [ -n "$suite" ]; then
            echo "== ${qemu[*]} from $suite (where the installed QEMU comes from)"
            apt_install -t "$suite" "${qemu[@]}"
        else
            apt_install "${qemu[@]}"
        fi
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (install Rust with rustup: https://rustup.rs)" >&2
    exit 1
fi
