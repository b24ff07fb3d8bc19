//! `import` and `export`: copy between a file and an image in 1 MiB chunks.
//! Import skips all-zero chunks; export does not read chunks the image's
//! map has no data for, and leaves a hole in a regular file for every
//! 4 KiB block that is unmapped or all zeros.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::exit::ReaderGone;
use super::{check_image_size, open_volume, parse_size_arg, parse_spec, store_for, SIZE_ALIGN};
use crate::backend::ObjectStore;
use crate::config::Config;
use crate::volume::image;
use crate::volume::{ImageSpec, Volume};

/// Transfer unit.
const CHUNK: u64 = 1 << 20;
/// Sector size: the last chunk of an import is padded with zeros to this.
const SECTOR: u64 = 512;
/// Import: writes submitted and not yet acknowledged, at most.
const IMPORT_IN_FLIGHT: usize = 8;
/// Import: the journal holds this many objects' worth of writes
/// ([`import_config`]).
const IMPORT_JOURNAL_OBJS: u64 = 4;
/// Export: threads reading chunks ahead of the writer.
const EXPORT_READERS: u64 = 4;

/// Arguments of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// File (or block device) to read, or `-` for stdin (then `--size` is
    /// required).
    pub file: PathBuf,
    /// Image to create, as POOL/IMAGE (must not exist).
    pub image: String,
    /// Image size (default: the file's size rounded up to 4K); at least the
    /// file's size.
    #[arg(long, short = 's', value_parser = parse_size_arg)]
    pub size: Option<u64>,
}

/// The error of a command stopped by SIGINT, SIGTERM or SIGHUP: the process
/// exits with status 130, as a shell reports a Ctrl-C.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted by a signal")
    }
}

impl std::error::Error for Interrupted {}

/// Turns SIGINT, SIGTERM and SIGHUP into a flag the command checks between
/// steps, so that it can undo what it did; a second signal exits at once
/// (status 130) with `again`. Call before any thread is started: the
/// signals are blocked in this thread and every thread it starts.
struct StopFlag {
    flag: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl StopFlag {
    fn install(again: String) -> StopFlag {
        let set = super::device::block_stop_signals();
        let flag = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (f, d) = (flag.clone(), done.clone());
        std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                if super::device::wait_signal(&set, std::time::Duration::from_millis(100))
                    && f.swap(true, Ordering::SeqCst)
                {
                    eprintln!("lsvd-ublk: interrupted again: exiting at once; {again}");
                    crate::exit_now(130);
                }
            }
        });
        StopFlag { flag, done }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.flag.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Where `import` reads.
enum Input {
    /// A file or block device of known length.
    File(File, u64),
    /// stdin: read to its end, which must come before the image's.
    Stdin(std::io::Stdin),
}

impl Input {
    /// Fill `buf` as far as the input goes; the bytes read (fewer than
    /// `buf.len()` only at the end).
    fn read_chunk(&mut self, off: u64, buf: &mut [u8], stop: &StopFlag) -> anyhow::Result<usize> {
        match self {
            Input::File(f, len) => {
                let want = (*len - off).min(buf.len() as u64) as usize;
                f.read_exact(&mut buf[..want]).map_err(|e| {
                    let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        format!(
                            "the input ended early at offset {off} (did it shrink during the import?)"
                        )
                    } else {
                        format!("cannot read the input at offset {off}")
                    };
                    anyhow::Error::new(e).context(what)
                })?;
                Ok(want)
            }
            Input::Stdin(s) => {
                let mut got = 0;
                while got < buf.len() {
                    // A signal must stop the import even while the producer
                    // is quiet: wait for input a little at a time.
                    wait_readable(0, stop)?;
                    match s.read(&mut buf[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(anyhow::Error::new(e).context(format!(
                                "cannot read stdin at offset {}",
                                off + got as u64
                            )))
                        }
                    }
                }
                Ok(got)
            }
        }
    }
}

/// Wait until descriptor `fd` is readable (or at its end, or failed: the
/// read then says which), checking `stop` every 100 ms.
fn wait_readable(fd: i32, stop: &StopFlag) -> anyhow::Result<()> {
    loop {
        stop.check()?;
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, 100) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(anyhow::Error::new(e).context("cannot poll stdin"));
            }
        }
    }
}

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Image to read, as POOL/IMAGE, or a snapshot as POOL/IMAGE@SNAP.
    pub image: String,
    /// Output file, or `-` for stdout.
    pub file: String,
    /// Overwrite FILE if it exists.
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// A byte-counting progress bar on stderr, hidden unless stderr is a terminal.
pub(super) fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_owned());
    pb
}

