//! The ublk server: one device per image, one thread and io_uring per queue.
//!
//! Each queue thread runs a single-threaded executor with one task per tag
//! (libublk's async API). A task fetches a request, handles it and commits
//! the result together with fetching the next one:
//!
//! - WRITE, DISCARD and WRITE_ZEROES (each with or without FUA) are copied
//!   into the journal's staging record on the queue thread itself
//!   ([`Volume::try_submit_write`]). After every round of requests the
//!   queue drives the journal itself, as a lane ([`crate::journal::Lane`]):
//!   it places the staged records (group commit) and a FLUSH's fdatasync
//!   and submits them on its own ring, so their completions and its
//!   writes' acknowledgements arrive on the queue thread with no wake-up.
//!   Acknowledgements produced on another thread (a record another queue
//!   or the journal thread carried) wake the queue's ring through its
//!   eventfd, once for all the completions that arrived while it slept
//!   ([`super::wake`]). When the journal has no room (the backend is behind),
//!   the request is handed to a worker that waits for room, so the queue
//!   keeps serving other requests.
//! - READ is served on the queue thread from memory (open and sealed
//!   batches, zeros) and from the read cache, whose hits are io_uring READs
//!   on the queue's own ring straight into the request buffer, checked
//!   against their crcs in place. Only cache misses (and a clone's reads
//!   from its parent) go to a read worker, which fetches from the backend,
//!   fills the cache and hands the bytes back; there are as many workers as
//!   requests can be in flight (up to [`MAX_READ_WORKERS`]), so below that
//!   a miss never queues behind another. One request may have many cache
//!   READs in flight on the ring (one per 64 KiB chunk part); the ring's
//!   completion queue is the queue depth, and the kernel keeps completions
//!   beyond it on its overflow list (IORING_FEAT_NODROP, Linux 5.5).
//! - FLUSH is queued behind every write submitted before it and completes
//!   after the journal's fdatasync, submitted on the queue's ring by its
//!   lane (with `hard_flush`, after the backend holds everything).
//!
//! Device attributes (DESIGN contract point 8): the device has a volatile
//! cache (a write is acknowledged once it is in the journal, and made
//! durable by the next FLUSH) and supports FUA (a FUA write, discard or
//! write-zeroes is acknowledged after the journal fdatasync that covers
//! it, or once its record, written with `RWF_DSYNC` after a synced chain,
//! completes; with `hard_flush`, once the backend holds it), so the kernel sends
//! the FLUSH and FUA requests we rely on.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys, BufDesc, UblkError, UblkFlags};

use super::control::{self, Control, ControlServer};
use super::kernel::{self, with_deadline, KernelState, Watchdog};
use super::pool::Pool;
use super::registry;
use super::wake::{Notifier, Outcome, Signal, Waiter};
use crate::cache::{Cache, HitPlan};
use crate::error::{Error, ErrorKind, Result};
use crate::format::rcache::BLOCK_BYTES;
use crate::metrics::{IoMetrics, Op};
use crate::volume::{Completion, ReadPlan, RemotePiece, Volume};

/// Largest request, in bytes (the device's max_sectors).
pub const IO_BUF_BYTES: u32 = 1 << 20;
/// Largest single discard or write-zeroes request, in 512-byte sectors.
const MAX_DISCARD_SECTORS: u32 = 1 << 30;
/// Read workers per device: one per request that can be in flight
/// (queues x depth), at least [`MIN_READ_WORKERS`] and at most this.
const MAX_READ_WORKERS: usize = 256;
/// See [`MAX_READ_WORKERS`].
const MIN_READ_WORKERS: usize = 8;
/// Workers for writes that wait for journal space.
const SLOW_WORKERS: usize = 2;

/// How to serve one device.
pub struct ServeOptions {
    /// Hardware queues (threads).
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Logical block size: 512 or 4096.
    pub logical_block: u32,
    /// Take over this quiesced device instead of adding a new one.
    pub recover: Option<u32>,
    /// Live metrics (`None`: off, and requests are not timed). Served
    /// once the device is live, by default on
    /// `<run dir>/ublkb<N>.metrics.sock`.
    pub metrics: Option<crate::metrics::Plan>,
}

/// A device that is serving I/O.
#[derive(Clone, Debug)]
pub struct LiveDevice {
    /// Device number N (`/dev/ublkbN`).
    pub dev_id: u32,
    /// Block device path.
    pub path: String,
    /// Queues actually in use.
    pub queues: u16,
    /// Depth actually in use.
    pub depth: u16,
    /// Flags the device was created with.
    pub flags: u64,
}

struct DevCtx {
    volume: Arc<Volume>,
    reads: Pool,
    slow: Pool,
    live_queues: AtomicUsize,
    /// Request counters (`None`: metrics off).
    metrics: Option<Arc<IoMetrics>>,
}

