//! Greedy garbage collection: clean objects whose live fraction is below
//! `gc_threshold`, copying their live extents in LBA order into GC objects
//! of the same sequence stream, then delete them once no listed checkpoint
//! needs them.
//!
//! The engine works through [`GcHost`], which the volume implements: GC
//! knows nothing of the journal or the destager. One cycle:
//! 1. select victims (`gc.selected`);
//! 2. gather their live extents in LBA order, plugging small gaps: the
//!    map's reverse index names the victims' extents, and only the gaps
//!    between them are looked up, so this costs O(victims' extents), not
//!    O(map);
//! 3. read the data (`gc.read_done`) through [`GcHost::read_object_range`];
//! 4. submit a GC object: its sequence is allocated last, once the object is
//!    fully built (`gc.seq_allocated`; ordering 20), and wait until it is
//!    applied (`gc.put_done`, `gc.applied`);
//! 5. once two checkpoints have been published after that
//!    (`gc.ckpt_requested`, `ckpt.published`), delete what the deletion
//!    rule allows (`gc.delete.each`; ordering 21), and sweep orphans
//!    (`gc.sweep.listed`).

pub mod retain;
pub mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::config::Config;
use crate::error::{ErrorKind, Result};
use crate::failpoint;
use crate::format::gcobject::GcMove;
use crate::io::AlignedBuf;
use crate::map::{Extent, ObjInfo, ObjLoc};
use crate::units::{Lba, ObjSeq, SECTOR};
pub use retain::{NoRetention, Retention, SnapshotPins};
pub use select::Floor;

/// What a forced GC run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Objects whose live data was copied out.
    pub objects_cleaned: u64,
    /// Live bytes copied (plugged gaps included).
    pub bytes_copied: u64,
    /// Bytes of the objects deleted.
    pub bytes_freed: u64,
    /// Objects deleted (cleaned ones and orphans found by the sweep).
    pub objects_deleted: u64,
}

/// What GC needs from the volume.
pub(crate) trait GcHost: Send + Sync {
    /// The configuration.
    fn config(&self) -> &Config;
    /// Image size in bytes.
    fn size_bytes(&self) -> u64;
    /// The object table of the durable map.
    fn objects(&self) -> Vec<(ObjSeq, ObjInfo)>;
    /// Every durable extent mapped into one of `objs`, whole, in LBA order,
    /// as `ObjectMap::extents_of` (through the reverse index).
    fn extents_of(&self, objs: &BTreeSet<ObjSeq>) -> Vec<Extent<ObjLoc>>;
    /// The durable extents overlapping `[lba, lba+len)`, whole, as
    /// `ObjectMap::extents_in`.
    fn extents_in(&self, lba: Lba, len: u64) -> Vec<Extent<ObjLoc>>;
    /// Read `out.len()` bytes of object `obj` at byte `byte_off`. The one
    /// place GC reads live data (the read cache hooks in here).
    fn read_object_range(&self, obj: ObjSeq, byte_off: u64, out: &mut [u8]) -> Result<()>;
    /// Put a GC object (sequence allocated last) and wait until applied.
    fn submit_gc(&self, moves: Vec<GcMove>, data: AlignedBuf) -> Result<()>;
    /// Write a checkpoint and wait until the superblock names it.
    fn checkpoint(&self) -> Result<()>;
    /// The oldest listed checkpoint, if this session knows its table and
    /// took it at least `min_age` ago.
    fn floor(&self, min_age: Duration) -> Option<Floor>;
    /// Every object sequence in the store (a listing: only the sweep of a
    /// forced run, or of an image whose rows are not complete).
    fn list_objects(&self) -> Result<Vec<ObjSeq>>;
    /// The highest object applied to the durable map.
    fn applied_obj(&self) -> ObjSeq;
    /// Whether the table names every object that is not deleted
    /// (ordering 32).
    fn rows_complete(&self) -> bool;
    /// Add rows with no live data for these objects (with their data
    /// sectors), then mark the rows complete.
    fn add_rows(&self, objs: &[(ObjSeq, u64)]);
    /// Delete an object; its size if it existed.
    fn delete_object(&self, obj: ObjSeq) -> Result<Option<u64>>;
    /// The snapshot/clone hook.
    fn retention(&self) -> &dyn Retention;
    /// True once the volume is stopping (or GC is told to stop).
    fn should_stop(&self) -> bool;
    /// True while clients have a destage backlog GC should yield to.
    fn client_backlog(&self) -> bool;
    /// Size of the last checkpoint written, bytes.
    fn last_checkpoint_bytes(&self) -> u64;
}

