#!/usr/bin/env bash
# Boot a QEMU guest (TCG, no KVM) with a ublk-capable Debian kernel and run the
# lsvd-ublk guest scenarios from scripts/vm/scenarios/ inside it.
#
# Usage: scripts/vm-test.sh [--kernel K] [--binary PATH] [--scenario NAME ...] [--rados] [--keep]
#   --kernel K       the guest kernel (overrides LSVD_VM_KERNEL, below):
#                    a Debian kernel version, e.g. 6.12.95+deb12-amd64 or
#                    7.3.4+deb13-amd64 (if the mirror no longer has it, the
#                    newest of its series, e.g. 6.12.*+deb12-amd64), or a
#                    series, e.g. 7 or 7.3: the newest such kernel the
#                    mirror has (bookworm-backports, trixie-backports, sid).
#                    Debian 12's own kernel, e.g. 6.1.0-57-amd64 (from
#                    bookworm, bookworm-security), boots too, although it
#                    has no ublk: only the `kernel` scenario, which expects
#                    `attach` to fail clearly there, passes on it.
#                    For a series the mirror is always asked; if it cannot
#                    be reached the newest cached kernel of the series is
#                    used (with a warning), and with none cached the run
#                    fails. Kernels are fetched with a private apt
#                    configuration under LSVD_VM_CACHE (the host's apt
#                    sources are left alone), unpacked, never installed.
#   --binary PATH    lsvd-ublk binary to test (default: build it with
#                    `cargo build --release --bin lsvd-ublk`)
#   --scenario NAME  run only this scenario (repeatable). NAME is the part of
#                    scripts/vm/scenarios/NN-NAME.sh after the number, e.g.
#                    smoke, fs, measure-virtio. Default: all scenarios
#                    except the rados-* ones (which need --rados).
#   --rados          RADOS in the guest: share the host's root file system
#                    read-only into the guest over virtio-9p (tag hostroot),
#                    chroot into it (with the guest's /data, /tmp, /run,
#                    /dev, /proc and /sys bound in) and run a single-node
#                    Ceph cluster there (scripts/ceph-test-cluster.sh, mon
#                    and OSD on the guest's own loopback; the guest still
#                    has no network device). Default scenarios: the
#                    rados-* ones. The binary must be built with
#                    `--features rados` (the default build here then is).
#                    Naming a rados-* scenario implies --rados.
#   --keep           keep the guest log (and disk images) even on success
#
# Environment knobs:
#   LSVD_VM_TIMEOUT           overall bound on the QEMU run, seconds (default 720;
#                             1200 with --rados)
#   LSVD_VM_SCENARIO_TIMEOUT  per-scenario bound inside the guest (default 240)
#   LSVD_VM_CACHE             kernel/.deb/apt cache dir (default /var/cache/lsvd-vm)
#   LSVD_VM_KERNEL            the guest kernel, as --kernel (default
#                             6.12.95+deb12-amd64); tests/vm.rs runs every
#                             kernel in LSVD_VM_KERNELS instead
#   LSVD_VM_DISK_SIZE         size of each (sparse) virtio disk (default 8G)
#   LSVD_VM_MEM               guest memory (default 1G; 2G with --rados)
#   LSVD_VM_RADOS=1           as --rados
#   LSVD_VM_CEPH_STORE        the guest cluster's objectstore: bluestore
#                             (default) or memstore
#   LSVD_VM_LOG=debug         LSVD_LOG level for lsvd-ublk in the guest (default warn)
#   LSVD_VM_QUIET=1           do not echo the guest console while it runs
#   LSVD_VM_EXTRA="P1 P2"     extra host programs to put in the guest's
#                             /usr/bin (with their libraries), e.g. debug tools
#
# Host packages it needs (qemu-system-x86, busybox-static, e2fsprogs, fio,
# nvme-cli, cpio, xz-utils) are installed through scripts/install-build-deps.sh when
# missing: QEMU from the suite the installed QEMU comes from, and nothing
# is ever removed.
#
# Exit status: 0 only if the guest printed "VM-RESULT: PASS" and no FAIL line.
set -euo pipefail

start_time=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

