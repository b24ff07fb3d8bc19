#!/bin/sh
# Losing the local journal after a server crash loses at most the last
# ~2*flush_msec of acknowledged writes, and what remains is a consistent
# prefix: ext4 replays its own journal, e2fsck finds nothing, and every file
# whose sync completed at least 2*flush_msec before the kill is intact.
# CLI contract assumed (see lib.sh):
#   --config '{"flush_msec":1000}' (inline JSON) on attach applies to the server
#   journal file: /data/wlog/<pool>/<image>.wlog  (wlog_dir=/data/wlog)
#   after kill -9 the device is "quiesced";
#   lsvd-ublk detach --force /dev/ublkbN deletes a quiesced device whose
#   server is dead (the kernel fails the pending I/O), even while the ext4
#   on it is still mounted
#   lsvd-ublk attach p/jl afterwards works from the objects alone.
. /lib/lsvd-vm-lib.sh

IMG=p/jl
FLUSH_MSEC=1000
CFG="{\"flush_msec\":$FLUSH_MSEC}"
MNT=/mnt/jl
LOG=$STATE/written      # "name checksum uptime-after-sync", outside the device
WLOG=/data/wlog/p/jl.wlog
mkdir -p $MNT
: >"$LOG"

must create lsvd --config "$CFG" create $IMG --size 1G
attach attach $IMG --config "$CFG" || finish
must mkfs mkfs.ext4 -q -F "$DEV"
must mount mount -t ext4 -o barrier=1 "$DEV" $MNT
[ -f "$WLOG" ] && pass journal-file || fail journal-file "no journal at $WLOG: $(ls -R /data/wlog | tr '\n' ' ')"

# Writer: one file at a time, sync, then record it with the time the sync
# completed. It will hang on the quiesced device after the kill; it is
# killed once the device is gone.
(
    i=0
    while :; do
        i=$((i + 1))
        dd if=/dev/urandom of=$MNT/w$i bs=4k count=$((1 + i % 32)) 2>/dev/null || exit 1
        # syncfs of this file system only (a global sync would also wait
        # on unrelated file systems).
        sync -f $MNT/w$i || exit 1
        t=$(now)
        # After the kill a read may fail: record only complete entries.
        sum=$(sha256sum $MNT/w$i 2>/dev/null | cut -d' ' -f1)
        [ -n "$sum" ] || exit 1
        echo "w$i $sum $t" >>"$LOG"
    done
) &
WRITER=$!
# Never leave the writer running if this scenario ends early.
trap 'kill -9 $WRITER 2>/dev/null' EXIT
sleep 8
pid=$(server_pid "$DEV")
[ -n "$pid" ] || abort find-server "no server pid for $DEV"
T_KILL=$(now)
kill -9 "$pid"
pass kill
info "killed server $pid at ${T_KILL}s with $(wc -l <"$LOG") files recorded"
expect_state quiesced "$DEV" quiesced 15
[ -b "$DEV" ] && pass node-kept || fail node-kept "$DEV vanished"

# Lose the journal.
rm -f "$WLOG" && [ ! -e "$WLOG" ] && pass journal-deleted || fail journal-deleted "could not delete $WLOG"

# Delete the dead device first: the kernel then fails the I/O it holds.
# Unmounting first does not work: the writer sits in syncfs() holding the
# superblock's s_umount lock, waiting on the quiesced device, so even
# umount -l blocks (the last reference does a full unmount). Afterwards the
# stale mount is unusable; detach it lazily and stop the writer.
OLD=$DEV
detach detach-force "$OLD" --force
umount -l $MNT && pass umount-lazy || fail umount-lazy "umount -l $MNT failed"
kill -9 $WRITER 2>/dev/null
wait $WRITER 2>/dev/null

attach reattach $IMG --config "$CFG" || finish
# ext4 replays its journal at mount; then a full read-only check.
must mount-replay mount -t ext4 -o barrier=1 "$DEV" $MNT
check umount umount $MNT
check fsck-clean e2fsck -fn "$DEV"
must mount-2 mount -t ext4 -o barrier=1 "$DEV" $MNT

# Every file synced at least 2*flush_msec before the kill must be intact.
cutoff=$(awk -v t="$T_KILL" -v f="$FLUSH_MSEC" 'BEGIN{printf "%.2f", t - 2 * f / 1000}')
awk -v c="$cutoff" 'NF == 3 && $3 + 0 <= c + 0 {print $2 "  " $1}' "$LOG" >"$STATE/must-survive.sums"
n_must=$(wc -l <"$STATE/must-survive.sums")
n_all=$(wc -l <"$LOG")
info "$n_must of $n_all recorded files were synced before the cutoff ${cutoff}s"
if [ "$n_must" -gt 0 ]; then
    sums_verify survived $MNT "$STATE/must-survive.sums"
else
    fail survived "no file was synced before the cutoff (writer too slow?)"
fi
# Later files may be missing, but those present must not be torn garbage
# from an unsynced prefix: report only.
n_later=0
for f in $(awk -v c="$cutoff" 'NF == 3 && $3 + 0 > c + 0 {print $1}' "$LOG"); do [ -e $MNT/$f ] && n_later=$((n_later + 1)); done
info "$n_later of $((n_all - n_must)) files synced after the cutoff survived too"
check umount-2 umount $MNT
detach detach $IMG

# Free the space on /data for later scenarios (not an assertion).
for i in $IMG; do lsvd rm "$i" >/dev/null 2>&1 || info "lsvd-ublk rm $i failed"; done

finish