/// Longest a GC step waits for a client backlog to clear before going on
/// anyway: GC yields to clients, but is never starved by a steady writer.
const MAX_YIELD: Duration = Duration::from_millis(100);

/// Background GC deletes only objects that were already dead when the
/// floor checkpoint was taken at least this long ago. A client read looks
/// an object up in the map, then gets it; until the read path retries a
/// lookup on NotFound, this keeps deletes away from reads that looked up
/// a now-dead object less than this long ago.
pub(crate) const READ_GRACE: Duration = Duration::from_secs(2);

/// GC state kept across cycles of one volume.
pub(crate) struct Gc {
    /// Cleaned objects waiting for the deletion rule, with their sizes.
    pending: BTreeMap<ObjSeq, u64>,
    pending_bytes: u64,
    rate: u64,
    started: Instant,
    moved_bytes: u64,
    swept: bool,
    /// Minimum age of the floor checkpoint used for deletion.
    grace: Duration,
    /// Background steps in a row that found nothing to clean.
    idle_steps: u32,
    /// When the background last wrote two checkpoints for deletion. Their
    /// floor is usable only after the read grace; asking again before that
    /// would only write more checkpoints.
    last_ckpt_request: Option<Instant>,
    /// Objects a GC read found a corrupt chunk in (`ErrorKind::Corrupt`):
    /// never cleaned or plugged from again in this open, so their bad
    /// bytes are never copied into a GC object with a valid checksum, and
    /// the objects (and the error on reading them) stay.
    corrupt: BTreeSet<ObjSeq>,
    /// GC has fallen behind: the objects hold more than [`BEHIND_RATIO`]
    /// times the live data. The rate limit is lifted until it catches up
    /// (the yield to client backlog stays), so sustained overwrites cannot
    /// grow the store without bound.
    behind: bool,
}

/// Stored data per live data above which GC ignores `gc_rate_bytes`.
pub(crate) const BEHIND_RATIO: f64 = 1.5;

/// Idle background steps after which cleaned data waiting for deletion is
/// freed even below the [`Gc::wants_checkpoints`] amount (two checkpoints
/// cost little when clients are quiet).
const IDLE_STEPS_BEFORE_FREEING: u32 = 5;

impl Gc {
    /// `rate`: bytes per second read plus written; 0 = unlimited.
    pub(crate) fn new(rate: u64) -> Gc {
        Gc {
            pending: BTreeMap::new(),
            pending_bytes: 0,
            rate,
            started: Instant::now(),
            moved_bytes: 0,
            swept: false,
            grace: READ_GRACE,
            idle_steps: 0,
            last_ckpt_request: None,
            corrupt: BTreeSet::new(),
            behind: false,
        }
    }

    /// Sleep as needed to stay under the rate, and while clients have a
    /// backlog. False if told to stop.
    fn pace(&mut self, host: &dyn GcHost, bytes: u64) -> bool {
        // A token bucket holding at most one second of credit: after an
        // idle spell GC does not burst far above its rate.
        if self.rate > 0 {
            let due = Duration::from_secs_f64(self.moved_bytes as f64 / self.rate as f64);
            if self.started.elapsed() > due + Duration::from_secs(1) {
                self.started = Instant::now();
                self.moved_bytes = 0;
            }
        }
        self.moved_bytes += bytes;
        let t0 = Instant::now();
        loop {
            if host.should_stop() {
                return false;
            }
            let backlog = host.client_backlog() && t0.elapsed() < MAX_YIELD;
            let ahead = if self.rate == 0 || self.behind {
                Duration::ZERO
            } else {
                let due = Duration::from_secs_f64(self.moved_bytes as f64 / self.rate as f64);
                due.saturating_sub(self.started.elapsed())
            };
            if !backlog && ahead.is_zero() {
                return true;
            }
            std::thread::sleep(ahead.clamp(Duration::from_millis(1), Duration::from_millis(50)));
        }
    }

