//! Build the state a power cut may leave, from a recording (see the parent
//! module): [`capture_baseline`] before the recorded process starts,
//! [`apply`] after it is dead (killed, or a volume stopped with `crash()`).
//!
//! The state starts from the baseline (the journal file's bytes and the
//! store directory's files when the recording started; everything in them
//! was durable then). Every recorded write, file write and directory change
//! covered by a completed flush is applied in log order. Each one that is
//! not covered is, independently, kept, dropped or (writes) torn: a random
//! subset of its 4 KiB blocks lands. Uncovered journal and file writes
//! land in a random order; uncovered directory changes are applied as a
//! random subset in log order (a later change may persist without an
//! earlier one; an uncovered unlink may be undone, bringing the file back).
//! A block of a file whose write did not land reads as zeros. Each cut
//! picks a mode: every uncovered write dropped (an empty volatile cache),
//! every one kept (what SIGKILL leaves), or a random mix.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

use super::{read_events, Event, INODES};
use crate::error::{Error, Result};

/// Tear granularity.
pub const TEAR: u64 = 4096;
/// Copy of the journal file when the recording started.
const JOURNAL_BASE: &str = "journal.base";
/// Hard links to the store directory's files when the recording started.
const STORE_BASE: &str = "base";
/// Scratch space for files being put in place.
const OUT: &str = "out";

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Whether a store file is outside the model: lock files and the
/// directories of shared lock holders' descriptions (`.readers.<lock>`),
/// which hold no data; after a cut no process holds a lock, so whatever of
/// them a cut keeps names nobody (see `backend::dir`).
fn unmodelled(name: &str) -> bool {
    name.starts_with(".lock.") || name.starts_with(".readers.")
}

/// Record what is durable now, before a recording into `rec_dir` starts:
/// a copy of `journal` (if it exists) and hard links to every file of
/// `store_dir`. Call it with nothing writing to either.
pub fn capture_baseline(rec_dir: &Path, journal: &Path, store_dir: &Path) -> Result<()> {
    let base = rec_dir.join(STORE_BASE);
    fs::create_dir_all(&base).map_err(io(format!("create {}", base.display())))?;
    match fs::copy(journal, rec_dir.join(JOURNAL_BASE)) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("copy {}", journal.display()), e)),
    }
    for entry in fs::read_dir(store_dir).map_err(io(format!("list {}", store_dir.display())))? {
        let entry = entry.map_err(io(format!("list {}", store_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if unmodelled(&name) {
            continue;
        }
        fs::hard_link(entry.path(), base.join(&name))
            .map_err(io(format!("link {}", entry.path().display())))?;
    }
    Ok(())
}

/// How one cut treats what no flush covered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Everything uncovered is lost.
    DropAll,
    /// Everything uncovered lands (the state SIGKILL leaves).
    KeepAll,
    /// Each uncovered item is kept with probability `keep`, else torn
    /// (writes of more than one block) with probability `tear`, else lost.
    Random {
        /// Chance to land whole.
        keep: f64,
        /// Chance to be torn, of those not kept.
        tear: f64,
    },
}

impl Mode {
    /// A mode picked by `rng`: 15% drop all, 10% keep all, otherwise
    /// random with a keep chance drawn uniformly.
    pub fn pick(rng: &mut dyn RngCore) -> Mode {
        match rng.gen_range(0..100u32) {
            0..=14 => Mode::DropAll,
            15..=24 => Mode::KeepAll,
            _ => Mode::Random {
                keep: rng.gen_range(0.0..1.0),
                tear: 0.5,
            },
        }
    }
}

/// What happened to one uncovered write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Kept,
    Dropped,
    Torn,
}

