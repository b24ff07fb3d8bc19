//! A minimal HTTP/1.x responder for `GET /metrics`, and its client.
//!
//! The server listens on a unix socket or a loopback TCP port, on a thread
//! named `lsvd-metrics`. Each connection gets one thread of its own (at
//! most [`MAX_CLIENTS`] at once; more are closed at once) that reads one
//! request head of at most [`MAX_REQUEST`] bytes within [`REQUEST_TIMEOUT`],
//! answers it and closes (`Connection: close`): a silent or slow client
//! holds only its own thread, for a bounded time, and never the I/O path,
//! which only ever adds to atomics. `GET /metrics` (any query) is 200 with
//! the exposition, another path 404, another method 405, a head too long
//! 431, garbage 400.
//!
//! Stopping (drop) joins every thread within about [`POLL`]: the server
//! holds no reference that keeps a volume from closing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8 << 10;
/// Time a client has to send its request head, and to take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often waiting threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Where a metrics server listens, or a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}/metrics"),
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_timeouts(&self, d: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(Some(d))?;
                s.set_write_timeout(Some(d))
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(d))?;
                s.set_write_timeout(Some(d))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// What the server answers `GET /metrics` with (called per request).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A running metrics server; stopped when dropped.
pub struct MetricsServer {
    endpoint: Endpoint,
    /// The socket file to remove at stop.
    socket: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Bind a unix socket at `path` (mode 0600): replace a stale socket, refuse
/// a path that is not a socket or a socket a live server answers on.
fn bind_unix(path: &Path) -> Result<UnixListener> {
    let io = |what: &str, e| Error::io(format!("{what} metrics socket {}", path.display()), e);
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} exists and is not a socket: refusing to replace it with the metrics socket",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "metrics socket {} is in use by another server",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| io("cannot remove the stale", e))?;
    }
    let l = UnixListener::bind(path).map_err(|e| io("cannot bind the", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("cannot restrict the", e))?;
    Ok(l)
}

