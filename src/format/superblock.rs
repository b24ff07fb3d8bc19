//! Image superblock: the object named exactly like the image.
//!
//! Layout (little endian), version 1:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDSUP1` |
//! | 8   | 4    | version = 1 |
//! | 12  | 4    | total length in bytes, crc included |
//! | 16  | 16   | image UUID |
//! | 32  | 8    | image size in bytes (multiple of 4096) |
//! | 40  | 8    | incompatible feature bits: bit 0 [`INCOMPAT_GC`], bit 1 [`INCOMPAT_ZERO_MARKERS`], bit 2 [`INCOMPAT_CHUNK_CRCS`]; any other set bit is refused by name |
//! | 48  | 8    | update sequence (bumped on every rewrite) |
//! | 56  | 8    | creation time, seconds since the Unix epoch |
//! | 64  | 8    | generation of the journal last attached (0 = none) |
//! | 72  | 4    | flags (bit 0: closed cleanly) |
//! | 76  | 4    | number of checkpoints listed, N <= 4 |
//! | 80  | 16*N | checkpoints, newest first: first object sequence (8), piece count (4), reserved (4) |
//! | ... | 4    | crc32c of every preceding byte |
//!
//! Version 2 (written only when the image has snapshots or a parent, so a
//! plain image stays readable by version-1 builds) has the same fields up to
//! the checkpoints, then:
//!
//! | size | field |
//! |-----:|-------|
//! | 4    | number of snapshots S <= [`MAX_SNAPSHOTS`] |
//! | ...  | S snapshots, oldest first: checkpoint sequence (8), piece count (4), flags (4, bit 0: being removed), last object sequence (8), size in bytes (8), creation time (8), name length (2), name |
//! | 4    | 1 if the image is a clone, else 0 |
//! | ...  | if a clone: parent UUID (16), parent snapshot's checkpoint sequence (8), piece count (4), reserved (4), last object sequence (8), size in bytes (8), parent image name length (2), name, snapshot name length (2), name |
//! | 4    | crc32c of every preceding byte |
//!
//! Names are 1 to 96 bytes of `[A-Za-z0-9_-]`.

use super::{check_magic_version, check_trailing_crc, Dec, Enc, FormatError};
use crate::units::{Generation, ImageUuid, ObjSeq};

const MAGIC: &[u8; 8] = b"LSVDSUP1";
/// Format version of a plain image (no snapshots, no parent).
pub const VERSION: u32 = 1;
/// Format version of an image with snapshots or a parent.
pub const VERSION_2: u32 = 2;
/// Most snapshots an image keeps.
pub const MAX_SNAPSHOTS: usize = 128;
/// Longest image or snapshot name.
pub const MAX_NAME: usize = 96;
/// Snapshot flag: `snap rm` has begun (no new clone may link to it).
pub const SNAP_REMOVING: u32 = 1;
/// Largest encoded superblock (what [`crate::volume::image::read_superblock`] reads).
pub const MAX_ENCODED: usize = 80
    + 16 * (MAX_CHECKPOINTS + MAX_LINKS)
    + 4
    + MAX_SNAPSHOTS * (42 + MAX_NAME)
    + 4
    + (52 + 2 * MAX_NAME)
    + 4;
