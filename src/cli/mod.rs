//! The `lsvd-ublk` command line: image lifecycle (`create`, `info`, `ls`,
//! `rm`, `resize`, `snap`, `clone`, `flatten`), data transfer (`import`,
//! `export`), `gc`, `scrub` and `bench`, modelled on `rbd`; the block device (`attach`,
//! `detach`, `list`, `recover`), the NBD export (`serve-nbd`), who has
//! an image open (`status`), the live view of the servers' metrics
//! (`iostat`) and the NVMe-oF gateway through the kernel's target
//! (`nvmf-export`, `nvmf-unexport`).
//!
//! Everything here is built on the public engine API in [`crate::volume`].
//! Errors are `anyhow` errors carrying context; [`main`] prints the whole
//! cause chain (as one JSON line for a command run with `--json`) and exits
//! with the status its typed error's kind calls for (see [`exit`]: 1 for
//! a failure of no particular kind). Commands that change state print
//! nothing on success (like `rbd`), except `resize`, which says what it did
//! (and whether an attached device followed); `info`, `ls` and `bench`
//! print to stdout.

/// Return early with an `anyhow` error that carries a typed
/// [`crate::error::Error`] of `kind` (whose kind sets the exit status).
macro_rules! fail {
    ($kind:ident, $($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::error::Error::new(
            $crate::error::ErrorKind::$kind,
            format!($($arg)*),
        )))
    };
}

mod bench;
mod device;
mod du;
mod exit;
mod iostat;
mod nbd;
mod nvmf;
mod resize;
mod scrub;
mod snap;
mod status;
mod transfer;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::backend::ObjectStore;
use crate::config::Config;
use crate::units::parse_size;
use crate::volume::image::{self, ImageInfo};
use crate::volume::{ImageSpec, Volume, VolumeOptions};

/// Image sizes must be multiples of this.
pub const SIZE_ALIGN: u64 = 4096;
/// Largest image size accepted by `create` and `import` (1 PiB).
pub const MAX_IMAGE_BYTES: u64 = 1 << 50;

/// Top-level arguments.
#[derive(Debug, Parser)]
#[command(
    name = "lsvd-ublk",
    version,
    about = "Log-structured virtual disk: local journal, large objects in an object store",
    after_help = "Logging: set LSVD_LOG (e.g. LSVD_LOG=debug); default \"warn\", to stderr."
)]
pub struct Cli {
    /// Configuration: a JSON file, or inline JSON if it starts with `{`.
    /// Applied over /usr/local/etc/lsvd.json and ./lsvd.json.
    #[arg(long, global = true, value_name = "PATH|JSON")]
    pub config: Option<String>,