/// What a cut did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CutReport {
    /// The mode, for messages.
    pub mode: String,
    /// Journal writes covered by a completed fdatasync, or completed
    /// `RWF_DSYNC` writes.
    pub journal_durable: u64,
    /// Of those, the `RWF_DSYNC` writes.
    pub journal_dsync: u64,
    /// Uncovered journal writes: kept whole, lost, torn.
    pub journal_kept: u64,
    /// See `journal_kept`.
    pub journal_dropped: u64,
    /// See `journal_kept`.
    pub journal_torn: u64,
    /// Uncovered store file writes: kept whole, lost, torn.
    pub file_kept: u64,
    /// See `file_kept`.
    pub file_dropped: u64,
    /// See `file_kept`.
    pub file_torn: u64,
    /// Uncovered directory changes (create, rename, unlink): applied, lost.
    pub dir_kept: u64,
    /// See `dir_kept`.
    pub dir_dropped: u64,
    /// The uncovered journal writes and their fate (offset, bytes, fate).
    pub journal_detail: Vec<String>,
    /// The uncovered directory changes and their fate.
    pub dir_detail: Vec<String>,
}

impl CutReport {
    /// Add another cut's counts.
    pub fn add(&mut self, o: &CutReport) {
        self.journal_durable += o.journal_durable;
        self.journal_dsync += o.journal_dsync;
        self.journal_kept += o.journal_kept;
        self.journal_dropped += o.journal_dropped;
        self.journal_torn += o.journal_torn;
        self.file_kept += o.file_kept;
        self.file_dropped += o.file_dropped;
        self.file_torn += o.file_torn;
        self.dir_kept += o.dir_kept;
        self.dir_dropped += o.dir_dropped;
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        format!(
            "journal writes durable {} ({} RWF_DSYNC) / uncovered kept {} lost {} torn {}; store \
             file writes uncovered kept {} lost {} torn {}; directory changes uncovered kept {} \
             lost {}",
            self.journal_durable,
            self.journal_dsync,
            self.journal_kept,
            self.journal_dropped,
            self.journal_torn,
            self.file_kept,
            self.file_dropped,
            self.file_torn,
            self.dir_kept,
            self.dir_dropped
        )
    }
}

/// Decide an uncovered write's fate under `mode`; for a torn one, `blocks`
/// says which of its `n` blocks land.
fn fate(mode: Mode, n: u64, rng: &mut dyn RngCore, blocks: &mut Vec<bool>) -> Fate {
    blocks.clear();
    let f = match mode {
        Mode::DropAll => Fate::Dropped,
        Mode::KeepAll => Fate::Kept,
        Mode::Random { keep, tear } => {
            if rng.gen_bool(keep) {
                Fate::Kept
            } else if n > 1 && rng.gen_bool(tear) {
                Fate::Torn
            } else {
                Fate::Dropped
            }
        }
    };
    match f {
        Fate::Kept => blocks.resize(n as usize, true),
        Fate::Dropped => blocks.resize(n as usize, false),
        Fate::Torn => {
            // Some blocks land, others not (n > 1).
            blocks.extend((0..n).map(|_| rng.gen_bool(0.5)));
            let i = rng.gen_range(0..n as usize);
            let j = (i + rng.gen_range(1..n as usize)) % n as usize;
            blocks[i] = true;
            blocks[j] = false;
        }
    }
    f
}

/// Copy `src[off..off+len)` (positions in the file) into `dst`, only the
/// 4 KiB blocks `blocks` selects, skipping blocks in `masked` (a later
/// durable write owns them); grows `dst` with zeros as needed.
fn land(dst: &mut Vec<u8>, src: &[u8], off: u64, blocks: &[bool], masked: &HashSet<u64>) {
    let end = off + src.len() as u64;
    let first = off / TEAR;
    for (i, &on) in blocks.iter().enumerate() {
        let b = first + i as u64;
        if !on || masked.contains(&b) {
            continue;
        }
        let lo = (b * TEAR).max(off);
        let hi = ((b + 1) * TEAR).min(end);
        if lo >= hi {
            continue;
        }
        if dst.len() < hi as usize {
            dst.resize(hi as usize, 0);
        }
        dst[lo as usize..hi as usize]
            .copy_from_slice(&src[(lo - off) as usize..(hi - off) as usize]);
    }
}