const WHAT: &str = "superblock";
/// Most checkpoints a superblock lists.
pub const MAX_CHECKPOINTS: usize = 4;
/// Most pieces a checkpoint can have: a 1 PiB image (the largest `create`
/// makes) has at most 2^41 extents, 2^20 to a piece
/// (`checkpoint::EXTENTS_PER_PIECE`). A reference with more is refused.
pub const MAX_PIECES: u32 = 1 << 21;
/// Flag: the image was closed cleanly.
pub const FLAG_CLEAN: u32 = 1;
/// Incompatible feature: garbage collection has run. GC objects
/// (`LSVDGCO1`) may exist, and object sequences below the listed
/// checkpoints may be missing (deleted after cleaning). A reader that does
/// not know this bit would treat a GC object or a hole as the end of the
/// log and delete everything above it, so it must refuse the image.
pub const INCOMPAT_GC: u64 = 1;
/// Incompatible feature: the image is, or was, a clone, so its checkpoints
/// may hold zero markers (extents naming object 0). Set at clone creation
/// and kept after `flatten` (which writes version 1 again): a build without
/// markers would refuse every such checkpoint as naming an unknown object.
pub const INCOMPAT_ZERO_MARKERS: u64 = 2;
/// Incompatible feature: data and GC objects of format version 2 (per-chunk
/// data checksums) may exist. Set before the first such object is put; a
/// build that reads only version 1 would take one for the end of the log
/// and delete everything above it, so it must refuse the image.
pub const INCOMPAT_CHUNK_CRCS: u64 = 4;
/// Incompatible feature: delta checkpoints (checkpoint piece version 2)
/// and base links in the checkpoint list may exist. Set once by
/// `Inner::ensure_delta_feature` before the first delta checkpoint is put;
/// never cleared. A build without deltas refuses the image by name instead
/// of finding no usable checkpoint.
pub const INCOMPAT_DELTA_CKPT: u64 = 8;
/// Incompatible feature: the image keeps a high-water mark object
/// (`IMAGE.hwm`, [`super::hwm`]) that bounds every object sequence in the
/// store, so open and recovery probe sequences instead of listing the
/// pool. Set at the first read-write open by a build that keeps it, after
/// the mark is written; never cleared. A build without it would put
/// objects above the mark without raising it, and the next recovery would
/// then miss them above its first gap, so it must refuse the image.
pub const INCOMPAT_HWM: u64 = 16;
/// Every incompatible feature this build knows.
pub const KNOWN_INCOMPAT: u64 =
    INCOMPAT_GC | INCOMPAT_ZERO_MARKERS | INCOMPAT_CHUNK_CRCS | INCOMPAT_DELTA_CKPT | INCOMPAT_HWM;
/// The names of the incompatible feature bits set in `bits` (`info`), in
/// bit order; an unknown bit is named by its number.
pub fn feature_names(bits: u64) -> Vec<String> {
    const NAMES: [(u64, &str); 5] = [
        (INCOMPAT_GC, "gc"),
        (INCOMPAT_ZERO_MARKERS, "zero-markers"),
        (INCOMPAT_CHUNK_CRCS, "chunk-crcs"),
        (INCOMPAT_DELTA_CKPT, "delta-checkpoints"),
        (INCOMPAT_HWM, "high-water-mark"),
    ];
    (0..64)
        .map(|b| 1u64 << b)
        .filter(|bit| bits & bit != 0)
        .map(|bit| match NAMES.iter().find(|(n, _)| *n == bit) {
            Some((_, name)) => (*name).to_owned(),
            None => format!("bit{}", bit.trailing_zeros()),
        })
        .collect()
}

/// Flag of a checkpoint reference that is only a base link: a checkpoint a
/// listed delta is built on, kept (never tombstoned or deleted) but not
/// itself a recovery candidate.
const REF_LINK: u32 = 1;
/// Most base links a superblock may hold.
pub const MAX_LINKS: usize = 64;

/// A checkpoint reference: its first object sequence and piece count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointRef {
    /// Sequence of piece 0; pieces occupy `seq .. seq + pieces`.
    pub seq: ObjSeq,
    /// Number of pieces.
    pub pieces: u32,
}

/// A snapshot: the image as of its checkpoint, which reflects every object
/// up to `last_obj` (and nothing of the journal beyond it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRef {
    /// Name, unique within the image.
    pub name: String,
    /// The checkpoint holding the snapshot's map. Its pieces and every
    /// object its table lists are kept by GC while the snapshot exists.
    pub ckpt: CheckpointRef,
    /// Last object sequence the snapshot reflects.
    pub last_obj: ObjSeq,
    /// Image size when the snapshot was taken.
    pub size_bytes: u64,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Flags ([`SNAP_REMOVING`]).
    pub flags: u32,
}