/// Serve `volume` as a ublk device until `should_stop` returns true (it is
/// polled with a timeout, e.g. a signal wait) or the device is stopped from
/// outside. `on_live` runs once the device accepts I/O. The volume is closed
/// cleanly afterwards (destage, checkpoint, mark clean) and the device is
/// deleted.
pub fn serve(
    volume: Volume,
    opts: &ServeOptions,
    on_live: impl FnOnce(&LiveDevice) -> Result<()> + Send + Sync + 'static,
    mut should_stop: impl FnMut(Duration) -> bool + Send + Sync + 'static,
) -> Result<()> {
    kernel::check_driver()?;
    if opts.logical_block != 512 && opts.logical_block != 4096 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "logical block size {} is not supported (512 or 4096)",
                opts.logical_block
            ),
        ));
    }
    let features = kernel::driver_features();
    // Masked by the driver's features: an older driver never gets a flag it
    // does not know (UPDATE_SIZE on 6.12).
    let wanted = kernel::wanted_flags(features);
    if wanted & kernel::RECOVERY_FLAGS != kernel::RECOVERY_FLAGS {
        tracing::warn!(
            "the ublk driver lacks {}: a killed server cannot be recovered",
            kernel::describe_flags(kernel::RECOVERY_FLAGS & !wanted)
        );
    }

    let ctrl = match opts.recover {
        None => with_deadline("ADD_DEV", || {
            UblkCtrlBuilder::default()
                .name("lsvd")
                .id(-1)
                .nr_queues(opts.queues)
                .depth(opts.depth)
                .io_buf_bytes(IO_BUF_BYTES)
                .ctrl_flags(wanted)
                .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
                .build()
        })
        .map_err(add_dev_error)?,
        Some(id) => {
            let id_i = i32::try_from(id)
                .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("bad device id {id}")))?;
            let (state, info) = kernel::device_state(id);
            if state != KernelState::Quiesced {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "/dev/ublkb{id} cannot be recovered: its state is {state:?}, \
                         not Quiesced"
                    ),
                ));
            }
            let info = info.expect("a quiesced device has info");
            if info.flags & sys::UBLK_F_USER_RECOVERY as u64 == 0 {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("/dev/ublkb{id} was created without user recovery"),
                ));
            }
            let simple = with_deadline("GET_DEV_INFO", || UblkCtrl::new_simple(id_i))
                .map_err(|e| ublk_error("cannot open the ublk device", e))?;
            with_deadline("START_USER_RECOVERY", || simple.start_user_recover())
                .map_err(|e| ublk_error("cannot start user recovery", e))?;
            with_deadline("GET_DEV_INFO", || {
                UblkCtrlBuilder::default()
                    .name("lsvd")
                    .id(id_i)
                    .nr_queues(info.nr_hw_queues)
                    .depth(info.queue_depth)
                    .io_buf_bytes(info.max_io_buf_bytes)
                    .ctrl_flags(info.flags & kernel::WANTED_FLAGS)
                    .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV)
                    .build()
            })
            .map_err(|e| ublk_error("cannot open the ublk device for recovery", e))?
        }
    };
    let info = ctrl.dev_info();
    // libublk drops flags the driver does not know without saying so: look
    // at what the device really has.
    let lacks = wanted & !info.flags;
    if lacks & kernel::RECOVERY_FLAGS != 0 {
        tracing::warn!(
            "ublk device {} lacks {}: a killed server cannot be recovered",
            info.dev_id,
            kernel::describe_flags(lacks & kernel::RECOVERY_FLAGS)
        );
    }
    if lacks & !kernel::RECOVERY_FLAGS != 0 {
        tracing::warn!(
            "ublk device {} lacks {} although the driver offers it",
            info.dev_id,
            kernel::describe_flags(lacks & !kernel::RECOVERY_FLAGS)
        );
    }
    tracing::info!(
        "ublk device {}: queues {} depth {} flags {} (driver features {})",
        info.dev_id,
        info.nr_hw_queues,
        info.queue_depth,
        kernel::describe_flags(info.flags),
        features.map_or("unknown".into(), kernel::describe_flags)
    );

    let size = volume.size_bytes();
    // A snapshot: the kernel refuses writes before they reach us.
    let read_only = if volume.is_read_only() {
        sys::UBLK_ATTR_READ_ONLY
    } else {
        0
    };
    let volume = Arc::new(volume);
    let ctx = Arc::new(DevCtx {
        volume: volume.clone(),
        reads: Pool::new(
            "lsvd-read",
            read_workers(info.nr_hw_queues, info.queue_depth),
        )
        .map_err(|e| Error::with_source(ErrorKind::Io, "cannot start read workers", e))?,
        slow: Pool::new("lsvd-wait", SLOW_WORKERS)
            .map_err(|e| Error::with_source(ErrorKind::Io, "cannot start write workers", e))?,
        live_queues: AtomicUsize::new(info.nr_hw_queues as usize),
        metrics: opts.metrics.as_ref().map(|m| m.io.clone()),
    });
    let metrics_plan = opts.metrics.clone();

    let lbs_shift = opts.logical_block.trailing_zeros() as u8;
    let tgt_init = move |dev: &mut UblkDev| {
        dev.tgt.dev_size = size;
        dev.tgt.params = sys::ublk_params {
            types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
            basic: sys::ublk_param_basic {
                attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA | read_only,
                logical_bs_shift: lbs_shift,
                physical_bs_shift: 12,
                io_opt_shift: 12,
                io_min_shift: 12,
                max_sectors: dev.dev_info.max_io_buf_bytes >> 9,
                dev_sectors: size >> 9,
                ..Default::default()
            },
            discard: sys::ublk_param_discard {
                discard_alignment: 0,
                discard_granularity: 4096,
                max_discard_sectors: MAX_DISCARD_SECTORS,
                max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
                max_discard_segments: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        dev.set_target_json(serde_json::json!({ "lsvd": { "size": size } }));
        Ok(())
    };

    let qctx = ctx.clone();
    let q_fn = move |qid: u16, dev: &UblkDev| {
        queue_main(qid, dev, &qctx);
        qctx.live_queues.fetch_sub(1, Ordering::SeqCst);
    };

    let live_err: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let live_err2 = live_err.clone();
    let dctx = ctx.clone();
    // Queue setup and START_DEV (or END_USER_RECOVERY) happen inside
    // run_target; the device is live when `device_fn` runs.
    let start_watchdog = Watchdog::arm(if opts.recover.is_some() {
        "END_USER_RECOVERY"
    } else {
        "START_DEV"
    });
    let device_fn = move |c: &UblkCtrl| {
        drop(start_watchdog);
        let info = c.dev_info();
        let live = LiveDevice {
            dev_id: info.dev_id,
            path: c.get_bdev_path(),
            queues: info.nr_hw_queues,
            depth: info.queue_depth,
            flags: info.flags,
        };
        // The control channel (live resize) exists once the device is
        // live and before `attach` returns; it is stopped (its thread
        // joined, so it holds no volume reference) before the device is.
        let mut control = start_control(&dctx.volume, info.dev_id, info.flags);
        // The metrics too (an address the configuration names that cannot
        // be served fails the attach, like `on_live`); stopped before the
        // device, and a scrape holds only a weak reference to the volume.
        let started = start_metrics(metrics_plan.as_ref(), &dctx.volume, &live)
            .and_then(|m| on_live(&live).map(|()| m));
        let mut metrics = match started {
            Ok(m) => m,
            Err(e) => {
                *live_err2.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                drop(control);
                let _ = with_deadline("STOP_DEV", || c.kill_dev());
                return;
            }
        };
        loop {
            if dctx.live_queues.load(Ordering::SeqCst) == 0 {
                tracing::warn!("ublk device {} was stopped from outside", info.dev_id);
                break;
            }
            if should_stop(Duration::from_millis(200)) {
                tracing::info!("stopping ublk device {}", info.dev_id);
                drop(control.take());
                drop(metrics.take());
                let _ = with_deadline("STOP_DEV", || c.kill_dev());
                break;
            }
        }
        drop(control);
        drop(metrics);
        drop(dctx);
    };

    let run = ctrl.run_target(tgt_init, q_fn, device_fn);
    // Every queue thread has exited: no request can arrive any more.
    let run = run.map_err(|e| ublk_error("the ublk device failed", e));
    let mut ctx = match Arc::try_unwrap(ctx) {
        Ok(c) => c,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Io,
                "internal error: device context still shared after the queues stopped",
            ))
        }
    };
    ctx.reads.shutdown();
    ctx.slow.shutdown();
    drop(ctx.volume);
    let close = match Arc::try_unwrap(volume) {
        Ok(v) => v.close(),
        Err(_) => Err(Error::new(
            ErrorKind::Io,
            "internal error: volume still shared after the queues stopped",
        )),
    };
    // Delete the device (a recovered control does not delete on drop).
    let del = with_deadline("DEL_DEV", || {
        ctrl.del_dev_async().or_else(|_| ctrl.del_dev())
    });
    if let Err(e) = del {
        tracing::warn!("cannot delete ublk device {}: {e}", info.dev_id);
    }
    drop(ctrl);
    if let Some(e) = live_err.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    run?;
    close
}