    /// Ceph client id for the rados backend (overrides `ceph_id`), as in
    /// `rbd --id`.
    #[arg(long, global = true, value_name = "ID")]
    pub id: Option<String>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an empty image (and its pool if missing).
    Create {
        /// Image as POOL/IMAGE.
        image: String,
        /// Size, e.g. 10G (a positive multiple of 4K, at most 1P).
        #[arg(long, short = 's', value_parser = parse_size_arg)]
        size: u64,
    },
    /// Show an image's size, identity and storage use.
    Info {
        /// Image as POOL/IMAGE.
        image: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Space use per image and snapshot (store) and per host (journal,
    /// read cache), with pool totals, like `rbd du`; read only.
    Du(du::DuArgs),
    /// List the images in a pool, one per line.
    Ls {
        /// Pool name.
        pool: String,
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Change an image's size, attached or not (a shrink needs
    /// --allow-shrink and discards the tail).
    Resize(resize::ResizeArgs),
    /// Remove an image, its objects and its journal.
    #[command(alias = "remove")]
    Rm {
        /// Image as POOL/IMAGE.
        image: String,
    },
    /// Create an image from a file (sparse-aware; zero chunks are skipped).
    Import(transfer::ImportArgs),
    /// Copy an image to a file or stdout (sparse-aware for regular files).
    Export(transfer::ExportArgs),
    /// Measure client I/O and backend efficiency (like `rbd bench`).
    Bench(bench::BenchArgs),
    /// Garbage-collect a detached image now: clean every object below
    /// `gc_threshold`, delete what is no longer needed, report the result.
    Gc {
        /// Image as POOL/IMAGE.
        image: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read and verify every object, checkpoint and superblock the image
    /// needs (like `ceph pg deep-scrub`); exit status 1 if any is bad.
    Scrub(scrub::ScrubArgs),
    /// Snapshots: create, list, remove (POOL/IMAGE@SNAP).
    #[command(subcommand)]
    Snap(snap::SnapCommand),
    /// Make POOL/CHILD a clone of POOL/IMAGE@SNAP: it reads the snapshot
    /// until written; creating it takes constant time and space.
    Clone {
        /// Parent snapshot as POOL/IMAGE@SNAP.
        snap: String,
        /// New image as POOL/CHILD (same pool).
        child: String,
    },
    /// Copy into a clone everything it still reads from its parent, then
    /// cut the link (the image must not be attached).
    Flatten {
        /// Clone as POOL/IMAGE.
        image: String,
    },
    /// Serve an image as a block device (/dev/ublkbN) and print its path.
    Attach(device::AttachArgs),
    /// Detach a device cleanly: drain, destage, checkpoint, delete it.
    Detach(device::DetachArgs),
    /// List attached devices: image, device, server pid, state and the
    /// device's ublk flags (its mode: user-recovery, reissue, update-size).
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Take over a device whose server died (the file system stays mounted).
    Recover(device::RecoverArgs),
    /// Serve an image over NBD (TCP or a unix socket) in the foreground
    /// until SIGTERM/SIGINT, then close it cleanly. Unauthenticated.
    ServeNbd(nbd::ServeNbdArgs),
    /// Show or break an image's exclusive lock (fencing), or a snapshot's
    /// lock (its readers' shared holds, a `snap rm`'s exclusive one).
    #[command(subcommand)]
    Lock(LockCommand),
    /// Who has an image or any of its snapshots open: ublk devices and NBD
    /// servers of this host, and every holder of its locks in the store
    /// (other hosts too).
    Status(status::StatusArgs),
    /// Export an attached device over NVMe-oF through the kernel's NVMe
    /// target (nvmet); prints the subsystem NQN.
    NvmfExport(nvmf::ExportArgs),
    /// Stop exporting a device (or an NQN) over NVMe-oF.
    NvmfUnexport(nvmf::UnexportArgs),
    /// Live I/O of the running servers (like `rbd perf image iostat`):
    /// per image, requests and bytes per second and mean latency.
    Iostat(iostat::IostatArgs),
}

/// `lock` subcommands.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Show who holds an image's (or a snapshot's) lock.
    Ls {
        /// Image as POOL/IMAGE, or snapshot as POOL/IMAGE@SNAP.
        image: String,
        /// Print one JSON object (the image and its holders) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Break a stale lock: blocklist (fence) each holder's exact address so
    /// it can never write again, then remove its hold (every holder of a
    /// snapshot's lock: its readers, or a `snap rm` that died).
    Break {
        /// Image as POOL/IMAGE, or snapshot as POOL/IMAGE@SNAP.
        image: String,
    },
}

impl Command {
    /// Whether the command was asked for JSON output (`--json`): then a
    /// failure is reported as JSON too.
    fn json(&self) -> bool {
        match self {
            Command::Info { json, .. }
            | Command::Ls { json, .. }
            | Command::Gc { json, .. }
            | Command::List { json }
            | Command::Snap(snap::SnapCommand::Ls { json, .. })
            | Command::Lock(LockCommand::Ls { json, .. }) => *json,
            Command::Scrub(a) => a.json,
            Command::Bench(a) => a.json,
            Command::Status(a) => a.json,
            Command::Du(a) => a.json,
            _ => false,
        }
    }
}

/// Parse the arguments, set up logging, run the command and turn an error
/// into `lsvd-ublk: error: ...` plus its causes on stderr (one JSON line
/// with `--json`) and the exit status of its kind ([`exit::Status`]).
pub fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let json = std::env::args_os().skip(1).any(|a| a == "--json");
        exit::usage_error(e, json)
    });
    // A device server logs its life cycle (attach, recovery, detach).
    let serving = matches!(
        cli.command,
        Command::Attach(_) | Command::Recover(_) | Command::ServeNbd(_)
    );
    // A background server logs to a file: no colour codes there.
    let background = match &cli.command {
        Command::Attach(a) => !a.foreground,
        Command::Recover(a) => !a.foreground,
        _ => false,
    };
    init_logging(
        if serving { "info" } else { "warn" },
        std::io::stderr().is_terminal() && !background,
    );
    let json = cli.command.json();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => exit::report(&e, json).code(),
    };
    // A helper thread of ours may still be inside librados (a connect that
    // timed out, a handle's release): exit without librados' destructors
    // then.
    #[cfg(feature = "rados")]
    crate::backend::rados::client::exit_process(code);
    ExitCode::from(code)
}

