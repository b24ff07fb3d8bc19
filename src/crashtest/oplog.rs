//! The op log: one line per event, written by the child to its stdout
//! (a file) with one `write(2)` each, and parsed by the parent after the
//! kill. Every complete line is a fact; a partial last line is ignored.
//!
//! Lines (numbers in decimal):
//!
//! * `R` - the volume is open, the workload starts.
//! * `W <w> <lba> <sectors> <fua>` - write `w` is about to be submitted
//!   (`fua` is 0 or 1).
//! * `T <w> <lba> <sectors>` / `Z <w> <lba> <sectors>` - trim / write-zeroes
//!   `w` is about to be submitted.
//! * `F <k> <w>` - flush `k` is about to be submitted; it covers ops `1..=w`.
//! * `A <w>` - op `w` completed successfully.
//! * `D <k>` - flush `k` completed successfully.
//! * `E <what> <message>` - an operation failed (the child then exits).
//!
//! Ops are numbered `1, 2, ...` in submission order, which is journal order
//! because one thread submits them all.

/// What a data op does: the engine's own operation kinds (a stamped write,
/// a trim, a write-zeroes).
pub use crate::format::object::OpKind;

/// The letter that starts an op's log line.
pub fn letter(kind: OpKind) -> char {
    match kind {
        OpKind::Write => 'W',
        OpKind::Trim => 'T',
        OpKind::Zero => 'Z',
    }
}

/// One data op of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Index in submission order, from 1.
    pub w: u32,
    /// What it does.
    pub kind: OpKind,
    /// First sector.
    pub lba: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// Submitted with FUA (writes only).
    pub fua: bool,
}

impl Op {
    /// Its log line (with the newline).
    pub fn line(&self) -> String {
        match self.kind {
            OpKind::Write => format!(
                "W {} {} {} {}\n",
                self.w,
                self.lba,
                self.sectors,
                u8::from(self.fua)
            ),
            k => format!("{} {} {} {}\n", letter(k), self.w, self.lba, self.sectors),
        }
    }

    /// One-line description for reports.
    pub fn describe(&self) -> String {
        let fua = if self.fua { " FUA" } else { "" };
        format!(
            "{} w={} lba={}..{} ({} sectors){fua}",
            letter(self.kind),
            self.w,
            self.lba,
            self.lba + self.sectors,
            self.sectors
        )
    }
}

/// Everything the parent learned from one child's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunLog {
    /// The child reported the volume open.
    pub ready: bool,
    /// Data ops; `ops[i].w == i + 1`.
    pub ops: Vec<Op>,
    /// Flushes submitted: `flushes[k - 1]` is the last op flush `k` covers.
    pub flushes: Vec<u32>,
    /// Ops acknowledged (`A` lines), indexed by `w - 1`.
    pub acked: Vec<bool>,
    /// The highest op covered by a completed flush or an acknowledged FUA
    /// write (0 if none): a FUA write, like a FLUSH, returns only once it
    /// and every op submitted before it are durable.
    pub flushed_through: u32,
    /// Flushes completed.
    pub flushes_done: u32,
    /// Failures the child reported.
    pub errors: Vec<String>,
}

impl RunLog {
    /// The highest acknowledged op (0 if none).
    pub fn max_acked(&self) -> u32 {
        self.acked
            .iter()
            .rposition(|&a| a)
            .map_or(0, |i| i as u32 + 1)
    }

    /// Number of acknowledged ops.
    pub fn acked_count(&self) -> usize {
        self.acked.iter().filter(|&&a| a).count()
    }

    /// Op `w` (1-based), if logged.
    pub fn op(&self, w: u32) -> Option<&Op> {
        (w as usize).checked_sub(1).and_then(|i| self.ops.get(i))
    }