fn blocks_of(off: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    (off + len).div_ceil(TEAR) - off / TEAR
}

/// Positions (in `evs`) of the sync starts whose completion was logged,
/// by id; the highest such position covers what was logged before it.
fn completed_starts(
    evs: &[Event],
    start: impl Fn(&Event) -> Option<u64>,
    done: impl Fn(&Event) -> Option<u64>,
) -> HashMap<u64, usize> {
    let finished: HashSet<u64> = evs.iter().filter_map(&done).collect();
    evs.iter()
        .enumerate()
        .filter_map(|(p, e)| {
            start(e)
                .filter(|id| finished.contains(id))
                .map(|id| (id, p))
        })
        .collect()
}

/// Replace `journal` and the files of `store_dir` with a state a power cut
/// at the end of the recording in `rec_dir` may leave (the recorded process
/// must be gone). `rng` picks the mode and every fate.
pub fn apply(
    rec_dir: &Path,
    journal: &Path,
    store_dir: &Path,
    rng: &mut dyn RngCore,
) -> Result<CutReport> {
    apply_at(rec_dir, journal, store_dir, None, rng)
}

/// [`apply`] for a cut at an earlier moment: only the first `upto` events
/// of the recording happened (what came after, the power cut prevented).
/// The state is built from the recording alone, never from what the files
/// hold now, so any moment can be chosen after the fact.
pub fn apply_at(
    rec_dir: &Path,
    journal: &Path,
    store_dir: &Path,
    upto: Option<usize>,
    rng: &mut dyn RngCore,
) -> Result<CutReport> {
    let mut evs = read_events(rec_dir)?;
    if let Some(n) = upto {
        evs.truncate(n);
    }
    let mode = Mode::pick(rng);
    let mut report = CutReport {
        mode: format!("{mode:?}"),
        ..CutReport::default()
    };
    cut_journal(&evs, rec_dir, journal, mode, rng, &mut report)?;
    cut_store(&evs, rec_dir, store_dir, mode, rng, &mut report)?;
    Ok(report)
}

