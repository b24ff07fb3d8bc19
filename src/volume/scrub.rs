//! Scrub: read and verify everything an image needs, like `ceph pg
//! deep-scrub` for one image. Nothing is written.
//!
//! What is read: the superblock; every piece of every checkpoint it lists
//! and of every snapshot's checkpoint; every object those checkpoints'
//! tables and extents name; and the objects a recovery would roll forward
//! after the newest usable listed checkpoint (consecutive sequences up to
//! the first missing one; an invalid object among them is reported and
//! the walk goes on past it, as a recovery refuses the open there and
//! keeps everything above). Each object is read whole: its header must
//! decode (crc), belong to the image and sequence, and match the object's
//! length; each 64 KiB chunk of a version-2 object must match its crc (a
//! version-1 object's data is checked against its one crc). A bad
//! superblock still leaves the objects to check: then every object named
//! `IMAGE.<seq>` is checked on its own.
//!
//! A store error on one object or piece (an EIO: RADOS returns one when
//! BlueStore's own checksum fails on every replica) is reported as a bad
//! piece and the scrub goes on; only a failure to read the superblock or
//! to list the objects ends it with an error.
//!
//! A clone's parent image is not read (scrub it on its own).
//!
//! On an attached image the scrub runs beside the server: objects are
//! immutable once put, so reading them concurrently is safe. The server may
//! retire checkpoints and its GC may delete objects meanwhile. So when the
//! superblock has changed by the end of the scrub, an object or piece that
//! went missing (or became a tombstone) is judged by the superblock as it
//! is at the end ([`Needs`]): if that still needs it, it is bad; if not,
//! it is counted as `vanished`. A listed checkpoint retired while the plan
//! reads it would leave what it names unchecked: the plan is then made
//! again from the newer superblock ([`Scrub::plan`]). A checksum mismatch
//! is always bad.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::destage::TOMBSTONE;
use super::recovery::{read_object_header, Found};
use crate::backend::ObjectStore;
use crate::catalog::image::{object_name, parse_object_name, read_superblock};
use crate::error::{Error, ErrorKind, Result};
use crate::format::checkpoint::CheckpointPiece;
use crate::format::chunks::{ChunkCrcs, DataCheck};
use crate::format::gcobject::{self, GcHeader};
use crate::format::object::{self, ObjectHeader};
use crate::format::superblock::{CheckpointRef, Superblock, MAX_ENCODED};
use crate::units::{ImageUuid, ObjSeq, SECTOR};

/// One bad piece: which object, where, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadPiece {
    /// Object name (the superblock's is the image name).
    pub object: String,
    /// Byte offset in the object of the bad chunk, if the fault has one.
    pub offset: Option<u64>,
    /// What is wrong.
    pub error: String,
}

/// What a scrub found.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ScrubReport {
    /// The image, as given.
    pub image: String,
    /// Data and GC objects read and checked.
    pub objects: u64,
    /// Bytes read: superblock, checkpoint pieces and objects.
    pub bytes: u64,
    /// Checkpoints whose every piece was read (listed and snapshots').
    pub checkpoints: u64,
    /// Checkpoint pieces read.
    pub checkpoint_pieces: u64,
    /// 64 KiB chunks verified against their crcs (version-2 objects).
    pub chunks: u64,
    /// Version-1 objects verified whole against their one data crc.
    pub legacy_objects: u64,
    /// Objects or pieces that went missing (or became tombstones) while
    /// the scrub ran on an image that changed meanwhile, and that the
    /// superblock at the end no longer needs (an attached image's GC or
    /// checkpoints).
    pub vanished: u64,
    /// The superblock changed while the scrub ran (the image is attached).
    pub changed: bool,
    /// Seconds the scrub took.
    pub seconds: f64,
    /// Every bad piece found (empty: the image is clean).
    pub bad: Vec<BadPiece>,
}

impl ScrubReport {
    /// No bad piece.
    pub fn clean(&self) -> bool {
        self.bad.is_empty()
    }
}

