//! Image lifecycle without opening: names, create, remove, list, info.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{DirStore, ObjectStore};
use crate::config::{BackendKind, Config};
use crate::error::{Error, ErrorKind, Result};
use crate::format::superblock::{ParentRef, Superblock};
use crate::units::{Generation, ImageUuid, ObjSeq};

/// Largest image size accepted (1 PiB).
pub const MAX_IMAGE_BYTES: u64 = 1 << 50;

/// `POOL/IMAGE` as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Pool (a directory of the dir backend, a RADOS pool later).
    pub pool: String,
    /// Image name within the pool.
    pub image: String,
}

pub(crate) fn check_name(what: &str, s: &str, full: &str) -> Result<()> {
    if s.is_empty() || s.len() > 96 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} name in '{full}' must be 1 to 96 characters"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what} name in '{full}' contains '{c}'; use letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

impl ImageSpec {
    /// Parse `pool/image`; both parts non-empty, of `[A-Za-z0-9_-]`, at most 96 bytes.
    pub fn parse(s: &str) -> Result<ImageSpec> {
        let Some((pool, image)) = s.split_once('/') else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("image '{s}' must be given as POOL/IMAGE"),
            ));
        };
        check_name("pool", pool, s)?;
        check_name("image", image, s)?;
        Ok(ImageSpec {
            pool: pool.to_string(),
            image: image.to_string(),
        })
    }

    /// The journal path for this image under `config.wlog_dir`.
    pub fn journal_path(&self, config: &Config) -> PathBuf {
        config
            .wlog_dir
            .join(&self.pool)
            .join(format!("{}.wlog", self.image))
    }

    /// The read-cache file for this image under `config.rcache_dir`:
    /// `<rcache_dir>/<pool>/<image>.rcache`. (The CLI opens a volume with
    /// `rcache_dir` set to `<rcache_dir>/<pool>`, and the volume names its
    /// cache `<image>.rcache` there.)
    pub fn rcache_path(&self, config: &Config) -> PathBuf {
        config
            .rcache_dir
            .join(&self.pool)
            .join(format!("{}.rcache", self.image))
    }
}

impl std::fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)
    }
}

/// Open the object store of `pool` as configured (`create`: make the pool if missing).
pub fn open_store(config: &Config, pool: &str, create: bool) -> Result<Arc<dyn ObjectStore>> {
    check_name("pool", pool, pool)?;
    match config.backend {
        BackendKind::Dir => {
            let dir = config.store_dir.join(pool);
            let store = if create {
                DirStore::create(&dir)?
            } else {
                DirStore::open(&dir).map_err(|e| {
                    if e.kind() == ErrorKind::NotFound {
                        Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "pool '{pool}' does not exist (no directory {})",
                                dir.display()
                            ),
                        )
                    } else {
                        e
                    }
                })?
            };
            Ok(with_test_faults(Arc::new(store)))
        }
        #[cfg(feature = "rados")]
        BackendKind::Rados => {
            // A RADOS pool is made by the cluster's administrator (`ceph osd
            // pool create`), never by us; `create` only needs it to exist.
            let _ = create;
            let store = crate::backend::rados::open(config, pool).map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "RADOS pool '{pool}' does not exist (create it with \
                             'ceph osd pool create {pool}')"
                        ),
                    )
                } else {
                    e
                }
            })?;
            Ok(with_test_faults(store))
        }
        #[cfg(not(feature = "rados"))]
        BackendKind::Rados => Err(Error::new(
            ErrorKind::Config,
            "backend \"rados\" is not built into this binary (build it with \
             `cargo build --release --features rados`)",
        )),
    }
}

/// Test hook (failpoint): `LSVD_FAULT_GET_DELAY_MS=N` delays every backend
/// read by N ms, so the guest tests can show that a read stuck on the
/// backend does not hold up other I/O on the device. Logged loudly; never
/// set it in production.
pub const GET_DELAY_ENV: &str = "LSVD_FAULT_GET_DELAY_MS";