/// True if every byte of `buf` is zero.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    // OR-folding fixed blocks vectorizes; an early-exit byte loop does not.
    buf.chunks(256)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// `x` rounded up to a multiple of `align`.
fn round_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// `import FILE|- POOL/IMAGE [--size N]`.
pub fn import(config: &Config, args: &ImportArgs) -> anyhow::Result<()> {
    let spec = parse_spec(&args.image)?;
    let path = &args.file;
    // Before any thread starts (the store's included).
    let stop = StopFlag::install(format!(
        "the image {spec} may remain partly written: remove it with `lsvd-ublk rm {spec}`"
    ));
    let (mut input, size, total) = if path.as_os_str() == "-" {
        let Some(size) = args.size else {
            fail!(
                InvalidInput,
                "importing from stdin (`-`) needs --size: the input's length is not known"
            );
        };
        (Input::Stdin(std::io::stdin()), size, size)
    } else {
        // Typed (a missing file is "not found", for the exit status).
        let mut file = File::open(path).map_err(|e| {
            crate::error::Error::io(format!("cannot open {} for import", path.display()), e)
        })?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if meta.is_dir() {
            fail!(
                InvalidInput,
                "{} is a directory, not a file to import",
                path.display()
            );
        }
        // Seeking to the end gives the size of block devices too.
        let file_len = file
            .seek(SeekFrom::End(0))
            .and_then(|len| file.rewind().map(|()| len))
            .with_context(|| format!("cannot get the size of {}", path.display()))?;
        let size = match args.size {
            Some(size) if size < file_len => fail!(
                InvalidInput,
                "--size {size} is smaller than {} ({file_len} bytes)",
                path.display()
            ),
            Some(size) => size,
            None if file_len == 0 => fail!(
                InvalidInput,
                "{} is empty; give --size to import it as an empty image",
                path.display()
            ),
            None => round_up(file_len, SIZE_ALIGN),
        };
        (Input::File(file, file_len), size, file_len)
    };
    check_image_size(size)?;
    stop.check()?;

    let store = store_for(config, &spec.pool, true)?;
    image::create_image(store.as_ref(), &spec.image, size)
        .with_context(|| format!("cannot create image {spec}"))?;

    let pb = progress_bar(total, &format!("importing {spec}"));
    let result = fill_image(config, store.clone(), &spec, &mut input, size, &pb, &stop);
    pb.finish_and_clear();
    let Err(e) = result else {
        return Ok(());
    };
    // Never leave a half-imported image behind silently: an interrupted
    // import is a failed one.
    let (what, e) = if e.is::<Interrupted>() {
        ("was interrupted", e)
    } else {
        ("failed", e)
    };
    let journal = spec.journal_path(config);
    match image::remove_image(store.as_ref(), &spec.image, Some(&journal)) {
        Ok(()) => Err(e.context(format!(
            "import into {spec} {what}; the partly written image was removed"
        ))),
        Err(rm) => Err(e.context(format!(
            "import into {spec} {what}, and removing the partly written image failed too \
             ({rm}); remove it with `lsvd-ublk rm {spec}`"
        ))),
    }
}

/// The journal an import writes through: `wlog_bytes` capped at
/// [`IMPORT_JOURNAL_OBJS`] objects (and at least the smallest journal the
/// configuration allows). It is created (zero-filled and synced) when the
/// import opens the image, so a 1 GiB default journal would cost a 1 GiB
/// write before the first byte of data; a small one only throttles the
/// import to the store's pace, which it is anyway.
fn import_config(config: &Config) -> Config {
    let mut c = config.clone();
    let min_wlog = c.wlog_chunk_bytes.saturating_mul(4).saturating_add(1 << 20);
    let small = c
        .backend_obj_bytes
        .saturating_mul(IMPORT_JOURNAL_OBJS)
        .max(min_wlog);
    c.wlog_bytes = c.wlog_bytes.min(round_up(small, SIZE_ALIGN));
    c
}