/// A clone's link to the snapshot it was forked from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// Parent image name (same pool).
    pub image: String,
    /// Parent image UUID (checked when the parent is opened).
    pub uuid: ImageUuid,
    /// Parent snapshot name.
    pub snap: String,
    /// The snapshot's checkpoint (copied, so a renamed or rewritten
    /// snapshot list cannot silently change what the clone reads).
    pub ckpt: CheckpointRef,
    /// The snapshot's last object sequence.
    pub last_obj: ObjSeq,
    /// The snapshot's size: the clone reads through below it only.
    pub size_bytes: u64,
}

impl CheckpointRef {
    /// The sequences of its pieces.
    pub fn piece_seqs(&self) -> impl Iterator<Item = ObjSeq> {
        (self.seq.0..self.seq.0 + u64::from(self.pieces)).map(ObjSeq)
    }
}

/// The image superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Image identity.
    pub uuid: ImageUuid,
    /// Size of the disk in bytes.
    pub size_bytes: u64,
    /// Bumped on every rewrite.
    pub update_seq: u64,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Generation of the journal last attached; a journal with another
    /// generation is stale and never replayed.
    pub journal_gen: Generation,
    /// Flags ([`FLAG_CLEAN`]).
    pub flags: u32,
    /// Incompatible feature bits ([`INCOMPAT_GC`]).
    pub incompat: u64,
    /// Checkpoints, newest first: the candidates recovery tries.
    pub checkpoints: Vec<CheckpointRef>,
    /// Base links: checkpoints that listed delta checkpoints are built on
    /// (directly or through other links) and that are not in `checkpoints`
    /// themselves. Kept, never recovery candidates. Needs
    /// [`INCOMPAT_DELTA_CKPT`].
    pub links: Vec<CheckpointRef>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotRef>,
    /// The snapshot this image is a clone of.
    pub parent: Option<ParentRef>,
}

impl Superblock {
    /// Whether the image was closed cleanly.
    pub fn clean(&self) -> bool {
        self.flags & FLAG_CLEAN != 0
    }

    /// A snapshot by name.
    pub fn snapshot(&self, name: &str) -> Option<&SnapshotRef> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// The format version [`Self::encode`] writes: [`VERSION`] for a plain
    /// image, [`VERSION_2`] with snapshots, a parent or base links (links
    /// need version 2's length: a version-1 decoder of an earlier build
    /// then refuses by the feature bit, by name).
    pub fn version(&self) -> u32 {
        if !self.snapshots.is_empty() || self.parent.is_some() || !self.links.is_empty() {
            VERSION_2
        } else {
            VERSION
        }
    }

    /// Encode to bytes, in format [`Self::version`].
    pub fn encode(&self) -> Vec<u8> {
        let n = self.checkpoints.len().min(MAX_CHECKPOINTS);
        let links = &self.links[..self.links.len().min(MAX_LINKS)];
        let v2 = self.version() == VERSION_2;
        let mut len = 80 + 16 * (n + links.len()) + 4;
        if v2 {
            len += 4 + 4;
            for s in &self.snapshots[..self.snapshots.len().min(MAX_SNAPSHOTS)] {
                len += 42 + s.name.len();
            }
            if let Some(p) = &self.parent {
                len += 52 + p.image.len() + p.snap.len();
            }
        }
        let mut e = Enc::with_capacity(len);
        e.bytes(MAGIC)
            .u32(if v2 { VERSION_2 } else { VERSION })
            .u32(len as u32)
            .bytes(&self.uuid.0)
            .u64(self.size_bytes)
            .u64(self.incompat)
            .u64(self.update_seq)
            .u64(self.created_unix)
            .u64(self.journal_gen.0)
            .u32(self.flags)
            .u32((n + links.len()) as u32);
        for c in &self.checkpoints[..n] {
            e.u64(c.seq.0).u32(c.pieces).u32(0);
        }
        for c in links {
            e.u64(c.seq.0).u32(c.pieces).u32(REF_LINK);
        }
        if v2 {
            let snaps = &self.snapshots[..self.snapshots.len().min(MAX_SNAPSHOTS)];
            e.u32(snaps.len() as u32);
            for s in snaps {
                e.u64(s.ckpt.seq.0)
                    .u32(s.ckpt.pieces)
                    .u32(s.flags)
                    .u64(s.last_obj.0)
                    .u64(s.size_bytes)
                    .u64(s.created_unix)
                    .u16(s.name.len() as u16)
                    .bytes(s.name.as_bytes());
            }
            match &self.parent {
                None => {
                    e.u32(0);
                }
                Some(p) => {
                    e.u32(1)
                        .bytes(&p.uuid.0)
                        .u64(p.ckpt.seq.0)
                        .u32(p.ckpt.pieces)
                        .u32(0)
                        .u64(p.last_obj.0)
                        .u64(p.size_bytes)
                        .u16(p.image.len() as u16)
                        .bytes(p.image.as_bytes())
                        .u16(p.snap.len() as u16)
                        .bytes(p.snap.as_bytes());
                }
            }
        }
        debug_assert_eq!(e.buf.len() + 4, len);
        let crc = super::crc(0, &e.buf);
        e.u32(crc);
        e.buf
    }

