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