/// A checkpoint's last object and the objects it names, each with its data
/// sectors (0 where only an extent names it).
type CkptObjects = (ObjSeq, Vec<(ObjSeq, u64)>);

/// What a faulty piece looked like.
enum Fault {
    /// Missing, or (a checkpoint piece) a tombstone: on an image that
    /// changed meanwhile it may have been retired ([`Needs::needs`]).
    Gone {
        seq: ObjSeq,
        tombstone: bool,
        piece: BadPiece,
    },
    Bad(BadPiece),
}

fn bad(object: &str, offset: Option<u64>, error: impl Into<String>) -> Fault {
    Fault::Bad(BadPiece {
        object: object.to_owned(),
        offset,
        error: error.into(),
    })
}

fn gone(object: &str, seq: ObjSeq, tombstone: bool, error: impl Into<String>) -> Fault {
    Fault::Gone {
        seq,
        tombstone,
        piece: BadPiece {
            object: object.to_owned(),
            offset: None,
            error: error.into(),
        },
    }
}

/// A store error on reading `object` (at `offset`, if a ranged read): a
/// bad piece, with the error and its cause.
fn unreadable(object: &str, offset: Option<u64>, e: &Error) -> Fault {
    bad(object, offset, format!("cannot be read: {}", e.duplicate()))
}

/// A scrub after its plan: the objects to read. [`Scrub::run`] reads them.
pub struct Scrub {
    store: Arc<dyn ObjectStore>,
    image: String,
    /// The superblock as read at the start (`None`: it was bad).
    sb: Option<Superblock>,
    objects: Vec<ObjSeq>,
    /// Estimated bytes of `objects` (for a progress bar).
    estimate: u64,
    report: ScrubReport,
    faults: Vec<Fault>,
    started: Instant,
}

