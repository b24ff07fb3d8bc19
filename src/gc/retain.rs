//! The snapshot/clone hook: objects GC must never delete.

use crate::units::ObjSeq;

/// Decides whether an object is still needed by something other than this
/// image's current map (a snapshot or a clone reading through to it).
///
/// GC consults it when it selects victims (do not clean what cannot be
/// freed) and again right before every delete, the orphan sweep included.
/// A snapshot/clone implementation provides one built from its own maps;
/// until then every volume uses [`NoRetention`].
pub trait Retention: Send + Sync {
    /// True if `obj` must be kept.
    fn pinned(&self, obj: ObjSeq) -> bool;
}

/// Nothing is pinned (no snapshots or clones exist yet).
pub struct NoRetention;

impl Retention for NoRetention {
    fn pinned(&self, _obj: ObjSeq) -> bool {
        false
    }
}

/// What the image's snapshots need: every object their checkpoints' tables
/// list, and those checkpoints' pieces. Rebuilt whenever the snapshot list
/// changes (under the GC lock, so no GC step sees a half-updated set).
#[derive(Default)]
pub struct SnapshotPins {
    inner: std::sync::RwLock<PinSet>,
}

#[derive(Default)]
struct PinSet {
    /// A snapshot's table could not be read: keep everything.
    all: bool,
    objects: std::collections::BTreeSet<ObjSeq>,
}

impl SnapshotPins {
    /// Replace the pinned set. `all`: some snapshot's needs are unknown, so
    /// nothing may be deleted.
    pub fn set(&self, all: bool, objects: std::collections::BTreeSet<ObjSeq>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *g = PinSet { all, objects };
    }

    /// Pin `objects` too (a new snapshot's).
    pub fn add(&self, objects: impl IntoIterator<Item = ObjSeq>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        g.objects.extend(objects);
    }

    /// Number of pinned objects (for `info` and tests), `None` when
    /// everything is pinned.
    pub fn count(&self) -> Option<usize> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (!g.all).then_some(g.objects.len())
    }
}

impl Retention for SnapshotPins {
    fn pinned(&self, obj: ObjSeq) -> bool {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.all || g.objects.contains(&obj)
    }
}

impl<R: Retention + ?Sized> Retention for std::sync::Arc<R> {
    fn pinned(&self, obj: ObjSeq) -> bool {
        (**self).pinned(obj)
    }
}