    /// One cleaning cycle: false if nothing was below the threshold.
    pub(crate) fn cycle(&mut self, host: &dyn GcHost, report: &mut GcReport) -> Result<bool> {
        let cfg = host.config();
        let cap = cfg.gc_buffer_bytes.min(cfg.backend_obj_bytes);
        self.collect_dead(host);
        let objects = host.objects();
        // Rows with no live data a snapshot keeps stay in the
        // table (ordering 32) but are no data GC can free: not counted, or
        // GC would ignore its rate for as long as the snapshot exists.
        let retention = host.retention();
        let (data, live) = objects
            .iter()
            .filter(|(o, i)| i.live_sectors > 0 || !retention.pinned(*o))
            .fold((0u64, 0u64), |(d, l), (_, i)| {
                (d + i.data_sectors, l + i.live_sectors)
            });
        self.behind = live > 0 && data as f64 > BEHIND_RATIO * live as f64;
        let victims = select::select_victims(&objects, cfg.gc_threshold, cap, |o| {
            host.retention().pinned(o) || self.pending.contains_key(&o) || self.corrupt.contains(&o)
        });
        if victims.is_empty() {
            return Ok(false);
        }
        failpoint::hit("gc.selected");
        let vset: BTreeSet<ObjSeq> = victims.iter().copied().collect();
        // One read-lock hold for the victims' extents, one per gap looked up.
        let runs = select::gather(
            &vset,
            &self.corrupt,
            cfg.gc_plug_bytes / SECTOR,
            host.extents_of(&vset),
            |lba, len| host.extents_in(lba, len),
        );
        for moves in select::pack(&runs, cap) {
            let sectors: u64 = moves.iter().map(|m| u64::from(m.sectors)).sum();
            let mut data = AlignedBuf::new((sectors * SECTOR) as usize);
            // Read, coalescing moves contiguous in one source object.
            let mut i = 0;
            while i < moves.len() {
                let m = moves[i];
                let mut j = i + 1;
                let mut len = u64::from(m.sectors);
                while j < moves.len()
                    && moves[j].src_obj == m.src_obj
                    && u64::from(moves[j].src_offset) == u64::from(m.src_offset) + len
                    && u64::from(moves[j].data_offset) == u64::from(m.data_offset) + len
                {
                    len += u64::from(moves[j].sectors);
                    j += 1;
                }
                if !self.pace(host, len * SECTOR) {
                    return Ok(true);
                }
                let b0 = (u64::from(m.data_offset) * SECTOR) as usize;
                if let Err(e) = host.read_object_range(
                    m.src_obj,
                    u64::from(m.src_offset) * SECTOR,
                    &mut data[b0..b0 + (len * SECTOR) as usize],
                ) {
                    // A bad chunk: this object is skipped from now on (the
                    // batch being built is dropped, nothing is submitted).
                    if e.kind() == ErrorKind::Corrupt && self.corrupt.insert(m.src_obj) {
                        warn!(
                            object = m.src_obj.0,
                            "GC skips an object with corrupt data: {e}"
                        );
                    }
                    return Err(e);
                }
                i = j;
            }
            failpoint::hit("gc.read_done");
            if !self.pace(host, sectors * SECTOR) {
                return Ok(true);
            }
            // Every read error happened above: from here the object is
            // complete, and the host allocates its sequence last.
            host.submit_gc(moves, data)?;
            failpoint::hit("gc.applied");
            report.bytes_copied += sectors * SECTOR;
        }
        // Every victim is now dead (its live data moved, or rewritten by a
        // client meanwhile).
        for (o, i) in &objects {
            if vset.contains(o) && !self.pending.contains_key(o) {
                self.pending.insert(*o, i.data_sectors * SECTOR);
                self.pending_bytes += i.data_sectors * SECTOR;
            }
        }
        report.objects_cleaned += victims.len() as u64;
        debug!(
            victims = victims.len(),
            copied = report.bytes_copied,
            "GC cycle"
        );
        Ok(true)
    }