impl Scrub {
    /// Read the superblock and checkpoints of `image` and list the objects
    /// to check. Fails only if the image does not exist, or if its
    /// superblock cannot be read (or, when it is bad, its objects cannot
    /// be listed). A piece that cannot be read is a bad piece of the
    /// report.
    pub fn plan(store: Arc<dyn ObjectStore>, image: &str, label: &str) -> Result<Scrub> {
        let mut s = Scrub {
            store,
            image: image.to_owned(),
            sb: None,
            objects: Vec::new(),
            estimate: 0,
            report: ScrubReport {
                image: label.to_owned(),
                ..ScrubReport::default()
            },
            faults: Vec::new(),
            started: Instant::now(),
        };
        let raw = s.store.get(image, 0, MAX_ENCODED.next_multiple_of(4096))?;
        if raw.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("image '{image}' does not exist in {}", s.store.describe()),
            ));
        }
        s.report.bytes += raw.len() as u64;
        match Superblock::decode(&raw) {
            Ok(sb) => s.plan_from_current(sb),
            Err(e) => {
                s.faults.push(bad(image, None, e.to_string()));
                // Nothing says which objects are needed: check every one.
                for n in s.store.list(&format!("{image}."))? {
                    if let Some(seq) = parse_object_name(image, &n) {
                        s.objects.push(seq);
                    }
                }
                s.estimate = s.objects.len() as u64 * (8 << 20);
            }
        }
        Ok(s)
    }

    /// Objects to read.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Estimated bytes to read (exact for objects rolled forward, data
    /// sectors plus a 4 KiB header for the others).
    pub fn estimated_bytes(&self) -> u64 {
        self.estimate
    }

    /// Plan from superblock `sb`, as it was just read. A checkpoint piece
    /// it lists that is missing or a tombstone may have been retired by an
    /// attached server while we read it: then everything that checkpoint
    /// names would go unchecked (and count as vanished), so the plan is made
    /// again from the newer superblock, a few times. An image that keeps
    /// changing that fast is reported (the scrub could not plan), never
    /// taken as clean.
    fn plan_from_current(&mut self, mut sb: Superblock) {
        const TRIES: usize = 4;
        for attempt in 1..=TRIES {
            let (faults, checkpoints, pieces) = (
                self.faults.len(),
                self.report.checkpoints,
                self.report.checkpoint_pieces,
            );
            self.plan_from(&sb);
            let raced = self.faults[faults..]
                .iter()
                .any(|f| matches!(f, Fault::Gone { .. }));
            if !raced {
                break;
            }
            let newer = match read_superblock(self.store.as_ref(), &self.image) {
                Ok(n) if n.update_seq != sb.update_seq => n,
                // Unchanged: the piece is lost, not retired (bad at the end).
                _ => break,
            };
            if attempt == TRIES {
                self.faults.push(bad(
                    &self.image,
                    None,
                    format!(
                        "the image changed {TRIES} times while the scrub read its checkpoints, \
                         so what they name may be unchecked: scrub again, or detach the image first"
                    ),
                ));
                break;
            }
            // Forget this plan (the bytes read stay counted) and plan again.
            self.report.changed = true;
            self.faults.truncate(faults);
            self.report.checkpoints = checkpoints;
            self.report.checkpoint_pieces = pieces;
            sb = newer;
        }
        self.sb = Some(sb);
    }

    fn plan_from(&mut self, sb: &Superblock) {
        let mut needed: BTreeSet<ObjSeq> = BTreeSet::new();
        let mut estimate = 0u64;
        let mut roll_from = None;
        let snaps: Vec<CheckpointRef> = sb.snapshots.iter().map(|s| s.ckpt).collect();
        for (i, c) in sb.checkpoints.iter().chain(snaps.iter()).enumerate() {
            let got = read_checkpoint(self.store.as_ref(), &self.image, sb.uuid, *c);
            self.report.bytes += got.bytes;
            self.report.checkpoint_pieces += got.pieces;
            self.faults.extend(got.faults);
            let Some((last_obj, rows)) = got.objects else {
                continue;
            };
            self.report.checkpoints += 1;
            for (obj, data_sectors) in rows {
                if needed.insert(obj) {
                    estimate += data_sectors * SECTOR + 4096;
                }
            }
            // The newest usable listed one is where a recovery rolls
            // forward from.
            if i < sb.checkpoints.len() && roll_from.is_none() {
                roll_from = Some(last_obj.next());
            }
        }
        // Base links: their pieces are read and checked (a listed delta is
        // loaded through them); their tables are older than the listed
        // checkpoints', so what they list is not needed.
        for c in &sb.links {
            let got = read_checkpoint(self.store.as_ref(), &self.image, sb.uuid, *c);
            self.report.bytes += got.bytes;
            self.report.checkpoint_pieces += got.pieces;
            self.faults.extend(got.faults);
        }
        // The objects after it, as a recovery would roll them forward.
        let listed: BTreeSet<ObjSeq> = sb
            .checkpoints
            .iter()
            .chain(snaps.iter())
            .chain(sb.links.iter())
            .flat_map(|c| c.piece_seqs())
            .collect();
        let mut seq = roll_from.unwrap_or(ObjSeq(1));
        loop {
            if listed.contains(&seq) {
                seq = seq.next();
                continue;
            }
            match read_object_header(self.store.as_ref(), &self.image, sb, seq) {
                Ok(Found::Missing) => break,
                Ok(Found::Checkpoint) => {}
                Ok(Found::Data(h)) => {
                    if needed.insert(seq) {
                        estimate += u64::from(h.header_bytes) + u64::from(h.data_sectors) * SECTOR;
                    }
                }
                Ok(Found::Gc(h)) => {
                    if needed.insert(seq) {
                        estimate += u64::from(h.header_bytes) + u64::from(h.data_sectors) * SECTOR;
                    }
                }
                Ok(Found::Invalid(_)) => {
                    // A recovery refuses the open here (and keeps what is
                    // above): the object is read below, which names what
                    // is wrong with it, and the walk goes on.
                    needed.insert(seq);
                }
                Err(e) => {
                    // Does it exist? Then it is read (and reported) below
                    // like any other; if not, the log ends here. If that
                    // cannot be told either, say so and stop the walk.
                    let name = object_name(&self.image, seq);
                    match self.store.stat(&name) {
                        Ok(Some(_)) => {
                            needed.insert(seq);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            self.faults.push(unreadable(&name, Some(0), &e));
                            break;
                        }
                    }
                }
            }
            seq = seq.next();
        }
        self.objects = needed.into_iter().collect();
        self.estimate = estimate;
    }

    /// Read and check the planned objects with `threads` readers;
    /// `progress` gets the bytes of each object read. Then re-read the
    /// superblock to tell vanished pieces from missing ones. A store error
    /// on an object is a bad piece of the report, never the end of the
    /// scrub.
    pub fn run(mut self, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> ScrubReport {
        let next = AtomicUsize::new(0);
        let faults = Mutex::new(Vec::new());
        let counts = Counts::default();
        let uuid = self.sb.as_ref().map(|sb| sb.uuid);
        std::thread::scope(|sc| {
            for _ in 0..threads.max(1) {
                sc.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seq) = self.objects.get(i) else {
                        return;
                    };
                    let (n, found) =
                        check_object(self.store.as_ref(), &self.image, uuid, seq, &counts);
                    progress(n);
                    faults
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(found);
                });
            }
        });
        self.faults
            .extend(faults.into_inner().unwrap_or_else(|e| e.into_inner()));
        let r = &mut self.report;
        r.objects += counts.objects.load(Ordering::Relaxed);
        r.bytes += counts.bytes.load(Ordering::Relaxed);
        r.chunks += counts.chunks.load(Ordering::Relaxed);
        r.legacy_objects += counts.legacy.load(Ordering::Relaxed);
        r.checkpoint_pieces += counts.pieces.load(Ordering::Relaxed);
        // Did the image change meanwhile (an attached server)? Then what
        // went missing is judged by what the image needs now.
        let mut needs = None;
        if let Some(start) = &self.sb {
            match read_superblock(self.store.as_ref(), &self.image) {
                Ok(end) if end.update_seq != start.update_seq => {
                    r.changed = true;
                    if self.faults.iter().any(|f| matches!(f, Fault::Gone { .. })) {
                        let (n, bytes) = Needs::at_end(self.store.as_ref(), &self.image, end);
                        r.bytes += bytes;
                        needs = Some(n);
                    }
                }
                Ok(_) => {}
                Err(e) => r.bad.push(BadPiece {
                    object: self.image.clone(),
                    offset: None,
                    error: format!(
                        "superblock cannot be read again at the end of the scrub: {}",
                        e.duplicate()
                    ),
                }),
            }
        }
        for f in self.faults {
            match f {
                Fault::Bad(p) => r.bad.push(p),
                Fault::Gone {
                    seq,
                    tombstone,
                    mut piece,
                } => match &needs {
                    Some(n) if !n.needs(seq, tombstone) => r.vanished += 1,
                    Some(_) => {
                        piece
                            .error
                            .push_str(" (the superblock at the end of the scrub still needs it)");
                        r.bad.push(piece);
                    }
                    None => r.bad.push(piece),
                },
            }
        }
        r.bad
            .sort_by(|a, b| (&a.object, a.offset).cmp(&(&b.object, b.offset)));
        r.seconds = self.started.elapsed().as_secs_f64();
        self.report
    }
}