fn with_test_faults(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    let Some(ms) = std::env::var(GET_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
    else {
        return store;
    };
    tracing::warn!("{GET_DELAY_ENV}={ms}: every backend read is delayed by {ms} ms (test hook)");
    let f = crate::backend::FaultStore::new(store, 0);
    f.add_rule(crate::backend::FaultRule::new(
        crate::backend::FaultOp::Get,
        crate::backend::FaultAction::Delay(std::time::Duration::from_millis(ms)),
    ));
    Arc::new(f)
}

/// Name of the object with sequence `seq` of `image`.
pub fn object_name(image: &str, seq: ObjSeq) -> String {
    format!("{image}.{:016x}", seq.0)
}

/// Name of the object holding `image`'s high-water mark
/// ([`crate::format::hwm`]). Not an object name ([`parse_object_name`]
/// refuses it) and not an image name (it has a dot).
pub fn hwm_name(image: &str) -> String {
    format!("{image}.hwm")
}

/// Put `image`'s high-water mark (durable when it returns).
pub(crate) fn write_hwm(
    store: &dyn ObjectStore,
    image: &str,
    uuid: ImageUuid,
    hwm: u64,
) -> Result<()> {
    let h = crate::format::hwm::HighWater { uuid, hwm };
    store
        .put(&hwm_name(image), &h.encode())
        .map_err(|e| e.prefixed(format!("image {image}: write the high-water mark {hwm}")))
}

/// A bound on `image`'s object sequences: every object of the image in the
/// store has a sequence below it. `trusted` if it is the image's
/// high-water mark, which the superblock says is kept
/// ([`crate::format::superblock::INCOMPAT_HWM`]); then no listing is made.
/// Otherwise (an image of a build before the mark, or a mark that is
/// missing, corrupt or another image's) the bound comes from one listing
/// of the image's names, which on RADOS walks the whole pool: a read-write
/// open then writes the mark and sets the bit, so this happens once.
pub(crate) fn sequence_bound(
    store: &dyn ObjectStore,
    image: &str,
    sb: &Superblock,
) -> Result<SequenceBound> {
    use crate::format::superblock::INCOMPAT_HWM;
    if sb.incompat & INCOMPAT_HWM != 0 {
        let why = match store.get(&hwm_name(image), 0, crate::format::hwm::SIZE + 1) {
            Ok(b) => match crate::format::hwm::HighWater::decode(&b) {
                Ok(h) if h.uuid == sb.uuid => {
                    return Ok(SequenceBound {
                        hwm: h.hwm,
                        trusted: true,
                    })
                }
                Ok(h) => format!("belongs to image {}", h.uuid),
                Err(e) => e.to_string(),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => "is missing".to_string(),
            Err(e) => return Err(e.prefixed(format!("image {image}: read the high-water mark"))),
        };
        tracing::warn!(
            image,
            "the high-water mark {why}: the image's objects are found by listing the store \
             (once; the mark is written again at the next read-write open)"
        );
    }
    let hwm = store
        .list(&format!("{image}."))?
        .iter()
        .filter_map(|n| parse_object_name(image, n))
        .map(|s| s.0.saturating_add(1))
        .max()
        .unwrap_or(1);
    Ok(SequenceBound {
        hwm,
        trusted: false,
    })
}

/// What [`sequence_bound`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SequenceBound {
    /// Every object sequence of the image is below this.
    pub hwm: u64,
    /// Read from the kept mark (no listing was made).
    pub trusted: bool,
}

/// Parse an object name of `image` back to its sequence.
pub fn parse_object_name(image: &str, name: &str) -> Option<ObjSeq> {
    let hex = name.strip_prefix(image)?.strip_prefix('.')?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(ObjSeq)
}

/// Read and decode an image's superblock.
///
/// A zero-length superblock object is not an image: RADOS creates the
/// object a lock is taken on, so an interrupted `create` (or the lock of an
/// `rm`) can leave one behind. It reads as "does not exist".
pub fn read_superblock(store: &dyn ObjectStore, image: &str) -> Result<Superblock> {
    let missing = || {
        Error::new(
            ErrorKind::NotFound,
            format!("image '{image}' does not exist in {}", store.describe()),
        )
    };
    let buf = store
        .get(
            image,
            0,
            crate::format::superblock::MAX_ENCODED.next_multiple_of(4096),
        )
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                missing()
            } else {
                e
            }
        })?;
    if buf.is_empty() {
        return Err(missing());
    }
    Superblock::decode(&buf).map_err(|e| {
        Error::with_source(
            ErrorKind::Corrupt,
            format!("superblock of image '{image}' in {}", store.describe()),
            e,
        )
    })
}