    /// Objects that died without GC (all their data overwritten or
    /// trimmed) also wait for deletion: every row with no live data names
    /// one (ordering 32), until GC deletes it.
    fn collect_dead(&mut self, host: &dyn GcHost) {
        let retention = host.retention();
        // Listed checkpoints' pieces have rows too; like pinned
        // objects they are not pending while listed (checkpoints GC asks
        // for would free them only by replacing them).
        let listed = host.floor(Duration::ZERO);
        for (o, i) in host.objects() {
            // Kept for a snapshot: not pending (it would keep asking for
            // checkpoints that can never free it); its row stays, and once
            // `snap rm` unpins it, it is collected here.
            if i.live_sectors > 0
                || retention.pinned(o)
                || listed.as_ref().is_some_and(|f| select::listed_piece(o, f))
            {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = self.pending.entry(o) {
                let bytes = i.data_sectors * SECTOR;
                e.insert(bytes);
                self.pending_bytes += bytes;
            }
        }
    }

    /// The listing sweep (a forced run, or the first deletion of an image
    /// whose rows are not complete yet): every object of the image in the
    /// store. Those at or below the applied object with no row get a row
    /// (no live data), so the next checkpoint names them and GC deletes
    /// them without listing again (ordering 32). Listed checkpoints' pieces
    /// too: the rule keeps them while listed, and the row of
    /// one that a session's last publish retires would otherwise exist only
    /// in memory, lost at the close.
    fn list_and_add_rows(&self, host: &dyn GcHost) -> Result<Vec<ObjSeq>> {
        let all = host.list_objects()?;
        failpoint::hit("gc.sweep.listed");
        let applied = host.applied_obj();
        let rows: BTreeSet<ObjSeq> = host.objects().into_iter().map(|(o, _)| o).collect();
        let missing: Vec<(ObjSeq, u64)> = all
            .iter()
            .copied()
            .filter(|s| *s <= applied && !rows.contains(s))
            .map(|s| (s, 0))
            .collect();
        if !missing.is_empty() {
            info!(
                objects = missing.len(),
                "GC sweep: objects with no row get one (deleted once the rule allows)"
            );
        }
        host.add_rows(&missing);
        Ok(all)
    }

    /// True when enough cleaned data waits that two checkpoints are worth
    /// their bytes: 8% of the image, or 8 checkpoint sizes (so checkpoints
    /// requested by GC cost at most a quarter of the bytes they free).
    pub(crate) fn wants_checkpoints(&self, host: &dyn GcHost) -> bool {
        let want = (host.size_bytes() / 12).max(8 * host.last_checkpoint_bytes());
        !self.pending.is_empty() && self.pending_bytes >= want
    }

    /// Sweep the whole store again at the next deletion (after `snap rm`:
    /// what only the snapshot kept is found only by a sweep).
    pub(crate) fn resweep(&mut self) {
        self.swept = false;
    }

    /// Two checkpoints, so that the oldest listed one postdates the cleaning.
    pub(crate) fn checkpoint_twice(&mut self, host: &dyn GcHost) -> Result<()> {
        failpoint::hit("gc.ckpt_requested");
        host.checkpoint()?;
        host.checkpoint()
    }

    /// Delete the cleaned objects the rule allows, and (once, or when
    /// `sweep`) every other deletable object in the store.
    pub(crate) fn delete(
        &mut self,
        host: &dyn GcHost,
        sweep: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        self.collect_dead(host);
        let Some(floor) = host.floor(self.grace) else {
            return Ok(());
        };
        let retention = host.retention();
        let mut cands: BTreeSet<ObjSeq> = self.pending.keys().copied().collect();
        // Listed only when asked (a forced run: maintenance) or while the
        // rows may miss objects (an image of an older build).
        if sweep || (!self.swept && !host.rows_complete()) {
            cands.extend(self.list_and_add_rows(host)?);
        }
        self.swept = true;
        for s in cands {
            if host.should_stop() {
                break;
            }
            // Pinned by a snapshot: dropped from pending (see
            // `collect_dead`).
            if retention.pinned(s) || select::listed_piece(s, &floor) {
                if let Some(b) = self.pending.remove(&s) {
                    self.pending_bytes = self.pending_bytes.saturating_sub(b);
                }
                continue;
            }
            // The rule is checked right before each delete (ordering 21).
            if !select::deletable(s, &floor, |o| retention.pinned(o)) {
                continue;
            }
            if let Some(bytes) = host.delete_object(s)? {
                report.objects_deleted += 1;
                report.bytes_freed += bytes;
            }
            if let Some(b) = self.pending.remove(&s) {
                self.pending_bytes = self.pending_bytes.saturating_sub(b);
            }
            failpoint::hit("gc.delete.each");
        }
        if self.pending.is_empty() {
            self.pending_bytes = 0;
        }
        Ok(())
    }

    /// Forced run: clean until nothing is below the threshold, checkpoint
    /// twice, delete and sweep.
    pub(crate) fn run_now(&mut self, host: &dyn GcHost) -> Result<GcReport> {
        // A forced run neither paces itself nor waits out the read grace
        // (it serves `lsvd-ublk gc` on a detached image).
        let rate = std::mem::replace(&mut self.rate, 0);
        let grace = std::mem::replace(&mut self.grace, Duration::ZERO);
        let r = self.run_now_unlimited(host);
        self.rate = rate;
        self.grace = grace;
        self.started = Instant::now();
        self.moved_bytes = 0;
        r
    }

    fn run_now_unlimited(&mut self, host: &dyn GcHost) -> Result<GcReport> {
        let mut report = GcReport::default();
        // Bounded: plugging can lower other objects' live fractions, so in
        // theory cycles could chase each other.
        let max_cycles = 16 + 2 * host.objects().len();
        // A corrupt object does not stop the run: it is skipped (the cycle
        // that found it is retried without it) and the run fails at the
        // end, naming it, after everything else is cleaned and deleted.
        let mut corrupt = None;
        for _ in 0..max_cycles {
            match self.cycle(host, &mut report) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    corrupt.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
            if host.should_stop() {
                break;
            }
        }
        // Two checkpoints when they let this run free more: cleaned or dead
        // objects wait for them, or the store holds objects that are dead
        // now but that the oldest listed checkpoint still keeps (it
        // predates their death). Otherwise only the next run would free
        // those, after this run's close had moved the floor.
        if !self.pending.is_empty()
            || report.objects_cleaned > 0
            || self.dead_kept_by_floor(host)?
        {
            self.checkpoint_twice(host)?;
        }
        self.delete(host, true, &mut report)?;
        info!(
            cleaned = report.objects_cleaned,
            copied = report.bytes_copied,
            deleted = report.objects_deleted,
            freed = report.bytes_freed,
            "GC run"
        );
        if let Some(e) = corrupt {
            let skipped: Vec<String> = self
                .corrupt
                .iter()
                .map(|o| format!("{:016x}", o.0))
                .collect();
            return Err(e.prefixed(format!(
                "GC cleaned {} objects but skipped objects {} with corrupt data (left as they are)",
                report.objects_cleaned,
                skipped.join(", ")
            )));
        }
        Ok(report)
    }

    /// Whether the store holds an object that is dead now but that the
    /// deletion rule keeps under the current floor (see
    /// [`select::dead_but_kept`]); true without a floor.
    fn dead_kept_by_floor(&self, host: &dyn GcHost) -> Result<bool> {
        let Some(floor) = host.floor(Duration::ZERO) else {
            return Ok(true);
        };
        let live_now: BTreeSet<ObjSeq> = host
            .objects()
            .into_iter()
            .filter(|(_, i)| i.live_sectors > 0)
            .map(|(o, _)| o)
            .collect();
        let retention = host.retention();
        Ok(host
            .list_objects()?
            .into_iter()
            .any(|s| select::dead_but_kept(s, &floor, &live_now, |o| retention.pinned(o))))
    }

    /// Background work for one wake-up: false if there was nothing to do
    /// (the caller then sleeps `gc_interval_msec`).
    pub(crate) fn background_step(&mut self, host: &dyn GcHost) -> Result<bool> {
        let mut report = GcReport::default();
        if !self.swept {
            // First the orphans an earlier run left (a crash between a
            // checkpoint publish and its deletes), as soon as a floor is
            // known: a busy GC might otherwise not sweep for a long time.
            self.delete(host, false, &mut report)?;
        }
        let worked = self.cycle(host, &mut report)?;
        self.idle_steps = if worked {
            0
        } else {
            self.idle_steps.saturating_add(1)
        };
        let idle = self.idle_steps == IDLE_STEPS_BEFORE_FREEING;
        if self.wants_checkpoints(host) || (!worked && !self.pending.is_empty()) {
            let due = self
                .last_ckpt_request
                .is_none_or(|t| t.elapsed() >= self.grace);
            if due && (self.wants_checkpoints(host) || idle) {
                self.checkpoint_twice(host)?;
                self.last_ckpt_request = Some(Instant::now());
            }
            self.delete(host, false, &mut report)?;
        } else if !self.swept {
            self.delete(host, false, &mut report)?;
        }
        Ok(worked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};
    use std::sync::Mutex;

    /// A host over a fixed map: object `o` holds byte `o` everywhere.
    struct Mock {
        config: Config,
        objects: Vec<(ObjSeq, ObjInfo)>,
        extents: Vec<Extent<ObjLoc>>,
        fail_reads: bool,
        /// Reads of this object fail as corrupt (a bad chunk).
        corrupt: Option<ObjSeq>,
        reads: Mutex<u64>,
        submitted: Mutex<Vec<(Vec<GcMove>, Vec<u8>)>>,
    }

    impl GcHost for Mock {
        fn config(&self) -> &Config {
            &self.config
        }
        fn size_bytes(&self) -> u64 {
            1 << 30
        }
        fn objects(&self) -> Vec<(ObjSeq, ObjInfo)> {
            self.objects.clone()
        }
        fn extents_of(&self, objs: &BTreeSet<ObjSeq>) -> Vec<Extent<ObjLoc>> {
            self.extents
                .iter()
                .filter(|x| objs.contains(&x.target.obj))
                .copied()
                .collect()
        }
        fn extents_in(&self, lba: Lba, len: u64) -> Vec<Extent<ObjLoc>> {
            self.extents
                .iter()
                .filter(|x| x.end() > lba.0 && x.lba.0 < lba.0 + len)
                .copied()
                .collect()
        }
        fn read_object_range(&self, obj: ObjSeq, _off: u64, out: &mut [u8]) -> Result<()> {
            *self.reads.lock().unwrap() += 1;
            if self.fail_reads {
                return Err(Error::new(ErrorKind::Io, "injected"));
            }
            if self.corrupt == Some(obj) {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("object {}: chunk fails its checksum", obj.0),
                ));
            }
            out.fill(obj.0 as u8);
            Ok(())
        }
        fn submit_gc(&self, moves: Vec<GcMove>, data: AlignedBuf) -> Result<()> {
            self.submitted.lock().unwrap().push((moves, data.to_vec()));
            Ok(())
        }
        fn checkpoint(&self) -> Result<()> {
            Ok(())
        }
        fn floor(&self, _min_age: Duration) -> Option<Floor> {
            None
        }
        fn list_objects(&self) -> Result<Vec<ObjSeq>> {
            Ok(vec![])
        }
        fn delete_object(&self, _obj: ObjSeq) -> Result<Option<u64>> {
            Ok(None)
        }
        fn retention(&self) -> &dyn Retention {
            &NoRetention
        }
        fn should_stop(&self) -> bool {
            false
        }
        fn client_backlog(&self) -> bool {
            false
        }
        fn last_checkpoint_bytes(&self) -> u64 {
            0
        }
        fn applied_obj(&self) -> ObjSeq {
            ObjSeq(0)
        }
        fn rows_complete(&self) -> bool {
            true
        }
        fn add_rows(&self, _objs: &[(ObjSeq, u64)]) {}
    }