/// Serve device `dev_id`'s control socket ([`super::control`]). A failure
/// is logged, not fatal: the device serves I/O without it, and `resize`
/// then says that the server does not answer.
fn start_control(volume: &Arc<Volume>, dev_id: u32, flags: u64) -> Option<ControlServer> {
    let path = registry::control_path(dev_id);
    // The device's own flags decide (what `list` shows): a device added
    // without UPDATE_SIZE keeps its size until it is attached again.
    let dev = kernel::KernelDevice {
        dev_id,
        update_size: kernel::can_update_size(Some(flags)),
    };
    let vol = volume.clone();
    let handler = move |req: Control| {
        tracing::info!("control request: {req:?}");
        let reply = control::handle(&vol, &dev, req);
        tracing::info!("control reply: {reply:?}");
        reply
    };
    match std::fs::create_dir_all(registry::run_dir())
        .map_err(|e| Error::io(format!("create {}", registry::run_dir().display()), e))
        .and_then(|()| ControlServer::start(&path, handler))
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no control socket for ublk device {dev_id} (resize of the attached image is unavailable): {e}");
            None
        }
    }
}

/// Serve the metrics of device `live` (see [`ServeOptions::metrics`]).
fn start_metrics(
    plan: Option<&crate::metrics::Plan>,
    volume: &Arc<Volume>,
    live: &LiveDevice,
) -> Result<Option<crate::metrics::http::MetricsServer>> {
    let Some(plan) = plan else {
        return Ok(None);
    };
    let socket = registry::run_dir().join(format!("ublkb{}.metrics.sock", live.dev_id));
    plan.start(
        &socket,
        Arc::downgrade(volume),
        &[("frontend", "ublk"), ("device", &live.path)],
    )
}