/// What `info` shows about an image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    /// `pool/image`.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Closed cleanly last time.
    pub clean: bool,
    /// Data and checkpoint objects in the store.
    pub objects: u64,
    /// Bytes of those objects.
    pub stored_bytes: u64,
    /// Checkpoints listed in the superblock (first object sequence of each).
    pub checkpoints: Vec<u64>,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
    /// The image's read-cache file, if there is one (filled in by the
    /// CLI, which knows the configured `rcache_dir`).
    pub cache: Option<crate::cache::CacheInfo>,
    /// Who holds the image's lock (has it open), as the store describes
    /// each holder ([`super::owner`]); empty when nobody does (filled in
    /// by the CLI).
    pub open_by: Vec<String>,
    /// Why the read-cache file could not be read (no read access to it or
    /// its directory, as for a user who may only read the store); then
    /// `cache` is `None` and tells nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_unreadable: Option<String>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapInfo>,
    /// A clone's chain of parents, nearest first, as `image@snap`.
    pub parents: Vec<String>,
    /// The superblock's format version.
    pub format_version: u32,
    /// The superblock's incompatible feature bits.
    pub features: u64,
    /// Their names (`gc`, `zero-markers`, `chunk-crcs`,
    /// `delta-checkpoints`, `high-water-mark`).
    pub feature_names: Vec<String>,
    /// Data objects close at this many bytes (`backend_obj_bytes` of the
    /// configuration; filled in by the CLI).
    pub object_bytes: u64,
    /// The image's journal file on this host (filled in by the CLI, which
    /// knows the configured `wlog_dir`).
    pub journal: Option<JournalFile>,
}

/// Where this host keeps an image's journal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct JournalFile {
    /// Its path (`<wlog_dir>/<pool>/<image>.wlog`).
    pub path: String,
    /// Its length in bytes; `None` if there is no file there.
    pub bytes: Option<u64>,
}

/// One snapshot as `info` and `snap ls` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapInfo {
    /// Name.
    pub name: String,
    /// Image size when it was taken.
    pub size_bytes: u64,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
    /// Last object sequence it reflects.
    pub last_obj: u64,
    /// `snap rm` has begun and not finished.
    pub removing: bool,
    /// Images cloned from it.
    pub clones: Vec<String>,
}

/// The snapshots of `image` (superblock `sb`) with their clones.
pub fn snapshot_infos(
    store: &dyn ObjectStore,
    image: &str,
    sb: &Superblock,
) -> Result<Vec<SnapInfo>> {
    let all = if sb.snapshots.is_empty() {
        Vec::new()
    } else {
        super::find_clones(store, image, sb.uuid)?
    };
    let mut out = Vec::new();
    for s in &sb.snapshots {
        out.push(SnapInfo {
            name: s.name.clone(),
            size_bytes: s.size_bytes,
            created_unix: s.created_unix,
            last_obj: s.last_obj.0,
            removing: s.flags & crate::format::superblock::SNAP_REMOVING != 0,
            clones: all
                .iter()
                .filter(|(_, snap)| *snap == s.name)
                .map(|(c, _)| c.clone())
                .collect(),
        });
    }
    Ok(out)
}

/// A clone's parents, nearest first, as `image@snap` (a parent that cannot
/// be read ends the chain with a note).
pub fn parent_chain(store: &dyn ObjectStore, sb: &Superblock) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = sb.parent.clone();
    while let Some(p) = next.take() {
        out.push(format!("{}@{}", p.image, p.snap));
        if out.len() > super::MAX_CHAIN {
            break;
        }
        match read_superblock(store, &p.image) {
            Ok(psb) if psb.uuid == p.uuid => next = psb.parent,
            Ok(_) => out.push(format!("({} was replaced by another image)", p.image)),
            Err(e) => out.push(format!("({} unreadable: {e})", p.image)),
        }
    }
    out
}

