//! [`FaultStore`]: a wrapper that fails, delays or drops chosen operations of
//! another store, or performs them and then fails them, for tests.
//!
//! Faults are described by [`FaultRule`]s. For each operation the rules are
//! tried in the order they were added; the first one that matches (same
//! operation, name filter, firings left) and wins its probability roll fires,
//! and the others are not tried. Randomness (probability rolls, random
//! delays) comes from a seeded RNG, so a run with the same seed and the same
//! sequence of operations injects the same faults.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{ObjectStore, StoreLock};
use crate::error::{Error, ErrorKind, Result};

/// The operations of [`ObjectStore`] a rule can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// [`ObjectStore::put`]
    Put,
    /// [`ObjectStore::get`]
    Get,
    /// [`ObjectStore::stat`]
    Stat,
    /// [`ObjectStore::delete`]
    Delete,
    /// [`ObjectStore::list`] (the name filter applies to the prefix)
    List,
    /// [`ObjectStore::lock`] (the name filter applies to the lock name)
    Lock,
}

impl FaultOp {
    /// Every operation, in a fixed order.
    pub const ALL: [FaultOp; 6] = [
        FaultOp::Put,
        FaultOp::Get,
        FaultOp::Stat,
        FaultOp::Delete,
        FaultOp::List,
        FaultOp::Lock,
    ];

    fn as_str(self) -> &'static str {
        match self {
            FaultOp::Put => "put",
            FaultOp::Get => "get",
            FaultOp::Stat => "stat",
            FaultOp::Delete => "delete",
            FaultOp::List => "list",
            FaultOp::Lock => "lock",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FaultOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a firing rule does.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultAction {
    /// Fail the operation with an error of this kind, without calling the
    /// inner store.
    Fail(ErrorKind),
    /// Sleep this long, then perform the operation normally.
    Delay(Duration),
    /// Sleep a random time in `0..=max`, then perform the operation normally.
    DelayRandom {
        /// The longest delay.
        max: Duration,
    },
    /// Lose the operation: a `put` or `delete` reports success without doing
    /// anything; any other operation fails like `Fail(ErrorKind::Io)`.
    Drop,
    /// Perform the operation, then fail it with an error of this kind: the
    /// caller sees an error although the operation took effect (a RADOS
    /// `write_full` that times out after the OSD applied it).
    ApplyThenFail(ErrorKind),
}

/// One fault to inject.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// The operation it targets.
    pub op: FaultOp,
    /// Only objects (or list prefixes, or lock names) containing this string;
    /// `None` matches all.
    pub name_contains: Option<String>,
    /// Only puts whose data starts with these bytes (for example a
    /// format's magic, to target one kind of object); `None` matches all.
    /// A rule with this filter never matches other operations.
    pub data_starts_with: Option<Vec<u8>>,
    /// Only the object (or list prefix, or lock name) exactly this; `None`
    /// matches all.
    pub name_is: Option<String>,
    /// What it does when it fires.
    pub action: FaultAction,
    /// How many times it may fire; `None` means forever.
    pub times: Option<u64>,
    /// Chance of firing when it matches, in `0.0..=1.0` (values outside are
    /// clamped; NaN counts as 0).
    pub probability: f64,
}

impl FaultRule {
    /// A rule that always fires `action` on every `op`, forever. Narrow it with
    /// [`matching`](Self::matching), [`times`](Self::times) and
    /// [`probability`](Self::probability).
    pub fn new(op: FaultOp, action: FaultAction) -> FaultRule {
        FaultRule {
            op,
            name_contains: None,
            data_starts_with: None,
            name_is: None,
            action,
            times: None,
            probability: 1.0,
        }
    }

    /// Shorthand for `FaultRule::new(op, FaultAction::Fail(kind))`.
    pub fn fail(op: FaultOp, kind: ErrorKind) -> FaultRule {
        FaultRule::new(op, FaultAction::Fail(kind))
    }

    /// Only fire on names containing `s`.
    pub fn matching(mut self, s: impl Into<String>) -> FaultRule {
        self.name_contains = Some(s.into());
        self
    }

    /// Only fire on puts whose data starts with `prefix`.
    pub fn data_starting_with(mut self, prefix: &[u8]) -> FaultRule {
        self.data_starts_with = Some(prefix.to_vec());
        self
    }

    /// Only fire on the name `s` itself (an image's superblock `IMG`, not
    /// its objects `IMG.<seq>`).
    pub fn named(mut self, s: impl Into<String>) -> FaultRule {
        self.name_is = Some(s.into());
        self
    }