impl MetricsServer {
    /// Listen on `endpoint` and answer with `render`. A TCP port 0 gets a
    /// free port ([`MetricsServer::endpoint`] names it).
    pub fn start(endpoint: &Endpoint, render: Render) -> Result<MetricsServer> {
        let (listener, endpoint, socket) = match endpoint {
            Endpoint::Unix(p) => (
                Listener::Unix(bind_unix(p)?),
                endpoint.clone(),
                Some(p.clone()),
            ),
            Endpoint::Tcp(a) => {
                let l = TcpListener::bind(a)
                    .map_err(|e| Error::io(format!("cannot listen for metrics on {a}"), e))?;
                let local = l
                    .local_addr()
                    .map_err(|e| Error::io("metrics listener address", e))?;
                (Listener::Tcp(l), Endpoint::Tcp(local), None)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lsvd-metrics".into())
            .spawn(move || accept_loop(listener, render, &stop2))
            .map_err(|e| Error::io("spawn thread lsvd-metrics", e))?;
        Ok(MetricsServer {
            endpoint,
            socket,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.socket {
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Whether `fd` is readable within `d` (an error counts as readable).
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

fn accept_loop(listener: Listener, render: Render, stop: &Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let threads: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
    while !stop.load(Ordering::SeqCst) {
        let ready = match &listener {
            Listener::Unix(l) => readable(l, POLL),
            Listener::Tcp(l) => readable(l, POLL),
        };
        if let Ok(mut t) = threads.lock() {
            t.retain(|h| !h.is_finished());
        }
        if !ready {
            continue;
        }
        let accepted = match &listener {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("metrics socket accept: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CLIENTS {
            // Closed at once: the clients being served keep their slots.
            tracing::debug!("metrics: {MAX_CLIENTS} clients already connected; closing a new one");
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (render, stop2, active2) = (render.clone(), stop.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("lsvd-metrics-c".into())
            .spawn(move || {
                if let Err(e) = connection(stream, &render, &stop2) {
                    tracing::debug!("metrics connection: {e}");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => {
                if let Ok(mut t) = threads.lock() {
                    t.push(h);
                }
            }
            Err(e) => {
                active.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("metrics: cannot start a connection thread: {e}");
            }
        }
    }
    let handles = std::mem::take(&mut *threads.lock().unwrap_or_else(|e| e.into_inner()));
    for h in handles {
        let _ = h.join();
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

/// Judge a request head (the request line and headers, without the blank
/// line).
fn judge(head: &[u8]) -> Asked {
    let Ok(text) = std::str::from_utf8(head) else {
        return Asked::Bad;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Asked::BadMethod;
    }
    let path = target.split('?').next().unwrap_or("");
    if path == "/metrics" {
        Asked::Metrics
    } else {
        Asked::NotFound
    }
}

/// Where the head ends in `buf` (index after the blank line), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Serve one request on `stream`, then close it.
fn connection(mut stream: Stream, render: &Render, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_timeouts(POLL)?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return Ok(());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let from = buf.len().saturating_sub(3);
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = head_end(&buf[from..]) {
                    break Some(from + end);
                }
                if buf.len() > MAX_REQUEST {
                    break None;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    };
    let (status, body, is_head) = match head {
        None => ("431 Request Header Fields Too Large", String::new(), false),
        Some(end) => {
            let h = &buf[..end];
            let is_head = h.starts_with(b"HEAD ");
            match judge(h) {
                Asked::Metrics => ("200 OK", render(), is_head),
                Asked::NotFound => ("404 Not Found", "try /metrics\n".to_owned(), is_head),
                Asked::BadMethod => ("405 Method Not Allowed", String::new(), false),
                Asked::Bad => ("400 Bad Request", String::new(), false),
            }
        }
    };
    let ctype = if status.starts_with("200") {
        super::text::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !is_head {
        out.extend_from_slice(body.as_bytes());
    }
    // The write is bounded too: a client that does not read is dropped.
    stream.set_timeouts(REQUEST_TIMEOUT)?;
    stream.write_all(&out)?;
    stream.flush()
}

/// `GET /metrics` from the server at `endpoint`, within `timeout`; the
/// body of a 200 answer.
pub fn scrape(endpoint: &Endpoint, timeout: Duration) -> Result<String> {
    let io = |what: &str, e| Error::io(format!("{what} metrics endpoint {endpoint}"), e);
    let mut stream = match endpoint {
        Endpoint::Unix(p) => {
            Stream::Unix(UnixStream::connect(p).map_err(|e| io("cannot connect to the", e))?)
        }
        Endpoint::Tcp(a) => Stream::Tcp(
            TcpStream::connect_timeout(a, timeout).map_err(|e| io("cannot connect to the", e))?,
        ),
    };
    stream
        .set_timeouts(timeout)
        .map_err(|e| io("cannot set a timeout on the", e))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| io("cannot write to the", e))?;
    let mut resp = Vec::new();
    stream
        .take(64 << 20)
        .read_to_end(&mut resp)
        .map_err(|e| io("cannot read from the", e))?;
    let end = head_end(&resp).ok_or_else(|| {
        Error::new(
            ErrorKind::Io,
            format!("metrics endpoint {endpoint}: the answer has no complete head"),
        )
    })?;
    let head = String::from_utf8_lossy(&resp[..end]);
    let status = head.lines().next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        return Err(Error::new(
            ErrorKind::Io,
            format!("metrics endpoint {endpoint} answered {status:?}"),
        ));
    }
    String::from_utf8(resp[end..].to_vec()).map_err(|_| {
        Error::new(
            ErrorKind::Io,
            format!("metrics endpoint {endpoint}: the body is not UTF-8"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dir: &Path) -> MetricsServer {
        let calls = Arc::new(AtomicUsize::new(0));
        let render: Render = Arc::new(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            format!("# HELP x_total X.\n# TYPE x_total counter\nx_total {n}\n")
        });
        MetricsServer::start(&Endpoint::Unix(dir.join("m.sock")), render).unwrap()
    }

    fn raw(ep: &Endpoint, req: &[u8]) -> String {
        let Endpoint::Unix(p) = ep else {
            unreachable!()
        };
        let mut s = UnixStream::connect(p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_get_metrics_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        let ep = srv.endpoint().clone();
        assert_eq!(
            scrape(&ep, Duration::from_secs(5)).unwrap(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 0\n"
        );
        assert!(scrape(&ep, Duration::from_secs(5))
            .unwrap()
            .ends_with("x_total 1\n"));
        let r = raw(&ep, b"GET /metrics?x=1 HTTP/1.0\n\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("version=0.0.4"),
            "{r}"
        );
        assert!(raw(&ep, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(raw(&ep, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(raw(&ep, b"hello\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = raw(&ep, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST + 10));
        assert!(raw(&ep, &big).starts_with("HTTP/1.1 431"));
        drop(srv);
        assert!(
            !dir.path().join("m.sock").exists(),
            "socket removed at stop"
        );
    }

    #[test]
    fn silent_clients_neither_block_scrapes_nor_stop() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path());
        let ep = srv.endpoint().clone();
        let Endpoint::Unix(p) = &ep else {
            unreachable!()
        };
        // More silent clients than slots, one with half a request.
        let mut silent: Vec<UnixStream> = (0..MAX_CLIENTS + 2)
            .map(|_| UnixStream::connect(p).unwrap())
            .collect();
        silent[0].write_all(b"GET /metr").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // The slots are full: a scrape fails fast (closed), never hangs...
        let t = Instant::now();
        let _ = scrape(&ep, Duration::from_secs(20));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        // ...and succeeds once the silent ones time out.
        std::thread::sleep(REQUEST_TIMEOUT);
        assert!(scrape(&ep, Duration::from_secs(5)).is_ok());
        // Stop is prompt with silent clients connected.
        let more: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(p).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        drop(srv);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop((silent, more));
    }

    #[test]
    fn tcp_port_zero_gets_a_port() {
        let srv = MetricsServer::start(
            &Endpoint::Tcp("127.0.0.1:0".parse().unwrap()),
            Arc::new(|| "a 1\n".to_owned()),
        )
        .unwrap();
        let Endpoint::Tcp(a) = srv.endpoint() else {
            unreachable!()
        };
        assert_ne!(a.port(), 0);
        assert_eq!(
            scrape(srv.endpoint(), Duration::from_secs(5)).unwrap(),
            "a 1\n"
        );
    }
}