    /// For fuzzing: rewrite the crc of an encoded superblock after its
    /// bytes were changed (the length at offset 12 says where it is).
    #[doc(hidden)]
    pub fn reseal(buf: &mut [u8]) {
        if let Some(l) = buf.get(12..16) {
            let len = u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize;
            super::reseal_trailing(buf, len);
        }
    }

    /// Decode and validate.
    pub fn decode(buf: &[u8]) -> Result<Superblock, FormatError> {
        let mut d = Dec::new(WHAT, buf);
        // Version 1 or 2: peek at the version, then check it as usual.
        let version = if buf.len() >= 12 && &buf[..8] == MAGIC {
            u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]])
        } else {
            VERSION
        };
        let v2 = version == VERSION_2;
        check_magic_version(&mut d, WHAT, MAGIC, if v2 { VERSION_2 } else { VERSION })?;
        let len = d.u32()? as usize;
        let max = if v2 {
            MAX_ENCODED
        } else {
            80 + 16 * MAX_CHECKPOINTS + 4
        };
        if !(84..=max).contains(&len) {
            return Err(d.invalid(format!("length {len} out of range")));
        }
        if buf.len() < len {
            return Err(FormatError::Truncated {
                what: WHAT,
                need: len,
                have: buf.len(),
            });
        }
        check_trailing_crc(WHAT, &buf[..len])?;
        let uuid = ImageUuid(d.array()?);
        let size_bytes = d.u64()?;
        let incompat = d.u64()?;
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(FormatError::UnsupportedFeatures {
                what: WHAT,
                bits: incompat & !KNOWN_INCOMPAT,
            });
        }
        let update_seq = d.u64()?;
        let created_unix = d.u64()?;
        let journal_gen = Generation(d.u64()?);
        let flags = d.u32()?;
        let n = d.u32()? as usize;
        if n > MAX_CHECKPOINTS + MAX_LINKS || (!v2 && len != 80 + 16 * n + 4) {
            return Err(d.invalid(format!("{n} checkpoints do not fit length {len}")));
        }
        let mut checkpoints = Vec::with_capacity(n.min(MAX_CHECKPOINTS));
        let mut links = Vec::new();
        for _ in 0..n {
            let c = ckpt_ref(&mut d)?;
            match d.u32()? {
                0 if links.is_empty() => checkpoints.push(c),
                REF_LINK if incompat & INCOMPAT_DELTA_CKPT != 0 => links.push(c),
                f => {
                    return Err(d.invalid(format!(
                        "checkpoint {} has flags {f:#x} (a link needs the delta feature \
                         and follows every candidate)",
                        c.seq.0
                    )))
                }
            }
        }
        if checkpoints.len() > MAX_CHECKPOINTS || links.len() > MAX_LINKS {
            return Err(d.invalid(format!(
                "{} checkpoints and {} links (at most {MAX_CHECKPOINTS} and {MAX_LINKS})",
                checkpoints.len(),
                links.len()
            )));
        }
        let mut snapshots = Vec::new();
        let mut parent = None;
        if v2 {
            let ns = d.u32()? as usize;
            if ns > MAX_SNAPSHOTS {
                return Err(d.invalid(format!("{ns} snapshots (at most {MAX_SNAPSHOTS})")));
            }
            for _ in 0..ns {
                let ckpt = ckpt_ref(&mut d)?;
                let flags = d.u32()?;
                let last_obj = ObjSeq(d.u64()?);
                let size_bytes = d.u64()?;
                let created_unix = d.u64()?;
                let name = name(&mut d, "snapshot")?;
                if snapshots.iter().any(|s: &SnapshotRef| s.name == name) {
                    return Err(d.invalid(format!("snapshot '{name}' listed twice")));
                }
                if last_obj.0 >= ckpt.seq.0 || !valid_size(size_bytes) {
                    return Err(d.invalid(format!("snapshot '{name}' is inconsistent")));
                }
                snapshots.push(SnapshotRef {
                    name,
                    ckpt,
                    last_obj,
                    size_bytes,
                    created_unix,
                    flags,
                });
            }
            match d.u32()? {
                0 => {}
                1 => {
                    let uuid = ImageUuid(d.array()?);
                    let ckpt = ckpt_ref(&mut d)?;
                    d.skip(4)?;
                    let last_obj = ObjSeq(d.u64()?);
                    let size_bytes = d.u64()?;
                    let image = name(&mut d, "parent image")?;
                    let snap = name(&mut d, "parent snapshot")?;
                    if last_obj.0 >= ckpt.seq.0 || !valid_size(size_bytes) {
                        return Err(d.invalid(format!("parent '{image}@{snap}' is inconsistent")));
                    }
                    parent = Some(ParentRef {
                        image,
                        uuid,
                        snap,
                        ckpt,
                        last_obj,
                        size_bytes,
                    });
                }
                x => return Err(d.invalid(format!("parent marker {x} is not 0 or 1"))),
            }
            if d.pos() + 4 != len {
                return Err(d.invalid(format!("fields end at {} but length is {len}", d.pos())));
            }
        }
        if !valid_size(size_bytes) {
            return Err(d.invalid(format!(
                "image size {size_bytes} is not a positive multiple of 4096 up to 1 PiB"
            )));
        }
        Ok(Superblock {
            uuid,
            size_bytes,
            update_seq,
            created_unix,
            journal_gen,
            flags,
            incompat,
            checkpoints,
            links,
            snapshots,
            parent,
        })
    }
}

