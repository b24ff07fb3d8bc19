//! The checker: is the image read back after a crash a state the contract
//! allows?
//!
//! The parent keeps the [`History`]: every op it has seen take effect, over
//! all runs, in journal order. The image must equal the result of some
//! prefix of that history followed by this run's ops (prefix consistency;
//! atomicity follows because every sector of a write carries its stamp).
//! The highest stamp in the image fixes how long the prefix is at least; it
//! may be longer only through trims/write-zeroes, which leave no stamp.
//!
//! When the journal is kept and no object is lost, the prefix must also
//! contain all of the earlier history (nothing verified before is lost),
//! every op covered by a completed flush and every acknowledged op. When
//! the journal or objects are destroyed on purpose, the prefix may end
//! anywhere, even inside an earlier run (its ops may have lived only in the
//! journal).

use std::collections::HashMap;

use super::oplog::{Op, OpKind, RunLog};
use super::stamp::Stamp;

/// Every op that took effect so far, in order.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// `(run, op)`; the ops of one run are contiguous, `w = 1, 2, ...`.
    ops: Vec<(u32, Op)>,
    /// Run -> index of its op `w = 1` in `ops`.
    run_start: HashMap<u32, usize>,
}

impl History {
    /// Ops in the history.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if no op took effect yet.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Index of op `w` of `run`, if it is in the history.
    fn index(&self, run: u32, w: u32) -> Option<usize> {
        let start = *self.run_start.get(&run)?;
        let i = start + (w as usize).checked_sub(1)?;
        self.ops
            .get(i)
            .filter(|(r, o)| *r == run && o.w == w)
            .map(|_| i)
    }

    /// Keep the first `keep` ops of (history ++ `run`'s `log`), as [`check`]
    /// decided.
    pub fn commit(&mut self, keep: usize, run: u32, log: &RunLog) {
        if keep <= self.ops.len() {
            self.ops.truncate(keep);
            self.run_start.retain(|_, s| *s < keep);
            return;
        }
        let n = keep - self.ops.len();
        self.run_start.insert(run, self.ops.len());
        self.ops.extend(log.ops.iter().take(n).map(|o| (run, *o)));
    }
}

/// What the checker established about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Highest op of this run with a stamp in the image (0 if none).
    pub p: u32,
    /// Ops of this run the image includes (`>= p`).
    pub p_prime: u32,
    /// Length of the history prefix the image matches (pass it to
    /// [`History::commit`]).
    pub keep: usize,
    /// Ops of earlier runs that are no longer in the image.
    pub rolled_back: usize,
    /// Sectors holding a stamp (of any run).
    pub stamped_sectors: u64,
    /// Sectors holding a stamp of this run.
    pub run_sectors: u64,
}

/// Which durability promises apply to this iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Promises {
    /// Everything verified in earlier iterations, and every op covered by
    /// a completed flush, must be present.
    pub flushed: bool,
    /// Every acknowledged op must be present.
    pub acked: bool,
}

/// Apply `op` of run `run` to `state`.
pub fn apply(state: &mut [Stamp], run: u32, op: &Op) {
    let start = (op.lba as usize).min(state.len());
    let end = (op.lba.saturating_add(op.sectors) as usize).min(state.len());
    let value = match op.kind {
        OpKind::Write => Stamp::new(run, op.w),
        OpKind::Trim | OpKind::Zero => Stamp::ZERO,
    };
    state[start..end].fill(value);
}

fn first_mismatch(a: &[Stamp], b: &[Stamp]) -> Option<(usize, usize)> {
    let first = a.iter().zip(b).position(|(x, y)| x != y)?;
    let count = a[first..]
        .iter()
        .zip(&b[first..])
        .filter(|(x, y)| x != y)
        .count();
    Some((first, count))
}

fn ack_state(log: &RunLog, w: u32) -> &'static str {
    match (w as usize).checked_sub(1).and_then(|i| log.acked.get(i)) {
        Some(true) => "acked",
        Some(false) => "not acked",
        None => "unknown",
    }
}

/// Lines indented under a heading of a report.
fn indent(lines: &[String]) -> String {
    if lines.is_empty() {
        return "  (none)".to_owned();
    }
    format!("  {}", lines.join("\n    "))
}

/// History ++ this run's log, seen as one op sequence.
struct Candidate<'a> {
    hist: &'a History,
    run: u32,
    log: &'a RunLog,
}