    /// Fire at most `n` times.
    pub fn times(mut self, n: u64) -> FaultRule {
        self.times = Some(n);
        self
    }

    /// Fire with probability `p` each time it matches.
    pub fn probability(mut self, p: f64) -> FaultRule {
        self.probability = p;
        self
    }

    /// `data`: a put's bytes (`None` for every other operation).
    fn matches(&self, op: FaultOp, name: &str, data: Option<&[u8]>) -> bool {
        self.op == op
            && self.times != Some(0)
            && self
                .name_contains
                .as_deref()
                .is_none_or(|s| name.contains(s))
            && self
                .data_starts_with
                .as_deref()
                .is_none_or(|p| data.is_some_and(|d| d.starts_with(p)))
            && self.name_is.as_deref().is_none_or(|s| name == s)
    }
}

/// What a [`FaultStore`] has seen and done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Operations seen, indexed like [`FaultOp::ALL`]; see [`seen`](Self::seen).
    pub ops: [u64; 6],
    /// Faults injected, indexed like [`FaultOp::ALL`]; see
    /// [`injected_for`](Self::injected_for).
    pub injected_by_op: [u64; 6],
    /// Faults injected in total (delays included).
    pub injected: u64,
}

impl FaultCounts {
    /// Operations of kind `op` seen (faulted or not).
    pub fn seen(&self, op: FaultOp) -> u64 {
        self.ops[op.index()]
    }

    /// Faults injected into operations of kind `op`.
    pub fn injected_for(&self, op: FaultOp) -> u64 {
        self.injected_by_op[op.index()]
    }
}

struct State {
    rules: Vec<FaultRule>,
    rng: SmallRng,
    counts: FaultCounts,
}

/// The decision taken for one operation.
enum Decision {
    Proceed,
    Sleep(Duration),
    Fail(ErrorKind),
    Drop,
    ApplyThenFail(ErrorKind),
}

/// What to do with one operation, after any delay.
enum Gate {
    /// Perform it.
    Run,
    /// Skip it and report success (a dropped put or delete).
    Skip,
    /// Perform it, then fail with this kind.
    RunThenFail(ErrorKind),
}

/// An [`ObjectStore`] that forwards to another one, injecting faults.
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    state: Mutex<State>,
}

impl FaultStore {
    /// Wrap `inner`; `seed` seeds the RNG used for probabilities and random
    /// delays. No rules at first: everything is forwarded.
    pub fn new(inner: Arc<dyn ObjectStore>, seed: u64) -> FaultStore {
        FaultStore {
            inner,
            state: Mutex::new(State {
                rules: Vec::new(),
                rng: SmallRng::seed_from_u64(seed),
                counts: FaultCounts::default(),
            }),
        }
    }

    /// Add a rule, tried after the existing ones.
    pub fn add_rule(&self, rule: FaultRule) {
        self.state().rules.push(rule);
    }

    /// Remove every rule (counts are kept).
    pub fn clear_rules(&self) {
        self.state().rules.clear();
    }

    /// What has been seen and injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.state().counts.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is complete before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count `op` on `name` (with a put's `data`) and decide what to do
    /// with it.
    fn decide(&self, op: FaultOp, name: &str, data: Option<&[u8]>) -> Decision {
        let mut guard = self.state();
        let st = &mut *guard;
        st.counts.ops[op.index()] += 1;
        let mut fired = None;
        for rule in st.rules.iter_mut() {
            if !rule.matches(op, name, data) {
                continue;
            }
            let p = rule.probability;
            // Only roll for real probabilities, so rules that always or never
            // fire do not disturb the random sequence of the others.
            let fires = if p.is_nan() || p <= 0.0 {
                false
            } else if p >= 1.0 {
                true
            } else {
                st.rng.gen_bool(p)
            };
            if fires {
                if let Some(t) = rule.times.as_mut() {
                    *t -= 1;
                }
                fired = Some(rule.action.clone());
                break;
            }
        }
        let Some(action) = fired else {
            return Decision::Proceed;
        };
        st.counts.injected += 1;
        st.counts.injected_by_op[op.index()] += 1;
        match action {
            FaultAction::Fail(kind) => Decision::Fail(kind),
            FaultAction::Delay(d) => Decision::Sleep(d),
            FaultAction::DelayRandom { max } => {
                let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
                Decision::Sleep(Duration::from_nanos(st.rng.gen_range(0..=nanos)))
            }
            FaultAction::Drop => Decision::Drop,
            FaultAction::ApplyThenFail(kind) => Decision::ApplyThenFail(kind),
        }
    }