/// What a superblock needs of the store, to judge a piece that went
/// missing during a scrub of a changing image:
/// - the pieces of its listed and snapshot checkpoints;
/// - the objects those checkpoints name (tables and extents);
/// - every object above the oldest listed checkpoint's last object: a
///   roll-forward from a listed checkpoint visits each (a missing one is
///   a gap that ends the log), and GC deletes none of them (ordering 21).
///
/// Retired checkpoints' pieces become tombstones (never needed unless
/// listed again) and GC deletes objects at or below that floor that no
/// listed checkpoint names; those count as vanished.
struct Needs {
    pieces: BTreeSet<ObjSeq>,
    objects: BTreeSet<ObjSeq>,
    /// Every object above this is needed; `None` when one of the
    /// superblock's checkpoints could not be read, so what it names is
    /// unknown: then every missing object is taken as needed.
    floor: Option<ObjSeq>,
}

impl Needs {
    /// What `sb` needs, reading its checkpoints; also whether every one
    /// could be read, and the bytes read.
    fn of(store: &dyn ObjectStore, image: &str, sb: &Superblock) -> (Needs, bool, u64) {
        let snaps = sb.snapshots.iter().map(|s| s.ckpt);
        let all: Vec<CheckpointRef> = sb.checkpoints.iter().copied().chain(snaps).collect();
        let mut n = Needs {
            pieces: all
                .iter()
                .chain(sb.links.iter())
                .flat_map(|c| c.piece_seqs())
                .collect(),
            objects: BTreeSet::new(),
            floor: None,
        };
        // No listed checkpoint: a recovery rolls forward from object 1.
        let mut floor = if sb.checkpoints.is_empty() {
            Some(ObjSeq(0))
        } else {
            None
        };
        let mut complete = true;
        let mut bytes = 0;
        for (i, c) in all.iter().enumerate() {
            let got = read_checkpoint(store, image, sb.uuid, *c);
            bytes += got.bytes;
            let Some((last_obj, rows)) = got.objects else {
                complete = false;
                continue;
            };
            n.objects.extend(rows.into_iter().map(|(o, _)| o));
            if i < sb.checkpoints.len() {
                floor = Some(floor.map_or(last_obj, |f: ObjSeq| f.min(last_obj)));
            }
        }
        if complete {
            n.floor = floor;
        }
        (n, complete, bytes)
    }