binary=""
kernel_arg=""
scenarios=()
keep=0
rados=${LSVD_VM_RADOS:-0}
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --binary=*) binary=${1#--binary=}; shift ;;
        --kernel) kernel_arg=$2; shift 2 ;;
        --kernel=*) kernel_arg=${1#--kernel=}; shift ;;
        --scenario) scenarios+=("$2"); shift 2 ;;
        --scenario=*) scenarios+=("${1#--scenario=}"); shift ;;
        --keep) keep=1; shift ;;
        --rados) rados=1; shift ;;
        -h|--help) sed -n '2,56p' "$0"; exit 0 ;;
        *) echo "vm-test: unknown argument: $1" >&2; exit 2 ;;
    esac
done

vm_timeout=${LSVD_VM_TIMEOUT:-720}
scenario_timeout=${LSVD_VM_SCENARIO_TIMEOUT:-240}
cache=${LSVD_VM_CACHE:-/var/cache/lsvd-vm}
kernel_arg=${kernel_arg:-${LSVD_VM_KERNEL:-6.12.95+deb12-amd64}}
disk_size=${LSVD_VM_DISK_SIZE:-8G}
for n in "${scenarios[@]}"; do
    case "$n" in rados-*) rados=1 ;; esac
done
if [ "$rados" = 1 ]; then
    # The cluster's daemons need memory, and starting them takes 40-90 s.
    mem=${LSVD_VM_MEM:-2G}
    vm_timeout=${LSVD_VM_TIMEOUT:-1200}
else
    mem=${LSVD_VM_MEM:-1G}
fi
target_dir=${CARGO_TARGET_DIR:-$repo/target}
vm_dir=$target_dir/vm

log() { echo "== vm-test: $*" >&2; }
die() { echo "vm-test: error: $*" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - start_time )); }

# ---------------------------------------------------------------------------
# 1. Host packages. Only install what is missing (CI starts from a fresh box).
# ---------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
# busybox-static specifically: a dynamic busybox would need its libs too.
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v mke2fs >/dev/null 2>&1 || need+=(e2fsprogs)
command -v fio >/dev/null 2>&1 || need+=(fio)
# nvme-cli: the initiator of the nvmf scenario (nvme connect/disconnect).
command -v nvme >/dev/null 2>&1 || need+=(nvme-cli)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
# util-linux's flock serialises runs that share the kernel cache.
command -v flock >/dev/null 2>&1 || need+=(util-linux)
# dpkg-deb unpacks the kernel .debs; apt fetches them.
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb is required (a Debian host)"
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    # QEMU from the suite of the QEMU already here (qemu-utils 10.0 from
    # bookworm-backports must not be replaced by bookworm's 7.2, which
    # would take qemu-io and qemu-img away); nothing is ever removed.
    bash scripts/install-build-deps.sh --no-install-recommends "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------
# 2. Kernel, chosen by --kernel / LSVD_VM_KERNEL, never installed on the
#    host. Debian packages it two ways: 6.12 (bookworm-backports) as one
#    linux-image-VER .deb with boot/vmlinuz-VER and lib/modules/VER; 7.x
#    (trixie-backports, sid) as a linux-image-VER meta package over
#    linux-binary-VER (usr/lib/modules/VER/vmlinuz) and linux-modules-VER.
#    Whichever it is, the .debs are fetched with a private apt
#    configuration (its own sources list, indexes and cache under
#    $cache/apt: the host's apt sources are not touched) and unpacked with
#    dpkg-deb -x into $cache/kernel-VER, so later runs need no network.
# ---------------------------------------------------------------------------
mkdir -p "$cache/debs"
if [[ $kernel_arg =~ ^([0-9]+)\.([0-9]+)\.[0-9]+\+deb([0-9]+)-amd64$ ]]; then
    # An exact version; another of its series if that one is gone.
    want_newest=0
    preferred_kernel=$kernel_arg
    kernel_pattern="^${BASH_REMATCH[1]}\\.${BASH_REMATCH[2]}\\.[0-9]+\\+deb${BASH_REMATCH[3]}-amd64\$"
    series="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.*+deb${BASH_REMATCH[3]}-amd64"