/// Check an image size (for `create` and `resize`): a positive multiple of
/// 4096, at most [`MAX_IMAGE_BYTES`].
pub fn check_image_size(size_bytes: u64) -> Result<()> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(4096) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("size {size_bytes} is not a positive multiple of 4096"),
        ));
    }
    if size_bytes > MAX_IMAGE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("size {size_bytes} exceeds the limit of 1 PiB ({MAX_IMAGE_BYTES} bytes)"),
        ));
    }
    Ok(())
}

/// Create an image of `size_bytes` (a positive multiple of 4096). Fails if it exists.
pub fn create_image(store: &dyn ObjectStore, image: &str, size_bytes: u64) -> Result<ImageUuid> {
    create_image_with(store, image, size_bytes, None)
}

/// Refuse `image` if objects of an earlier image of that name remain (its
/// removal was interrupted: a new image over them would run into them at
/// its next open, and a leftover tombstone cannot be told from the new
/// image's own). `rm` deletes the high-water mark last (ordering 13), so
/// this build's leftovers are named by the mark: one `stat`. A build
/// before the mark left leftovers with no mark, in any sequence range,
/// which only a listing finds: the pool is listed once, and if no such
/// leftovers remain anywhere in it, the pool marker is written and no later
/// `create` lists (ordering 33).
fn check_no_leftovers(store: &dyn ObjectStore, image: &str) -> Result<()> {
    use crate::format::pool::{PoolMarker, FLAG_REMOVALS_MARKED, NAME};
    let leftovers = |stray: &str| {
        Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "objects of an earlier image '{image}' remain ({stray}); remove them \
                 first (`lsvd-ublk rm` of this image finishes an interrupted removal)"
            ),
        )
    };
    if store.stat(&hwm_name(image))?.is_some() {
        return Err(leftovers(&hwm_name(image)));
    }
    match store.get(NAME, 0, crate::format::pool::SIZE + 1) {
        Ok(b) => match PoolMarker::decode(&b) {
            Ok(m) if m.flags & FLAG_REMOVALS_MARKED != 0 => return Ok(()),
            Ok(_) => {}
            Err(e) => tracing::warn!("pool marker {NAME}: {e}: the pool is listed (once)"),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e.prefixed(format!("read the pool marker {NAME}"))),
    }
    // Once per pool: every image name with objects and no mark is either
    // an image of a build before the mark (its superblock holds an image)
    // or an older build's interrupted removal.
    let names = store.list("")?;
    let listed: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut unmarked: std::collections::BTreeMap<&str, &str> = Default::default();
    // Superblocks of an older build (no mark): such an image may have no
    // object yet (an older `create` put only the superblock, an older
    // clone is one superblock), and that build may still write it and be
    // interrupted removing it.
    let mut older_images = Vec::new();
    for n in &names {
        let Some((owner, hex)) = n.rsplit_once('.') else {
            if n != image
                && check_name("image", n, n).is_ok()
                && !listed.contains(hwm_name(n).as_str())
                && older_superblock(store, n)?
            {
                older_images.push(n.as_str());
            }
            continue;
        };
        if hex.len() == 16
            && u64::from_str_radix(hex, 16).is_ok()
            && check_name("image", owner, owner).is_ok()
            && !listed.contains(hwm_name(owner).as_str())
            && !unmarked.contains_key(owner)
            && is_lsvd_object(store, n)?
        {
            unmarked.insert(owner, n.as_str());
        }
    }
    if let Some(stray) = unmarked.get(image) {
        return Err(leftovers(stray));
    }
    let mut orphans = Vec::new();
    for (&owner, stray) in &unmarked {
        // A zero-length object is only a lock placeholder (RADOS), not an
        // image.
        if store.stat(owner)?.is_none_or(|n| n == 0) {
            orphans.push(format!("{owner} ({stray})"));
        }
    }
    if !orphans.is_empty() {
        tracing::warn!(
            "objects of removed images remain in {}: {}; `lsvd-ublk rm POOL/NAME` of each \
             finishes its removal (until then every create lists the pool)",
            store.describe(),
            orphans.join(", ")
        );
    }
    if !unmarked.is_empty() || !older_images.is_empty() {
        // An image of an older build (or its leftovers) remains: that build
        // may still remove it and be interrupted. Its first read-write open
        // by this build writes its mark.
        return Ok(());
    }
    let marker = PoolMarker {
        flags: FLAG_REMOVALS_MARKED,
        written_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    // Not needed for this create: a failure only means the next lists too.
    if let Err(e) = store.put(NAME, &marker.encode()) {
        tracing::warn!("write the pool marker {NAME}: {e}");
    }
    Ok(())
}