fn ublk_error(what: &str, e: UblkError) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {}", ublk_detail(&e)))
}

/// libublk's error with the errno spelled out.
fn ublk_detail(e: &UblkError) -> String {
    match e {
        UblkError::OtherError(r) | UblkError::UringIOError(r) => {
            format!("{e} ({})", std::io::Error::from_raw_os_error(-r))
        }
        _ => e.to_string(),
    }
}

/// A failed `ADD_DEV`: an unsupported kernel is named as such
/// ([`kernel::add_dev_error_message`]).
fn add_dev_error(e: UblkError) -> Error {
    let errno = match &e {
        UblkError::OtherError(r) | UblkError::UringIOError(r) => Some(-r),
        UblkError::IOError(io) => io.raw_os_error(),
        _ => None,
    };
    let msg = kernel::add_dev_error_message(&ublk_detail(&e), errno, &kernel::running_kernel());
    Error::new(ErrorKind::Io, msg)
}

/// One queue: an executor with one task per tag, driven by the queue ring.
fn queue_main(qid: u16, dev: &UblkDev, ctx: &Arc<DevCtx>) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!("cannot set up ublk queue {qid}: {e}");
            return;
        }
    };
    let notifier = match Notifier::new() {
        Ok(n) => Rc::new(n),
        Err(e) => {
            tracing::error!("cannot set up ublk queue {qid}: eventfd: {e}");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    // Not among `tasks`: it polls until the ring goes away, and is dropped
    // with the executor once every tag's task has ended.
    let _notify = {
        let n = notifier.clone();
        exe.spawn(async move { n.run().await })
    };
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let q = q.clone();
        let ctx = ctx.clone();
        let waiter = notifier.waiter();
        tasks.push(exe.spawn(async move {
            match tag_loop(&q, tag, &ctx, waiter).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!("queue {qid} tag {tag}: {e}"),
            }
        }));
    }
    // The journal's lane on this queue's ring: after every round of
    // requests the queue places the records its writes (and anyone's) were
    // staged in, and a FLUSH's fdatasync, on its own ring; their
    // completions come back here, and so do its writes' acknowledgements.
    let lane = ctx.volume.journal_lane();
    let _lane_guard = lane.as_ref().map(|l| l.enter());
    let journal_ios = Rc::new(std::cell::Cell::new(0usize));
    let exe2 = exe.clone();
    let q2 = q.clone();
    let jios = journal_ios.clone();
    smol::block_on(exe.run(async move {
        let run_ops = || {
            run_round(&exe2, lane.as_ref(), |lane, sub| {
                let id = sub.id();
                // SAFETY: the queue thread does not leave before every
                // journal I/O on its ring has completed and been reported
                // (`done` below counts them), and the journal keeps the
                // memory until then (`Sub::into_sqe`).
                let f = q2.ublk_submit_sqe(unsafe { sub.into_sqe() });
                jios.set(jios.get() + 1);
                let (lane, jios) = (lane.clone(), jios.clone());
                exe2.spawn(async move {
                    let res = f.await;
                    lane.complete(id, res);
                    jios.set(jios.get() - 1);
                })
                .detach();
            })
        };
        let done = || tasks.iter().all(|t| t.is_finished()) && journal_ios.get() == 0;
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, done).await {
            tracing::error!("queue {qid}: {e}");
        }
    }));
    let (completions, wakeups) = notifier.counts();
    tracing::debug!(qid, completions, wakeups, "queue stopped");
}

/// One round of a queue thread between two sleeps on its ring: run every
/// runnable task, then pump the journal lane and hand its submissions to
/// `submit` (which puts them on the queue ring), until neither makes
/// progress. A pump that places nothing may still complete something
/// already due (a FLUSH the last sync covers, or any request of a failed
/// journal), waking a task on this thread, which the notifier does not
/// kick for (`super::wake`): the round runs it before the ring sleeps.
fn run_round(
    exe: &smol::LocalExecutor<'_>,
    lane: Option<&crate::journal::Lane>,
    mut submit: impl FnMut(&crate::journal::Lane, crate::journal::Sub),
) {
    loop {
        while exe.try_tick() {}
        let Some(lane) = lane else { return };
        let subs = lane.pump();
        if subs.is_empty() {
            if exe.try_tick() {
                continue;
            }
            return;
        }
        for sub in subs {
            submit(lane, sub);
        }
    }
}

