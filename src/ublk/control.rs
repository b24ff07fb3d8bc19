//! The control channel of a device server: one unix socket per attached
//! device, `<run dir>/ublkb<N>.sock` (mode 0600: root only), created by the
//! server once the device is live and removed when it exits. It is runtime
//! state like the device records ([`super::registry`]), not a persistent
//! format.
//!
//! Protocol: line-delimited JSON. A client sends one [`Control`] request per
//! line and reads one [`Reply`] line for each, in order; a connection may
//! carry any number of requests. Requests are handled one at a time by the
//! server's `lsvd-control` thread, whatever connection they come on.
//!
//! ```text
//! > {"op":"resize","size":21474836480,"allow_shrink":false}
//! < {"status":"resized","old_size":10737418240,"new_size":21474836480,"device_size":10737418240,"message":"resized from ..."}
//! > {"op":"nosuch"}
//! < {"status":"error","error":"bad request: unknown variant `nosuch`, ..."}
//! ```
//!
//! New requests are new variants of [`Control`] (and, where they report
//! something of their own, of [`Reply`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::volume::Volume;

/// How long a connection may stay silent before the server drops it (so a
/// stuck client cannot hold the channel).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the accept loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Longest request line accepted.
const MAX_LINE: u64 = 64 << 10;

/// A request to a device server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// Change the image's size to `size` bytes (and the device's, where the
    /// driver can). A shrink needs `allow_shrink`.
    Resize {
        /// New size in bytes.
        size: u64,
        /// Allow a smaller size (the tail is discarded).
        #[serde(default)]
        allow_shrink: bool,
    },
    /// Take snapshot `name` of the attached image (every write acknowledged
    /// before the request is in it).
    SnapCreate {
        /// Snapshot name.
        name: String,
    },
    /// Remove snapshot `name` (refused while clones depend on it).
    SnapRemove {
        /// Snapshot name.
        name: String,
    },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The image has `new_size` bytes now (`old_size` if nothing changed).
    Resized {
        /// Image size before, bytes.
        old_size: u64,
        /// Image size now, bytes.
        new_size: u64,
        /// The block device's size now, bytes (smaller than `new_size`
        /// when the driver cannot resize a live device).
        device_size: u64,
        /// What happened, for the user, to follow `image POOL/IMAGE `
        /// (the server knows the image only by its name in the pool).
        message: String,
    },
    /// A snapshot request succeeded.
    Done {
        /// What happened, for the user.
        message: String,
    },
    /// The request failed; nothing or part of it was done, as `error` says.
    Error {
        /// What went wrong, with its causes.
        error: String,
    },
}

impl Reply {
    fn error(e: impl std::fmt::Display) -> Reply {
        Reply::Error {
            error: e.to_string(),
        }
    }
}

/// `e` and its causes, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(&format!(": {c}"));
        cur = c.source();
    }
    text
}

/// The kernel's side of a live resize: the block device's size. A trait so
/// that [`handle`] can be tested without a kernel.
pub trait DeviceSize: Send + Sync {
    /// The device path, for messages.
    fn path(&self) -> String;
    /// The device's size in bytes as the kernel has it now.
    fn size(&self) -> Result<u64>;
    /// Whether the driver can change a live device's size
    /// (`UBLK_F_UPDATE_SIZE`, Linux 6.16 and later).
    fn can_resize(&self) -> bool;
    /// Set the device's size in bytes.
    fn set_size(&self, bytes: u64) -> Result<()>;
}

/// Handle one request for the server of `volume` on device `dev`.
pub fn handle(volume: &Volume, dev: &dyn DeviceSize, req: Control) -> Reply {
    match req {
        Control::Resize { size, allow_shrink } => {
            resize(volume, dev, size, allow_shrink).unwrap_or_else(|e| Reply::error(chain(&e)))
        }
        Control::SnapCreate { name } => match volume.snapshot_create(&name) {
            Ok(s) => Reply::Done {
                message: format!(
                    "@{} created ({} bytes, up to object {})",
                    s.name, s.size_bytes, s.last_obj.0
                ),
            },
            Err(e) => Reply::error(chain(&e)),
        },
        Control::SnapRemove { name } => match volume.snapshot_remove(&name) {
            Ok(()) => Reply::Done {
                message: format!("@{name} removed"),
            },
            Err(e) => Reply::error(chain(&e)),
        },
    }
}

