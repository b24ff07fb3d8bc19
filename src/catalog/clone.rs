//! Clones in the catalog: making one from a parent snapshot, and finding
//! the clones of an image. Crash-safety ordering (24) (see
//! `volume/snapshot.rs`): `clone` writes the child's superblock first, then
//! re-reads the parent's and undoes itself if the snapshot is gone or being
//! removed.

use tracing::warn;

use super::image::{self, read_superblock};
use crate::backend::ObjectStore;
use crate::error::{Error, ErrorKind, Result};
use crate::format::superblock::{ParentRef, Superblock, SNAP_REMOVING};
use crate::units::ImageUuid;

/// Deepest clone chain followed (a clone of a clone of ...).
pub const MAX_CHAIN: usize = 16;

/// The error for a missing snapshot `snap` of `image`, naming the ones it
/// has.
pub(crate) fn no_such_snapshot(image: &str, sb: &Superblock, snap: &str) -> Error {
    let names: Vec<&str> = sb.snapshots.iter().map(|s| s.name.as_str()).collect();
    Error::new(
        ErrorKind::NotFound,
        format!(
            "image {image} has no snapshot '{snap}' (snapshots: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ),
    )
}

/// The clones of `image` in its pool, as (clone, parent snapshot), sorted
/// by clone name. One scan of the pool's superblocks.
pub fn find_clones(
    store: &dyn ObjectStore,
    image: &str,
    uuid: ImageUuid,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    image::each_superblock(store, |name, sb| {
        // Only a missing (or placeholder) superblock is skipped: an image
        // that cannot be read might be a clone, and a snapshot removed
        // under it would be lost to it.
        let sb = match sb {
            Ok(sb) => sb,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e.prefixed(format!(
                    "cannot tell whether image {name} is a clone of {image}"
                )))
            }
        };
        if let Some(p) = sb.parent {
            if p.image == image && p.uuid == uuid {
                out.push((name.to_string(), p.snap));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Create `child` as a clone of `parent@snap` in the same pool: one
/// superblock, whatever the parent's size. See ordering (24).
pub fn clone_image(
    store: &dyn ObjectStore,
    parent: &str,
    snap: &str,
    child: &str,
) -> Result<ImageUuid> {
    let link = |sb: &Superblock| -> Result<ParentRef> {
        let s = sb
            .snapshot(snap)
            .ok_or_else(|| no_such_snapshot(parent, sb, snap))?;
        if s.flags & SNAP_REMOVING != 0 {
            return Err(Error::new(
                ErrorKind::InUse,
                format!("snapshot {parent}@{snap} is being removed"),
            ));
        }
        Ok(ParentRef {
            image: parent.to_string(),
            uuid: sb.uuid,
            snap: snap.to_string(),
            ckpt: s.ckpt,
            last_obj: s.last_obj,
            size_bytes: s.size_bytes,
        })
    };
    let want = link(&read_superblock(store, parent)?)?;
    let uuid = image::create_image_with(store, child, want.size_bytes, Some(want.clone()))?;
    // Ordering (24): the child's superblock is durable; now the snapshot
    // must still be there and not being removed, or the clone is undone.
    let again = read_superblock(store, parent).and_then(|sb| link(&sb));
    match again {
        Ok(p) if p == want => Ok(uuid),
        r => {
            let why = match r {
                Ok(_) => Error::new(
                    ErrorKind::Mismatch,
                    format!("snapshot {parent}@{snap} changed while the clone was made"),
                ),
                Err(e) => e,
            };
            match image::remove_image(store, child, None) {
                Ok(()) => Err(why.prefixed(format!("clone {child} undone"))),
                Err(e) => {
                    warn!(child, "could not undo the clone: {e:?}");
                    Err(why.prefixed(format!(
                        "clone {child} could NOT be undone ({e}); remove it with `rm`"
                    )))
                }
            }
        }
    }
}