/// Whether object `name` is one of ours: every object lsvd puts under an
/// image's name (data, GC and checkpoint objects, tombstones) starts with
/// `LSVD`. Another program's object that only looks like ours by name
/// (RBD's `rbd_id.<name>` for an RBD image named by 16 hex digits) does not.
fn is_lsvd_object(store: &dyn ObjectStore, name: &str) -> Result<bool> {
    match store.get(name, 0, 4096) {
        Ok(b) => Ok(b.starts_with(b"LSVD")),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.prefixed(format!("read {name}"))),
    }
}

/// Whether object `name` is the superblock of an image of a build before
/// the removal mark (no `INCOMPAT_HWM`). One that does not decode is
/// counted as one too: the pool then stays listed, which costs time only.
fn older_superblock(store: &dyn ObjectStore, name: &str) -> Result<bool> {
    use crate::format::superblock::INCOMPAT_HWM;
    match store.get(
        name,
        0,
        crate::format::superblock::MAX_ENCODED.next_multiple_of(4096),
    ) {
        Ok(b) if !b.starts_with(b"LSVD") => Ok(false),
        Ok(b) => Ok(Superblock::decode(&b).map_or(true, |sb| sb.incompat & INCOMPAT_HWM == 0)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.prefixed(format!("read {name}"))),
    }
}

/// Create an image, a clone of `parent` if given.
pub(crate) fn create_image_with(
    store: &dyn ObjectStore,
    image: &str,
    size_bytes: u64,
    parent: Option<ParentRef>,
) -> Result<ImageUuid> {
    check_name("image", image, image)?;
    check_image_size(size_bytes)?;
    // Zero length: only a lock placeholder (see read_superblock).
    let exists = || -> Result<()> {
        if store.stat(image)?.is_some_and(|n| n > 0) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("image '{image}' already exists in {}", store.describe()),
            ));
        }
        Ok(())
    };
    // An existing image that is open (its lock held) is still "already
    // exists", not "locked": checked before taking the lock for that, and
    // again under it, which is the check that counts.
    exists()?;
    // Hold the image lock so a concurrent create or open cannot interleave.
    let _lock = store.lock(image, &lock_owner())?;
    exists()?;
    check_no_leftovers(store, image)?;
    let uuid = ImageUuid::new_random();
    // Ordering 31: the mark exists before the superblock that says it is
    // kept (nothing is put below sequence 1).
    write_hwm(store, image, uuid, 1)?;
    let sb = Superblock {
        uuid,
        size_bytes,
        update_seq: 1,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        journal_gen: Generation(0),
        flags: crate::format::superblock::FLAG_CLEAN,
        incompat: crate::format::superblock::INCOMPAT_HWM
            | if parent.is_some() {
                crate::format::superblock::INCOMPAT_ZERO_MARKERS
            } else {
                0
            },
        checkpoints: vec![],
        links: vec![],
        snapshots: vec![],
        parent,
    };
    // A put that fails may still have landed (a RADOS `write_full` that
    // timed out after the OSD applied it): read it back. If the store holds
    // this superblock, the image exists and is reported created (a clone
    // then goes on to its ordering-24 check; an error here would skip it
    // and leave a linked clone its caller thinks was never made).
    if let Err(e) = store.put(image, &sb.encode()) {
        match read_superblock(store, image) {
            Ok(stored) if stored == sb => {
                tracing::warn!(image, "the superblock put reported an error but landed (read back): taken as done: {e}");
            }
            Err(r) if r.kind() == ErrorKind::NotFound => {
                // Not created: the mark would only make the next create
                // report leftovers. If this delete fails too, `rm` removes
                // it.
                let _ = store.delete(&hwm_name(image));
                return Err(e);
            }
            _ => return Err(e),
        }
    }
    Ok(uuid)
}