/// A live resize. The device is never left bigger than the image:
/// - shrink below the device's size: the device shrinks first (so the
///   kernel sends nothing beyond the new end), then the image; without
///   `UBLK_F_UPDATE_SIZE` this is refused, since a device bigger than its
///   image would fail I/O past the image's end under a user who believes
///   it is there;
/// - grow: the image grows first (its superblock is durable before
///   anything beyond the old end is accepted, ordering 26), then the
///   device if the driver can; otherwise the device keeps its size until
///   the image is attached again, which is safe (the device is smaller).
fn resize(volume: &Volume, dev: &dyn DeviceSize, size: u64, allow_shrink: bool) -> Result<Reply> {
    volume.check_resize(size, allow_shrink)?;
    let old = volume.size_bytes();
    let name = volume.name().to_string();
    let path = dev.path();
    let dev_size = dev.size()?;
    if size == old {
        return Ok(Reply::Resized {
            old_size: old,
            new_size: old,
            device_size: dev_size,
            message: format!("is already {size} bytes: nothing to do"),
        });
    }
    let mut device_size = dev_size;
    if size < dev_size {
        if !dev.can_resize() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "cannot shrink attached image {name} to {size} bytes: {path} has {dev_size} \
                     bytes and this kernel's ublk driver cannot shrink a live device \
                     (UBLK_F_UPDATE_SIZE, Linux 6.16 and later); detach the image, resize it, \
                     attach it again"
                ),
            ));
        }
        dev.set_size(size)
            .map_err(|e| e.prefixed(format!("cannot shrink {path} to {size} bytes")))?;
        device_size = size;
        volume.resize(size, allow_shrink).map_err(|e| {
            e.prefixed(format!(
                "{path} was shrunk to {size} bytes, but the image kept {old} bytes \
                 (safe: the device is the smaller); retry the resize"
            ))
        })?;
        let message = format!("shrunk from {old} to {size} bytes, and so was {path}");
        return Ok(Reply::Resized {
            old_size: old,
            new_size: size,
            device_size,
            message,
        });
    }
    volume.resize(size, allow_shrink)?;
    let mut message = format!("resized from {old} to {size} bytes");
    if size > dev_size {
        if dev.can_resize() {
            match dev.set_size(size) {
                Ok(()) => {
                    device_size = size;
                    message.push_str(&format!("; {path} now has {size} bytes"));
                }
                Err(e) => message.push_str(&format!(
                    "; {path} keeps its size of {dev_size} bytes until the image is attached \
                     again (detach, attach): resizing the device failed: {e}"
                )),
            }
        } else {
            message.push_str(&format!(
                "; {path} keeps its size of {dev_size} bytes until the image is attached again \
                 (detach, attach): this kernel's ublk driver cannot resize a live device \
                 (UBLK_F_UPDATE_SIZE, Linux 6.16 and later)"
            ));
        }
    }
    Ok(Reply::Resized {
        old_size: old,
        new_size: size,
        device_size,
        message,
    })
}

/// Decode one request line and handle it.
pub fn handle_line(line: &str, handler: &dyn Fn(Control) -> Reply) -> Reply {
    match serde_json::from_str::<Control>(line) {
        Ok(req) => handler(req),
        Err(e) => Reply::error(format!("bad request: {e}")),
    }
}