    /// Parse a whole log. Fails on a malformed complete line, which means
    /// the tester itself is broken.
    pub fn parse(text: &str) -> Result<RunLog, String> {
        let mut log = RunLog::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for (n, line) in complete.lines().enumerate() {
            log.parse_line(line)
                .map_err(|e| format!("op log line {}: {e}: {line:?}", n + 1))?;
        }
        Ok(log)
    }

    fn parse_line(&mut self, line: &str) -> Result<(), String> {
        let mut it = line.split(' ');
        let tag = it.next().unwrap_or("");
        if tag == "E" {
            self.errors.push(line[1..].trim().to_owned());
            return Ok(());
        }
        let nums: Vec<u64> = it
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|e| format!("bad number {s:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let want = |n: usize| {
            if nums.len() == n {
                Ok(())
            } else {
                Err(format!("expected {n} numbers"))
            }
        };
        let as_w = |v: u64| u32::try_from(v).map_err(|_| format!("index {v} too large"));
        match tag {
            "R" => {
                want(0)?;
                self.ready = true;
            }
            "W" | "T" | "Z" => {
                want(if tag == "W" { 4 } else { 3 })?;
                let w = as_w(nums[0])?;
                if w as usize != self.ops.len() + 1 {
                    return Err(format!("op {w} out of order"));
                }
                let kind = match tag {
                    "W" => OpKind::Write,
                    "T" => OpKind::Trim,
                    _ => OpKind::Zero,
                };
                self.ops.push(Op {
                    w,
                    kind,
                    lba: nums[1],
                    sectors: nums[2],
                    fua: nums.get(3) == Some(&1),
                });
                self.acked.push(false);
            }
            "F" => {
                want(2)?;
                let k = as_w(nums[0])?;
                if k as usize != self.flushes.len() + 1 {
                    return Err(format!("flush {k} out of order"));
                }
                self.flushes.push(as_w(nums[1])?);
            }
            "A" => {
                want(1)?;
                let w = as_w(nums[0])?;
                let slot = (w as usize)
                    .checked_sub(1)
                    .and_then(|i| self.acked.get_mut(i))
                    .ok_or_else(|| format!("ack of unknown op {w}"))?;
                *slot = true;
                if self.ops.get(w as usize - 1).is_some_and(|o| o.fua) {
                    self.flushed_through = self.flushed_through.max(w);
                }
            }
            "D" => {
                want(1)?;
                let k = as_w(nums[0])?;
                let covers = (k as usize)
                    .checked_sub(1)
                    .and_then(|i| self.flushes.get(i))
                    .copied()
                    .ok_or_else(|| format!("completion of unknown flush {k}"))?;
                self.flushed_through = self.flushed_through.max(covers);
                self.flushes_done += 1;
            }
            _ => return Err(format!("unknown tag {tag:?}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_log() {
        let text = "R\nW 1 8 8 0\nT 2 0 16\nF 1 2\nA 2\nW 3 16 8 1\nD 1\nA 1\nZ 4 0 8\nW 5 0";
        let log = RunLog::parse(text).unwrap();
        assert!(log.ready);
        assert_eq!(log.ops.len(), 4);
        assert!(log.ops[2].fua);
        assert_eq!(log.ops[3].kind, OpKind::Zero);
        assert_eq!(log.flushed_through, 2);
        assert_eq!(log.max_acked(), 2);
        assert_eq!(log.acked_count(), 2);
        assert_eq!(log.ops[0].line(), "W 1 8 8 0\n");
        // An acknowledged FUA write covers itself and every op before it.
        let text = "R\nW 1 8 8 0\nT 2 0 16\nF 1 2\nA 2\nW 3 16 8 1\nD 1\nA 1\nZ 4 0 8\nA 3\n";
        let log = RunLog::parse(text).unwrap();
        assert_eq!(log.flushed_through, 3);
    }

    #[test]
    fn malformed_line_is_an_error() {
        assert!(RunLog::parse("W 2 0 8 0\n").is_err());
        assert!(RunLog::parse("A 1\n").is_err());
        assert!(RunLog::parse("X\n").is_err());
    }
}