/// What the lock names of `image`'s snapshots start with (see
/// `volume::snapshot::snapshot_lock_name`): `lsvd:s.IMAGE@`.
pub(crate) fn snapshot_lock_prefix(image: &str) -> String {
    format!("lsvd:s.{image}@")
}

/// Remove an image: all its objects, its superblock and (if given) its journal file.
/// Fails with `Locked` if it is open.
pub fn remove_image(store: &dyn ObjectStore, image: &str, journal: Option<&Path>) -> Result<()> {
    let lock = store.lock(image, &lock_owner())?;
    let sb = match read_superblock(store, image) {
        Ok(sb) => sb,
        // The superblock goes first (below): an interrupted removal left
        // objects below the mark, and the mark. Finish it.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mark = match store.get(&hwm_name(image), 0, crate::format::hwm::SIZE + 1) {
                Ok(b) => crate::format::hwm::HighWater::decode(&b).ok(),
                Err(g) if g.kind() == ErrorKind::NotFound => None,
                Err(g) => return Err(g),
            };
            match mark {
                Some(h) => {
                    tracing::warn!(image, hwm = h.hwm, "finishing an interrupted removal");
                    delete_below(store, image, h.hwm)?;
                }
                None => {
                    // No mark, or a rotten one: leftovers of an older
                    // build's removal, or of one whose mark rotted. Only a
                    // listing finds them (a repair, rare).
                    let left: Vec<String> = store
                        .list(&format!("{image}."))?
                        .into_iter()
                        .filter(|n| parse_object_name(image, n).is_some())
                        .collect();
                    if left.is_empty() && store.stat(&hwm_name(image))?.is_none() {
                        // No such image: the lock file this call created
                        // (directory store) goes too, while held, or it
                        // would stay for good.
                        lock.release_and_remove();
                        return Err(e);
                    }
                    tracing::warn!(
                        image,
                        objects = left.len(),
                        "finishing an interrupted removal (found by listing)"
                    );
                    for n in left {
                        store.delete(&n)?;
                    }
                }
            }
            store.delete(&hwm_name(image))?;
            remove_journal(journal, mark.map(|h| h.uuid))?;
            lock.release_and_remove();
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !sb.snapshots.is_empty() {
        let clones: Vec<String> = super::find_clones(store, image, sb.uuid)
            .unwrap_or_default()
            .into_iter()
            .map(|(c, snap)| format!("{c} (of @{snap})"))
            .collect();
        return Err(Error::new(
            ErrorKind::InUse,
            format!(
                "image '{image}' has snapshots ({}){}; remove them first (snap rm)",
                sb.snapshots
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if clones.is_empty() {
                    String::new()
                } else {
                    format!(" and clones depend on it: {}", clones.join(", "))
                }
            ),
        ));
    }
    // Every object is below the bound (the mark, ordering 31; an image of
    // a build before the mark is listed once).
    let bound = sequence_bound(store, image, &sb)?;
    if !bound.trusted {
        write_hwm(store, image, sb.uuid, bound.hwm)?;
    }
    // The superblock goes first: a crash midway leaves stray objects that
    // `create` reports and `rm` finishes removing, never an image whose
    // objects are half gone. The mark goes last: it names the strays.
    store.delete(image)?;
    delete_below(store, image, bound.hwm)?;
    store.delete(&hwm_name(image))?;
    remove_journal(journal, Some(sb.uuid))?;
    // Last, with nothing of the image left: its lock file (directory
    // store), unlinked while held (see `DirStore::lock`).
    lock.release_and_remove();
    Ok(())
}