/// Serve one tag until the queue goes down.
async fn tag_loop(
    q: &UblkQueue<'_>,
    tag: u16,
    ctx: &DevCtx,
    mut waiter: Waiter,
) -> std::result::Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    // The read workers fill this and hand it back, so a read allocates and
    // zeroes nothing (Volume::read writes every byte of its buffer).
    let mut spare: Vec<u8> = Vec::new();
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let iod = *q.get_iod(tag);
        // Timed only when metrics are on (the clock is not read otherwise).
        let start = ctx.metrics.as_ref().map(|_| std::time::Instant::now());
        // A panic while handling one request fails that request, not the
        // queue: the queue thread must live on to report the journal I/O
        // it has in flight on its ring (every later acknowledgement, on
        // every queue, waits for it).
        let res = smol::future::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handle(
            q,
            &iod,
            buf.as_mut_slice(),
            ctx,
            &mut waiter,
            &mut spare,
        )))
        .await
        .unwrap_or_else(|_| {
            tracing::error!(
                "queue {} tag {tag}: request handler panicked: failing it",
                q.get_qid()
            );
            -libc::EIO
        });
        if let (Some(m), Some(start)) = (&ctx.metrics, start) {
            if let Some(op) = op_of(iod.op_flags & 0xff) {
                m.record(
                    op,
                    u64::from(iod.nr_sectors) << 9,
                    start.elapsed(),
                    res >= 0,
                );
            }
        }
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res)
            .await?;
    }
}

/// The metrics type of a ublk request.
fn op_of(op: u32) -> Option<Op> {
    match op {
        sys::UBLK_IO_OP_READ => Some(Op::Read),
        sys::UBLK_IO_OP_WRITE => Some(Op::Write),
        sys::UBLK_IO_OP_FLUSH => Some(Op::Flush),
        sys::UBLK_IO_OP_DISCARD => Some(Op::Discard),
        sys::UBLK_IO_OP_WRITE_ZEROES => Some(Op::WriteZeroes),
        _ => None,
    }
}

/// A completion that fires `sig` with a plain outcome.
fn completion(sig: Signal) -> Completion {
    Box::new(move |r| sig.fire(Outcome::Done(r)))
}

/// A write the journal had no room for, on a slow worker: wait for room
/// (at most `io_timeout_msec`) and submit it. If that fails, the request
/// fails with that error's kind: a wait that ran out is ETIMEDOUT for the
/// kernel. (Dropping `done` instead would report an abandoned operation,
/// ESHUTDOWN, as if the server were stopping.)
fn write_when_room(v: &Volume, offset: u64, data: &[u8], fua: bool, done: Completion) {
    let mut done = Some(done);
    if let Err(e) = v.submit_write_waiting(offset, data, fua, &mut done) {
        fail_unsubmitted(done, e.prefixed(format_args!("write at {offset}")));
    }
}

/// A discard or write-zeroes the journal had no room for, on a slow
/// worker (see [`write_when_room`]).
fn discard_when_room(v: &Volume, offset: u64, bytes: u64, zero: bool, fua: bool, done: Completion) {
    let mut done = Some(done);
    if let Err(e) = v.submit_discard_waiting(offset, bytes, zero, fua, &mut done) {
        let what = if zero { "write-zeroes" } else { "discard" };
        fail_unsubmitted(done, e.prefixed(format_args!("{what} at {offset}")));
    }
}

/// Complete a request whose submission failed with `e` (which
/// [`done_result`] logs).
fn fail_unsubmitted(done: Option<Completion>, e: Error) {
    match done {
        Some(d) => d(Err(e)),
        // Not reached: the volume keeps `done` when it fails a submission.
        None => tracing::warn!("{e}"),
    }
}

/// The result for the kernel: `ok` on success, a negative errno otherwise.
fn done_result(o: Outcome, ok: i32) -> i32 {
    match o {
        Outcome::Done(Ok(())) => ok,
        Outcome::Done(Err(e)) | Outcome::Read(Err(e)) => {
            tracing::warn!("I/O error: {e}");
            e.kind().errno()
        }
        Outcome::Read(Ok(_)) => -libc::EIO,
    }
}