/// A size an image (or its snapshot, or its parent) can have: a non-zero
/// multiple of 4096 up to the largest image (`MAX_SECTORS`, 1 PiB; what
/// `create` and `resize` allow), so no accepted write lands beyond what
/// the decoders of its journal record and object accept.
fn valid_size(size_bytes: u64) -> bool {
    size_bytes != 0
        && size_bytes.is_multiple_of(4096)
        && size_bytes <= super::MAX_SECTORS * crate::units::SECTOR
}

fn ckpt_ref(d: &mut Dec<'_>) -> Result<CheckpointRef, FormatError> {
    let seq = ObjSeq(d.u64()?);
    let pieces = d.u32()?;
    if seq.0 == 0 || pieces == 0 {
        return Err(d.invalid("checkpoint reference with zero sequence or pieces"));
    }
    if pieces > MAX_PIECES || seq.0.checked_add(u64::from(pieces)).is_none() {
        return Err(d.invalid(format!(
            "checkpoint {} with {pieces} pieces (at most {MAX_PIECES}, within the sequences)",
            seq.0
        )));
    }
    Ok(CheckpointRef { seq, pieces })
}

fn name(d: &mut Dec<'_>, what: &str) -> Result<String, FormatError> {
    let n = d.u16()? as usize;
    let b = d.bytes(n)?;
    if n == 0
        || n > MAX_NAME
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
    {
        return Err(d.invalid(format!(
            "{what} name is empty, too long or has bad characters"
        )));
    }
    Ok(String::from_utf8_lossy(b).into_owned())
}

