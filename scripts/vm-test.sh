#!/usr/bin/env bash
# Boot a QEMU guest (TCG, no KVM) with a ublk-capable Debian kernel and run the
# lsvd-ublk guest scenarios from scripts/vm/scenarios/ inside it.
#
# Usage: scripts/vm-test.sh [--binary PATH] [--scenario NAME ...] [--keep]
#   --binary PATH    lsvd-ublk binary to test (default: build it with
#                    `cargo build --release --bin lsvd-ublk`)
#   --scenario NAME  run only this scenario (repeatable). NAME is the part of
#                    scripts/vm/scenarios/NN-NAME.sh after the number, e.g.
#                    smoke, fs, measure-virtio. Default: all scenarios.
#   --keep           keep the guest log (and disk images) even on success
#
# Environment knobs:
#   LSVD_VM_TIMEOUT           overall bound on the QEMU run, seconds (default 540)
#   LSVD_VM_SCENARIO_TIMEOUT  per-scenario bound inside the guest (default 240)
#   LSVD_VM_CACHE             kernel/.deb cache dir (default /var/cache/lsvd-vm)
#   LSVD_VM_KERNEL            preferred kernel package version string
#                             (default 6.12.95+deb12-amd64); any other
#                             linux-image-6.12.*+deb12-amd64 is used if it is gone
#   LSVD_VM_DISK_SIZE         size of each (sparse) virtio disk (default 8G)
#   LSVD_VM_MEM               guest memory (default 1G)
#   LSVD_VM_LOG=debug         LSVD_LOG level for lsvd-ublk in the guest (default warn)
#   LSVD_VM_QUIET=1           do not echo the guest console while it runs
#   LSVD_VM_EXTRA="P1 P2"     extra host programs to put in the guest's
#                             /usr/bin (with their libraries), e.g. debug tools
#
# Host packages it needs (qemu-system-x86, busybox-static, e2fsprogs, fio,
# cpio, xz-utils) are installed through scripts/install-build-deps.sh when
# missing: QEMU from the suite the installed QEMU comes from, and nothing
# is ever removed.
#
# Exit status: 0 only if the guest printed "VM-RESULT: PASS" and no FAIL line.
set -euo pipefail

start_time=$(date +%s)
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

binary=""
scenarios=()
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --binary=*) binary=${1#--binary=}; shift ;;
        --scenario) scenarios+=("$2"); shift 2 ;;
        --scenario=*) scenarios+=("${1#--scenario=}"); shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "vm-test: unknown argument: $1" >&2; exit 2 ;;
    esac
done

vm_timeout=${LSVD_VM_TIMEOUT:-540}
scenario_timeout=${LSVD_VM_SCENARIO_TIMEOUT:-240}
cache=${LSVD_VM_CACHE:-/var/cache/lsvd-vm}
preferred_kernel=${LSVD_VM_KERNEL:-6.12.95+deb12-amd64}
disk_size=${LSVD_VM_DISK_SIZE:-8G}
mem=${LSVD_VM_MEM:-1G}
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
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    # QEMU from the suite of the QEMU already here (qemu-utils 10.0 from
    # bookworm-backports must not be replaced by bookworm's 7.2, which
    # would take qemu-io and qemu-img away); nothing is ever removed.
    bash scripts/install-build-deps.sh --no-install-recommends "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------
# 2. Kernel: a bookworm(-backports) 6.12 kernel, which has CONFIG_BLK_DEV_UBLK=m
#    (bookworm's own 6.1 has no ublk). Cached extracted under $cache/kernel-VER
#    so later runs need no network. Never installed on the host.
# ---------------------------------------------------------------------------
mkdir -p "$cache/debs"
kernel_pattern='^6\.12\.[0-9]+\+deb12-amd64$'