impl Candidate<'_> {
    fn len(&self) -> usize {
        self.hist.len() + self.log.ops.len()
    }

    /// Op `i` (0-based) with its run.
    fn get(&self, i: usize) -> Option<(u32, &Op)> {
        match i.checked_sub(self.hist.len()) {
            None => self.hist.ops.get(i).map(|(r, o)| (*r, o)),
            Some(j) => self.log.ops.get(j).map(|o| (self.run, o)),
        }
    }

    fn describe(&self, i: usize) -> String {
        match self.get(i) {
            Some((r, o)) if r == self.run => format!("run {r} {}", o.describe()),
            Some((r, o)) => format!("run {r} {} (earlier run)", o.describe()),
            None => "?".to_owned(),
        }
    }

    /// Ops `from..to` (0-based), described.
    fn range(&self, from: usize, to: usize) -> Vec<String> {
        (from..to.min(self.len()))
            .map(|i| self.describe(i))
            .collect()
    }

    /// The last `max` ops before index `to` that touch `lba`, oldest first.
    fn touching(&self, lba: u64, to: usize, max: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..to.min(self.len()))
            .rev()
            .filter(|&i| {
                self.get(i)
                    .is_some_and(|(_, o)| o.lba <= lba && lba < o.lba + o.sectors)
            })
            .take(max)
            .map(|i| self.describe(i))
            .collect();
        v.reverse();
        v
    }

    /// The image after the first `n` ops; `prev` is the image after the
    /// whole history.
    fn state(&self, prev: &[Stamp], n: usize) -> Vec<Stamp> {
        let mut state;
        let from = if n >= self.hist.len() {
            state = prev.to_vec();
            self.hist.len()
        } else {
            state = vec![Stamp::ZERO; prev.len()];
            0
        };
        for i in from..n {
            if let Some((r, o)) = self.get(i) {
                apply(&mut state, r, o);
            }
        }
        state
    }
}