#[cfg(test)]
mod tests {

    /// A checkpoint reference (crc valid) with more pieces than any image's
    /// map can need, or whose pieces run past the last sequence: recovery
    /// gathered every piece sequence into a set (4 billion of them OOMed
    /// the fuzz target) and tombstones missing ones one by one.
    #[test]
    fn a_checkpoint_reference_with_impossible_pieces_is_rejected() {
        for (seq, pieces) in [(5, MAX_PIECES + 1), (5, u32::MAX), (u64::MAX - 1, 4)] {
            let mut sb = sample();
            sb.checkpoints = vec![CheckpointRef {
                seq: ObjSeq(seq),
                pieces,
            }];
            let e = Superblock::decode(&sb.encode()).unwrap_err();
            assert!(e.to_string().contains("pieces"), "{seq} {pieces}: {e}");
        }
        let mut sb = sample();
        sb.checkpoints = vec![CheckpointRef {
            seq: ObjSeq(5),
            pieces: MAX_PIECES,
        }];
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        // A size over the largest image is refused (a write the server
        // accepted there would not decode from the journal or an object),
        // the largest itself is not.
        for (size, ok) in [(1u64 << 50, true), ((1 << 50) + 4096, false)] {
            let mut sb = sample();
            sb.size_bytes = size;
            let r = Superblock::decode(&sb.encode());
            assert_eq!(r.is_ok(), ok, "{size}: {r:?}");
        }
        // The bound covers the largest image's map.
        let most = crate::catalog::image::MAX_IMAGE_BYTES / crate::units::SECTOR;
        let per = crate::format::checkpoint::EXTENTS_PER_PIECE as u64;
        assert!(most.div_ceil(per) <= u64::from(MAX_PIECES));
    }
    use super::*;
    use crate::format::testutil::assert_rejects_corruption;

    pub(crate) fn sample() -> Superblock {
        Superblock {
            uuid: ImageUuid([7; 16]),
            size_bytes: 10 << 30,
            update_seq: 3,
            created_unix: 1_790_000_000,
            journal_gen: Generation(0x1234_5678_9abc),
            flags: FLAG_CLEAN,
            incompat: 0,
            checkpoints: vec![
                CheckpointRef {
                    seq: ObjSeq(101),
                    pieces: 2,
                },
                CheckpointRef {
                    seq: ObjSeq(50),
                    pieces: 1,
                },
            ],
            links: vec![],
            snapshots: vec![],
            parent: None,
        }
    }

    /// Two candidates and the two base links the newest is built on.
    fn sample_links() -> Superblock {
        let mut sb = sample();
        sb.incompat = INCOMPAT_DELTA_CKPT | INCOMPAT_GC;
        sb.links = vec![
            CheckpointRef {
                seq: ObjSeq(40),
                pieces: 1,
            },
            CheckpointRef {
                seq: ObjSeq(20),
                pieces: 3,
            },
        ];
        sb
    }