    fn injected(&self, op: FaultOp, name: &str, kind: ErrorKind, what: &str) -> Error {
        Error::new(
            kind,
            format!(
                "{op} {name} in {}: injected fault ({what})",
                self.describe()
            ),
        )
    }

    /// Apply the decision for an operation other than put/delete: `Err` to
    /// fail it, otherwise whether to fail it after performing it.
    fn gate(&self, op: FaultOp, name: &str) -> Result<Gate> {
        match self.decide(op, name, None) {
            Decision::Proceed => Ok(Gate::Run),
            Decision::Sleep(d) => {
                std::thread::sleep(d);
                Ok(Gate::Run)
            }
            Decision::Fail(kind) => Err(self.injected(op, name, kind, "fail")),
            Decision::Drop => Err(self.injected(op, name, ErrorKind::Io, "drop")),
            Decision::ApplyThenFail(kind) => Ok(Gate::RunThenFail(kind)),
        }
    }

    /// Apply the decision for put/delete (`data`: a put's bytes): like
    /// [`gate`](Self::gate), and a dropped one is skipped and reported as a
    /// success.
    fn gate_mutation(&self, op: FaultOp, name: &str, data: Option<&[u8]>) -> Result<Gate> {
        match self.decide(op, name, data) {
            Decision::Drop => {
                tracing::debug!(store = %self.describe(), %op, name, "injected fault: dropped");
                Ok(Gate::Skip)
            }
            Decision::Proceed => Ok(Gate::Run),
            Decision::Sleep(d) => {
                std::thread::sleep(d);
                Ok(Gate::Run)
            }
            Decision::Fail(kind) => Err(self.injected(op, name, kind, "fail")),
            Decision::ApplyThenFail(kind) => Ok(Gate::RunThenFail(kind)),
        }
    }

    /// Run `f` as `gate` decided.
    fn run<T: Default>(
        &self,
        op: FaultOp,
        name: &str,
        gate: Gate,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match gate {
            Gate::Run => f(),
            Gate::Skip => Ok(T::default()),
            Gate::RunThenFail(kind) => {
                f()?;
                Err(self.injected(op, name, kind, "applied, then failed"))
            }
        }
    }
}

impl ObjectStore for FaultStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let g = self.gate_mutation(FaultOp::Put, name, Some(data))?;
        self.run(FaultOp::Put, name, g, || self.inner.put(name, data))
    }

    fn get(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let g = self.gate(FaultOp::Get, name)?;
        self.run(FaultOp::Get, name, g, || self.inner.get(name, offset, len))
    }

    fn stat(&self, name: &str) -> Result<Option<u64>> {
        let g = self.gate(FaultOp::Stat, name)?;
        self.run(FaultOp::Stat, name, g, || self.inner.stat(name))
    }

    fn delete(&self, name: &str) -> Result<()> {
        let g = self.gate_mutation(FaultOp::Delete, name, None)?;
        self.run(FaultOp::Delete, name, g, || self.inner.delete(name))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let g = self.gate(FaultOp::List, prefix)?;
        self.run(FaultOp::List, prefix, g, || self.inner.list(prefix))
    }

    fn lock(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        // A lock taken and then failed would be held by nobody: drop it
        // (which releases it) before the error.
        match self.gate(FaultOp::Lock, name)? {
            Gate::RunThenFail(kind) => {
                drop(self.inner.lock(name, owner)?);
                Err(self.injected(FaultOp::Lock, name, kind, "applied, then failed"))
            }
            _ => self.inner.lock(name, owner),
        }
    }

    fn lock_shared(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        match self.gate(FaultOp::Lock, name)? {
            Gate::RunThenFail(kind) => {
                drop(self.inner.lock_shared(name, owner)?);
                Err(self.injected(FaultOp::Lock, name, kind, "applied, then failed"))
            }
            _ => self.inner.lock_shared(name, owner),
        }
    }

    fn lock_holders(&self, name: &str) -> Result<Vec<String>> {
        let g = self.gate(FaultOp::Lock, name)?;
        self.run(FaultOp::Lock, name, g, || self.inner.lock_holders(name))
    }

    fn break_lock(&self, name: &str) -> Result<Vec<String>> {
        let g = self.gate(FaultOp::Lock, name)?;
        self.run(FaultOp::Lock, name, g, || self.inner.break_lock(name))
    }

    fn break_lock_holders(&self, name: &str, which: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let g = self.gate(FaultOp::Lock, name)?;
        self.run(FaultOp::Lock, name, g, || {
            self.inner.break_lock_holders(name, which)
        })
    }

    fn describe(&self) -> String {
        format!("fault:{}", self.inner.describe())
    }
}
