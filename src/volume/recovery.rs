//! Backend recovery at open: newest valid checkpoint, roll forward through
//! consecutive objects to the first gap, delete what lies above the gap.

use std::collections::BTreeSet;

use tracing::{info, warn};

use super::image::{object_name, parse_object_name};
use crate::backend::ObjectStore;
use crate::error::{Error, ErrorKind, Result};
use crate::format::checkpoint::CheckpointPiece;
use crate::format::object::{ObjOp, ObjectHeader, OpKind, FIXED_BYTES};
use crate::format::superblock::{CheckpointRef, Superblock};
use crate::map::{Extent, ObjInfo, ObjLoc, ObjectMap};
use crate::units::{JournalSeq, Lba, ObjSeq};

/// The backend state recovered at open.
pub(crate) struct Recovered {
    pub map: ObjectMap,
    /// Every object up to this is applied (data or checkpoint).
    pub last_obj: ObjSeq,
    /// Highest journal sequence the backend holds.
    pub backend_jseq: JournalSeq,
    /// Checkpoints still valid (newest first).
    pub checkpoints: Vec<CheckpointRef>,
    /// Data objects rolled forward.
    pub rolled: u64,
    /// Objects deleted above the gap.
    pub deleted: u64,
}

/// Load one checkpoint (all its pieces) into a map.
fn load_checkpoint(
    store: &dyn ObjectStore,
    image: &str,
    sb: &Superblock,
    c: CheckpointRef,
) -> Result<(ObjectMap, ObjSeq, JournalSeq)> {
    let mut objects = Vec::new();
    let mut extents = Vec::new();
    let mut header: Option<(ObjSeq, JournalSeq, u64)> = None;
    for i in 0..c.pieces {
        let name = object_name(image, ObjSeq(c.seq.0 + i as u64));
        let size = store.stat(&name)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("checkpoint piece {name} is missing"),
            )
        })?;
        let buf = store.get(&name, 0, size as usize)?;
        let p = CheckpointPiece::decode(&buf).map_err(|e| {
            Error::with_source(ErrorKind::Corrupt, format!("checkpoint piece {name}"), e)
        })?;
        if p.uuid != sb.uuid || p.ckpt_seq != c.seq || p.index != i || p.count != c.pieces {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "checkpoint piece {name} does not belong to checkpoint {} of this image",
                    c.seq
                ),
            ));
        }
        match header {
            None => header = Some((p.last_obj_seq, p.max_jseq, p.total_extents)),
            Some(h) if h != (p.last_obj_seq, p.max_jseq, p.total_extents) => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("checkpoint piece {name} disagrees with piece 0"),
                ))
            }
            _ => {}
        }
        objects.extend(p.objects.iter().map(|o| {
            (
                o.obj,
                ObjInfo {
                    data_sectors: o.data_sectors,
                    live_sectors: o.live_sectors,
                },
            )
        }));
        extents.extend(p.extents.iter().map(|x| Extent {
            lba: x.lba,
            len: x.len as u64,
            target: ObjLoc {
                obj: x.obj,
                offset: x.offset,
            },
        }));
    }
    let (last_obj, max_jseq, total) = header.unwrap_or((ObjSeq(0), JournalSeq(0), 0));
    if total != extents.len() as u64 {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "checkpoint {} lists {total} extents but holds {}",
                c.seq,
                extents.len()
            ),
        ));
    }
    let map = ObjectMap::from_parts(extents, objects)
        .map_err(|e| Error::new(ErrorKind::Corrupt, format!("checkpoint {}: {e}", c.seq)))?;
    Ok((map, last_obj, max_jseq))
}

/// What the roll-forward finds at one sequence.
pub(crate) enum Found {
    Data(ObjectHeader),
    Checkpoint,
    Missing,
    Invalid(String),
}

/// Read and validate the header of the object at `seq`: `Missing` when it
/// does not exist, `Checkpoint` for a checkpoint piece or tombstone (skipped),
/// `Invalid` when it cannot be a valid object of this image.
pub(crate) fn read_object_header(
    store: &dyn ObjectStore,
    image: &str,
    sb: &Superblock,
    seq: ObjSeq,
) -> Result<Found> {
    let name = object_name(image, seq);
    let first = match store.get(&name, 0, 4096) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(e),
    };
    if first.len() >= 8 && &first[..8] == b"LSVDCKP1" {
        return Ok(Found::Checkpoint);
    }
    if first.len() < FIXED_BYTES {
        return Ok(Found::Invalid(format!(
            "{name}: only {} bytes",
            first.len()
        )));
    }
    let need = match ObjectHeader::needed_bytes(&first) {
        Ok(n) => n,
        Err(e) => return Ok(Found::Invalid(format!("{name}: {e}"))),
    };
    let buf = if need > first.len() {
        store.get(&name, 0, need)?
    } else {
        first
    };
    match ObjectHeader::decode(&buf) {
        Ok(h) if h.uuid == sb.uuid && h.seq == seq => Ok(Found::Data(h)),
        Ok(h) => Ok(Found::Invalid(format!(
            "{name}: belongs to image {} object {}",
            h.uuid, h.seq
        ))),
        Err(e) => Ok(Found::Invalid(format!("{name}: {e}"))),
    }
}