    /// What the superblock read at the end of a scrub (`end`) needs. A
    /// checkpoint of it that cannot be read may just have been retired by
    /// the server: then a newer superblock is read and used, a few times.
    fn at_end(store: &dyn ObjectStore, image: &str, mut end: Superblock) -> (Needs, u64) {
        let mut bytes = 0;
        let mut tries = 0;
        loop {
            let (n, complete, b) = Needs::of(store, image, &end);
            bytes += b;
            tries += 1;
            if complete || tries == 4 {
                return (n, bytes);
            }
            match read_superblock(store, image) {
                Ok(newer) if newer.update_seq != end.update_seq => end = newer,
                _ => return (n, bytes),
            }
        }
    }

    /// Is object `seq`, found missing (or a tombstone), still needed?
    fn needs(&self, seq: ObjSeq, tombstone: bool) -> bool {
        if self.pieces.contains(&seq) {
            return true;
        }
        // A tombstone is a retired piece: only a listed one is needed.
        if tombstone {
            return false;
        }
        self.objects.contains(&seq) || self.floor.is_none_or(|f| seq > f)
    }
}

/// What reading one checkpoint found.
#[derive(Default)]
struct CkptRead {
    /// Its last object and the objects it names, if every piece is good.
    objects: Option<CkptObjects>,
    faults: Vec<Fault>,
    bytes: u64,
    pieces: u64,
}