/// Delete every object of `image` with a sequence below `hwm` (deleting a
/// missing one succeeds), a few at a time: a removal costs one delete per
/// sequence the image ever used, whatever else the pool holds.
fn delete_below(store: &dyn ObjectStore, image: &str, hwm: u64) -> Result<()> {
    for_each_below(hwm, |s| store.delete(&object_name(image, s)))
}

/// Call `f` for every sequence in `1..hwm`, on a few threads (a store
/// round trip each); the first error stops the rest and is returned.
pub(crate) fn for_each_below(hwm: u64, f: impl Fn(ObjSeq) -> Result<()> + Sync) -> Result<()> {
    const THREADS: u64 = 8;
    let next = std::sync::atomic::AtomicU64::new(1);
    let failed: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..THREADS.min(hwm.saturating_sub(1)) {
            sc.spawn(|| loop {
                let s = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if s >= hwm {
                    return;
                }
                if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return;
                }
                if let Err(e) = f(ObjSeq(s)) {
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    return;
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Remove the journal of the removed image `owner` (`None`: unknown, an
/// older build's interrupted removal), and any `.creating` file. The path
/// does not name the store: two stores (or RADOS namespaces) sharing a
/// `wlog_dir` give same-named images one path, and the journal there may
/// be the other image's, holding its acknowledged writes. So a journal is
/// deleted only if it is this image's, or no image's (it does not decode);
/// another's is kept, with a warning naming it.
fn remove_journal(journal: Option<&Path>, owner: Option<ImageUuid>) -> Result<()> {
    if let Some(j) = journal {
        match (crate::journal::owner(j)?, owner) {
            (Some(theirs), Some(ours)) if theirs == ours => remove_file_if_any(j)?,
            (None, _) => remove_file_if_any(j)?,
            (Some(theirs), _) => tracing::warn!(
                "journal {} belongs to image {theirs}{}: kept (another store's image of \
                 the same name may use it; remove it by hand if it is no one's)",
                j.display(),
                match owner {
                    Some(ours) => format!(", not to the removed image {ours}"),
                    None => " and the removed image's identity is unknown".to_owned(),
                }
            ),
        }
        // The one a failed or killed creation left (ordering 16).
        let mut creating = j.as_os_str().to_owned();
        creating.push(".creating");
        remove_file_if_any(Path::new(&creating))?;
    }
    Ok(())
}

/// Remove the journal `journal` of image `owner` after a clean close, so
/// that the next attach formats a new one of its configured size (`import`
/// writes through a small journal, then drops it). Kept if it belongs to
/// another image. Only call once the superblock marked clean is durable:
/// the journal then holds nothing the backend does not.
pub fn remove_idle_journal(
    store: &dyn ObjectStore,
    image: &str,
    journal: &Path,
    owner: ImageUuid,
) -> Result<()> {
    // Under the image's lock, taken again without waiting, and only while
    // the image is still marked clean: an opener that got the image since
    // (an attach racing the end of an import) journals into this very
    // file, which is then its own and must stay.
    let lock = match store.lock(
        image,
        &crate::catalog::owner::lock_owner_of(&format!("image {owner}")),
    ) {
        Ok(l) => l,
        Err(e) if e.kind() == ErrorKind::Locked => {
            tracing::info!(
                "journal {} kept: image {image} is open again ({e})",
                journal.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !read_superblock(store, image)?.clean() {
        tracing::info!(
            "journal {} kept: image {image} was opened again since",
            journal.display()
        );
        return Ok(());
    }
    remove_journal(Some(journal), Some(owner))?;
    drop(lock);
    // Not needed for safety (a journal left behind by a crash here is
    // empty and is used as it is); makes the removal stick.
    if let Some(dir) = journal.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn remove_file_if_any(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove journal {}", p.display()), e)),
    }
}

/// Images in a pool, sorted.
pub fn list_images(store: &dyn ObjectStore) -> Result<Vec<String>> {
    let mut out = Vec::new();
    each_superblock(store, |name, sb| {
        if sb.is_ok() {
            out.push(name.to_string());
        }
        Ok(())
    })?;
    Ok(out)
}

/// Call `f` with the name and the superblock (or why it could not be read)
/// of every object of the pool that may be an image's, sorted by name.
pub(crate) fn each_superblock(
    store: &dyn ObjectStore,
    mut f: impl FnMut(&str, Result<Superblock>) -> Result<()>,
) -> Result<()> {
    for name in store.list("")? {
        if !name.contains('.') {
            f(&name, read_superblock(store, &name))?;
        }
    }
    Ok(())
}

/// Describe an image without opening it.
pub fn image_info(store: &dyn ObjectStore, spec: &ImageSpec) -> Result<ImageInfo> {
    let sb = read_superblock(store, &spec.image)?;
    // Probed below the high-water mark: one stat per sequence the image
    // ever used, never a listing of the pool (unless the mark is not kept
    // yet: then the image is listed).
    let bound = sequence_bound(store, &spec.image, &sb)?;
    let objects = std::sync::atomic::AtomicU64::new(0);
    let stored = std::sync::atomic::AtomicU64::new(0);
    for_each_below(bound.hwm, |s| {
        if let Some(n) = store.stat(&object_name(&spec.image, s))? {
            objects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stored.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    })?;
    let (objects, stored_bytes) = (objects.into_inner(), stored.into_inner());
    Ok(ImageInfo {
        name: spec.to_string(),
        uuid: sb.uuid.to_string(),
        size_bytes: sb.size_bytes,
        clean: sb.clean(),
        objects,
        stored_bytes,
        checkpoints: sb.checkpoints.iter().map(|c| c.seq.0).collect(),
        created_unix: sb.created_unix,
        cache: None,
        open_by: Vec::new(),
        cache_unreadable: None,
        snapshots: snapshot_infos(store, &spec.image, &sb)?,
        parents: parent_chain(store, &sb),
        format_version: sb.version(),
        features: sb.incompat,
        feature_names: crate::format::superblock::feature_names(sb.incompat),
        object_bytes: 0,
        journal: None,
    })
}

/// Who takes a lock: host and pid.
pub fn lock_owner() -> String {
    lock_owner_for(std::process::id())
}

/// The lock owner string of process `pid` on this host (for recognising
/// the lock a dead local server left).
pub fn lock_owner_for(pid: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("host {host} pid {pid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemStore;

    #[test]
    fn specs_parse() {
        let s = ImageSpec::parse("rbd/vm-1_a").unwrap();
        assert_eq!(s.pool, "rbd");
        assert_eq!(s.image, "vm-1_a");
        for bad in ["noslash", "/img", "pool/", "a/b/c", "p/i.x", "p/i j"] {
            assert!(ImageSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        let n = object_name("img", ObjSeq(0x1234));
        assert_eq!(n, "img.0000000000001234");
        assert_eq!(parse_object_name("img", &n), Some(ObjSeq(0x1234)));
        assert_eq!(parse_object_name("im", &n), None);
        assert_eq!(parse_object_name("img", "img.12"), None);
    }

    #[test]
    fn create_list_info_remove() {
        let store = MemStore::new();
        assert!(create_image(&store, "a", 0).is_err());
        assert!(create_image(&store, "a", 1000).is_err());
        assert!(create_image(&store, "a", 1 << 60).is_err());
        create_image(&store, "a", 1 << 20).unwrap();
        let e = create_image(&store, "a", 1 << 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        create_image(&store, "b", 1 << 20).unwrap();
        assert_eq!(list_images(&store).unwrap(), vec!["a", "b"]);
        let spec = ImageSpec::parse("p/a").unwrap();
        let info = image_info(&store, &spec).unwrap();
        assert_eq!(info.size_bytes, 1 << 20);
        assert!(info.clean);
        remove_image(&store, "a", None).unwrap();
        assert_eq!(list_images(&store).unwrap(), vec!["b"]);
        assert_eq!(
            image_info(&store, &spec).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