/// Open the new image, write the non-zero chunks of the input, flush and
/// close.
///
/// The image is written through a small journal of its own
/// ([`import_config`]) that is removed once the image is closed clean, so
/// the first attach formats one of the configured size. Crash-safety
/// ordering of a successful import: every write is in the small journal
/// (flush), then close makes everything durable in the store, writes the
/// final checkpoint and marks the superblock clean; only then is the
/// journal file removed. A crash before the clean mark leaves an image
/// that was never reported imported (the user removes it); a crash after
/// it leaves at most the small, empty journal, which the next attach
/// opens and uses as it is. A journal that existed before the import (a
/// symlink to a journal device, say) is used at its size and kept.
fn fill_image(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    spec: &ImageSpec,
    input: &mut Input,
    size: u64,
    pb: &ProgressBar,
    stop: &StopFlag,
) -> anyhow::Result<()> {
    stop.check()?;
    let journal = spec.journal_path(config);
    let own_journal = journal.symlink_metadata().is_err();
    let vol = if own_journal {
        open_volume(&import_config(config), store.clone(), spec)?
    } else {
        open_volume(config, store.clone(), spec)?
    };
    // A failed import removes the image: no error may promise a replay.
    vol.set_disposable();
    let uuid = vol.uuid();
    match stop
        .check()
        .and_then(|()| write_chunks(&vol, input, size, pb, stop))
        .and_then(|()| {
            vol.flush()
                .with_context(|| format!("cannot flush image {spec}"))
        }) {
        Ok(()) => {
            vol.close()
                .with_context(|| format!("cannot close image {spec}"))?;
            if own_journal {
                // After the clean mark is durable (close): see above.
                image::remove_idle_journal(store.as_ref(), &spec.image, &journal, uuid)
                    .with_context(|| {
                        format!("cannot remove the import's journal {}", journal.display())
                    })?;
            }
            // A Ctrl-C in a pipeline also ends the input, perhaps before the
            // signal is seen: an import that was interrupted at any point
            // does not report a (possibly truncated) success.
            stop.check()
        }
        Err(e) => {
            // The image is about to be removed: destaging it would be wasted
            // work (and may fail the same way), so stop it where it is.
            vol.crash();
            Err(e)
        }
    }
}

/// Copy the input into `vol` from offset 0, keeping up to
/// [`IMPORT_IN_FLIGHT`] writes outstanding and skipping zero chunks.
fn write_chunks(
    vol: &Volume,
    input: &mut Input,
    size: u64,
    pb: &ProgressBar,
    stop: &StopFlag,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<crate::Result<()>>();
    let mut outstanding = 0usize;
    let wait_one = |outstanding: &mut usize| -> anyhow::Result<()> {
        let r = rx
            .recv()
            .map_err(|_| anyhow!("the volume dropped a write completion"))?;
        *outstanding -= 1;
        r.context("write failed")
    };
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    loop {
        stop.check()?;
        let room = (size - off).min(CHUNK) as usize;
        // One byte past the image's end tells a too long stdin.
        let got = input.read_chunk(off, &mut buf[..room.max(1)], stop)?;
        if got == 0 {
            break;
        }
        if off + got as u64 > size {
            fail!(
                InvalidInput,
                "the input is longer than --size ({size} bytes)"
            );
        }
        // The last chunk is padded to a whole sector; the image is at least
        // that large because its size is a multiple of 4096.
        let len = round_up(got as u64, SECTOR) as usize;
        buf[got..len].fill(0);
        let chunk = &buf[..len];
        if !is_zero(chunk) {
            while outstanding >= IMPORT_IN_FLIGHT {
                wait_one(&mut outstanding)?;
            }
            let tx = tx.clone();
            // submit_write copies `chunk` before it returns, so `buf` can
            // be refilled while the write is in flight.
            vol.submit_write(
                off,
                chunk,
                false,
                Box::new(move |r| {
                    // The receiver is gone only if the import already failed.
                    let _ = tx.send(r);
                }),
            )
            .with_context(|| format!("cannot write the image at offset {off}"))?;
            outstanding += 1;
        }
        off += got as u64;
        pb.inc(got as u64);
        if got < room {
            break;
        }
    }
    while outstanding > 0 {
        wait_one(&mut outstanding)?;
    }
    // A Ctrl-C on `cat FILE | lsvd-ublk import - ...` also ends the input.
    stop.check()
}

/// One chunk of an export, as a reader hands it to the writer.
enum Chunk {
    /// The image's bytes (mapped somewhere in the chunk).
    Data(Vec<u8>),
    /// This many bytes the image's map says are holes: not read at all.
    Hole(usize),
}