/// Check `found` (the image) against `prev` (the image after the whole
/// history), the history and this run's log. Returns what was established,
/// or a precise description of the violation.
pub fn check(
    prev: &[Stamp],
    hist: &History,
    found: &[Stamp],
    run: u32,
    log: &RunLog,
    promises: Promises,
) -> Result<Verified, String> {
    if prev.len() != found.len() {
        return Err(format!(
            "image has {} sectors, expected {}",
            found.len(),
            prev.len()
        ));
    }
    let cand = Candidate { hist, run, log };
    let base = hist.len();
    let k = log.flushed_through;
    // n: the image contains at least the first n ops of the candidate.
    let mut n = 0usize;
    let mut p = 0u32;
    let mut stamped = 0u64;
    let mut run_sectors = 0u64;
    for (lba, s) in found.iter().enumerate() {
        if s.is_zero() {
            continue;
        }
        stamped += 1;
        let idx = if s.run() == run {
            run_sectors += 1;
            p = p.max(s.w());
            (s.w() as usize)
                .checked_sub(1)
                .filter(|&j| j < log.ops.len())
                .map(|j| base + j)
        } else if s.run() > run {
            return Err(format!(
                "sector {lba}: stamp {s} is from a future run (this is run {run})"
            ));
        } else {
            hist.index(s.run(), s.w())
        };
        let Some(idx) = idx else {
            return Err(format!(
                "sector {lba}: stamp {s} of an op that never took effect (never submitted,                  or found lost by an earlier iteration and now back)"
            ));
        };
        match cand.get(idx) {
            Some((_, o))
                if o.kind == OpKind::Write
                    && o.lba <= lba as u64
                    && (lba as u64) < o.lba + o.sectors => {}
            Some((_, o)) => {
                return Err(format!(
                    "sector {lba}: stamp {s} but that op is {}",
                    o.describe()
                ))
            }
            None => return Err(format!("sector {lba}: stamp {s} of an unknown op")),
        }
        n = n.max(idx + 1);
    }

    let mut state = cand.state(prev, n);
    let base_mismatch = first_mismatch(&state, found);
    let mut keep = None;
    if base_mismatch.is_none() {
        keep = Some(n);
    }
    // Ops after the highest stamped one may be present without a stamp:
    // trims/write-zeroes leave none, and a write leaves none when a later
    // trim/write-zeroes covers it. So try every longer prefix, counting the
    // mismatching sectors incrementally, and keep the longest that matches.
    let mut mismatched = state.iter().zip(found).filter(|(a, b)| a != b).count();
    let mut i = n;
    while let Some((r, op)) = cand.get(i) {
        let start = (op.lba as usize).min(state.len());
        let end = (op.lba.saturating_add(op.sectors) as usize).min(state.len());
        let value = match op.kind {
            OpKind::Write => Stamp::new(r, op.w),
            OpKind::Trim | OpKind::Zero => Stamp::ZERO,
        };
        for (s, f) in state[start..end].iter_mut().zip(&found[start..end]) {
            let was = *s != *f;
            *s = value;
            let is = *s != *f;
            if was && !is {
                mismatched -= 1;
            } else if !was && is {
                mismatched += 1;
            }
        }
        if mismatched == 0 {
            keep = Some(i + 1);
        }
        i += 1;
    }
    let Some(keep) = keep else {
        let (lba, count) = base_mismatch.unwrap_or((0, 0));
        let expect = cand.state(prev, n);
        let (e, f) = (expect[lba], found[lba]);
        let later = if n > 0 {
            cand.describe(n - 1)
        } else {
            "-".into()
        };
        let why = if e.is_zero() {
            "a trim/write-zeroes is missing, or old data came back".to_owned()
        } else if e.run() == run {
            format!(
                "run {run} write w={} ({}) is missing or torn although a later op is present",
                e.w(),
                ack_state(log, e.w())
            )
        } else {
            format!("write {e} of an earlier run is missing although a later op is present")
        };
        return Err([
            "prefix consistency violated: the image is no prefix of the op history".to_owned(),
            format!("first mismatch: sector {lba}: expected {e}, found {f} ({count} sectors differ)"),
            why,
            format!("latest op present: {later}"),
            format!(
                "P (highest op of run {run} present) = {p}, K (flushed through) = {k}, max acked = {}",
                log.max_acked()
            ),
            format!("ops touching sector {lba} up to the latest present (oldest first):"),
            indent(&cand.touching(lba as u64, n, 6)),
            "ops around the latest present:".to_owned(),
            indent(&cand.range(n.saturating_sub(3), n + 3)),
        ]
        .join("\n  "));
    };

    let rolled_back = base.saturating_sub(keep);
    let p_prime = keep.saturating_sub(base) as u32;
    if promises.flushed && rolled_back > 0 {
        return Err([
            format!(
                "previously verified data lost: the image is the history prefix of {keep} ops; \
                 {rolled_back} ops of earlier runs are missing"
            ),
            format!("first lost op: {}", cand.describe(keep)),
            format!("P (highest op of run {run} present) = {p}"),
        ]
        .join("\n  "));
    }
    if promises.flushed && p_prime < k {
        return Err([
            format!(
                "acknowledged-and-flushed write lost: the image includes run {run}'s ops \
                 1..={p_prime} but a completed flush covered ops 1..={k}"
            ),
            format!(
                "first lost op: {} ({})",
                log.op(p_prime + 1).map_or("?".to_owned(), Op::describe),
                ack_state(log, p_prime + 1)
            ),
            format!("P = {p}, max acked = {}", log.max_acked()),
            "ops after P':".to_owned(),
            indent(&cand.range(base + p_prime as usize, base + k.min(p_prime + 4) as usize)),
        ]
        .join("\n  "));
    }
    let max_acked = log.max_acked();
    if promises.acked && p_prime < max_acked {
        let lost: Vec<u32> = (p_prime + 1..=max_acked)
            .filter(|&w| ack_state(log, w) == "acked")
            .collect();
        return Err([
            format!(
                "acknowledged write lost: the image includes run {run}'s ops 1..={p_prime} but \
                 {} later op(s) were acknowledged (first {:?})",
                lost.len(),
                &lost[..lost.len().min(8)]
            ),
            format!("P = {p}, K (flushed through) = {k}"),
            "ops after P':".to_owned(),
            indent(&cand.range(
                base + p_prime as usize,
                base + max_acked.min(p_prime + 4) as usize,
            )),
        ]
        .join("\n  "));
    }
    Ok(Verified {
        p,
        p_prime,
        keep,
        rolled_back,
        stamped_sectors: stamped,
        run_sectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Promises = Promises {
        flushed: true,
        acked: true,
    };
    const NONE: Promises = Promises {
        flushed: false,
        acked: false,
    };

    fn log(text: &str) -> RunLog {
        RunLog::parse(text).unwrap()
    }

    fn image(prev: &[Stamp], run: u32, log: &RunLog, through: u32) -> Vec<Stamp> {
        let mut s = prev.to_vec();
        for w in 1..=through {
            apply(&mut s, run, log.op(w).unwrap());
        }
        s
    }

    /// Run 1 wrote the whole 32-sector disk in one write.
    fn run1() -> (History, Vec<Stamp>) {
        let l = log("R\nW 1 0 32 0\n");
        let mut h = History::default();
        h.commit(1, 1, &l);
        (h, image(&vec![Stamp::ZERO; 32], 1, &l, 1))
    }

    const LOG: &str = "R\nW 1 0 8 0\nW 2 4 8 0\nT 3 8 4\nZ 4 0 2\nW 5 20 4 0\nF 1 5\n";

    #[test]
    fn every_prefix_passes() {
        let (h, prev) = run1();
        let l = log(LOG);
        for n in 0..=5 {
            let img = image(&prev, 2, &l, n);
            let v = check(&prev, &h, &img, 2, &l, NONE).unwrap();
            assert!(v.p_prime >= n, "n={n} {v:?}");
            assert_eq!(v.keep, 1 + v.p_prime as usize);
        }
    }

    #[test]
    fn hole_is_caught() {
        let (h, prev) = run1();
        let l = log(LOG);
        let mut img = image(&prev, 2, &l, 5);
        // Write 2 is missing where write 1 lies under it, write 5 is there.
        img[4..8].fill(Stamp::new(2, 1));
        let err = check(&prev, &h, &img, 2, &l, NONE).unwrap_err();
        assert!(err.contains("prefix consistency"), "{err}");
        assert!(err.contains("sector 4"), "{err}");
    }

    #[test]
    fn torn_write_is_caught() {
        let (h, prev) = run1();
        let l = log(LOG);
        let mut img = image(&prev, 2, &l, 2);
        img[11] = Stamp::new(1, 1);
        let err = check(&prev, &h, &img, 2, &l, NONE).unwrap_err();
        assert!(err.contains("sector 11"), "{err}");
    }

    #[test]
    fn durability() {
        let (h, prev) = run1();
        let mut l = log(&format!("{LOG}D 1\n"));
        let img = image(&prev, 2, &l, 2);
        let err = check(&prev, &h, &img, 2, &l, ALL).unwrap_err();
        assert!(err.contains("flushed write lost"), "{err}");
        assert!(check(&prev, &h, &img, 2, &l, NONE).is_ok());
        l.flushed_through = 0;
        l.acked[3] = true;
        let err = check(&prev, &h, &img, 2, &l, ALL).unwrap_err();
        assert!(err.contains("acknowledged write lost"), "{err}");
        // Trims 3 and 4 right after P=2 may count as present.
        let img = image(&prev, 2, &l, 4);
        assert_eq!(check(&prev, &h, &img, 2, &l, ALL).unwrap().p_prime, 4);
    }

    /// Found by a 5,000-iteration run: a write right after the highest
    /// stamped op, wholly covered by the trim that follows it, leaves no
    /// stamp; the image after the trim is a valid prefix.
    #[test]
    fn write_hidden_by_a_later_trim_is_a_prefix() {
        let (h, prev) = run1();
        let l = log("R\nW 1 0 4 0\nW 2 10 2 0\nT 3 8 8\nW 4 20 4 0\n");
        let img = image(&prev, 2, &l, 3);
        let v = check(&prev, &h, &img, 2, &l, NONE).unwrap();
        assert_eq!(v.p_prime, 3);
        // Only part of the trim's range zeroed is no prefix.
        let mut bad = image(&prev, 2, &l, 1);
        bad[10..12].fill(Stamp::ZERO);
        assert!(check(&prev, &h, &bad, 2, &l, NONE).is_err());
    }

    #[test]
    fn rollback_into_history() {
        let (mut h, prev1) = run1();
        let l2 = log(LOG);
        let prev2 = image(&prev1, 2, &l2, 5);
        h.commit(6, 2, &l2);
        let l3 = log("R\nW 1 0 8 0\n");
        // Run 2's ops 3.. vanished with the journal: allowed only if lossy.
        let img = image(&prev1, 2, &l2, 2);
        let v = check(&prev2, &h, &img, 3, &l3, NONE).unwrap();
        assert_eq!((v.keep, v.rolled_back, v.p_prime), (3, 3, 0));
        let err = check(&prev2, &h, &img, 3, &l3, ALL).unwrap_err();
        assert!(err.contains("previously verified data lost"), "{err}");
        // A write of run 3 on top of a rolled-back history is no prefix.
        let mut bad = img.clone();
        bad[0..8].fill(Stamp::new(3, 1));
        assert!(check(&prev2, &h, &bad, 3, &l3, NONE)
            .unwrap_err()
            .contains("prefix consistency"));
        h.commit(v.keep, 3, &l3);
        assert_eq!(h.len(), 3);
        assert_eq!(h.index(2, 2), Some(2));
        assert_eq!(h.index(2, 3), None);
    }

    #[test]
    fn stamp_outside_its_write_is_caught() {
        let (h, prev) = run1();
        let l = log(LOG);
        let mut img = image(&prev, 2, &l, 1);
        img[30] = Stamp::new(2, 1);
        let err = check(&prev, &h, &img, 2, &l, NONE).unwrap_err();
        assert!(err.contains("but that op is"), "{err}");
        img[30] = Stamp::new(1, 2);
        let err = check(&prev, &h, &img, 2, &l, NONE).unwrap_err();
        assert!(err.contains("never took effect"), "{err}");
    }
}