/// Log to stderr, filtered by `LSVD_LOG` (default `default`).
fn init_logging(default: &str, ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LSVD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second initialisation (impossible from main) is not worth failing for.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(cli.config.as_deref())?;
    if let Some(id) = cli.id {
        config.ceph_id = id;
        config.validate().context("bad --id")?;
    }
    // Every lock this process takes names the command (`status`, `lock ls`).
    crate::catalog::owner::set_lock_role(command_name(&cli.command), None);
    match cli.command {
        Command::Create { image, size } => cmd_create(&config, &image, size),
        Command::Info { image, json } => cmd_info(&config, &image, json),
        Command::Ls { pool, json } => cmd_ls(&config, &pool, json),
        Command::Du(args) => du::du(&config, &args),
        Command::Rm { image } => cmd_rm(&config, &image),
        Command::Resize(args) => resize::resize(&config, &args),
        Command::Import(args) => transfer::import(&config, &args),
        Command::Export(args) => transfer::export(&config, &args),
        Command::Bench(args) => bench::bench(&config, &args),
        Command::Gc { image, json } => cmd_gc(&config, &image, json),
        Command::Scrub(args) => scrub::scrub(&config, &args),
        Command::Snap(cmd) => snap::cmd_snap(&config, &cmd),
        Command::Clone { snap, child } => snap::cmd_clone(&config, &snap, &child),
        Command::Flatten { image } => snap::cmd_flatten(&config, &image),
        Command::Attach(args) => device::attach(&config, &args),
        Command::Detach(args) => device::detach(&args),
        Command::List { json } => device::list(json),
        Command::Recover(args) => device::recover(&args),
        Command::ServeNbd(args) => nbd::serve_nbd(&config, &args),
        Command::Lock(LockCommand::Ls { image, json }) => cmd_lock_ls(&config, &image, json),
        Command::Lock(LockCommand::Break { image }) => cmd_lock_break(&config, &image),
        Command::Status(args) => status::status(&config, &args),
        Command::NvmfExport(args) => nvmf::export(&args),
        Command::NvmfUnexport(args) => nvmf::unexport(&args),
        Command::Iostat(args) => iostat::iostat(&args),
    }
}