/// Handle one request; returns the result for the kernel.
async fn handle(
    q: &UblkQueue<'_>,
    iod: &sys::ublksrv_io_desc,
    buf: &mut [u8],
    ctx: &DevCtx,
    waiter: &mut Waiter,
    spare: &mut Vec<u8>,
) -> i32 {
    let op = iod.op_flags & 0xff;
    let fua = iod.op_flags & sys::UBLK_IO_F_FUA != 0;
    let offset = iod.start_sector << 9;
    let bytes = (iod.nr_sectors as u64) << 9;
    let vol = &ctx.volume;
    match op {
        sys::UBLK_IO_OP_READ => {
            let Some(len) = fits(bytes, buf.len()) else {
                return -libc::EINVAL;
            };
            read(q, offset, &mut buf[..len], ctx, waiter, spare).await
        }
        sys::UBLK_IO_OP_WRITE => {
            let Some(len) = fits(bytes, buf.len()) else {
                return -libc::EINVAL;
            };
            let data = &buf[..len];
            let mut done = Some(completion(waiter.arm()));
            match vol.try_submit_write(offset, data, fua, &mut done) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    // No journal space: wait for it on a worker, not here.
                    let copy = data.to_vec();
                    let v = vol.clone();
                    let d = done.take().expect("not submitted");
                    ctx.slow
                        .run(move || write_when_room(&v, offset, &copy, fua, d));
                }
                Err(e) => {
                    tracing::warn!("write at {offset} of {len} bytes: {e}");
                    return e.kind().errno();
                }
            }
            done_result(waiter.wait().await, len as i32)
        }
        sys::UBLK_IO_OP_FLUSH => {
            let sig = waiter.arm();
            if let Err(e) = vol.submit_flush(completion(sig)) {
                tracing::warn!("flush: {e}");
                return e.kind().errno();
            }
            done_result(waiter.wait().await, 0)
        }
        sys::UBLK_IO_OP_DISCARD | sys::UBLK_IO_OP_WRITE_ZEROES => {
            let zero = op == sys::UBLK_IO_OP_WRITE_ZEROES;
            let mut done = Some(completion(waiter.arm()));
            match vol.try_submit_discard(offset, bytes, zero, fua, &mut done) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let v = vol.clone();
                    let d = done.take().expect("not submitted");
                    ctx.slow
                        .run(move || discard_when_room(&v, offset, bytes, zero, fua, d));
                }
                Err(e) => {
                    tracing::warn!("discard at {offset} of {bytes} bytes: {e}");
                    return e.kind().errno();
                }
            }
            done_result(waiter.wait().await, 0)
        }
        _ => -libc::EOPNOTSUPP,
    }
}

/// A READ: what memory holds is copied straight into the request buffer
/// on this thread ([`Volume::plan_read`]); what the read cache holds is
/// read with io_uring on this queue's ring into the same buffer and
/// checked here ([`ring_hits`]); only the rest (cache misses, a clone's
/// parent) goes to a read worker, so a read served from memory or the
/// cache never waits behind one that goes to the backend.
async fn read(
    q: &UblkQueue<'_>,
    offset: u64,
    buf: &mut [u8],
    ctx: &DevCtx,
    waiter: &mut Waiter,
    spare: &mut Vec<u8>,
) -> i32 {
    let vol = &ctx.volume;
    let len = buf.len();
    // A panic here would end this tag's task and leave the request
    // uncommitted for good (on a worker it only failed the request): catch
    // it and fail the request, as before.
    let planned =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vol.plan_read(offset, buf)));
    let mut plan = match planned {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::warn!("read at {offset} of {len} bytes: {e}");
            return e.kind().errno();
        }
        Err(_) => {
            tracing::error!("read at {offset} of {len} bytes: internal error (panic)");
            return -libc::EIO;
        }
    };
    if !plan.is_done() {
        if let Some(cache) = vol.read_cache() {
            ring_hits(q, cache, &mut plan, buf).await;
        }
    }
    if plan.is_done() {
        return len as i32;
    }
    // The worker fills its own buffer (the request buffer belongs to this
    // task), at the same offsets; only the ranges it reads are copied back.
    let ranges: Vec<(usize, usize)> = plan.pending_ranges().collect();
    let sig = waiter.arm();
    let v = vol.clone();
    let mut data = std::mem::take(spare);
    data.resize(len, 0);
    ctx.reads.run(move || {
        let r = v.finish_read(plan, &mut data, false).map(|()| data);
        sig.fire(Outcome::Read(r));
    });
    match waiter.wait().await {
        Outcome::Read(Ok(data)) => {
            for (at, n) in ranges {
                buf[at..at + n].copy_from_slice(&data[at..at + n]);
            }
            *spare = data;
            len as i32
        }
        o => done_result(o, -libc::EIO),
    }
}