/// Read and check every piece of checkpoint `c` of image `image` (`uuid`).
fn read_checkpoint(
    store: &dyn ObjectStore,
    image: &str,
    uuid: ImageUuid,
    c: CheckpointRef,
) -> CkptRead {
    let mut got = CkptRead::default();
    let mut rows = Vec::new();
    let mut last_obj = None;
    let mut ok = true;
    for (i, seq) in c.piece_seqs().enumerate() {
        let name = object_name(image, seq);
        let missing = || gone(&name, seq, false, "checkpoint piece is missing");
        let size = match store.stat(&name) {
            Ok(Some(size)) => size,
            Ok(None) => {
                got.faults.push(missing());
                ok = false;
                continue;
            }
            Err(e) => {
                got.faults.push(unreadable(&name, None, &e));
                ok = false;
                continue;
            }
        };
        let buf = match store.get(&name, 0, size as usize) {
            Ok(b) => b,
            Err(e) => {
                got.faults.push(if e.kind() == ErrorKind::NotFound {
                    missing()
                } else {
                    unreadable(&name, None, &e)
                });
                ok = false;
                continue;
            }
        };
        got.bytes += buf.len() as u64;
        got.pieces += 1;
        if buf == TOMBSTONE {
            got.faults.push(gone(
                &name,
                seq,
                true,
                "checkpoint piece is a tombstone (retired checkpoint)",
            ));
            ok = false;
            continue;
        }
        let p = match CheckpointPiece::decode(&buf) {
            Ok(p) => p,
            Err(e) => {
                got.faults.push(bad(&name, None, e.to_string()));
                ok = false;
                continue;
            }
        };
        if p.uuid != uuid || p.ckpt_seq != c.seq || p.index as usize != i || p.count != c.pieces {
            got.faults.push(bad(
                &name,
                None,
                format!(
                    "checkpoint piece does not belong to checkpoint {} of this image",
                    c.seq
                ),
            ));
            ok = false;
            continue;
        }
        last_obj = Some(p.last_obj_seq);
        // Rows with no live data name objects awaiting deletion (ordering
        // 32), which may be gone already: not needed.
        rows.extend(
            p.objects
                .iter()
                .filter(|o| o.live_sectors > 0)
                .map(|o| (o.obj, o.data_sectors)),
        );
        rows.extend(
            p.extents
                .iter()
                .filter(|x| x.obj.0 != 0)
                .map(|x| (x.obj, 0)),
        );
    }
    if let (true, Some(l)) = (ok, last_obj) {
        got.objects = Some((l, rows));
    }
    got
}

#[derive(Default)]
struct Counts {
    objects: AtomicU64,
    bytes: AtomicU64,
    chunks: AtomicU64,
    legacy: AtomicU64,
    pieces: AtomicU64,
}

/// Objects are read in pieces of this many bytes (a multiple of the chunk
/// size): each piece is checked while it is still in the CPU's cache, and
/// no buffer of a whole object is allocated and zeroed.
const PIECE: u64 = 1 << 20;

/// Read object `seq` whole (in pieces) and check it: the bytes read and
/// what is wrong. `uuid`: the image's, if the superblock was readable. A
/// store error ends the object's check with a bad piece (what was checked
/// before it stays reported).
fn check_object(
    store: &dyn ObjectStore,
    image: &str,
    uuid: Option<ImageUuid>,
    seq: ObjSeq,
    counts: &Counts,
) -> (u64, Vec<Fault>) {
    let name = object_name(image, seq);
    let mut n = 0;
    let mut found = Vec::new();
    if let Err(f) = read_and_check(store, &name, uuid, seq, counts, &mut n, &mut found) {
        found.push(f);
    }
    counts.bytes.fetch_add(n, Ordering::Relaxed);
    (n, found)
}