/// The command's name as typed (the role its locks name).
fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Create { .. } => "create",
        Command::Info { .. } => "info",
        Command::Ls { .. } => "ls",
        Command::Resize(_) => "resize",
        Command::Rm { .. } => "rm",
        Command::Import(_) => "import",
        Command::Export(_) => "export",
        Command::Bench(_) => "bench",
        Command::Gc { .. } => "gc",
        Command::Scrub(_) => "scrub",
        Command::Snap(_) => "snap",
        Command::Clone { .. } => "clone",
        Command::Flatten { .. } => "flatten",
        Command::Attach(_) => "attach",
        Command::Detach(_) => "detach",
        Command::List { .. } => "list",
        Command::Recover(_) => "recover",
        Command::ServeNbd(_) => "serve-nbd",
        Command::Lock(_) => "lock",
        Command::Status(_) => "status",
        Command::NvmfExport(_) => "nvmf-export",
        Command::NvmfUnexport(_) => "nvmf-unexport",
        Command::Du(_) => "du",
        Command::Iostat(_) => "iostat",
    }
}

/// `lock ls POOL/IMAGE[@SNAP] [--json]`.
fn cmd_lock_ls(config: &Config, image: &str, json: bool) -> anyhow::Result<()> {
    let (store, spec, lock) = lock_target(config, image)?;
    let holders = store
        .lock_holders(&lock)
        .with_context(|| format!("cannot list the lock holders of {spec}"))?;
    if json {
        let v = serde_json::json!({ "image": spec.to_string(), "holders": holders });
        return print_stdout(&v.to_string());
    }
    let mut out = String::new();
    if holders.is_empty() {
        out.push_str(&format!("{spec}: not locked\n"));
    }
    for h in holders {
        out.push_str(&format!("{spec}: locked by {h}\n"));
    }
    print_stdout(out.trim_end())
}

/// `lock break POOL/IMAGE[@SNAP]`.
fn cmd_lock_break(config: &Config, image: &str) -> anyhow::Result<()> {
    let (store, spec, lock) = lock_target(config, image)?;
    let broken = store
        .break_lock(&lock)
        .with_context(|| format!("cannot break the lock of {spec}"))?;
    let mut out = String::new();
    if broken.is_empty() {
        out.push_str(&format!("{spec}: not locked; nothing to break\n"));
    }
    for b in broken {
        out.push_str(&format!("{spec}: fenced and unlocked {b}\n"));
    }
    print_stdout(out.trim_end())
}

/// The store, the name as given back in messages, and the lock name of a
/// `lock` command's argument: `POOL/IMAGE` names the image's exclusive lock
/// (the image must exist), `POOL/IMAGE@SNAP` the lock its snapshot's
/// readers hold shared and `snap rm` exclusively. A snapshot no longer in
/// the superblock is accepted while its lock still has holders (what a
/// `snap rm` that died after removing it leaves on RADOS).
fn lock_target(
    config: &Config,
    arg: &str,
) -> anyhow::Result<(Arc<dyn ObjectStore>, String, String)> {
    let (spec, snap) = snap::parse_snap_spec(arg, false)?;
    let store = store_for(config, &spec.pool, false)?;
    let sb = image::read_superblock(store.as_ref(), &spec.image)?;
    let Some(snap) = snap else {
        return Ok((store, spec.to_string(), spec.image));
    };
    let lock = crate::volume::snapshot::snapshot_lock_name(&spec.image, &snap);
    if sb.snapshot(&snap).is_none() && store.lock_holders(&lock)?.is_empty() {
        fail!(NotFound, "image {spec} has no snapshot '{snap}'");
    }
    Ok((store, format!("{spec}@{snap}"), lock))
}

/// Load the layered configuration with `--config` on top.
fn load_config(arg: Option<&str>) -> anyhow::Result<Config> {
    Config::load(arg).context("cannot load configuration")
}

/// clap value parser for size arguments (`10G`, `4096`, ...).
fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

/// Parse `POOL/IMAGE`, naming the argument in the error.
fn parse_spec(s: &str) -> anyhow::Result<ImageSpec> {
    ImageSpec::parse(s).with_context(|| format!("bad image name '{s}' (expected POOL/IMAGE)"))
}