/// Apply a data object's operations to the map, in order.
pub(crate) fn apply_object(map: &mut ObjectMap, h: &ObjectHeader) {
    apply_ops(
        map,
        h.seq,
        h.data_sectors as u64,
        h.data_start_sectors(),
        &h.ops,
    );
}

/// Register object `obj` (holding `data_sectors` of write data, which starts
/// `header_sectors` into the object) and apply its operations in order.
/// Shared by roll-forward and destage so both build the same map.
pub(crate) fn apply_ops(
    map: &mut ObjectMap,
    obj: ObjSeq,
    data_sectors: u64,
    header_sectors: u32,
    ops: &[ObjOp],
) {
    map.add_object(obj, data_sectors);
    apply_op_list(map, obj, header_sectors, ops);
}

/// Apply operations of object `obj` (already registered) in order.
pub(crate) fn apply_op_list(map: &mut ObjectMap, obj: ObjSeq, header_sectors: u32, ops: &[ObjOp]) {
    for op in ops {
        match op.kind {
            OpKind::Write => map.apply_write(
                Lba(op.lba.0),
                op.sectors as u64,
                ObjLoc {
                    obj,
                    offset: header_sectors + op.data_offset,
                },
            ),
            OpKind::Trim | OpKind::Zero => map.apply_trim(Lba(op.lba.0), op.sectors as u64),
        }
    }
}

/// Recover the backend state of `image`.
pub(crate) fn recover(store: &dyn ObjectStore, image: &str, sb: &Superblock) -> Result<Recovered> {
    let mut base = None;
    for (i, c) in sb.checkpoints.iter().enumerate() {
        match load_checkpoint(store, image, sb, *c) {
            Ok(r) => {
                base = Some((i, r));
                break;
            }
            Err(e) => warn!(
                image,
                checkpoint = c.seq.0,
                "checkpoint unusable, trying an older one: {e:?}"
            ),
        }
    }
    let (mut map, mut last_obj, mut backend_jseq, ckpt_index) = match base {
        Some((i, (m, o, j))) => (m, o, j, Some(i)),
        None => {
            if !sb.checkpoints.is_empty() {
                warn!(
                    image,
                    "no usable checkpoint: rolling forward from the first object"
                );
            }
            (ObjectMap::new(), ObjSeq(0), JournalSeq(0), None)
        }
    };
    if let Some(i) = ckpt_index {
        info!(
            image,
            checkpoint = sb.checkpoints[i].seq.0,
            last_obj = last_obj.0,
            "checkpoint loaded"
        );
    }
    // Checkpoint pieces the superblock knows of are skipped without reading.
    let known: BTreeSet<u64> = sb
        .checkpoints
        .iter()
        .flat_map(|c| c.seq.0..c.seq.0 + c.pieces as u64)
        .collect();
    let mut rolled = 0;
    let mut seq = last_obj.next();
    let gap = loop {
        if known.contains(&seq.0) {
            if store.stat(&object_name(image, seq))?.is_none() {
                break seq;
            }
            last_obj = seq;
            seq = seq.next();
            continue;
        }
        match read_object_header(store, image, sb, seq)? {
            Found::Data(h) => {
                if h.first_jseq.0 <= backend_jseq.0 {
                    warn!(image, object = seq.0, first = h.first_jseq.0, backend = backend_jseq.0,
                        "object repeats journal sequences already applied; applying it in order anyway");
                }
                apply_object(&mut map, &h);
                backend_jseq = backend_jseq.max(h.last_jseq());
                last_obj = seq;
                rolled += 1;
                seq = seq.next();
            }
            Found::Checkpoint => {
                last_obj = seq;
                seq = seq.next();
            }
            Found::Missing => break seq,
            Found::Invalid(why) => {
                warn!(
                    image,
                    object = seq.0,
                    "invalid object ends the roll-forward: {why}"
                );
                break seq;
            }
        }
    };
    // Objects above the gap were written out of order before a crash (or
    // the gap is a lost object): applying them would break prefix
    // consistency, and leaving them would let a later roll-forward run into
    // them once the gap is refilled. Delete them before anything new is
    // written at the gap's sequence.
    let mut deleted = 0;
    for name in store.list(&format!("{image}."))? {
        if let Some(s) = parse_object_name(image, &name) {
            if s >= gap {
                warn!(image, object = %name, gap = gap.0, "deleting object above the first gap");
                store.delete(&name)?;
                deleted += 1;
            }
        }
    }
    let checkpoints = sb
        .checkpoints
        .iter()
        .copied()
        .filter(|c| c.seq.0 + c.pieces as u64 <= gap.0)
        .collect();
    info!(
        image,
        rolled,
        last_obj = last_obj.0,
        backend_jseq = backend_jseq.0,
        deleted,
        "backend recovered"
    );
    Ok(Recovered {
        map,
        last_obj,
        backend_jseq,
        checkpoints,
        rolled,
        deleted,
    })
}