elif [[ $kernel_arg =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    # A series ("7", "7.3"): the newest of it that the mirror has.
    want_newest=1
    preferred_kernel=""
    kernel_pattern="^${kernel_arg//./\\.}\\.[0-9]+(\\.[0-9]+)?\\+deb[0-9]+-amd64\$"
    series="$kernel_arg.*+debN-amd64"
elif [[ $kernel_arg =~ ^([0-9]+)\.([0-9]+)\.[0-9]+-[0-9]+-amd64$ ]]; then
    # Debian 12's own kernel (6.1.0-N-amd64: an ABI number, not +debN),
    # from bookworm and bookworm-security. It is built without ublk
    # (CONFIG_BLK_DEV_UBLK unset), so the guest boots without the driver:
    # what `attach` says on a kernel without it (the `kernel` scenario).
    want_newest=0
    stable_kernel=1
    preferred_kernel=$kernel_arg
    kernel_pattern="^${BASH_REMATCH[1]}\\.${BASH_REMATCH[2]}\\.[0-9]+-[0-9]+-amd64\$"
    series="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.*-N-amd64"
else
    die "--kernel/LSVD_VM_KERNEL '$kernel_arg': want a version like 6.12.95+deb12-amd64 or 6.1.0-57-amd64, or a series like 7 (the newest 7.x)"
fi
stable_kernel=${stable_kernel:-0}

# Newest cached, fully extracted kernel of the series (the preferred one
# first, when given).
pick_cached_kernel() {
    if [ -n "$preferred_kernel" ] && [ -f "$cache/kernel-$preferred_kernel/.complete" ]; then
        echo "$preferred_kernel"; return
    fi
    local d v
    for d in "$cache"/kernel-*/; do
        [ -f "$d/.complete" ] || continue
        v=$(basename "$d"); v=${v#kernel-}
        # Not `[[ ]] && echo`: a last kernel of another series would make
        # the loop, and under pipefail `kver=$(pick_cached_kernel)`, fail
        # and end the script without a word.
        if [[ $v =~ $kernel_pattern ]]; then echo "$v"; fi
    done | sort -V | tail -1
}

# The private apt configuration. Suites: bookworm-backports (6.12),
# trixie-backports (7.3) and sid (7.2 and whatever is newest); all signed
# by keys in Debian's archive keyring. No preferences or default release
# from the host: the newest version wins.
apt_dir=$cache/apt
apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list"
    -o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
    -o "Dir::Etc::preferences=$apt_dir/preferences"
    -o "Dir::Etc::preferencesparts=$apt_dir/preferences.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Default-Release="
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false")
kapt_setup() {
    mkdir -p "$apt_dir"/{sources.list.d,preferences.d,lists/partial,cache/archives/partial}
    : >"$apt_dir/status"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg s
    [ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
    {
        for s in bookworm-backports trixie-backports sid; do
            echo "deb [signed-by=$keyring] http://deb.debian.org/debian $s main"
        done
        if [ "$stable_kernel" = 1 ]; then
            echo "deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main"
            echo "deb [signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main"
        fi
    } >"$apt_dir/sources.list"
}

# Whether the private apt can download package $1. The policy text is
# captured first: piping it into `grep -q` under pipefail fails at random
# when grep exits early and apt-cache dies of SIGPIPE.
has_candidate() {
    local policy
    policy=$(apt-cache "${apt_opts[@]}" policy "$1" 2>/dev/null) || return 1
    [[ $policy == *"Candidate: "[0-9]* ]]
}

# Kernel versions of the series the private indexes offer, newest first
# (pkgnames also lists names without a candidate, hence the policy check).
offered_kernels() {
    local v prefix=${kernel_arg%%.*}
    for v in $(apt-cache "${apt_opts[@]}" pkgnames "linux-image-$prefix" 2>/dev/null |
        sed 's/^linux-image-//' | grep -E "$kernel_pattern" | sort -rV); do
        has_candidate "linux-image-$v" && echo "$v"
    done
}

# Refresh the private indexes and print the version to use: the preferred
# one, else the newest of the series. apt-get update exits 0 even when an
# index failed to download (a warning): retry a few times; print nothing
# (and leave the update output in $kapt_log) if there is none.
kapt_log=$cache/apt/update.log
kapt_choose() {
    local attempt ver
    for attempt in 1 2 3; do
        apt-get "${apt_opts[@]}" update >"$kapt_log" 2>&1 || true
        grep -qE '^(W|E): Failed to fetch' "$kapt_log" &&
            log "WARNING: apt-get update could not fetch every index (the mirror is unreachable?); indexes from an earlier run are used where there are any"
        if [ -n "$preferred_kernel" ] && has_candidate "linux-image-$preferred_kernel"; then
            echo "$preferred_kernel"; return
        fi
        ver=$(offered_kernels | head -1)
        [ -n "$ver" ] && { echo "$ver"; return; }
        log "no $series kernel package in the apt indexes (attempt $attempt); updating again"
        sleep $((attempt * 5))
    done
}

# The .debs of kernel $1 in $cache/debs (newest build of each name).
kernel_debs() {
    local name deb
    for name in linux-image linux-binary linux-modules; do
        deb=$(ls "$cache/debs/$name-${1}_"*.deb 2>/dev/null | sort -V | tail -1 || true)
        [ -n "$deb" ] && echo "$deb"
    done
}

kernel_download() {
    local ver=$1 pkgs
    # 7.x: the image is a meta package; the kernel and modules are in
    # linux-binary-VER and linux-modules-VER.
    if has_candidate "linux-binary-$ver"; then
        pkgs=("linux-binary-$ver" "linux-modules-$ver")
    else
        pkgs=("linux-image-$ver")
    fi
    log "downloading ${pkgs[*]}"
    # apt-get download as root warns that _apt cannot write here; harmless.
    (cd "$cache/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}" 2>&1 |
        grep -v '^W: Download is performed unsandboxed' || true)
    local p
    for p in "${pkgs[@]}"; do
        ls "$cache/debs/${p}_"*.deb >/dev/null 2>&1 || { log "apt-get download $p produced no .deb"; return 1; }
    done
}

# Paths inside an extracted kernel $1 (either layout).
kernel_vmlinuz() {
    local r=$cache/kernel-$1 f
    for f in "$r/boot/vmlinuz-$1" "$r/usr/lib/modules/$1/vmlinuz"; do
        [ -f "$f" ] && { echo "$f"; return; }
    done
}
kernel_mods() {
    local r=$cache/kernel-$1 d
    for d in "$r/lib/modules/$1/kernel" "$r/usr/lib/modules/$1/kernel"; do
        [ -d "$d" ] && { echo "$d"; return; }
    done
}

extract_kernel() {
    local ver=$1 out="$cache/kernel-$1" deb debs
    mapfile -t debs < <(kernel_debs "$ver")
    [ ${#debs[@]} -gt 0 ] || die "no cached .deb for kernel $ver"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    for deb in "${debs[@]}"; do
        log "extracting $(basename "$deb")"
        dpkg-deb -x "$deb" "$out.tmp"
    done
    rm -rf "$out" && mv "$out.tmp" "$out"
    [ -n "$(kernel_vmlinuz "$ver")" ] || die "no vmlinuz for $ver in ${debs[*]}"
    if [ -z "$(find "$(kernel_mods "$ver")/drivers/block" -name 'ublk_drv.ko*' 2>/dev/null)" ]; then
        [ "$stable_kernel" = 1 ] || die "the $ver packages have no ublk_drv module"
        log "the $ver packages have no ublk_drv module: the guest runs without ublk"
    fi
    touch "$out/.complete"
}

# One run at a time fetches or unpacks (runs may share the cache).
exec 9>"$cache/.lock"
flock 9
kver=""
if [ "$want_newest" = 1 ]; then
    kapt_setup
    kver=$(kapt_choose)
    # Indexes kept from an earlier run may name a kernel the mirror cannot
    # deliver now: then a cached one will do.
    if [ -n "$kver" ] && [ ! -f "$cache/kernel-$kver/.complete" ] &&
        [ -z "$(kernel_debs "$kver")" ] && ! kernel_download "$kver"; then
        kver=""
    fi
    if [ -z "$kver" ]; then
        kver=$(pick_cached_kernel)
        [ -n "$kver" ] || {
            cat "$kapt_log" >&2
            die "cannot fetch a $series kernel (apt-get update output above: is deb.debian.org reachable?) and none is cached under $cache"
        }
        log "WARNING: cannot fetch a $series kernel from the mirror; using the newest cached one, $kver"
    fi
else
    kver=$(pick_cached_kernel)
    if [ -z "$kver" ] && [ -n "$preferred_kernel" ] && [ -n "$(kernel_debs "$preferred_kernel")" ]; then
        kver=$preferred_kernel   # .debs cached, extraction interrupted
    fi
    if [ -z "$kver" ]; then
        kapt_setup
        kver=$(kapt_choose)
        [ -n "$kver" ] || {
            cat "$kapt_log" >&2
            die "no $series kernel package available from apt (apt-get update output above)"
        }
    fi
fi
if [ ! -f "$cache/kernel-$kver/.complete" ]; then
    [ -n "$(kernel_debs "$kver")" ] || kernel_download "$kver" || die "cannot download kernel $kver"
    extract_kernel "$kver"
fi
flock -u 9
kroot=$cache/kernel-$kver
vmlinuz=$(kernel_vmlinuz "$kver")
kmods=$(kernel_mods "$kver")
log "kernel $kver ($(elapsed)s)"

# ---------------------------------------------------------------------------
# 3. The binary under test.
# ---------------------------------------------------------------------------
if [ -z "$binary" ]; then
    features=()
    [ "$rados" = 1 ] && features=(--features rados)
    log "cargo build --release ${features[*]} --bin lsvd-ublk"
    cargo build --release "${features[@]}" --bin lsvd-ublk
    binary=$target_dir/release/lsvd-ublk
fi
[ -x "$binary" ] || die "binary not found or not executable: $binary"
binary=$(readlink -f "$binary")
# (ldd's output into a variable first: `grep -q` closing the pipe early
# would fail the pipeline under pipefail.)
if [ "$rados" = 1 ] && [[ $(ldd "$binary") != *librados* ]]; then
    die "--rados: $binary does not link librados (build it with --features rados)"
fi
# The guest runs the host's ceph (read-only through 9p): it must be here.
if [ "$rados" = 1 ]; then
    for p in ceph-mon ceph-osd ceph rados; do
        command -v $p >/dev/null 2>&1 ||
            die "--rados: no $p on the host; the guest uses the host's ceph (install ceph-mon ceph-osd ceph-common, e.g. by running scripts/ceph-test-cluster.sh start once)"
    done
fi

# ---------------------------------------------------------------------------
# 4. The initramfs: busybox + our binary + e2fsprogs + fio + modules + scripts.
# ---------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/lsvd-vm.XXXXXX")
cleanup() {
    if [ "$keep" = 1 ]; then log "kept work dir $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,lib/modules,etc,proc,sys,dev,tmp,run,data,mnt,root,usr/local/etc}

# busybox applets as symlinks (busybox --list-full gives paths like usr/bin/awk).
cp /bin/busybox "$root/bin/busybox"
# Applet symlinks point at the absolute path /bin/busybox, i.e. at the HOST
# busybox while we build: never write through them (see copy_with_libs).
for applet in $(/bin/busybox --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

# Copy a dynamically linked program plus every library ldd reports, at the
# same paths, so the loader finds them without an ld.so.cache.
copy_with_libs() {
    local prog=$1 dest=$2 lib
    mkdir -p "$root/$(dirname "$dest")"
    # --remove-destination: $dest may be a busybox applet symlink pointing
    # at the absolute /bin/busybox; copying through it would overwrite the
    # HOST's busybox.
    cp -L --remove-destination "$prog" "$root/$dest"
    for lib in $(ldd "$prog" | awk '/=> \//{print $3} /^\t\//{print $1}'); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L --remove-destination "$lib" "$root$lib"
    done
}
if [ "$rados" = 1 ]; then
    # The rados build links librados and its dozens of libraries: in the
    # initramfs only the binary; it runs in the chroot into the host's root
    # (see scripts/vm/hostroot.sh), which has every library at its path;
    # hostroot.sh puts wrappers for it in /usr/bin.
    mkdir -p "$root/usr/local/lsvd"
    cp -L "$binary" "$root/usr/local/lsvd/lsvd-ublk"
    strip --strip-debug "$root/usr/local/lsvd/lsvd-ublk" 2>/dev/null || true
else
    copy_with_libs "$binary" /usr/bin/lsvd-ublk
fi
# Release builds carry debug info (tens of MB); the guest does not need it.
[ -f "$root/usr/bin/lsvd-ublk" ] && strip --strip-debug "$root/usr/bin/lsvd-ublk" 2>/dev/null || true
for prog in mke2fs e2fsck; do
    copy_with_libs "$(command -v $prog)" "/sbin/$prog"
done
# mkfs.ext4 / fsck.ext4 are mke2fs / e2fsck under another name (argv[0]).
rm -f "$root/sbin/mkfs.ext4" "$root/sbin/fsck.ext4"
ln -s mke2fs "$root/sbin/mkfs.ext4"
ln -s e2fsck "$root/sbin/fsck.ext4"
copy_with_libs "$(command -v fio)" /usr/bin/fio
copy_with_libs "$(command -v nvme)" /usr/sbin/nvme
# util-linux blkdiscard: unlike busybox's it has -z (BLKZEROOUT, which the
# block layer sends as WRITE_ZEROES to a device that supports it).
copy_with_libs "$(command -v blkdiscard || echo /usr/sbin/blkdiscard)" /usr/bin/blkdiscard-util-linux
for prog in ${LSVD_VM_EXTRA:-}; do
    [ -x "$prog" ] || die "LSVD_VM_EXTRA: $prog is not an executable"
    copy_with_libs "$prog" "/usr/bin/$(basename "$prog")"
done
# mke2fs reads /etc/mke2fs.conf for the ext4 feature set.
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"

# Kernel modules: resolve "depends=" (and softdep "pre:") from each module's
# .modinfo section directly -- the .debs ship no modules.dep and the host may
# have no kmod. Output is dependency-first, each module once. Names differ
# between kernels (6.12's crc32c_generic is 7.x's crc32c-cryptoapi, whose
# alias is crypto-crc32c), so a name that is no file name is looked up in
# an index of every module's name= and alias= lines, built on first need
# and kept beside the extracted kernel.
mod_index=$kroot/.module-index
find_module() {
    local name=${1//-/_} f
    for f in "$name" "${name#crypto_}" "${name#crypto_}_generic"; do
        f=$(find "$kmods" \( -name "$f.ko.xz" -o -name "$f.ko" \) | head -1)
        [ -n "$f" ] && { echo "$f"; return; }
    done
    if [ ! -f "$mod_index" ]; then
        log "indexing the module aliases of $kver (once)"
        find "$kmods" -name '*.ko*' | while read -r f; do
            xz -dcf "$f" | tr '\0' '\n' | grep -a -E '^(name|alias)=' |
                sed 's/^[a-z]*=//; s/-/_/g' | sed "s|\$| ${f#"$kmods"/}|"
        done >"$mod_index.tmp.$$"
        mv "$mod_index.tmp.$$" "$mod_index"
    fi
    f=$(awk -v n="$name" '$1 == n { print $2; exit }' "$mod_index")
    # Status 0 also when there is none: `f=$(find_module ...)` under set -e
    # would end the script at a soft dependency no module provides.
    if [ -n "$f" ]; then echo "$kmods/$f"; fi
}
declare -A mod_seen=()
mod_order=()
# resolve_module NAME [soft]: a soft dependency that no module provides is
# built in or gone (modprobe skips those too); a hard one is an error.
resolve_module() {
    local name=$1 soft=${2:-} f info dep
    [ -n "${mod_seen[$name]:-}" ] && return
    mod_seen[$name]=1
    f=$(find_module "$name")
    if [ -z "$f" ]; then
        [ -n "$soft" ] && { log "soft dependency $name: no module (built in?)"; return; }
        die "kernel module $name not found under $kmods"
    fi
    # Several names (crc32c, crypto-crc32c, crc32c_generic) can be one file.
    [ -n "${mod_seen[$f]:-}" ] && return
    mod_seen[$f]=1
    info=$(xz -dcf "$f" | tr '\0' '\n' | grep -a -E '^(depends|softdep)=' || true)
    for dep in $(echo "$info" | sed -n 's/^softdep=.*pre: *//p' | sed 's/ post:.*//'); do
        resolve_module "$dep" soft
    done
    for dep in $(echo "$info" | sed -n 's/^depends=//p' | tr ',' ' '); do
        resolve_module "$dep"
    done
    mod_order+=("$f")
}
# virtio_blk is a module in Debian's kernels (virtio and virtio_pci are
# built in, but modules in 6.1); ext4's crc32c comes in as a softdep of ext4
# (6.12) or jbd2 (7.x). Debian 12's own 6.1 has no ublk_drv at all.
resolve_module virtio_pci soft
for m in virtio_blk ext4; do resolve_module "$m"; done
# --rados: the host's root over virtio-9p (9p pulls in 9pnet and netfs).
if [ "$rados" = 1 ]; then for m in 9pnet_virtio 9p; do resolve_module "$m"; done; fi
if [ "$stable_kernel" = 1 ]; then resolve_module ublk_drv soft; else resolve_module ublk_drv; fi
# The nvmf scenario: the NVMe target with its TCP transport, and the
# NVMe/TCP initiator. Soft: on a kernel without them that scenario skips.
for m in nvmet nvmet-tcp nvme-tcp; do resolve_module "$m" soft; done
: >"$root/lib/modules/load-order"
for f in "${mod_order[@]}"; do
    b=$(basename "$f"); b=${b%.xz}
    xz -dcf "$f" >"$root/lib/modules/$b"
    echo "$b" >>"$root/lib/modules/load-order"
done
log "modules: $(tr '\n' ' ' <"$root/lib/modules/load-order")"

# Guest scripts.
cp scripts/vm/init "$root/init"
cp scripts/vm/lib.sh "$root/lib/lsvd-vm-lib.sh"
cp scripts/vm/hostroot.sh "$root/lib/lsvd-vm-hostroot.sh"
# The cluster script runs in the chroot (it needs bash and the ceph tools).
[ "$rados" = 1 ] && cp scripts/ceph-test-cluster.sh "$root/usr/local/lsvd/"
mkdir -p "$root/scenarios"
cp scripts/vm/scenarios/*.sh "$root/scenarios/"
chmod +x "$root/init" "$root"/scenarios/*.sh

# Which scenarios: map names to files now so a typo fails on the host.
sel=()
if [ ${#scenarios[@]} -eq 0 ]; then
    # Without --rados every scenario but the rados-* ones; with it, those.
    for f in scripts/vm/scenarios/[0-9]*.sh; do
        n=$(basename "$f" .sh); n=${n#*-}
        case "$n" in rados-*) [ "$rados" = 1 ] && sel+=("$n") ;; *) [ "$rados" = 1 ] || sel+=("$n") ;; esac
    done
else
    for n in "${scenarios[@]}"; do
        ls scripts/vm/scenarios/[0-9]*-"$n".sh >/dev/null 2>&1 ||
            die "unknown scenario '$n' (have: $(ls scripts/vm/scenarios | sed -E 's/^[0-9]+-//; s/\.sh$//' | tr '\n' ' '))"
        sel+=("$n")
    done
fi
scenario_arg=$(IFS=,; echo "${sel[*]}")

initrd=$work/initrd.gz
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$initrd"
log "initramfs $(du -h "$initrd" | cut -f1) compressed, $(du -sh "$root" | cut -f1) unpacked ($(elapsed)s)"

# ---------------------------------------------------------------------------
# 5. Disks: two sparse raw files on a real file system (not tmpfs, which
#    would hide O_DIRECT alignment problems and eat RAM). vda holds the lsvd
#    store and journal; vdb is the raw virtio baseline / scratch.
# ---------------------------------------------------------------------------
mkdir -p "$vm_dir"
disk_a=$work/disk-a.raw
disk_b=$work/disk-b.raw
truncate -s "$disk_size" "$disk_a" "$disk_b"

# ---------------------------------------------------------------------------
# 6. Boot. The serial console is the guest's only output; it is captured to a
#    log. `timeout` bounds everything (a hung guest or QEMU must not hang CI):
#    SIGTERM at the bound, SIGKILL 10 s later.
# ---------------------------------------------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)
guest_log=$vm_dir/guest-$kver-$stamp-$$.log
append="console=ttyS0 panic=-1 loglevel=4 rdinit=/init"
append+=" lsvd.scenarios=$scenario_arg lsvd.scenario_timeout=$scenario_timeout"
# A kernel without ublk (Debian 12's own): init expects no /dev/ublk-control.
if [ "$stable_kernel" = 1 ]; then append+=" lsvd.no_ublk=1"; fi
append+=" lsvd.log=${LSVD_VM_LOG:-warn}"
if [ "$rados" = 1 ]; then append+=" lsvd.hostroot=1 lsvd.ceph_store=${LSVD_VM_CEPH_STORE:-bluestore}"; fi
log "booting ($kver, $mem, scenarios: $scenario_arg, bound ${vm_timeout}s)"
boot_start=$(date +%s)
qemu_cmd=(timeout -k 10 "$vm_timeout" qemu-system-x86_64
    -accel tcg,thread=multi -cpu max -smp 2 -m "$mem"
    -display none -monitor none -serial stdio -no-reboot
    -kernel "$vmlinuz" -initrd "$initrd" -append "$append"
    -drive "file=$disk_a,format=raw,if=virtio,cache=writeback"
    -drive "file=$disk_b,format=raw,if=virtio,cache=writeback"
    -nic none)
# The host's root, read-only: the guest chroots into it for Ceph and
# librados. QEMU's 9p server runs on the host, but the guest gets no
# network: the cluster lives on the guest's own loopback.
if [ "$rados" = 1 ]; then
    qemu_cmd+=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
fi
boot_once() {
    set +e
    if [ "${LSVD_VM_QUIET:-0}" = 1 ]; then
        "${qemu_cmd[@]}" </dev/null >"$guest_log" 2>&1
        qemu_rc=$?
    else
        "${qemu_cmd[@]}" </dev/null 2>&1 | tee "$guest_log"
        qemu_rc=${PIPESTATUS[0]}
    fi
    set -e
}
boot_once
# Under TCG the guest kernel has been seen to panic while booting ("Fatal
# exception in interrupt", about 1 boot in 7 on a fresh machine), before
# our init ran. That is the emulator, not lsvd: boot once more, keeping the
# first log. A panic after our init started is never retried.
if ! grep -qE '^(PASS|FAIL|INFO|TIME) init' <(tr -d '\r' <"$guest_log") &&
    grep -q 'Kernel panic' "$guest_log"; then
    mv "$guest_log" "$guest_log.boot-panic"
    log "guest kernel panicked before our init ran (log kept: $guest_log.boot-panic); booting once more"
    truncate -s 0 "$disk_a" "$disk_b"
    truncate -s "$disk_size" "$disk_a" "$disk_b"
    boot_once
fi
boot_secs=$(( $(date +%s) - boot_start ))

# ---------------------------------------------------------------------------
# 7. Verdict from the log. The console uses CRLF; strip CR before matching.
# ---------------------------------------------------------------------------
clean_log=$(tr -d '\r' <"$guest_log")
fails=$(grep -E '^FAIL ' <<<"$clean_log" || true)
passes=$(grep -E '^PASS ' <<<"$clean_log" || true)
measures=$(grep -E '^MEASURE ' <<<"$clean_log" || true)
timings=$(grep -E '^TIME ' <<<"$clean_log" || true)
infos=$(grep -E '^INFO ' <<<"$clean_log" || true)
result=FAIL
reason=""
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    reason="QEMU did not finish within ${vm_timeout}s (killed)"
elif ! grep -q '^VM-RESULT: PASS' <<<"$clean_log"; then
    if grep -q '^VM-RESULT: FAIL' <<<"$clean_log"; then
        reason="guest reported VM-RESULT: FAIL"
    else
        reason="no VM-RESULT line in the guest log (qemu exit $qemu_rc)"
    fi
elif [ -n "$fails" ]; then
    reason="FAIL lines in the guest log"
else
    result=PASS
fi

echo
echo "== vm-test summary (kernel $kver, qemu exit $qemu_rc, guest ${boot_secs}s)"
# In quiet mode the console was not shown: include the INFO lines.
[ "${LSVD_VM_QUIET:-0}" = 1 ] && [ -n "$infos" ] && echo "$infos"
[ -n "$passes" ] && echo "$passes"
[ -n "$fails" ] && echo "$fails"
[ -n "$timings" ] && echo "$timings"
[ -n "$measures" ] && echo "$measures"
if [ "$result" = PASS ] && [ "$keep" = 0 ]; then
    rm -f "$guest_log"
else
    echo "== guest log: $guest_log (last 60 lines):"
    tail -n 60 <<<"$clean_log"
fi
echo "== vm-test: $result${reason:+ ($reason)}; wall time $(elapsed)s"
[ "$result" = PASS ]
