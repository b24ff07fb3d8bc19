//! Crash failpoints for tests: `LSVD_FAILPOINT=name[:n]` makes the process
//! abort (no unwinding, no destructors: like a power cut for the backend's
//! view) on the `n`-th hit (default 1) of the point `name`.
//!
//! The variable is read once. When it is unset a hit costs one relaxed
//! atomic load. Points (see `docs/format.md`, "Crash-safety orderings"):
//! `gc.selected`, `gc.read_done`, `gc.seq_allocated`, `gc.put_done`,
//! `gc.applied`, `gc.ckpt_requested`, `ckpt.published`, `gc.delete.each`,
//! `gc.sweep.listed`; for snapshots and clones ([`LIFECYCLE_POINTS`]):
//! `snap.before_superblock`, `flatten.before_superblock`; and those of a
//! resize ([`RESIZE_POINTS`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the failpoint.
pub const ENV: &str = "LSVD_FAILPOINT";

/// Every failpoint, in the order a GC cycle reaches them.
pub const POINTS: &[&str] = &[
    "gc.selected",
    "gc.read_done",
    "gc.seq_allocated",
    "gc.put_done",
    "gc.applied",
    "gc.ckpt_requested",
    "ckpt.published",
    "gc.sweep.listed",
    "gc.delete.each",
];

/// Failpoints of `snap create` and `flatten` (not reached by a GC cycle).
pub const LIFECYCLE_POINTS: &[&str] = &["snap.before_superblock", "flatten.before_superblock"];
/// The failpoints of `Volume::resize`, in the order it reaches them
/// (crash-safety ordering 26): the tail trim journaled, the trim applied in
/// the backend, the superblock with the new size written.
pub const RESIZE_POINTS: &[&str] = &[
    "resize.trim_journaled",
    "resize.trim_applied",
    "resize.sb_written",
];

/// Check a `NAME[:N]` value: a known point and N >= 1.
pub fn validate(v: &str) -> Result<(), String> {
    let s = parse(v).ok_or_else(|| format!("{v:?} is not NAME[:N] with N >= 1"))?;
    if !POINTS.contains(&s.name.as_str())
        && !LIFECYCLE_POINTS.contains(&s.name.as_str())
        && !RESIZE_POINTS.contains(&s.name.as_str())
    {
        return Err(format!(
            "unknown failpoint {:?} (known: {}, {}, {})",
            s.name,
            POINTS.join(", "),
            LIFECYCLE_POINTS.join(", "),
            RESIZE_POINTS.join(", ")
        ));
    }
    Ok(())
}

/// What a process prints on stderr right before it aborts at point `name`
/// (followed by the hit count).
pub fn message_prefix(name: &str) -> String {
    format!("lsvd failpoint {name}:")
}

/// A parsed `LSVD_FAILPOINT` value.
#[derive(Debug, PartialEq, Eq)]
struct Spec {
    name: String,
    nth: u64,
}

/// Parse `name[:n]`; `None` (and a warning) for anything else.
fn parse(v: &str) -> Option<Spec> {
    let v = v.trim();
    let (name, nth) = match v.rsplit_once(':') {
        Some((name, n)) => (name, n.parse::<u64>().ok().filter(|&n| n > 0)?),
        None => (v, 1),
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ':') {
        return None;
    }
    Some(Spec {
        name: name.to_string(),
        nth,
    })
}

static ARMED: AtomicBool = AtomicBool::new(true);
static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn spec() -> &'static Option<Spec> {
    SPEC.get_or_init(|| {
        let s = std::env::var(ENV).ok()?;
        let p = parse(&s);
        if p.is_none() {
            tracing::warn!("LSVD_FAILPOINT={s:?} is not name[:n] with n >= 1; ignored");
        }
        p
    })
}

/// A failpoint: abort the process here if `LSVD_FAILPOINT` names it and
/// this is its `n`-th hit.
#[inline]
pub fn hit(name: &'static str) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    slow(name);
}

#[cold]
fn slow(name: &'static str) {
    let Some(s) = spec() else {
        ARMED.store(false, Ordering::Relaxed);
        return;
    };
    if s.name == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == s.nth {
        eprintln!("{}{} hit: aborting", message_prefix(name), s.nth);
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_and_count() {
        assert_eq!(
            parse("gc.applied"),
            Some(Spec {
                name: "gc.applied".into(),
                nth: 1
            })
        );
        assert_eq!(
            parse(" gc.delete.each:3 "),
            Some(Spec {
                name: "gc.delete.each".into(),
                nth: 3
            })
        );
        for bad in [
            "",
            ":2",
            "gc.applied:0",
            "gc.applied:x",
            "a b",
            "a:1:2",
            "gc:-1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn validate_knows_every_point() {
        for p in POINTS {
            assert_eq!(validate(p), Ok(()));
            assert_eq!(validate(&format!("{p}:3")), Ok(()));
        }
        let e = validate("gc.nope").unwrap_err();
        assert!(
            e.contains("unknown failpoint") && e.contains("gc.applied"),
            "{e}"
        );
        assert!(validate("gc.applied:0").is_err());
        // Every point is really in the code.
        let src = [
            include_str!("gc/mod.rs"),
            include_str!("volume/gchost.rs"),
            include_str!("volume/destage.rs"),
            include_str!("volume/snapshot.rs"),
            include_str!("volume/mod.rs"),
            include_str!("volume/lifecycle.rs"),
        ]
        .concat();
        for p in POINTS.iter().chain(LIFECYCLE_POINTS).chain(RESIZE_POINTS) {
            assert!(
                src.contains(&format!("hit(\"{p}\")")),
                "{p} is not hit anywhere"
            );
        }
    }

    #[test]
    fn unset_is_a_no_op() {
        // The test environment does not set LSVD_FAILPOINT.
        if std::env::var_os("LSVD_FAILPOINT").is_none() {
            hit("gc.selected");
            hit("gc.selected");
            assert!(!ARMED.load(Ordering::Relaxed));
        }
    }
}