/// Serve the remote pieces of `plan` that the read cache holds: those a
/// miss fetched and the cache's maintainer has not written yet are copied
/// from memory; the others take one io_uring READ per chunk part on this
/// queue's ring, straight into `buf` (page-aligned: the tag's buffer) at
/// the piece's place, all in flight at once; each is then checked against
/// its block crcs
/// ([`Cache::finish_hit`]). A piece served whole is dropped from the plan;
/// a piece with any part not cached, not block-aligned, failing its crc or
/// its read stays in the plan for the worker (which reads all of it).
async fn ring_hits(q: &UblkQueue<'_>, cache: &Cache, plan: &mut ReadPlan, buf: &mut [u8]) {
    // Chunks a miss just fetched wait in memory for the cache's
    // maintainer to write them: copied from there, no I/O.
    let mut copied = Vec::new();
    for p in plan.remote() {
        if cache.copy_deferred(p.obj, p.byte_off, &mut buf[p.at..p.at + p.len]) {
            copied.push(*p);
        }
    }
    plan.retain_remote(|p| !copied.contains(p));
    let base = buf.as_mut_ptr();
    let mut reads: Vec<(RemotePiece, Vec<(usize, HitPlan)>)> = Vec::new();
    for p in plan.remote() {
        // O_DIRECT: the destination must be block-aligned too (the parts
        // of a hit are whole blocks, so the piece's start is enough).
        if !(base as usize + p.at).is_multiple_of(BLOCK_BYTES) {
            continue;
        }
        if let Some(parts) = cache.plan_hits(p.obj, p.byte_off, p.len) {
            reads.push((*p, parts));
        }
    }
    if reads.is_empty() {
        return;
    }
    let fd = io_uring::types::Fd(cache.raw_fd());
    let mut inflight = Vec::new();
    for (p, (at, h)) in reads
        .iter()
        .flat_map(|(p, parts)| parts.iter().map(move |x| (p, x)))
    {
        // SAFETY: `p.at + at + h.nbytes` is within `buf` (a part of a
        // piece of this read), and `buf` outlives the read: every future is
        // awaited below before `buf` is touched again or returned.
        let dst = unsafe { base.add(p.at + at) };
        let sqe = io_uring::opcode::Read::new(fd, dst, h.nbytes as u32)
            .offset(h.file_off)
            .build();
        inflight.push(q.ublk_submit_sqe(sqe));
    }
    let mut results = Vec::with_capacity(inflight.len());
    for f in inflight {
        results.push(f.await);
    }
    let mut results = results.into_iter();
    let mut served = Vec::new();
    for (p, parts) in &reads {
        let mut whole = true;
        for (at, h) in parts {
            let r = results.next().unwrap_or(-libc::EIO);
            let at = p.at + at;
            // After a part fails the rest are not checked: the worker
            // reads the whole piece again.
            whole = whole && cache.finish_hit(h, r, &buf[at..at + h.nbytes]);
        }
        if whole {
            for (_, h) in parts {
                cache.count_hit(h);
            }
            served.push(*p);
        }
    }
    plan.retain_remote(|p| !served.contains(p));
}

/// Read workers for a device of `queues` x `depth` requests in flight.
fn read_workers(queues: u16, depth: u16) -> usize {
    (usize::from(queues) * usize::from(depth)).clamp(MIN_READ_WORKERS, MAX_READ_WORKERS)
}