/// Check an image size: positive, a multiple of 4096, at most 1 PiB.
pub fn check_image_size(size: u64) -> anyhow::Result<()> {
    if size == 0 {
        fail!(
            InvalidInput,
            "size 0 is not allowed: an image size must be positive (a multiple of {SIZE_ALIGN})"
        );
    }
    if !size.is_multiple_of(SIZE_ALIGN) {
        fail!(
            InvalidInput,
            "size {size} is not a multiple of {SIZE_ALIGN}"
        );
    }
    if size > MAX_IMAGE_BYTES {
        fail!(
            InvalidInput,
            "size {size} ({}) is absurd: the limit is 1P ({MAX_IMAGE_BYTES} bytes)",
            human_bytes(size)
        );
    }
    Ok(())
}

/// Open the store of `spec`'s pool.
fn store_for(config: &Config, pool: &str, create: bool) -> anyhow::Result<Arc<dyn ObjectStore>> {
    image::open_store(config, pool, create).with_context(|| format!("cannot open pool '{pool}'"))
}

/// Open `spec` as a [`Volume`], creating the journal directory if needed.
fn open_volume(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    spec: &ImageSpec,
) -> anyhow::Result<Volume> {
    let journal_path = spec.journal_path(config);
    if let Some(dir) = journal_path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create journal directory {}", dir.display()))?;
    }
    // The volume names its read cache `<rcache_dir>/<image>.rcache`;
    // scoped per pool here, as the journal is.
    let mut config = config.clone();
    config.rcache_dir = config.rcache_dir.join(&spec.pool);
    Volume::open(VolumeOptions {
        config,
        store,
        image: spec.image.clone(),
        journal_path,
        io_log: None,
    })
    .with_context(|| format!("cannot open image {spec}"))
}

/// Run `f` on the opened image `vol`, then close it cleanly (also after
/// an error, which comes back with `context`).
fn with_volume<T>(
    vol: Volume,
    spec: &ImageSpec,
    f: impl FnOnce(&Volume) -> crate::error::Result<T>,
    context: &str,
) -> anyhow::Result<T> {
    let r = f(&vol);
    let closed = vol
        .close()
        .with_context(|| format!("cannot close image {spec}"));
    let t = r.with_context(|| context.to_string())?;
    closed?;
    Ok(t)
}

/// `create POOL/IMAGE --size N`.
fn cmd_create(config: &Config, image: &str, size: u64) -> anyhow::Result<()> {
    let spec = parse_spec(image)?;
    check_image_size(size)?;
    let store = store_for(config, &spec.pool, true)?;
    image::create_image(store.as_ref(), &spec.image, size)
        .with_context(|| format!("cannot create image {spec}"))?;
    Ok(())
}

/// `info POOL/IMAGE [--json]`.
fn cmd_info(config: &Config, image: &str, json: bool) -> anyhow::Result<()> {
    let spec = parse_spec(image)?;
    let store = store_for(config, &spec.pool, false)?;
    let mut info = image::image_info(store.as_ref(), &spec)
        .with_context(|| format!("cannot read image {spec}"))?;
    let uuid = image::read_superblock(store.as_ref(), &spec.image)
        .with_context(|| format!("cannot read image {spec}"))?
        .uuid;
    let cache_path = spec.rcache_path(config);
    match crate::cache::Cache::inspect(&cache_path, uuid) {
        Ok(c) => info.cache = c,
        // A user who may only read the store need not read the cache.
        Err(e) if e.kind() == crate::error::ErrorKind::PermissionDenied => {
            info.cache_unreadable = Some(format!("{e:?}"));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the read cache {}", cache_path.display()))
        }
    }
    // Who has it open. Only an image not marked clean can be (an open
    // marks it dirty first), and a clean one is not probed: the dir
    // store's look at a lock could make an opener racing with it see the
    // lock held for an instant.
    if !info.clean {
        match store.lock_holders(&spec.image) {
            Ok(h) => info.open_by = h,
            // A user who may only read the store still gets the rest.
            Err(e) if e.kind() == crate::error::ErrorKind::PermissionDenied => {
                tracing::warn!("cannot tell who has {spec} open: {e}");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list the lock holders of {spec}"))
            }
        }
    }
    info.object_bytes = config.backend_obj_bytes;
    info.journal = Some(journal_file(&spec.journal_path(config))?);
    let text = if json {
        serde_json::to_string_pretty(&info).context("cannot encode image info as JSON")?
    } else {
        format_info(&info)
    };
    print_stdout(&text)
}