/// The runs of `buf` made of 4 KiB blocks (from its start; the last may
/// be shorter) that are not all zeros, as (offset in `buf`, bytes).
fn nonzero_runs(buf: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    const BLOCK: usize = 4096;
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < buf.len() && is_zero(&buf[at..(at + BLOCK).min(buf.len())]) {
            at += BLOCK;
        }
        if at >= buf.len() {
            return None;
        }
        let start = at;
        while at < buf.len() && !is_zero(&buf[at..(at + BLOCK).min(buf.len())]) {
            at += BLOCK;
        }
        let end = at.min(buf.len());
        Some((start, &buf[start..end]))
    })
}

/// Where `export` writes.
enum Output {
    /// A regular file: zero chunks become holes, the length is set at the end.
    Sparse(File, PathBuf),
    /// stdout, a pipe or a device: every byte is written in order.
    Stream(Box<dyn Write>),
}

impl Output {
    /// Write the chunk at `off` (chunks arrive in order): `Hole(len)` is an
    /// unmapped chunk. A sparse file gets only the 4 KiB blocks that are
    /// not all zeros (its holes are skipped: the file starts empty).
    fn write_chunk(&mut self, off: u64, chunk: &Chunk) -> std::io::Result<()> {
        match (self, chunk) {
            (Output::Sparse(_, _), Chunk::Hole(_)) => Ok(()),
            (Output::Sparse(f, _), Chunk::Data(buf)) => {
                for (at, run) in nonzero_runs(buf) {
                    f.write_all_at(run, off + at as u64)?;
                }
                Ok(())
            }
            (Output::Stream(w), Chunk::Data(buf)) => w.write_all(buf),
            (Output::Stream(w), Chunk::Hole(len)) => {
                let zeros = [0u8; 64 << 10];
                let mut left = *len;
                while left > 0 {
                    let n = left.min(zeros.len());
                    w.write_all(&zeros[..n])?;
                    left -= n;
                }
                Ok(())
            }
        }
    }

    /// Set the final length (covering a trailing hole) and make it durable.
    fn finish(&mut self, size: u64) -> std::io::Result<()> {
        match self {
            Output::Sparse(f, _) => {
                f.set_len(size)?;
                f.sync_all()
            }
            Output::Stream(w) => w.flush(),
        }
    }
}

/// `export POOL/IMAGE FILE [--force]`.
pub fn export(config: &Config, args: &ExportArgs) -> anyhow::Result<()> {
    let (spec, snap) = super::snap::parse_snap_spec(&args.image, false)?;
    let spec_text = match &snap {
        Some(s) => format!("{spec}@{s}"),
        None => spec.to_string(),
    };
    let to_stdout = args.file == "-";
    let path = PathBuf::from(&args.file);
    if !to_stdout && !args.force && path.symlink_metadata().is_ok() {
        fail!(
            AlreadyExists,
            "refusing to overwrite {} (use --force to overwrite it)",
            path.display()
        );
    }
    let store = store_for(config, &spec.pool, false)?;
    let vol = match &snap {
        None => open_volume(config, store, &spec)?,
        Some(s) => super::snap::open_snapshot(config, store, &spec, s)?,
    };
    let size = vol.size_bytes();
    let spec = spec_text;

    let result = open_output(&path, to_stdout, args.force).and_then(|mut out| {
        let pb = progress_bar(size, &format!("exporting {spec}"));
        let r = copy_out(&vol, size, &mut out, &pb).and_then(|()| {
            out.finish(size)
                .map_err(|e| write_error(e, "cannot finish writing the output".into()))
        });
        pb.finish_and_clear();
        if let (Err(_), Output::Sparse(_, p)) = (&r, &out) {
            // A partial copy is worse than none; it was ours to create.
            let _ = std::fs::remove_file(p);
        }
        r
    });
    let closed = vol
        .close()
        .with_context(|| format!("cannot close image {spec}"));
    result.with_context(|| format!("export of {spec} to {} failed", args.file))?;
    closed
}

/// Open the export destination.
fn open_output(path: &Path, to_stdout: bool, force: bool) -> anyhow::Result<Output> {
    if to_stdout {
        return Ok(Output::Stream(Box::new(std::io::BufWriter::with_capacity(
            CHUNK as usize,
            std::io::stdout(),
        ))));
    }
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true);
    } else {
        opts.create_new(true);
    }
    let file = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if meta.file_type().is_file() {
        // --force on an existing regular file: start from an empty file so
        // skipped zero chunks really read back as zeros.
        file.set_len(0)
            .with_context(|| format!("cannot truncate {}", path.display()))?;
        Ok(Output::Sparse(file, path.to_owned()))
    } else {
        Ok(Output::Stream(Box::new(file)))
    }
}