    fn mock(fail_reads: bool) -> Mock {
        let x = |lba, len, obj, off| Extent {
            lba: Lba(lba),
            len,
            target: ObjLoc {
                obj: ObjSeq(obj),
                offset: off,
            },
        };
        Mock {
            config: Config {
                gc_threshold: 50,
                gc_buffer_bytes: 64 << 10,
                gc_plug_bytes: 4096,
                backend_obj_bytes: 1 << 20,
                ..Config::default()
            },
            objects: vec![
                (
                    ObjSeq(1),
                    ObjInfo {
                        data_sectors: 1000,
                        live_sectors: 200,
                    },
                ),
                (
                    ObjSeq(2),
                    ObjInfo {
                        data_sectors: 1000,
                        live_sectors: 900,
                    },
                ),
            ],
            // Object 1 has 200 live sectors in two runs around a plugged
            // 8-sector run of object 2; object 2 is mostly elsewhere.
            extents: vec![
                x(0, 100, 1, 8),
                x(100, 8, 2, 8),
                x(108, 100, 1, 300),
                x(500, 892, 2, 16),
            ],
            fail_reads,
            corrupt: None,
            reads: Mutex::new(0),
            submitted: Mutex::new(vec![]),
        }
    }

    #[test]
    fn a_cycle_copies_in_lba_order_in_bounded_objects() {
        let m = mock(false);
        let mut gc = Gc::new(0);
        let mut r = GcReport::default();
        assert!(gc.cycle(&m, &mut r).unwrap());
        let sub = m.submitted.lock().unwrap();
        // 208 sectors = 104 KiB in objects of at most 64 KiB.
        assert_eq!(sub.len(), 2);
        let moves: Vec<GcMove> = sub.iter().flat_map(|(m, _)| m.clone()).collect();
        assert_eq!(moves.iter().map(|m| u64::from(m.sectors)).sum::<u64>(), 208);
        assert!(moves.windows(2).all(|w| w[0].lba < w[1].lba), "LBA order");
        assert_eq!(moves[1].src_obj, ObjSeq(2), "the small gap is plugged");
        for (mv, data) in sub.iter() {
            for m in mv {
                let b0 = m.data_offset as usize * 512;
                let b1 = b0 + m.sectors as usize * 512;
                assert!(data[b0..b1].iter().all(|&b| b == m.src_obj.0 as u8));
            }
        }
        assert_eq!(r.objects_cleaned, 1);
        assert_eq!(r.bytes_copied, 208 * 512);
        // The cleaned object waits for deletion and is not selected again.
        assert!(gc.pending.contains_key(&ObjSeq(1)));
        drop(sub);
        assert!(!gc.cycle(&m, &mut r).unwrap());
    }