/// The journal line of `info`: its path on this host and length, if there.
fn journal_file(path: &std::path::Path) -> anyhow::Result<image::JournalFile> {
    let bytes = match std::fs::metadata(path) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    Ok(image::JournalFile {
        path: path.display().to_string(),
        bytes,
    })
}

/// The journal, object size, format and feature lines of `info`.
fn format_layout(info: &ImageInfo) -> String {
    let journal = match &info.journal {
        Some(image::JournalFile {
            path,
            bytes: Some(n),
        }) => format!("{path} ({}, {n} bytes)", human_bytes(*n)),
        Some(image::JournalFile { path, bytes: None }) => format!("{path} (none on this host)"),
        None => "unknown".to_owned(),
    };
    format!(
        "\n\tjournal {journal}\n\tobject size {} ({} bytes)\n\tformat version {}\n\tfeatures 0x{:x} ({})",
        human_bytes(info.object_bytes),
        info.object_bytes,
        info.format_version,
        info.features,
        if info.feature_names.is_empty() {
            "none".to_owned()
        } else {
            info.feature_names.join(", ")
        }
    )
}

/// The human-readable form of `info`.
fn format_info(info: &ImageInfo) -> String {
    let checkpoints = if info.checkpoints.is_empty() {
        "none".to_owned()
    } else {
        info.checkpoints
            .iter()
            .map(|c| format!("{c:016x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "image '{}':\n\tsize {} ({} bytes)\n\tuuid {}\n\tclean {}\n\tobjects {} ({} stored)\n\tcheckpoints {}\n\tcreated {}",
        info.name,
        human_bytes(info.size_bytes),
        info.size_bytes,
        info.uuid,
        status::clean_text(info),
        info.objects,
        human_bytes(info.stored_bytes),
        checkpoints,
        format_unix_utc(info.created_unix),
    ) + &format_layout(info) + &match &info.cache {
        None => match &info.cache_unreadable {
            Some(why) => format!("\n\tread cache not readable ({why})"),
            None => "\n\tread cache none".to_owned(),
        },
        Some(c) if !c.formatted || !c.owner_match => format!(
            "\n\tread cache {} ({}; discarded at the next open)",
            c.path,
            if c.formatted { "another image's" } else { "not formatted" }
        ),
        Some(c) => format!(
            "\n\tread cache {}: {} of {} chunks ({} hits, {} misses, {} evictions, {} corrupt)",
            c.path, c.valid_chunks, c.chunks, c.counters.hits, c.counters.misses,
            c.counters.evictions, c.counters.corrupt
        ),
    } + &format_lineage(info)
}

/// The snapshot and parent lines of `info`.
fn format_lineage(info: &ImageInfo) -> String {
    let mut out = String::new();
    if !info.parents.is_empty() {
        out.push_str(&format!("\n\tparent {}", info.parents.join(" <- ")));
    }
    if info.snapshots.is_empty() {
        out.push_str("\n\tsnapshots none");
    }
    for s in &info.snapshots {
        out.push_str(&format!(
            "\n\tsnapshot {} ({}, {}{}){}",
            s.name,
            human_bytes(s.size_bytes),
            format_unix_utc(s.created_unix),
            if s.removing { ", being removed" } else { "" },
            if s.clones.is_empty() {
                String::new()
            } else {
                format!(" clones: {}", s.clones.join(", "))
            }
        ));
    }
    out
}

/// `gc POOL/IMAGE [--json]`: open (which refuses an attached image through
/// its lock), run GC without a rate limit, close cleanly.
fn cmd_gc(config: &Config, image: &str, json: bool) -> anyhow::Result<()> {
    let spec = parse_spec(image)?;
    let store = store_for(config, &spec.pool, false)?;
    let mut config = config.clone();
    // The forced run does the work; no background thread besides it.
    config.no_gc = true;
    let vol = open_volume(&config, store, &spec)?;
    let report = with_volume(vol, &spec, |v| v.gc_now(), &format!("GC of {spec} failed"))?;
    let text = if json {
        serde_json::to_string_pretty(&report).context("cannot encode the GC report as JSON")?
    } else {
        format!(
            "image '{}': cleaned {} objects, copied {}, deleted {} objects, freed {}",
            spec.image,
            report.objects_cleaned,
            human_bytes(report.bytes_copied),
            report.objects_deleted,
            human_bytes(report.bytes_freed),
        )
    };
    print_stdout(&text)
}

/// `ls POOL [--json]`.
fn cmd_ls(config: &Config, pool: &str, json: bool) -> anyhow::Result<()> {
    let store = store_for(config, pool, false)?;
    let names = image::list_images(store.as_ref())
        .with_context(|| format!("cannot list images in pool '{pool}'"))?;
    let text = if json {
        serde_json::to_string(&names).context("cannot encode image list as JSON")?
    } else {
        names.join("\n")
    };
    print_stdout(&text)
}

/// `rm POOL/IMAGE`.
fn cmd_rm(config: &Config, image: &str) -> anyhow::Result<()> {
    let spec = parse_spec(image)?;
    let store = store_for(config, &spec.pool, false)?;
    let journal: PathBuf = spec.journal_path(config);
    image::remove_image(store.as_ref(), &spec.image, Some(&journal))
        .with_context(|| format!("cannot remove image {spec}"))?;
    let cache = spec.rcache_path(config);
    match std::fs::remove_file(&cache) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove read cache {}", cache.display())),
    }
}

/// Print `text` and a newline (nothing for empty text) to stdout. A reader
/// that has gone (`lsvd-ublk ls pool | head -1`: `EPIPE`) is a normal end:
/// it has read what it wanted, so that is no error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if exit::is_broken_pipe(&e) => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// `10 GiB`, `1.5 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn format_unix_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sizes_are_checked() {
        assert!(check_image_size(4096).is_ok());
        assert!(check_image_size(MAX_IMAGE_BYTES).is_ok());
        let m = check_image_size(0).unwrap_err().to_string();
        assert!(m.contains("size 0"), "{m}");
        let m = check_image_size(1000).unwrap_err().to_string();
        assert_eq!(m, "invalid input: size 1000 is not a multiple of 4096");
        let m = check_image_size(10 << 50).unwrap_err().to_string();
        assert!(m.contains("absurd") && m.contains("1P"), "{m}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(10 << 30), "10 GiB");
        assert_eq!(human_bytes(1536 << 10), "1.50 MiB");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_unix_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["lsvd-ublk", "create", "p/i", "--size", "10G"]).unwrap();
        assert!(matches!(cli.command, Command::Create { size, .. } if size == 10 << 30));
        let cli = Cli::try_parse_from(["lsvd-ublk", "ls", "p", "--config", "{}"]).unwrap();
        assert_eq!(cli.config.as_deref(), Some("{}"));
        assert!(Cli::try_parse_from(["lsvd-ublk", "create", "p/i", "--size", "12X"]).is_err());
        let cli = Cli::try_parse_from(["lsvd-ublk", "resize", "p/i", "-s", "2G", "--allow-shrink"])
            .unwrap();
        assert!(matches!(cli.command, Command::Resize(a) if a.size == 2 << 30 && a.allow_shrink));
    }
}