    #[test]
    fn links_round_trip_as_version_2_and_are_checked() {
        let sb = sample_links();
        let b = sb.encode();
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), VERSION_2);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        let golden = crate::format::testutil::golden("superblock-links-v2.bin", &b);
        assert_eq!(Superblock::decode(&golden).unwrap(), sb);
        assert_rejects_corruption(&b, Superblock::decode, &[]);
        // A link needs the feature bit.
        let mut no_bit = sb.clone();
        no_bit.incompat = INCOMPAT_GC;
        let e = Superblock::decode(&no_bit.encode()).unwrap_err();
        assert!(e.to_string().contains("needs the delta feature"), "{e}");
        // A candidate after a link, or an unknown flag, is refused.
        let mut b = sb.encode();
        let flags_at = |i: usize| 80 + 16 * i + 12;
        b[flags_at(0)..flags_at(0) + 4].copy_from_slice(&1u32.to_le_bytes());
        Superblock::reseal(&mut b);
        let e = Superblock::decode(&b).unwrap_err();
        assert!(e.to_string().contains("flags 0x0"), "{e}");
        let mut b = sb.encode();
        b[flags_at(3)..flags_at(3) + 4].copy_from_slice(&2u32.to_le_bytes());
        Superblock::reseal(&mut b);
        let e = Superblock::decode(&b).unwrap_err();
        assert!(e.to_string().contains("flags 0x2"), "{e}");
        // Too many links.
        let mut many = sb.clone();
        many.links = vec![sb.links[0]; MAX_LINKS + 1];
        let mut b = many.encode();
        // The encoder writes at most MAX_LINKS; forge one more by count.
        assert_eq!(Superblock::decode(&b).unwrap().links.len(), MAX_LINKS);
        let n_at = 76;
        let n = u32::from_le_bytes(b[n_at..n_at + 4].try_into().unwrap());
        b[n_at..n_at + 4].copy_from_slice(&(n + 1).to_le_bytes());
        Superblock::reseal(&mut b);
        assert!(Superblock::decode(&b).is_err());
    }

    #[test]
    fn a_build_without_deltas_refuses_links_by_name() {
        // What an earlier build checks first: the feature bits.
        let sb = sample_links();
        let b = sb.encode();
        let incompat = u64::from_le_bytes(b[40..48].try_into().unwrap());
        assert_eq!(incompat & INCOMPAT_DELTA_CKPT, INCOMPAT_DELTA_CKPT);
        assert_eq!(
            INCOMPAT_DELTA_CKPT & (INCOMPAT_GC | INCOMPAT_ZERO_MARKERS | INCOMPAT_CHUNK_CRCS),
            0
        );
    }

    fn sample_v2() -> Superblock {
        Superblock {
            snapshots: vec![
                SnapshotRef {
                    name: "monday".into(),
                    ckpt: CheckpointRef {
                        seq: ObjSeq(40),
                        pieces: 1,
                    },
                    last_obj: ObjSeq(39),
                    size_bytes: 8 << 30,
                    created_unix: 1_790_000_100,
                    flags: 0,
                },
                SnapshotRef {
                    name: "tue-1".into(),
                    ckpt: CheckpointRef {
                        seq: ObjSeq(90),
                        pieces: 3,
                    },
                    last_obj: ObjSeq(88),
                    size_bytes: 10 << 30,
                    created_unix: 1_790_000_200,
                    flags: SNAP_REMOVING,
                },
            ],
            parent: Some(ParentRef {
                image: "golden".into(),
                uuid: ImageUuid([9; 16]),
                snap: "v1".into(),
                ckpt: CheckpointRef {
                    seq: ObjSeq(12),
                    pieces: 1,
                },
                last_obj: ObjSeq(11),
                size_bytes: 4 << 30,
            }),
            ..sample()
        }
    }

    #[test]
    fn v2_round_trips_with_a_golden_vector_and_rejects_corruption() {
        let sb = sample_v2();
        let b = sb.encode();
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), VERSION_2);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        let golden = crate::format::testutil::golden("superblock-v2.bin", &b);
        assert_eq!(Superblock::decode(&golden).unwrap(), sb);
        assert_rejects_corruption(&b, Superblock::decode, &[]);
        // Snapshots only, and parent only, round-trip too.
        for sb in [
            Superblock {
                parent: None,
                ..sample_v2()
            },
            Superblock {
                snapshots: vec![],
                ..sample_v2()
            },
        ] {
            assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        }
        // A plain image is still written as version 1.
        assert_eq!(sample().encode()[8], 1);
    }

    #[test]
    fn v2_bad_fields_are_named() {
        let mut sb = sample_v2();
        sb.snapshots[1].name = "monday".into();
        let e = Superblock::decode(&sb.encode()).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let mut sb = sample_v2();
        sb.snapshots[0].name = "a b".into();
        let e = Superblock::decode(&sb.encode()).unwrap_err();
        assert!(e.to_string().contains("bad characters"), "{e}");
        let mut sb = sample_v2();
        sb.snapshots[0].last_obj = ObjSeq(40);
        let e = Superblock::decode(&sb.encode()).unwrap_err();
        assert!(e.to_string().contains("inconsistent"), "{e}");
        // The largest superblock fits what read_superblock reads.
        let mut sb = sample_v2();
        sb.snapshots = (0..MAX_SNAPSHOTS)
            .map(|i| SnapshotRef {
                name: format!("{i:0>96}"),
                ..sample_v2().snapshots[0].clone()
            })
            .collect();
        sb.parent.as_mut().unwrap().image = "i".repeat(MAX_NAME);
        sb.parent.as_mut().unwrap().snap = "s".repeat(MAX_NAME);
        sb.checkpoints = vec![sample().checkpoints[0]; MAX_CHECKPOINTS];
        sb.incompat |= INCOMPAT_DELTA_CKPT;
        sb.links = vec![sample().checkpoints[1]; MAX_LINKS];
        let b = sb.encode();
        assert_eq!(b.len(), MAX_ENCODED);
        const { assert!(MAX_ENCODED <= 20 << 10, "read_superblock reads 20 KiB") };
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        assert_rejects_corruption(&sample().encode(), Superblock::decode, &[]);
    }

    #[test]
    fn unknown_version_is_named() {
        let mut b = sample().encode();
        b[8] = 9;
        let e = Superblock::decode(&b).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 9"),
            "{e}"
        );
    }

    #[test]
    fn golden_vector() {
        let golden = crate::format::testutil::golden("superblock-v1.bin", &sample().encode());
        assert_eq!(Superblock::decode(&golden).unwrap(), sample());
    }

    fn sample_gc() -> Superblock {
        Superblock {
            incompat: INCOMPAT_GC,
            ..sample()
        }
    }

    #[test]
    fn gc_feature_round_trips_and_has_a_golden_vector() {
        let sb = sample_gc();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        let golden = crate::format::testutil::golden("superblock-gc-v1.bin", &sb.encode());
        assert_eq!(Superblock::decode(&golden).unwrap(), sb);
        assert_rejects_corruption(&sb.encode(), Superblock::decode, &[]);
    }

    #[test]
    fn chunk_crc_feature_round_trips_and_has_a_golden_vector() {
        let sb = Superblock {
            incompat: INCOMPAT_GC | INCOMPAT_CHUNK_CRCS,
            ..sample()
        };
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        let golden = crate::format::testutil::golden("superblock-crc-v1.bin", &sb.encode());
        assert_eq!(Superblock::decode(&golden).unwrap(), sb);
        // What a build that knows only bits 0 and 1 sees: the bit named.
        let e = FormatError::UnsupportedFeatures {
            what: WHAT,
            bits: sb.incompat & !(INCOMPAT_GC | INCOMPAT_ZERO_MARKERS),
        };
        assert_eq!(e.to_string(), "superblock: unsupported feature bits 0x4");
    }

    #[test]
    fn feature_bits_are_named_in_bit_order() {
        assert!(feature_names(0).is_empty());
        assert_eq!(
            feature_names(KNOWN_INCOMPAT | 1 << 40),
            [
                "gc",
                "zero-markers",
                "chunk-crcs",
                "delta-checkpoints",
                "high-water-mark",
                "bit40"
            ]
        );
    }

    #[test]
    fn unknown_feature_bits_are_refused_by_name() {
        for bits in [
            32u64,
            1 << 63,
            INCOMPAT_GC | 64,
            INCOMPAT_CHUNK_CRCS | INCOMPAT_HWM | 32,
        ] {
            let sb = Superblock {
                incompat: bits,
                ..sample()
            };
            let e = Superblock::decode(&sb.encode()).unwrap_err();
            assert_eq!(
                e,
                FormatError::UnsupportedFeatures {
                    what: WHAT,
                    bits: bits & !KNOWN_INCOMPAT
                }
            );
            assert!(e.to_string().contains("unsupported feature bits"), "{e}");
        }
    }
}
