//! The child: open the volume, log `R`, then run a seeded random workload
//! with up to [`MAX_IN_FLIGHT`] ops in flight until killed. Every op is
//! logged (see [`super::oplog`]) before it is submitted, and again when it
//! completes.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::oplog::{Op, OpKind};
use super::stamp::{stamped_buffer, Stamp};
use super::Layout;
use crate::journal::RingLane;
use crate::units::SECTOR;
use crate::volume::Volume;

/// Most ops (writes, trims, flushes) in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Sectors per 4 KiB page.
const PAGE_SECTORS: u64 = 8;
/// The hot zone that a share of the writes go to, so overwrites are common.
const HOT_BYTES: u64 = 4 << 20;
/// A child left running (parent gone or stuck) gives up after this long.
const MAX_LIFETIME: Duration = Duration::from_secs(300);

/// What the child is told on its command line.
pub struct ChildArgs {
    /// Work directory layout.
    pub layout: Layout,
    /// Extra config JSON (`--config`), if any.
    pub config: Option<String>,
    /// Run id (the iteration).
    pub run: u32,
    /// Workload seed.
    pub seed: u64,
    /// Random delay (ms, upper bound) injected before every backend put.
    pub backend_delay_ms: u64,
    /// Record the journal's and the store's I/O here (power-cut model).
    pub power_log: Option<std::path::PathBuf>,
    /// Drive the journal from this thread's own ring (a journal lane), as
    /// a ublk queue does.
    pub lane: bool,
}