/// `bytes` as a length if it fits the request buffer.
fn fits(bytes: u64, cap: usize) -> Option<usize> {
    usize::try_from(bytes).ok().filter(|&n| n <= cap && n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, JournalOptions, JournalShared};
    use crate::units::{Generation, ImageUuid, JournalSeq};
    use std::cell::Cell;

    /// A volume whose backend refuses every put, so sealed batches pile up,
    /// with room for three of them and `io_timeout_msec` at its least.
    fn stuck_volume(dir: &std::path::Path, hard_flush: bool) -> Volume {
        use crate::backend::{FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
        use crate::config::Config;
        use crate::volume::VolumeOptions;
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        crate::volume::image::create_image(mem.as_ref(), "img", 8 << 20).unwrap();
        let fault = Arc::new(FaultStore::new(mem, 1));
        let v = Volume::open(VolumeOptions {
            config: Config {
                rcache_dir: dir.join("rcache"),
                no_rcache: true,
                // Every batch is sealed within a few ms of its write, and
                // max_sealed is backend_write_window + 2 = 3 (the journal,
                // 8 MiB, holds far more than three 4 KiB writes).
                flush_msec: 2,
                wlog_bytes: 8 << 20,
                wlog_chunk_bytes: 64 << 10,
                backend_obj_bytes: 8 << 20,
                backend_write_window: 1,
                io_timeout_msec: 100,
                hard_flush,
                ..Config::default()
            },
            store: fault.clone(),
            image: "img".into(),
            journal_path: dir.join("img.wlog"),
            io_log: None,
        })
        .unwrap();
        fault.add_rule(FaultRule::fail(FaultOp::Put, ErrorKind::Io));
        v
    }

    /// Fill `v`'s room for sealed batches, until a queue thread's write
    /// would go to a slow worker.
    fn fill_room(v: &Volume) {
        for i in 0..200u64 {
            let mut done: Option<Completion> = Some(Box::new(|_| {}));
            match v.try_submit_write(i * 4096, &[7u8; 4096], false, &mut done) {
                Ok(Some(_)) => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => return,
                Err(e) => panic!("write {i}: {e}"),
            }
        }
        panic!("the volume never ran out of room");
    }

    /// A write (or trim) a queue thread found no room for waits on a slow
    /// worker; when that wait runs out (`io_timeout_msec`, the backend does
    /// not take objects), the kernel must see ETIMEDOUT, what happened, not
    /// ESHUTDOWN, which said the server was stopping (the worker dropped
    /// the completion and the dropped signal reported "abandoned").
    #[test]
    fn a_write_that_timed_out_waiting_for_room_fails_with_etimedout() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let v = stuck_volume(dir.path(), false);
        fill_room(&v);
        let notifier = Notifier::new().unwrap();
        let mut waiter = notifier.waiter();

        write_when_room(&v, 0, &[1u8; 4096], false, completion(waiter.arm()));
        let r = done_result(smol::block_on(waiter.wait()), 4096);
        assert_eq!(r, -libc::ETIMEDOUT, "write: errno {}", -r);

        for (zero, fua) in [(false, false), (true, true)] {
            discard_when_room(&v, 0, 4096, zero, fua, completion(waiter.arm()));
            let r = done_result(smol::block_on(waiter.wait()), 0);
            assert_eq!(r, -libc::ETIMEDOUT, "zero {zero}: errno {}", -r);
        }
        // A request abandoned because the server stops (its job dropped by
        // a stopped pool) still says so.
        drop(completion(waiter.arm()));
        let r = done_result(smol::block_on(waiter.wait()), 0);
        assert_eq!(r, -libc::ESHUTDOWN);
        drop(v);
    }

    /// The outcome `waiter` gets within `limit`, or `None`.
    fn wait_within(waiter: &Waiter, limit: Duration) -> Option<Outcome> {
        smol::block_on(smol::future::or(
            async { Some(waiter.wait().await) },
            async {
                smol::Timer::after(limit).await;
                None
            },
        ))
    }

    /// With `hard_flush`, a FLUSH (and a FUA write) completes once the
    /// backend holds everything. When the backend takes nothing for
    /// `io_timeout_msec` it must fail with ETIMEDOUT, as `Volume::flush`
    /// does; the ublk path submits it without a wait of its own, and it
    /// waited in the destager until the backend came back (a hang).
    #[test]
    fn a_hard_flush_whose_backend_is_stuck_fails_with_etimedout() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let v = stuck_volume(dir.path(), true);
        let notifier = Notifier::new().unwrap();
        let mut waiter = notifier.waiter();
        v.write(0, &[3u8; 4096]).unwrap();

        v.submit_flush(completion(waiter.arm())).unwrap();
        let o = wait_within(&waiter, Duration::from_secs(10)).expect("the FLUSH hangs");
        assert_eq!(done_result(o, 0), -libc::ETIMEDOUT, "FLUSH");

        let mut done = Some(completion(waiter.arm()));
        v.try_submit_write(4096, &[4u8; 4096], true, &mut done)
            .unwrap()
            .expect("room for the write");
        let o = wait_within(&waiter, Duration::from_secs(10)).expect("the FUA write hangs");
        assert_eq!(done_result(o, 4096), -libc::ETIMEDOUT, "FUA write");
        drop(v);
    }

    /// A FLUSH the last sync already covers completes inside the lane's
    /// pump, on the queue thread, with no I/O and no eventfd kick: the
    /// round must still run the task it woke (found by review: the ring
    /// slept up to its 20 s idle timeout with the task runnable).
    #[test]
    fn a_flush_completed_by_an_empty_pump_runs_its_task_in_the_same_round() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let o = JournalOptions {
            path: dir.path().join("j.wlog"),
            size: 1 << 20,
            depth: 4,
            max_record_data: 64 << 10,
            io_timeout: Duration::from_secs(5),
            io_log: None,
            allow_tmpfs: false,
        };
        let (j, _) = Journal::open(
            &o,
            ImageUuid([15; 16]),
            Generation(0),
            JournalSeq(0),
            Arc::new(JournalShared::default()),
            &mut |_| Ok(()),
            &mut || Ok(()),
        )
        .unwrap();
        let j = Rc::new(j);
        let lane = j.lane();
        let _g = lane.enter();
        let notifier = Notifier::new().unwrap();
        let mut waiter = notifier.waiter();
        let exe = smol::LocalExecutor::new();
        let finished = Rc::new(Cell::new(false));
        let (j2, f2) = (j.clone(), finished.clone());
        exe.spawn(async move {
            let sig = waiter.arm();
            j2.flush(JournalSeq(0), Box::new(move |r| sig.fire(Outcome::Done(r))));
            let _ = waiter.wait().await;
            f2.set(true);
        })
        .detach();
        run_round(&exe, Some(&lane), |_, _| panic!("no journal I/O expected"));
        let (posted, kicks) = notifier.counts();
        assert_eq!(posted, 1, "the FLUSH completed");
        assert_eq!(kicks, 0, "on its own thread, without a wake-up");
        assert!(finished.get(), "its task ran in the same round");
    }
}