# Pick a cached, fully extracted kernel: the preferred one, else the newest.
pick_cached_kernel() {
    if [ -f "$cache/kernel-$preferred_kernel/.complete" ]; then
        echo "$preferred_kernel"; return
    fi
    local d v best=""
    for d in "$cache"/kernel-*/; do
        [ -f "$d/.complete" ] || continue
        v=$(basename "$d"); v=${v#kernel-}
        [[ $v =~ $kernel_pattern ]] && best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -1)
    done
    echo "$best"
}

# Whether apt can download package $1. The policy text is captured first:
# piping it into `grep -q` under pipefail fails at random when grep exits
# early and apt-cache dies of SIGPIPE.
has_candidate() {
    local policy
    policy=$(apt-cache policy "$1" 2>/dev/null) || return 1
    [[ $policy == *"Candidate: "[0-9]* ]]
}

fetch_kernel() {
    # The backports suite carries the 6.12 kernels; add it as a deb822 source.
    local src=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding bookworm-backports apt source"
        cat >"$src" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    # Prefer the known-good version; otherwise the newest 6.12 kernel package
    # that apt can actually download (pkgnames also lists names without a
    # candidate, hence the policy check). apt-get update exits 0 even when
    # an index failed to download (a warning): retry the update a few times
    # before giving up, and show its output if all fail.
    local ver="" v attempt upd
    for attempt in 1 2 3; do
        upd=$(apt-get update 2>&1) || true
        if has_candidate "linux-image-$preferred_kernel"; then
            ver=$preferred_kernel
        else
            for v in $(apt-cache pkgnames linux-image-6.12 | sed 's/^linux-image-//' | grep -E "$kernel_pattern" | sort -rV); do
                if has_candidate "linux-image-$v"; then ver=$v; break; fi
            done
        fi
        [ -n "$ver" ] && break
        log "no 6.12 kernel package in the apt indexes yet (attempt $attempt); updating again"
        sleep $((attempt * 5))
    done
    if [ -z "$ver" ]; then
        printf '%s\n' "$upd" >&2
        die "no linux-image-6.12.*+deb12-amd64 package available from apt (apt-get update output above)"
    fi
    log "downloading linux-image-$ver"
    # apt-get download as root warns that _apt cannot write here; harmless.
    (cd "$cache/debs" && apt-get download "linux-image-$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    local deb
    deb=$(ls -t "$cache/debs/linux-image-${ver}_"*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || die "apt-get download linux-image-$ver produced no .deb"
    extract_kernel "$deb" "$ver"
    echo "$ver"
}

extract_kernel() {
    local deb=$1 ver=$2 out="$cache/kernel-$2"
    log "extracting $(basename "$deb")"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    dpkg-deb -x "$deb" "$out.tmp"
    [ -f "$out.tmp/boot/vmlinuz-$ver" ] || die "no vmlinuz in $deb"
    [ -f "$out.tmp/lib/modules/$ver/kernel/drivers/block/ublk_drv.ko.xz" ] ||
        die "$deb has no ublk_drv module"
    rm -rf "$out" && mv "$out.tmp" "$out"
    touch "$out/.complete"
}

kver=$(pick_cached_kernel)
if [ -z "$kver" ]; then
    # A .deb may be cached without its extraction (e.g. an interrupted run).
    deb=$(ls "$cache"/debs/linux-image-6.12.*+deb12-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$deb" ]; then
        kver=$(basename "$deb" | sed -E 's/^linux-image-([^_]+)_.*/\1/')
        extract_kernel "$deb" "$kver"
    else
        kver=$(fetch_kernel | tail -1)
    fi
fi
kroot=$cache/kernel-$kver
vmlinuz=$kroot/boot/vmlinuz-$kver
kmods=$kroot/lib/modules/$kver/kernel
log "kernel $kver ($(elapsed)s)"

# ---------------------------------------------------------------------------
# 3. The binary under test.
# ---------------------------------------------------------------------------
if [ -z "$binary" ]; then
    log "cargo build --release --bin lsvd-ublk"
    cargo build --release --bin lsvd-ublk
    binary=$target_dir/release/lsvd-ublk
fi
[ -x "$binary" ] || die "binary not found or not executable: $binary"
binary=$(readlink -f "$binary")

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
copy_with_libs "$binary" /usr/bin/lsvd-ublk
# Release builds carry debug info (tens of MB); the guest does not need it.
strip --strip-debug "$root/usr/bin/lsvd-ublk" 2>/dev/null || true
for prog in mke2fs e2fsck; do
    copy_with_libs "$(command -v $prog)" "/sbin/$prog"
done
# mkfs.ext4 / fsck.ext4 are mke2fs / e2fsck under another name (argv[0]).
rm -f "$root/sbin/mkfs.ext4" "$root/sbin/fsck.ext4"
ln -s mke2fs "$root/sbin/mkfs.ext4"
ln -s e2fsck "$root/sbin/fsck.ext4"
copy_with_libs "$(command -v fio)" /usr/bin/fio
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
# .modinfo section directly -- the .deb ships no modules.dep and the host may
# have no kmod. Output is dependency-first, each module once.
find_module() {
    local name=${1//-/_} f
    name=${name#crypto_}   # softdep "crypto-crc32c" means the crc32c algorithm
    for f in "$name" "${name}_generic"; do
        f=$(find "$kmods" -name "$f.ko.xz" -o -name "$f.ko" | head -1)
        [ -n "$f" ] && { echo "$f"; return; }
    done
}
declare -A mod_seen=()
mod_order=()
resolve_module() {
    local name=$1 f info dep
    [ -n "${mod_seen[$name]:-}" ] && return
    mod_seen[$name]=1
    f=$(find_module "$name")
    [ -n "$f" ] || die "kernel module $name not found under $kmods"
    # Several names (crc32c, crypto-crc32c, crc32c_generic) can be one file.
    [ -n "${mod_seen[$f]:-}" ] && return
    mod_seen[$f]=1
    info=$(xz -dcf "$f" | tr '\0' '\n' | grep -a -E '^(depends|softdep)=' || true)
    for dep in $(echo "$info" | sed -n 's/^softdep=.*pre: *//p') \
               $(echo "$info" | sed -n 's/^depends=//p' | tr ',' ' '); do
        resolve_module "$dep"
    done
    mod_order+=("$f")
}
# virtio_blk is a module in Debian's 6.12 (virtio and virtio_pci are built in).
for m in virtio_blk crc32c_generic ext4 ublk_drv; do resolve_module "$m"; done
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
mkdir -p "$root/scenarios"
cp scripts/vm/scenarios/*.sh "$root/scenarios/"
chmod +x "$root/init" "$root"/scenarios/*.sh

# Which scenarios: map names to files now so a typo fails on the host.
sel=()
if [ ${#scenarios[@]} -eq 0 ]; then
    for f in scripts/vm/scenarios/[0-9]*.sh; do
        n=$(basename "$f" .sh); sel+=("${n#*-}")
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
guest_log=$vm_dir/guest-$stamp-$$.log
append="console=ttyS0 panic=-1 loglevel=4 rdinit=/init"
append+=" lsvd.scenarios=$scenario_arg lsvd.scenario_timeout=$scenario_timeout"
append+=" lsvd.log=${LSVD_VM_LOG:-warn}"
log "booting ($kver, $mem, scenarios: $scenario_arg, bound ${vm_timeout}s)"
boot_start=$(date +%s)
qemu_cmd=(timeout -k 10 "$vm_timeout" qemu-system-x86_64
    -accel tcg,thread=multi -cpu max -smp 2 -m "$mem"
    -display none -monitor none -serial stdio -no-reboot
    -kernel "$vmlinuz" -initrd "$initrd" -append "$append"
    -drive "file=$disk_a,format=raw,if=virtio,cache=writeback"
    -drive "file=$disk_b,format=raw,if=virtio,cache=writeback"
    -nic none)
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