/// Wait for one completion message. With a lane, this thread drives the
/// lane's ring meanwhile: the records its writes were staged in are placed
/// and completed here, so nothing else would.
fn recv_one(rx: &mpsc::Receiver<bool>, lane: &mut Option<RingLane>) -> Option<bool> {
    let Some(l) = lane.as_mut() else {
        return rx.recv().ok();
    };
    loop {
        if let Ok(v) = rx.try_recv() {
            return Some(v);
        }
        let busy = l.inflight() > 0;
        l.run(busy).ok()?;
        if let Ok(v) = rx.try_recv() {
            return Some(v);
        }
        if l.inflight() == 0 {
            // Acknowledgements of records the journal thread carries.
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(v) => return Some(v),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// One line to stdout with one `write(2)`.
fn emit(out: &File, line: &str) {
    let mut w: &File = out;
    // If stdout is gone the parent is gone; nothing useful to do but stop.
    if w.write_all(line.as_bytes()).is_err() {
        crate::exit_now(4);
    }
}

/// An `E` line: `what` failed with `msg` (newlines flattened, kept short so
/// the line stays one atomic write).
fn emit_error(out: &File, what: &str, msg: &str) {
    let mut msg = msg.replace('\n', " ");
    if msg.len() > 400 {
        let mut cut = 400;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    emit(out, &format!("E {what} {msg}\n"));
}

/// Generate the next data op.
fn gen_op(rng: &mut SmallRng, w: u32, disk_sectors: u64) -> Op {
    let disk_pages = disk_sectors / PAGE_SECTORS;
    let r = rng.gen_range(0..100u32);
    let (kind, pages) = if r < 2 {
        (OpKind::Trim, rng.gen_range(1..=256u64))
    } else if r < 4 {
        (OpKind::Zero, rng.gen_range(1..=256u64))
    } else {
        let s = rng.gen_range(0..100u32);
        let pages = if s < 50 {
            1
        } else if s < 80 {
            rng.gen_range(2..=16u64)
        } else {
            rng.gen_range(17..=512u64)
        };
        (OpKind::Write, pages)
    };
    let pages = pages.min(disk_pages);
    let zone = if rng.gen_bool(0.3) {
        (HOT_BYTES / 4096).clamp(pages, disk_pages)
    } else {
        disk_pages
    };
    let start = rng.gen_range(0..=zone - pages);
    Op {
        w,
        kind,
        lba: start * PAGE_SECTORS,
        sectors: pages * PAGE_SECTORS,
        fua: kind == OpKind::Write && rng.gen_bool(0.05),
    }
}

/// Run the child; returns the process exit code (it normally never returns:
/// the parent kills it).
pub fn run(args: ChildArgs) -> i32 {
    let out = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Arc::new(File::from(fd)),
        Err(e) => {
            eprintln!("child: cannot dup stdout: {e}");
            return 2;
        }
    };
    let opts = match args.layout.volume_options(
        args.config.as_deref(),
        args.backend_delay_ms,
        args.seed,
        args.power_log.as_deref(),
    ) {
        Ok(o) => o,
        Err(e) => {
            emit_error(&out, "setup", &e);
            return 2;
        }
    };
    let vol = match Volume::open(opts) {
        Ok(v) => v,
        Err(e) => {
            emit_error(&out, "open", &format!("{e:?}"));
            return 3;
        }
    };
    let mut lane = if args.lane {
        let Some(l) = vol.journal_lane() else {
            emit_error(&out, "lane", "the volume has no journal");
            return 3;
        };
        match RingLane::new(&l, 64) {
            Ok(r) => Some(r),
            Err(e) => {
                emit_error(&out, "lane", &format!("{e:?}"));
                return 3;
            }
        }
    } else {
        None
    };
    emit(&out, "R\n");
    // The listing sweep runs only in a forced GC run (`lsvd-ublk gc`) or
    // for an image whose rows are not complete (an older build's), never
    // in this child's background GC: a child whose failpoint is in the
    // sweep also makes forced runs, one after another, so that it gets
    // there and the parent verifies a crash in the middle of one.
    let vol = Arc::new(vol);
    if std::env::var(crate::failpoint::ENV).is_ok_and(|f| f.starts_with("gc.sweep.")) {
        let v = Arc::clone(&vol);
        std::thread::spawn(move || loop {
            let _ = v.gc_now();
            std::thread::sleep(Duration::from_millis(20));
        });
    }
    let disk_sectors = vol.size_bytes() / SECTOR;
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let (tx, rx) = mpsc::channel::<bool>();
    let ppid = std::os::unix::process::parent_id();
    let started = Instant::now();
    let mut in_flight = 0usize;
    let mut w = 0u32;
    let mut k = 0u32;
    let mut since_flush = 0u32;
    loop {
        while in_flight >= MAX_IN_FLIGHT {
            match recv_one(&rx, &mut lane) {
                Some(true) => in_flight -= 1,
                Some(false) | None => return 5,
            }
        }
        while let Ok(ok) = rx.try_recv() {
            if !ok {
                return 5;
            }
            in_flight -= 1;
        }
        if std::os::unix::process::parent_id() != ppid || started.elapsed() > MAX_LIFETIME {
            return 6;
        }
        let done_tx = tx.clone();
        let done_out = Arc::clone(&out);
        if since_flush > 0 && rng.gen_range(0..20u32) == 0 {
            k += 1;
            since_flush = 0;
            emit(&out, &format!("F {k} {w}\n"));
            let kk = k;
            let res = vol.submit_flush(Box::new(move |r| {
                match r {
                    Ok(()) => emit(&done_out, &format!("D {kk}\n")),
                    Err(e) => emit_error(&done_out, &format!("flush {kk}"), &format!("{e:?}")),
                }
                // The receiver is gone only when the child is exiting.
                let _ = done_tx.send(true);
            }));
            if let Err(e) = res {
                emit_error(&out, &format!("submit-flush {k}"), &format!("{e:?}"));
                return 5;
            }
            in_flight += 1;
            if let Some(l) = lane.as_mut() {
                if l.run(false).is_err() {
                    return 5;
                }
            }
            continue;
        }
        let op = gen_op(&mut rng, w + 1, disk_sectors);
        if op.fua && rng.gen_bool(0.5) {
            // Half the FUA writes go out alone, as an O_SYNC writer's do.
            // Alone is not enough for RWF_DSYNC: the journal uses it only
            // when every record before this one is already synced (by a
            // FLUSH or an earlier FUA write), so after plain writes the
            // record is still followed by an fdatasync. Both ways occur
            // (a power-loss run counts its RWF_DSYNC writes).
            while in_flight > 0 {
                match recv_one(&rx, &mut lane) {
                    Some(true) => in_flight -= 1,
                    Some(false) | None => return 5,
                }
            }
        }
        w += 1;
        since_flush += 1;
        emit(&out, &op.line());
        let ww = op.w;
        let done: crate::volume::Completion = Box::new(move |r| {
            let ok = r.is_ok();
            match r {
                Ok(()) => emit(&done_out, &format!("A {ww}\n")),
                Err(e) => emit_error(&done_out, &format!("op {ww}"), &format!("{e:?}")),
            }
            let _ = done_tx.send(ok);
        });
        let offset = op.lba * SECTOR;
        let len = op.sectors * SECTOR;
        let res = match op.kind {
            OpKind::Write => {
                let data = stamped_buffer(op.lba, op.sectors, Stamp::new(args.run, op.w));
                vol.submit_write(offset, &data, op.fua, done)
            }
            OpKind::Trim => vol.submit_discard(offset, len, false, false, done),
            OpKind::Zero => vol.submit_discard(offset, len, true, false, done),
        };
        if let Err(e) = res {
            emit_error(&out, &format!("submit {}", op.w), &format!("{e:?}"));
            return 5;
        }
        in_flight += 1;
        if let Some(l) = lane.as_mut() {
            if l.run(false).is_err() {
                return 5;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_stay_inside_the_disk() {
        let mut rng = SmallRng::seed_from_u64(1);
        let disk = 64 << 11;
        let mut kinds = [0u32; 3];
        for w in 1..=10_000 {
            let op = gen_op(&mut rng, w, disk);
            assert!(op.sectors > 0 && op.sectors <= 4096);
            assert_eq!(op.lba % 8, 0);
            assert!(op.lba + op.sectors <= disk);
            kinds[op.kind as usize] += 1;
        }
        assert!(
            kinds[0] > 9000 && kinds[1] > 50 && kinds[2] > 50,
            "{kinds:?}"
        );
    }
}