/// The body of [`check_object`]: `n` counts the bytes read, `found` what
/// is wrong; an error is the fault that ends the check.
fn read_and_check(
    store: &dyn ObjectStore,
    name: &str,
    uuid: Option<ImageUuid>,
    seq: ObjSeq,
    counts: &Counts,
    n: &mut u64,
    found: &mut Vec<Fault>,
) -> Result<(), Fault> {
    let missing = || gone(name, seq, false, "object is missing");
    let size = match store.stat(name) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(missing()),
        Err(e) => return Err(unreadable(name, None, &e)),
    };
    let get = |off: u64, len: u64| match store.get(name, off, len as usize) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(missing()),
        Err(e) => Err(unreadable(name, Some(off), &e)),
    };
    let mut first = get(0, PIECE.min(size))?;
    *n += first.len() as u64;
    let magic = first.get(..8).unwrap_or(&[]);
    let is_gc = magic == gcobject::MAGIC;
    if !is_gc && magic != object::MAGIC {
        let bytes = if (first.len() as u64) < size {
            let b = get(0, size)?;
            *n += b.len() as u64;
            b
        } else {
            first
        };
        found.extend(check_other(name, uuid, &bytes, counts));
        return Ok(());
    }
    // The header, read further if it is longer than the first piece.
    let need = if is_gc {
        GcHeader::needed_bytes(&first)
    } else {
        ObjectHeader::needed_bytes(&first)
    };
    if let Ok(need) = need {
        if need > first.len() {
            first = get(0, need as u64)?;
            *n += first.len() as u64;
        }
    }
    let decoded = if is_gc {
        GcHeader::decode(&first)
            .map(|h| (h.uuid, h.seq, h.header_bytes, h.data_sectors, h.data_check))
            .map_err(|e| e.to_string())
    } else {
        ObjectHeader::decode(&first)
            .map(|h| (h.uuid, h.seq, h.header_bytes, h.data_sectors, h.data_check))
            .map_err(|e| e.to_string())
    };
    let (hu, hs, header_bytes, data_sectors, check) = decoded.map_err(|e| bad(name, Some(0), e))?;
    if uuid.is_some_and(|u| u != hu) || hs != seq {
        return Err(bad(
            name,
            Some(0),
            format!("header names image {hu} object {hs}, not this one"),
        ));
    }
    counts.objects.fetch_add(1, Ordering::Relaxed);
    let end = u64::from(header_bytes) + u64::from(data_sectors) * SECTOR;
    if size != end {
        found.push(bad(
            name,
            Some(size.min(end)),
            format!("object is {size} bytes, its header says {end}"),
        ));
    }
    // The data, piece by piece (the first piece is reused when the header
    // fitted in it).
    let mut whole = 0u32;
    let mut at = 0u64;
    let mut piece = Some(first).filter(|b| b.len() as u64 == PIECE.min(size));
    while at < size.min(end) {
        let bytes = match piece.take() {
            Some(b) => b,
            None => {
                let b = get(at, PIECE.min(size - at))?;
                *n += b.len() as u64;
                b
            }
        };
        if bytes.is_empty() {
            break;
        }
        match &check {
            DataCheck::Chunks(t) => check_chunks(name, t, at, &bytes, counts, found),
            DataCheck::Whole(_) => {
                let lo = u64::from(header_bytes).max(at);
                let hi = end.min(at + bytes.len() as u64);
                if lo < hi {
                    whole =
                        crate::format::crc(whole, &bytes[(lo - at) as usize..(hi - at) as usize]);
                }
            }
        }
        at += bytes.len() as u64;
    }
    if let DataCheck::Whole(stored) = check {
        counts.legacy.fetch_add(1, Ordering::Relaxed);
        if at >= end && whole != stored {
            found.push(bad(
                name,
                Some(u64::from(header_bytes)),
                format!("data: checksum mismatch (stored {stored:#010x}, computed {whole:#010x})"),
            ));
        }
    }
    Ok(())
}

/// An object that is neither a data nor a GC object: after a bad
/// superblock (every object is scanned) a checkpoint piece or tombstone
/// checks itself; anything else is bad.
fn check_other(name: &str, uuid: Option<ImageUuid>, bytes: &[u8], counts: &Counts) -> Vec<Fault> {
    if uuid.is_none() && bytes.get(..8) == Some(b"LSVDCKP1".as_slice()) {
        if bytes == TOMBSTONE {
            return Vec::new();
        }
        counts.pieces.fetch_add(1, Ordering::Relaxed);
        return match CheckpointPiece::decode(bytes) {
            Ok(_) => Vec::new(),
            Err(e) => vec![bad(name, None, e.to_string())],
        };
    }
    vec![bad(
        name,
        Some(0),
        "not a data or GC object (unknown magic)",
    )]
}