/// A failed write of the export's output: `what` with its cause, or, if
/// the reader of a pipe (stdout) went away, [`ReaderGone`], which ends the
/// command quietly with status 141 as a writer killed by SIGPIPE would
/// (README: the copy is incomplete, and a pipeline says so only through
/// that status).
fn write_error(e: std::io::Error, what: String) -> anyhow::Error {
    if super::exit::is_broken_pipe(&e) {
        anyhow::Error::new(ReaderGone(e))
    } else {
        anyhow::Error::new(e).context(what)
    }
}

/// Read the chunk of `len` bytes at `off`, unless the image's map says it
/// is all holes.
fn read_chunk(vol: &Volume, off: u64, len: usize) -> crate::Result<Chunk> {
    if vol.allocation(off, len as u64)?.iter().all(|e| !e.data) {
        return Ok(Chunk::Hole(len));
    }
    let mut buf = vec![0u8; len];
    vol.read(off, &mut buf)?;
    Ok(Chunk::Data(buf))
}

/// Read `vol` in chunks on [`EXPORT_READERS`] threads and write them to
/// `out` in order.
fn copy_out(vol: &Volume, size: u64, out: &mut Output, pb: &ProgressBar) -> anyhow::Result<()> {
    let nchunks = size.div_ceil(CHUNK);
    let readers = EXPORT_READERS.min(nchunks).max(1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut rxs = Vec::new();
        for first in 0..readers {
            // Reader `first` reads chunks first, first + readers, ...; the
            // writer takes chunk i from reader i % readers, so order holds.
            let (tx, rx) = mpsc::sync_channel::<crate::Result<Chunk>>(2);
            rxs.push(rx);
            let stop = &stop;
            std::thread::Builder::new()
                .name(format!("export-read-{first}"))
                .spawn_scoped(s, move || {
                    let mut i = first;
                    while i < nchunks && !stop.load(Ordering::Relaxed) {
                        let off = i * CHUNK;
                        let len = (size - off).min(CHUNK) as usize;
                        let r = read_chunk(vol, off, len);
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            break;
                        }
                        i += readers;
                    }
                })
                .context("cannot start an export reader thread")?;
        }
        let result = (|| {
            for i in 0..nchunks {
                let off = i * CHUNK;
                let buf = rxs[(i % readers) as usize]
                    .recv()
                    .map_err(|_| anyhow!("export reader thread stopped unexpectedly"))?
                    .with_context(|| format!("cannot read the image at offset {off}"))?;
                out.write_chunk(off, &buf).map_err(|e| {
                    write_error(e, format!("cannot write the output at offset {off}"))
                })?;
                pb.inc(match &buf {
                    Chunk::Data(b) => b.len(),
                    Chunk::Hole(n) => *n,
                } as u64);
            }
            Ok(())
        })();
        // Unblock readers waiting to send before the scope joins them.
        stop.store(true, Ordering::Relaxed);
        drop(rxs);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 1 << 20];
        assert!(is_zero(&b));
        assert!(is_zero(&b[..0]));
        b[(1 << 20) - 1] = 1;
        assert!(!is_zero(&b));
        b[(1 << 20) - 1] = 0;
        b[300] = 0x80;
        assert!(!is_zero(&b[..301]));
        assert!(is_zero(&b[..300]));
    }

    #[test]
    fn nonzero_runs_are_whole_4k_blocks() {
        let mut b = vec![0u8; 5 * 4096 + 100];
        assert_eq!(nonzero_runs(&b).count(), 0);
        b[4096 + 7] = 1; // block 1
        b[2 * 4096] = 1; // block 2
        b[5 * 4096 + 99] = 1; // the short last block
        let runs: Vec<(usize, usize)> = nonzero_runs(&b).map(|(a, r)| (a, r.len())).collect();
        assert_eq!(runs, vec![(4096, 2 * 4096), (5 * 4096, 100)]);
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(1, 4096), 4096);
        assert_eq!(round_up(4096, 4096), 4096);
        assert_eq!(round_up(0, 512), 0);
        assert_eq!(round_up(513, 512), 1024);
    }
}