/// The journal part of [`apply`].
fn cut_journal(
    evs: &[Event],
    rec_dir: &Path,
    journal: &Path,
    mode: Mode,
    rng: &mut dyn RngCore,
    report: &mut CutReport,
) -> Result<()> {
    let syncs = completed_starts(
        evs,
        |e| match e {
            Event::JournalSyncStart { id } => Some(*id),
            _ => None,
        },
        |e| match e {
            Event::JournalSyncDone { id } => Some(*id),
            _ => None,
        },
    );
    let covered = syncs.values().copied().max();
    let done: HashMap<u64, usize> = evs
        .iter()
        .enumerate()
        .filter_map(|(p, e)| match e {
            Event::JournalWriteDone { id } => Some((*id, p)),
            _ => None,
        })
        .collect();
    // RWF_DSYNC writes that completed: durable by themselves.
    let durable_alone: HashSet<u64> = evs
        .iter()
        .filter_map(|e| match e {
            Event::JournalWriteDurable { id } => Some(*id),
            _ => None,
        })
        .collect();
    let created = evs
        .iter()
        .position(|e| matches!(e, Event::JournalCreated { .. }));
    let mut content: Option<Vec<u8>> = match created {
        Some(p) => {
            let Event::JournalCreated { size } = evs[p] else {
                unreachable!()
            };
            Some(vec![0u8; size as usize])
        }
        None => match fs::read(rec_dir.join(JOURNAL_BASE)) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read the journal baseline".to_string(), e)),
        },
    };
    // Durable writes in log order; remember which blocks the last durable
    // write owns, so an earlier uncovered write never lands over it.
    let mut owner: HashMap<u64, usize> = HashMap::new();
    let mut pending = Vec::new();
    for (p, e) in evs.iter().enumerate() {
        let Event::JournalWrite { id, off, data } = e else {
            continue;
        };
        let durable = durable_alone.contains(id)
            || match (done.get(id), covered) {
                (Some(&d), Some(c)) => d < c,
                _ => false,
            };
        if durable {
            report.journal_durable += 1;
            report.journal_dsync += u64::from(durable_alone.contains(id));
            let Some(c) = content.as_mut() else {
                return Err(Error::new(
                    crate::error::ErrorKind::Corrupt,
                    "power-cut log: a journal write to a journal that does not exist",
                ));
            };
            let n = blocks_of(*off, data.len() as u64);
            land(c, data, *off, &vec![true; n as usize], &HashSet::new());
            for b in *off / TEAR..*off / TEAR + n {
                owner.insert(b, p);
            }
        } else {
            pending.push((p, *off, data));
        }
    }
    pending.shuffle(rng);
    let mut blocks = Vec::new();
    for (p, off, data) in pending {
        let n = blocks_of(off, data.len() as u64);
        let f = fate(mode, n, rng, &mut blocks);
        match f {
            Fate::Kept => report.journal_kept += 1,
            Fate::Dropped => report.journal_dropped += 1,
            Fate::Torn => report.journal_torn += 1,
        }
        report
            .journal_detail
            .push(format!("{off}+{} {f:?}", data.len()));
        let masked: HashSet<u64> = (off / TEAR..off / TEAR + n)
            .filter(|b| owner.get(b).is_some_and(|&q| q > p))
            .collect();
        if let Some(c) = content.as_mut() {
            land(c, data, off, &blocks, &masked);
        }
    }
    match content {
        Some(c) => fs::write(journal, c).map_err(io(format!("write {}", journal.display()))),
        None => match fs::remove_file(journal) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", journal.display()), e)),
        },
    }
}

/// Where a name's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Src {
    /// A file the baseline had under this name.
    Base(String),
    /// A file the recording created.
    New(u64),
}