/// Check every chunk of a version-2 object held whole in `bytes` (object
/// bytes from `at`, chunk-aligned) on its own, so each bad one is
/// reported.
fn check_chunks(
    name: &str,
    t: &ChunkCrcs,
    at: u64,
    bytes: &[u8],
    counts: &Counts,
    found: &mut Vec<Fault>,
) {
    let stop = at + bytes.len() as u64;
    for i in 0..t.crcs().len() {
        let r = t.chunk_range(i);
        if r.end <= at || r.start >= stop {
            continue;
        }
        if r.end > stop {
            // Cut short: reported as a short object.
            break;
        }
        counts.chunks.fetch_add(1, Ordering::Relaxed);
        let d = &bytes[(r.start - at) as usize..(r.end - at) as usize];
        if let Err(e) = t.verify(r.start, d) {
            found.push(bad(name, Some(e.offset()), e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemStore;
    use crate::config::Config;
    use crate::format::object::{ObjOp, OpKind};
    use crate::units::{JournalSeq, Lba};
    use crate::volume::image::create_image;
    use crate::volume::{Volume, VolumeOptions};

    fn scrub(store: &Arc<dyn ObjectStore>) -> ScrubReport {
        Scrub::plan(store.clone(), "img", "p/img")
            .unwrap()
            .run(2, &|_| {})
    }

    fn flip(store: &Arc<dyn ObjectStore>, name: &str, off: usize) {
        let mut b = store.get(name, 0, 1 << 30).unwrap();
        b[off] ^= 0x11;
        store.put(name, &b).unwrap();
    }

    /// An image with a version-1 object (the old encoder) and version-2
    /// objects larger than a read piece: a version-1 object is checked
    /// whole, and every bad chunk of a version-2 object is reported on its
    /// own, with its offset.
    #[test]
    fn scrub_checks_old_objects_whole_and_reports_each_bad_chunk() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let uuid = create_image(store.as_ref(), "img", 16 << 20).unwrap();
        let old: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 241) as u8).collect();
        let op = ObjOp {
            lba: Lba(0),
            sectors: 512,
            kind: OpKind::Write,
            data_offset: 0,
        };
        let o1 = ObjectHeader::encode_object_v1(uuid, ObjSeq(1), JournalSeq(1), &[op], &old);
        store.put(&object_name("img", ObjSeq(1)), &o1).unwrap();
        let config = Config {
            no_gc: true,
            no_rcache: true,
            backend_obj_bytes: 4 << 20,
            wlog_chunk_bytes: 1 << 20,
            wlog_bytes: 8 << 20,
            rcache_dir: dir.path().join("rcache"),
            ..Config::default()
        };
        let v = Volume::open(VolumeOptions {
            config,
            store: store.clone(),
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        })
        .unwrap();
        let new: Vec<u8> = (0..4u32 << 20).map(|i| (i % 239) as u8).collect();
        v.write(1 << 20, &new).unwrap();
        v.close().unwrap();
        let r = scrub(&store);
        assert!(r.clean() && !r.changed, "{r:?}");
        assert_eq!(r.legacy_objects, 1, "{r:?}");
        assert!(r.objects >= 2 && r.chunks >= 64, "{r:?}");
        assert_eq!(r.checkpoints, 1, "{r:?}");
        // The biggest version-2 object: two chunks in different pieces.
        let big = store
            .list("img.")
            .unwrap()
            .into_iter()
            .filter(|n| {
                store.get(n, 0, 8).unwrap() == object::MAGIC
                    && store.stat(n).unwrap().unwrap() > 2 * PIECE
            })
            .max_by_key(|n| store.stat(n).unwrap())
            .expect("an object over two pieces");
        flip(&store, &big, 70_000);
        flip(&store, &big, (PIECE + 5 * 65536 + 3) as usize);
        flip(&store, &object_name("img", ObjSeq(1)), 4096 + 777);
        let r = scrub(&store);
        let got: Vec<(String, Option<u64>)> =
            r.bad.iter().map(|b| (b.object.clone(), b.offset)).collect();
        assert_eq!(
            got,
            vec![
                (object_name("img", ObjSeq(1)), Some(4096)),
                (big.clone(), Some(65536)),
                (big.clone(), Some(PIECE + 5 * 65536)),
            ],
            "{r:?}"
        );
        assert!(r.bad[0].error.contains("checksum mismatch"), "{r:?}");
        assert!(r.bad[1].error.contains("fails its checksum"), "{r:?}");
        // A truncated object is reported, not read past.
        let b = store.get(&big, 0, 1 << 30).unwrap();
        store.put(&big, &b[..b.len() - 4096]).unwrap();
        let r = scrub(&store);
        assert!(
            r.bad
                .iter()
                .any(|x| x.object == big && x.error.contains("its header says")),
            "{r:?}"
        );
    }
}