/// The server side: a thread serving the socket until dropped.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Bind `path` (replacing a stale socket a dead server left) and serve
    /// requests with `handler` on a thread named `lsvd-control`.
    pub fn start(
        path: &Path,
        handler: impl Fn(Control) -> Reply + Send + 'static,
    ) -> Result<ControlServer> {
        let io = |what: &str, e| Error::io(format!("{what} control socket {}", path.display()), e);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove the stale", e)),
        }
        let listener = UnixListener::bind(path).map_err(|e| io("cannot bind the", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("cannot restrict the", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lsvd-control".into())
            .spawn(move || serve(listener, &handler, &stop2))
            .map_err(|e| Error::io("spawn thread lsvd-control", e))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `fd` is readable within `d` (an error counts as readable, so the
/// caller's next call reports it).
fn readable(fd: &impl AsRawFd, d: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, d.as_millis() as libc::c_int) };
    r != 0
}

/// Accept connections and answer their requests until `stop`.
fn serve(listener: UnixListener, handler: &dyn Fn(Control) -> Reply, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if !readable(&listener, POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = connection(stream, handler, stop) {
                    tracing::warn!("control connection: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Answer the requests of one connection until it closes, falls silent for
/// [`IDLE_TIMEOUT`], or the server stops.
fn connection(
    stream: UnixStream,
    handler: &dyn Fn(Control) -> Reply,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut idle = Duration::ZERO;
    let mut reader = BufReader::new(stream);
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if reader.buffer().is_empty() && !readable(reader.get_ref(), POLL) {
            idle += POLL;
            if idle >= IDLE_TIMEOUT {
                return Ok(());
            }
            continue;
        }
        idle = Duration::ZERO;
        reader.get_ref().set_read_timeout(Some(IDLE_TIMEOUT))?;
        let mut line = String::new();
        let n = (&mut reader).take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if !line.ends_with('\n') && n as u64 == MAX_LINE {
            Reply::error(format!("bad request: longer than {MAX_LINE} bytes"))
        } else {
            handle_line(line.trim(), handler)
        };
        let mut text = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
        text.push('\n');
        out.write_all(text.as_bytes())?;
        if matches!(reply, Reply::Error { .. }) && !line.ends_with('\n') {
            // The rest of an overlong line would be read as requests.
            return Ok(());
        }
    }
}

/// The client side: send `req` to the server listening on `path` and wait
/// up to `timeout` for its reply.
pub fn request(path: &Path, req: &Control, timeout: Duration) -> Result<Reply> {
    let io = |what: &str, e| Error::io(format!("{what} control socket {}", path.display()), e);
    let mut stream = UnixStream::connect(path).map_err(|e| io("cannot connect to the", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| io("cannot set a timeout on the", e))?;
    let mut text = serde_json::to_string(req)
        .map_err(|e| Error::with_source(ErrorKind::InvalidInput, "cannot encode request", e))?;
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .map_err(|e| io("cannot write to the", e))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(MAX_LINE)
        .read_line(&mut line)
        .map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no reply on control socket {} within {} s (the server may still be \
                         working on it; see its log)",
                        path.display(),
                        timeout.as_secs()
                    ),
                )
            } else {
                io("cannot read from the", e)
            }
        })?;
    if line.is_empty() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "the server closed control socket {} without a reply",
                path.display()
            ),
        ));
    }
    serde_json::from_str(line.trim()).map_err(|e| {
        Error::with_source(
            ErrorKind::Corrupt,
            format!("bad reply on control socket {}", path.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::{MemStore, ObjectStore};
    use crate::config::Config;
    use crate::volume::image::create_image;
    use crate::volume::VolumeOptions;

    const MIB: u64 = 1 << 20;

    /// A block device in memory: its size, whether it "has"
    /// UPDATE_SIZE, whether setting fails, and the image's size at each
    /// set (to check the order of device and image changes).
    struct FakeDevice {
        size: Mutex<u64>,
        can: bool,
        fail: bool,
        volume: Mutex<Option<Arc<Volume>>>,
        sets: Mutex<Vec<(u64, u64)>>,
    }

    impl FakeDevice {
        fn new(size: u64, can: bool) -> FakeDevice {
            FakeDevice {
                size: Mutex::new(size),
                can,
                fail: false,
                volume: Mutex::new(None),
                sets: Mutex::new(Vec::new()),
            }
        }
        fn size_now(&self) -> u64 {
            *self.size.lock().unwrap()
        }
    }

    impl DeviceSize for FakeDevice {
        fn path(&self) -> String {
            "/dev/ublkb9".into()
        }
        fn size(&self) -> Result<u64> {
            Ok(self.size_now())
        }
        fn can_resize(&self) -> bool {
            self.can
        }
        fn set_size(&self, bytes: u64) -> Result<()> {
            let image = self.volume.lock().unwrap().as_ref().map(|v| v.size_bytes());
            self.sets.lock().unwrap().push((bytes, image.unwrap_or(0)));
            if self.fail {
                return Err(Error::new(ErrorKind::Io, "UPDATE_SIZE failed (test)"));
            }
            *self.size.lock().unwrap() = bytes;
            Ok(())
        }
    }

    fn volume(size: u64) -> (tempfile::TempDir, Arc<Volume>) {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        create_image(store.as_ref(), "img", size).unwrap();
        let config = Config {
            backend_obj_bytes: 256 << 10,
            wlog_chunk_bytes: 64 << 10,
            wlog_bytes: 4 << 20,
            flush_msec: 20,
            no_gc: true,
            no_rcache: true,
            rcache_dir: dir.path().join("rcache"),
            ..Config::default()
        };
        let v = Volume::open(VolumeOptions {
            config,
            store,
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        })
        .unwrap();
        (dir, Arc::new(v))
    }

    fn close(v: Arc<Volume>) {
        Arc::try_unwrap(v).ok().unwrap().close().unwrap();
    }

    fn resize(size: u64, allow_shrink: bool) -> Control {
        Control::Resize { size, allow_shrink }
    }

    fn message(r: &Reply) -> &str {
        match r {
            Reply::Resized { message, .. } | Reply::Done { message } => message,
            Reply::Error { error } => error,
        }
    }

    #[test]
    fn grow_without_update_size_keeps_the_device_and_says_so() {
        let (_d, v) = volume(4 * MIB);
        let dev = FakeDevice::new(4 * MIB, false);
        let r = handle(&v, &dev, resize(8 * MIB, false));
        assert!(
            matches!(r, Reply::Resized { old_size, new_size, device_size, .. }
                if old_size == 4 * MIB && new_size == 8 * MIB && device_size == 4 * MIB),
            "{r:?}"
        );
        let m = message(&r);
        assert!(
            m.contains("keeps its size of 4194304 bytes") && m.contains("detach, attach"),
            "{m}"
        );
        assert_eq!(v.size_bytes(), 8 * MIB);
        assert!(dev.sets.lock().unwrap().is_empty());
        // The image grew: I/O past the device's end works on the volume.
        v.write(6 * MIB, &[5u8; 4096]).unwrap();
        // Shrinking back to no less than the device's size needs no
        // UPDATE_SIZE: the device stays the smaller.
        let r = handle(&v, &dev, resize(6 * MIB, true));
        assert!(
            matches!(r, Reply::Resized { new_size, .. } if new_size == 6 * MIB),
            "{r:?}"
        );
        assert_eq!((v.size_bytes(), dev.size_now()), (6 * MIB, 4 * MIB));
        close(v);
    }

    #[test]
    fn grow_with_update_size_resizes_the_device_after_the_image() {
        let (_d, v) = volume(4 * MIB);
        let dev = FakeDevice::new(4 * MIB, true);
        *dev.volume.lock().unwrap() = Some(v.clone());
        let r = handle(&v, &dev, resize(8 * MIB, false));
        assert!(
            matches!(r, Reply::Resized { device_size, .. } if device_size == 8 * MIB),
            "{r:?}"
        );
        assert!(message(&r).contains("now has 8388608 bytes"), "{r:?}");
        // The image was already bigger when the device grew.
        assert_eq!(*dev.sets.lock().unwrap(), vec![(8 * MIB, 8 * MIB)]);
        *dev.volume.lock().unwrap() = None;
        close(v);
    }

    #[test]
    fn failed_device_grow_still_grows_the_image() {
        let (_d, v) = volume(4 * MIB);
        let mut dev = FakeDevice::new(4 * MIB, true);
        dev.fail = true;
        let r = handle(&v, &dev, resize(8 * MIB, false));
        let m = message(&r);
        assert!(
            matches!(r, Reply::Resized { device_size, .. } if device_size == 4 * MIB)
                && m.contains("UPDATE_SIZE failed")
                && m.contains("until the image is attached again"),
            "{r:?}"
        );
        assert_eq!(v.size_bytes(), 8 * MIB);
        close(v);
    }

    #[test]
    fn shrink_needs_the_flag_and_a_driver_that_can_shrink_the_device() {
        let (_d, v) = volume(8 * MIB);
        let dev = FakeDevice::new(8 * MIB, false);
        let r = handle(&v, &dev, resize(4 * MIB, false));
        let m = message(&r);
        assert!(matches!(r, Reply::Error { .. }), "{r:?}");
        assert!(
            m.contains("--allow-shrink") && m.contains("8388608") && m.contains("4194304"),
            "{m}"
        );
        let r = handle(&v, &dev, resize(4 * MIB, true));
        let m = message(&r);
        assert!(matches!(r, Reply::Error { .. }), "{r:?}");
        assert!(
            m.contains("UBLK_F_UPDATE_SIZE") && m.contains("detach"),
            "{m}"
        );
        assert_eq!((v.size_bytes(), dev.size_now()), (8 * MIB, 8 * MIB));
        // Bad sizes, and the same size.
        let r = handle(&v, &dev, resize(1000, true));
        assert!(message(&r).contains("multiple of 4096"), "{r:?}");
        let r = handle(&v, &dev, resize(8 * MIB, false));
        assert!(message(&r).contains("nothing to do"), "{r:?}");
        close(v);
    }

    #[test]
    fn shrink_with_update_size_shrinks_the_device_first() {
        let (_d, v) = volume(8 * MIB);
        v.write(7 * MIB, &[9u8; 4096]).unwrap();
        let dev = FakeDevice::new(8 * MIB, true);
        *dev.volume.lock().unwrap() = Some(v.clone());
        let r = handle(&v, &dev, resize(4 * MIB, true));
        assert!(
            matches!(r, Reply::Resized { new_size, device_size, .. }
                if new_size == 4 * MIB && device_size == 4 * MIB),
            "{r:?}"
        );
        // The device shrank while the image still had its old size.
        assert_eq!(*dev.sets.lock().unwrap(), vec![(4 * MIB, 8 * MIB)]);
        // A failing device shrink changes nothing.
        let mut failing = FakeDevice::new(4 * MIB, true);
        failing.fail = true;
        let r = handle(&v, &failing, resize(2 * MIB, true));
        assert!(message(&r).contains("cannot shrink /dev/ublkb9"), "{r:?}");
        assert_eq!(v.size_bytes(), 4 * MIB);
        // Grown back, the discarded tail reads as zeros.
        let r = handle(&v, &dev, resize(8 * MIB, false));
        assert!(matches!(r, Reply::Resized { .. }), "{r:?}");
        let mut b = vec![1u8; 4096];
        v.read(7 * MIB, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        *dev.volume.lock().unwrap() = None;
        close(v);
    }

    #[test]
    fn requests_and_replies_round_trip_as_json_lines() {
        let req: Control = serde_json::from_str(r#"{"op":"resize","size":4096}"#).unwrap();
        assert_eq!(req, resize(4096, false));
        assert_eq!(
            serde_json::to_string(&resize(8192, true)).unwrap(),
            r#"{"op":"resize","size":8192,"allow_shrink":true}"#
        );
        let never = |_: Control| -> Reply { panic!("not a valid request") };
        for bad in [
            "",
            "{}",
            "not json",
            r#"{"op":"nosuch"}"#,
            r#"{"op":"resize"}"#,
            r#"{"op":"resize","size":4096,"extra":1}"#,
        ] {
            let r = handle_line(bad, &never);
            assert!(message(&r).starts_with("bad request"), "{bad}: {r:?}");
            let text = serde_json::to_string(&r).unwrap();
            assert!(text.starts_with(r#"{"status":"error","error":"#), "{text}");
        }
    }

    #[test]
    fn snapshots_of_the_served_image() {
        let (_d, v) = volume(4 * MIB);
        let dev = FakeDevice::new(4 * MIB, false);
        v.write(0, &[7u8; 4096]).unwrap();
        let req: Control = serde_json::from_str(r#"{"op":"snap_create","name":"s1"}"#).unwrap();
        let r = handle(&v, &dev, req);
        assert!(
            matches!(&r, Reply::Done { message } if message.starts_with("@s1 created")),
            "{r:?}"
        );
        assert_eq!(v.snapshots()[0].name, "s1");
        let r = handle(&v, &dev, Control::SnapCreate { name: "s1".into() });
        assert!(message(&r).contains("already exists"), "{r:?}");
        let r = handle(&v, &dev, Control::SnapCreate { name: "a b".into() });
        assert!(message(&r).contains("contains ' '"), "{r:?}");
        let r = handle(&v, &dev, Control::SnapRemove { name: "s1".into() });
        assert!(matches!(&r, Reply::Done { .. }), "{r:?}");
        let r = handle(&v, &dev, Control::SnapRemove { name: "s1".into() });
        assert!(message(&r).contains("no snapshot 's1'"), "{r:?}");
        close(v);
    }

    #[test]
    fn socket_serves_requests_then_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ublkb9.sock");
        // A stale socket file is replaced.
        std::fs::write(&path, b"stale").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let server = ControlServer::start(&path, move |req| {
            seen2.lock().unwrap().push(req.clone());
            match req {
                Control::Resize { size, .. } => Reply::Resized {
                    old_size: 4096,
                    new_size: size,
                    device_size: 4096,
                    message: "ok".into(),
                },
                _ => Reply::error("not in this test"),
            }
        })
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = Duration::from_secs(10);
        let r = request(&path, &resize(8192, false), t).unwrap();
        assert!(matches!(r, Reply::Resized { new_size: 8192, .. }), "{r:?}");
        // Several requests on one connection, a bad one among them.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"op\":\"resize\",\"size\":12288}\nnonsense\n{\"op\":\"resize\",\"size\":16384,\"allow_shrink\":true}\n")
            .unwrap();
        let mut lines = BufReader::new(s).lines();
        let replies: Vec<Reply> = (0..3)
            .map(|_| serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap())
            .collect();
        assert!(matches!(
            replies[0],
            Reply::Resized {
                new_size: 12288,
                ..
            }
        ));
        assert!(matches!(&replies[1], Reply::Error { error } if error.starts_with("bad request")));
        assert!(matches!(
            replies[2],
            Reply::Resized {
                new_size: 16384,
                ..
            }
        ));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                resize(8192, false),
                resize(12288, false),
                resize(16384, true)
            ]
        );
        drop(server);
        assert!(!path.exists(), "socket left behind");
        let e = request(&path, &resize(8192, false), t).unwrap_err();
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