/// The store part of [`apply`].
fn cut_store(
    evs: &[Event],
    rec_dir: &Path,
    store_dir: &Path,
    mode: Mode,
    rng: &mut dyn RngCore,
    report: &mut CutReport,
) -> Result<()> {
    let dir_syncs = completed_starts(
        evs,
        |e| match e {
            Event::DirSyncStart { id } => Some(*id),
            _ => None,
        },
        |e| match e {
            Event::DirSyncDone { id } => Some(*id),
            _ => None,
        },
    );
    let dir_covered = dir_syncs.values().copied().max();
    let file_syncs = completed_starts(
        evs,
        |e| match e {
            Event::FileSyncStart { id, .. } => Some(*id),
            _ => None,
        },
        |e| match e {
            Event::FileSyncDone { id } => Some(*id),
            _ => None,
        },
    );
    // Per file: the position of its last completed fsync's start.
    let mut file_covered: HashMap<u64, usize> = HashMap::new();
    for (p, e) in evs.iter().enumerate() {
        if let Event::FileSyncStart { ino, id } = e {
            if file_syncs.contains_key(id) {
                let c = file_covered.entry(*ino).or_insert(p);
                *c = (*c).max(p);
            }
        }
    }

    // The directory: the baseline's names, then the changes.
    let base_dir = rec_dir.join(STORE_BASE);
    let mut names: BTreeMap<String, Src> = BTreeMap::new();
    for entry in fs::read_dir(&base_dir).map_err(io(format!("list {}", base_dir.display())))? {
        let entry = entry.map_err(io(format!("list {}", base_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        names.insert(name.clone(), Src::Base(name));
    }
    let mut created_as: HashMap<String, u64> = HashMap::new();
    for (p, e) in evs.iter().enumerate() {
        let change = match e {
            Event::FileCreated { ino, name } => {
                created_as.insert(name.clone(), *ino);
                format!("create {name}")
            }
            Event::Rename { from, to } => format!("rename {from} -> {to}"),
            Event::Unlink { name } => format!("unlink {name}"),
            _ => continue,
        };
        let durable = dir_covered.is_some_and(|c| p < c);
        let on = durable
            || match mode {
                Mode::DropAll => false,
                Mode::KeepAll => true,
                Mode::Random { keep, .. } => rng.gen_bool(keep),
            };
        if !durable {
            if on {
                report.dir_kept += 1;
            } else {
                report.dir_dropped += 1;
            }
            report
                .dir_detail
                .push(format!("{change} {}", if on { "kept" } else { "lost" }));
        }
        if !on {
            continue;
        }
        match e {
            Event::FileCreated { ino, name } => {
                names.insert(name.clone(), Src::New(*ino));
            }
            Event::Rename { from, to } => {
                // A rename that persists carries its file, even if the
                // create of its old name did not persist.
                let src = names.remove(from).or_else(|| {
                    created_as.get(from).map(|&i| Src::New(i)).or_else(|| {
                        base_dir
                            .join(from)
                            .exists()
                            .then(|| Src::Base(from.clone()))
                    })
                });
                if let Some(src) = src {
                    names.insert(to.clone(), src);
                }
            }
            Event::Unlink { name } => {
                names.remove(name);
            }
            _ => {}
        }
    }

    // The content of each file the recording created.
    let mut writes: HashMap<u64, Vec<(usize, u64, u64)>> = HashMap::new();
    for (p, e) in evs.iter().enumerate() {
        if let Event::FileWrite { ino, off, len } = e {
            writes.entry(*ino).or_default().push((p, *off, *len));
        }
    }

    // Put the state in place: names not in it go, the others get their
    // content (unchanged files are left alone).
    let out = rec_dir.join(OUT);
    fs::create_dir_all(&out).map_err(io(format!("create {}", out.display())))?;
    for entry in fs::read_dir(store_dir).map_err(io(format!("list {}", store_dir.display())))? {
        let entry = entry.map_err(io(format!("list {}", store_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !unmodelled(&name) && !names.contains_key(&name) {
            fs::remove_file(entry.path())
                .map_err(io(format!("remove {}", entry.path().display())))?;
        }
    }
    let mut blocks = Vec::new();
    for (name, src) in &names {
        let target = store_dir.join(name);
        let staged = out.join(name);
        match src {
            Src::Base(b) => {
                let from = base_dir.join(b);
                if same_file(&from, &target) {
                    continue;
                }
                fs::hard_link(&from, &staged).map_err(io(format!("link {}", from.display())))?;
            }
            Src::New(ino) => {
                let from = rec_dir.join(INODES).join(ino.to_string());
                let full = match fs::read(&from) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(Error::io(format!("read {}", from.display()), e)),
                };
                let covered = file_covered.get(ino).copied();
                let mut data = Vec::new();
                let mut whole = true;
                let mut list = writes.get(ino).cloned().unwrap_or_default();
                list.shuffle(rng);
                for (p, off, len) in list {
                    let n = blocks_of(off, len);
                    let end = (off + len).min(full.len() as u64);
                    if off >= end {
                        continue;
                    }
                    let src = &full[off as usize..end as usize];
                    if covered.is_some_and(|c| p < c) {
                        land(
                            &mut data,
                            src,
                            off,
                            &vec![true; n as usize],
                            &HashSet::new(),
                        );
                        continue;
                    }
                    let f = fate(mode, n, rng, &mut blocks);
                    match f {
                        Fate::Kept => report.file_kept += 1,
                        Fate::Dropped => report.file_dropped += 1,
                        Fate::Torn => report.file_torn += 1,
                    }
                    whole &= f == Fate::Kept;
                    land(&mut data, src, off, &blocks, &HashSet::new());
                }
                if whole && data == full {
                    if same_file(&from, &target) {
                        continue;
                    }
                    fs::hard_link(&from, &staged)
                        .map_err(io(format!("link {}", from.display())))?;
                } else {
                    fs::write(&staged, &data).map_err(io(format!("write {}", staged.display())))?;
                }
            }
        }
        fs::rename(&staged, &target).map_err(io(format!("rename to {}", target.display())))?;
    }
    Ok(())
}

/// Whether two paths name the same file (inode).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::IoLog;
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    /// A recorded session: journal writes with and without a covering
    /// sync, a file written, synced and renamed with and without a
    /// covering directory sync.
    fn session(root: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let rec = root.join("rec");
        let journal = root.join("j");
        let store = root.join("store");
        fs::create_dir_all(&store).unwrap();
        fs::write(&journal, vec![0u8; 8 * 4096]).unwrap();
        fs::write(store.join("old"), b"old object").unwrap();
        fs::write(store.join("gone"), b"deleted later").unwrap();
        capture_baseline(&rec, &journal, &store).unwrap();
        let log = IoLog::create(&rec).unwrap();
        // Journal: block 0 durable, blocks 2..4 written after the sync.
        let w = log.journal_write(0, &[1u8; 4096]);
        log.journal_write_done(w);
        let s = log.journal_sync_start();
        log.journal_sync_done(s);
        let w = log.journal_write(2 * 4096, &[2u8; 3 * 4096]);
        log.journal_write_done(w);
        let mut f = fs::read(&journal).unwrap();
        f[..4096].fill(1);
        f[2 * 4096..5 * 4096].fill(2);
        fs::write(&journal, f).unwrap();
        // A durable put of "a", then a put of "b" and an unlink of "gone"
        // without a directory sync.
        for (name, durable) in [("a", true), ("b", false)] {
            let tmp = format!(".tmp.{name}");
            fs::write(store.join(&tmp), vec![name.as_bytes()[0]; 3 * 4096]).unwrap();
            let ino = log.file_created(&tmp, &store.join(&tmp));
            log.file_write(ino, 0, 3 * 4096);
            let s = log.file_sync_start(ino);
            log.file_sync_done(s);
            log.rename(&tmp, name);
            fs::rename(store.join(&tmp), store.join(name)).unwrap();
            if durable {
                let s = log.dir_sync_start();
                log.dir_sync_done(s);
            }
        }
        log.unlink("gone");
        fs::remove_file(store.join("gone")).unwrap();
        (rec, journal, store)
    }

    #[test]
    fn covered_writes_always_land_and_uncovered_ones_may_not() {
        let mut seen_b = [false; 2];
        let mut seen_gone = [false; 2];
        let mut seen_torn_journal = false;
        for seed in 0..64u64 {
            let dir = tempfile::tempdir_in("/tmp").unwrap();
            let (rec, journal, store) = session(dir.path());
            let mut rng = SmallRng::seed_from_u64(seed);
            let r = apply(&rec, &journal, &store, &mut rng).unwrap();
            let j = fs::read(&journal).unwrap();
            assert_eq!(j.len(), 8 * 4096);
            assert!(j[..4096].iter().all(|&b| b == 1), "durable write lost");
            assert!(j[4096..2 * 4096].iter().all(|&b| b == 0));
            for blk in 2..5 {
                let b = &j[blk * 4096..(blk + 1) * 4096];
                assert!(b.iter().all(|&x| x == 2) || b.iter().all(|&x| x == 0));
            }
            let landed = (2..5).filter(|b| j[b * 4096] == 2).count();
            seen_torn_journal |= landed == 1 || landed == 2;
            assert_eq!(r.journal_durable, 1);
            assert_eq!(fs::read(store.join("old")).unwrap(), b"old object");
            assert_eq!(fs::read(store.join("a")).unwrap(), vec![b'a'; 3 * 4096]);
            // "b" was synced before its rename: whole or absent.
            match fs::read(store.join("b")) {
                Ok(d) => {
                    assert_eq!(d, vec![b'b'; 3 * 4096]);
                    seen_b[1] = true;
                }
                Err(_) => seen_b[0] = true,
            }
            match fs::read(store.join("gone")) {
                Ok(d) => {
                    assert_eq!(d, b"deleted later");
                    seen_gone[1] = true;
                }
                Err(_) => seen_gone[0] = true,
            }
        }
        assert_eq!(
            seen_b,
            [true, true],
            "an unsynced rename both lands and not"
        );
        assert_eq!(
            seen_gone,
            [true, true],
            "an unsynced unlink is undone sometimes"
        );
        assert!(seen_torn_journal, "an uncovered journal write was torn");
    }

    /// A journal write submitted with `RWF_DSYNC` lands whole in every cut
    /// once its completion is logged, with no sync after it; it makes no
    /// other write durable (one that completed just before it may still be
    /// lost), and one whose completion was never logged may be lost.
    #[test]
    fn a_completed_dsync_write_always_lands_and_covers_nothing_else() {
        let (mut lost_plain, mut lost_unfinished) = (false, false);
        for seed in 0..64u64 {
            let dir = tempfile::tempdir_in("/tmp").unwrap();
            let root = dir.path();
            let (rec, journal, store) = (root.join("rec"), root.join("j"), root.join("store"));
            fs::create_dir_all(&store).unwrap();
            fs::write(&journal, vec![0u8; 8 * 4096]).unwrap();
            capture_baseline(&rec, &journal, &store).unwrap();
            let log = IoLog::create(&rec).unwrap();
            let plain = log.journal_write(0, &[1u8; 4096]);
            log.journal_write_done(plain);
            let d = log.journal_write(4096, &[2u8; 2 * 4096]);
            log.journal_write_durable(d);
            // In flight at the cut: its completion is never logged.
            log.journal_write(3 * 4096, &[3u8; 4096]);
            let mut rng = SmallRng::seed_from_u64(seed);
            let r = apply(&rec, &journal, &store, &mut rng).unwrap();
            let j = fs::read(&journal).unwrap();
            assert!(
                j[4096..3 * 4096].iter().all(|&b| b == 2),
                "seed {seed}: a completed RWF_DSYNC write was lost or torn"
            );
            assert_eq!((r.journal_durable, r.journal_dsync), (1, 1), "seed {seed}");
            lost_plain |= j[0] == 0;
            lost_unfinished |= j[3 * 4096] == 0;
        }
        assert!(lost_plain, "a DSYNC write made an earlier write durable");
        assert!(lost_unfinished, "an unfinished DSYNC write always landed");
    }

    /// A file renamed into place before its data was synced (the ordering
    /// bug the directory store's put must not have) can show up torn.
    #[test]
    fn unsynced_file_data_can_be_torn_under_its_final_name() {
        let mut torn = false;
        for seed in 0..64u64 {
            let dir = tempfile::tempdir_in("/tmp").unwrap();
            let root = dir.path();
            let (rec, journal, store) = (root.join("rec"), root.join("j"), root.join("store"));
            fs::create_dir_all(&store).unwrap();
            capture_baseline(&rec, &journal, &store).unwrap();
            let log = IoLog::create(&rec).unwrap();
            fs::write(store.join(".tmp.x"), vec![9u8; 4 * 4096]).unwrap();
            let ino = log.file_created(".tmp.x", &store.join(".tmp.x"));
            log.file_write(ino, 0, 4 * 4096);
            log.rename(".tmp.x", "x");
            fs::rename(store.join(".tmp.x"), store.join("x")).unwrap();
            let s = log.dir_sync_start();
            log.dir_sync_done(s);
            let mut rng = SmallRng::seed_from_u64(seed);
            apply(&rec, &journal, &store, &mut rng).unwrap();
            assert!(!journal.exists(), "no journal before, none after");
            let d = fs::read(store.join("x")).unwrap();
            torn |= d != vec![9u8; 4 * 4096];
        }
        assert!(torn);
    }
}