    /// Ordering 17 at the engine level: a read error ends the cycle before
    /// anything is submitted (no sequence is ever allocated for it).
    #[test]
    fn a_read_error_submits_nothing() {
        let m = mock(true);
        let mut gc = Gc::new(0);
        let mut r = GcReport::default();
        assert!(gc.cycle(&m, &mut r).is_err());
        assert!(*m.reads.lock().unwrap() > 0);
        assert!(m.submitted.lock().unwrap().is_empty());
        assert!(gc.pending.is_empty());
    }

    /// A corrupt plug source: the cycle that meets it submits nothing;
    /// the next one cleans the victim without plugging from it, so none
    /// of its bytes are ever copied.
    #[test]
    fn a_corrupt_plug_source_is_never_copied() {
        let m = Mock {
            corrupt: Some(ObjSeq(2)),
            ..mock(false)
        };
        let mut gc = Gc::new(0);
        let mut r = GcReport::default();
        let e = gc.cycle(&m, &mut r).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(m.submitted.lock().unwrap().is_empty());
        assert!(gc.corrupt.contains(&ObjSeq(2)));
        assert!(gc.cycle(&m, &mut r).unwrap());
        let sub = m.submitted.lock().unwrap();
        assert!(!sub.is_empty());
        for (mv, data) in sub.iter() {
            assert!(mv.iter().all(|m| m.src_obj == ObjSeq(1)), "{mv:?}");
            assert!(data.iter().all(|&b| b == 1));
        }
        assert_eq!(r.objects_cleaned, 1);
    }

    /// A corrupt victim: a forced run skips it (nothing copied, not
    /// pending deletion) and fails naming it.
    #[test]
    fn a_forced_run_skips_a_corrupt_victim_and_fails_naming_it() {
        let m = Mock {
            corrupt: Some(ObjSeq(1)),
            ..mock(false)
        };
        let mut gc = Gc::new(0);
        let e = gc.run_now(&m).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        let msg = e.to_string();
        assert!(msg.contains("skipped objects 0000000000000001"), "{msg}");
        assert!(m.submitted.lock().unwrap().is_empty());
        assert!(!gc.pending.contains_key(&ObjSeq(1)));
        // Background steps go on without it.
        assert!(!gc.background_step(&m).unwrap());
    }

    #[test]
    fn the_rate_limit_paces_bytes() {
        let m = mock(false);
        let mut gc = Gc::new(10 << 20);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(gc.pace(&m, 1 << 20));
        }
        // 4 MiB at 10 MiB/s: about 0.4 s.
        let el = t0.elapsed();
        assert!(el >= Duration::from_millis(300), "{el:?}");
        assert!(el < Duration::from_secs(3), "{el:?}");
    }
}
