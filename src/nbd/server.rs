//! The NBD server: a listener, one thread per connection, and per
//! connection a reply writer and a small pool of workers.
//!
//! A connection's thread negotiates (fixed newstyle), then reads requests
//! in order. Writes are submitted from that thread without waiting
//! ([`Export::submit_write`]; the data is copied before it returns), so a
//! client keeps many writes in flight through one connection; reads,
//! flushes, trims and write-zeroes go to the worker pool (grown on demand
//! up to [`MAX_WORKERS`]). Every reply goes through one writer thread, which
//! batches them into few socket writes. Replies may come out of order, as
//! NBD allows; each carries its request's cookie.
//!
//! Memory per connection is bounded: a request's payload is at most
//! [`MAX_PAYLOAD`], at most [`MAX_INFLIGHT`] requests are in flight, and
//! read buffers waiting for their reply hold at most
//! [`MAX_INFLIGHT_BYTES`] (the reader stops reading requests until replies
//! have gone out).
//!
//! Hostile input never takes the server down: a bad request magic, a
//! malformed negotiation or a write longer than [`MAX_PAYLOAD`] (whose
//! payload is not read) closes that connection; out-of-range or
//! overflowing requests and unknown commands get an error reply; a client
//! that vanishes ends its connection quietly after in-flight requests
//! finish. Other connections are not affected.
//!
//! Stop: `should_stop` returning true stops accepting and shuts down the
//! reading side of every connection; each finishes the requests it has
//! read, sends their replies and ends; then [`serve`] returns.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::proto::{self, InfoRequest, OptionHeader, Request};
use super::Export;
use crate::error::{Error, ErrorKind, Result};

/// Largest read or write payload (advertised as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred block size advertised to clients.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest option payload accepted during negotiation (names are at most
/// 4096 bytes); a longer one closes the connection.
pub const MAX_OPTION_BYTES: u32 = 64 << 10;
/// Requests in flight per connection.
pub const MAX_INFLIGHT: usize = 64;
/// Bytes of read data waiting for their reply, per connection.
pub const MAX_INFLIGHT_BYTES: usize = 64 << 20;
/// Worker threads per connection (reads, flushes, trims, write-zeroes).
pub const MAX_WORKERS: usize = 16;
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A client that does not read its replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to serve under which names.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The export's name (listed by `NBD_OPT_LIST`, the image name).
    pub name: String,
    /// Other names accepted for it (the empty default name, `POOL/IMG`).
    pub aliases: Vec<String>,
    /// Refuse writes, trims and write-zeroes with EPERM.
    pub read_only: bool,
}

impl ServeOptions {
    fn accepts(&self, name: &str) -> bool {
        name == self.name || self.aliases.iter().any(|a| a == name)
    }
}

/// A bound listening socket.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix stream socket.
    Unix(UnixListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept()?;
                // Small replies must not wait for Nagle.
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), a.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                Ok((Stream::Unix(s), "unix socket".to_owned()))
            }
        }
    }
}

/// One connection's socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }

    fn set_write_timeout(&self, d: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(d)),
            Stream::Unix(s) => s.set_write_timeout(Some(d)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// What every connection shares.
struct Shared {
    export: Arc<dyn Export>,
    opts: ServeOptions,
    tflags: u16,
    stopping: AtomicBool,
    /// Open connections (a clone of each socket, to shut them down at stop).
    conns: Mutex<HashMap<u64, Stream>>,
}

impl Shared {
    fn read_only(&self) -> bool {
        self.opts.read_only || self.export.read_only()
    }
}

/// The transmission flags for `export` served with `opts`.
fn transmission_flags(export: &dyn Export, opts: &ServeOptions) -> u16 {
    let mut f = proto::TFLAG_HAS_FLAGS | proto::TFLAG_SEND_FLUSH | proto::TFLAG_SEND_FUA;
    if opts.read_only || export.read_only() {
        f |= proto::TFLAG_READ_ONLY;
    } else {
        f |= proto::TFLAG_SEND_TRIM | proto::TFLAG_SEND_WRITE_ZEROES;
    }
    // See `Export::flush_covers_all_connections` (for `Volume`: one shared
    // volume whose FLUSH is a barrier over every write submitted before it
    // by any connection).
    if export.flush_covers_all_connections() {
        f |= proto::TFLAG_CAN_MULTI_CONN;
    }
    f
}

/// Serve `export` on `listener` until `should_stop(wait)` (called in a
/// loop, waiting up to `wait` each time) returns true; then stop accepting,
/// let every connection finish the requests it has read, and return.
pub fn serve(
    export: Arc<dyn Export>,
    listener: Listener,
    opts: ServeOptions,
    mut should_stop: impl FnMut(Duration) -> bool,
) -> Result<()> {
    let min = export.min_block();
    if !min.is_power_of_two() || min > PREFERRED_BLOCK {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("export block size {min} is not a power of two up to {PREFERRED_BLOCK}"),
        ));
    }
    let tflags = transmission_flags(export.as_ref(), &opts);
    let shared = Arc::new(Shared {
        export,
        opts,
        tflags,
        stopping: AtomicBool::new(false),
        conns: Mutex::new(HashMap::new()),
    });
    let acceptor = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || accept_loop(shared, listener))
            .map_err(|e| Error::io("spawn thread nbd-accept", e))?
    };
    while !acceptor.is_finished() && !should_stop(Duration::from_millis(200)) {}
    info!("NBD server stopping: no new connections, finishing requests in flight");
    shared.stopping.store(true, Ordering::SeqCst);
    for s in lock(&shared.conns).values() {
        s.shutdown(Shutdown::Read);
    }
    acceptor
        .join()
        .map_err(|_| Error::new(ErrorKind::Io, "the NBD accept thread panicked".to_string()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accept connections until stopping; then wait for every connection.
fn accept_loop(shared: Arc<Shared>, listener: Listener) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !shared.stopping.load(Ordering::SeqCst) {
        threads.retain(|t| !t.is_finished());
        let mut pfd = libc::pollfd {
            fd: listener.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r <= 0 {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                    warn!("NBD accept failed: {e}");
                    // Out of descriptors and the like: do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let clone = match stream.try_clone() {
            Ok(c) => c,
            Err(e) => {
                warn!("NBD connection from {peer} dropped: cannot clone its socket: {e}");
                continue;
            }
        };
        {
            let mut conns = lock(&shared.conns);
            if conns.len() >= MAX_CONNECTIONS {
                warn!("NBD connection from {peer} refused: {MAX_CONNECTIONS} connections are open");
                continue;
            }
            next_id += 1;
            conns.insert(next_id, clone);
        }
        let id = next_id;
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                info!("NBD connection {id} from {peer}");
                connection(&sh, stream, &peer, id);
                lock(&sh.conns).remove(&id);
                info!("NBD connection {id} from {peer} closed");
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                warn!("NBD connection {id} dropped: cannot start its thread: {e}");
                lock(&shared.conns).remove(&id);
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Serve one connection to its end.
fn connection(shared: &Arc<Shared>, stream: Stream, peer: &str, id: u64) {
    let mut wr = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            warn!("NBD connection {id}: cannot clone its socket: {e}");
            return;
        }
    };
    let _ = wr.set_write_timeout(WRITE_TIMEOUT);
    let mut rd = BufReader::with_capacity(64 << 10, stream);
    match negotiate(shared, &mut rd, &mut wr) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            debug!("NBD connection {id} from {peer} ended during negotiation: {e}");
            return;
        }
    }
    transmit(shared, rd, wr, id);
}

/// The fixed newstyle negotiation. `Ok(true)`: go to transmission;
/// `Ok(false)`: close (abort, or a violation already logged).
fn negotiate(shared: &Shared, rd: &mut impl Read, wr: &mut impl Write) -> io::Result<bool> {
    let export = shared.export.as_ref();
    wr.write_all(&proto::encode_greeting(
        proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES,
    ))?;
    let cflags = u32::from_be_bytes(proto::read_array::<4>(rd)?);
    if cflags & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
        warn!("NBD client sent unknown client flags {cflags:#x}: closing");
        return Ok(false);
    }
    let no_zeroes = cflags & proto::FLAG_C_NO_ZEROES != 0;
    let name = &shared.opts.name;
    loop {
        let Some(h) = OptionHeader::decode(&proto::read_array::<16>(rd)?) else {
            warn!("NBD client sent an option without the IHAVEOPT magic: closing");
            return Ok(false);
        };
        if h.length > MAX_OPTION_BYTES {
            warn!(
                "NBD client sent option {} with {} bytes of data (at most {MAX_OPTION_BYTES}): closing",
                h.option, h.length
            );
            return Ok(false);
        }
        let mut data = vec![0u8; h.length as usize];
        rd.read_exact(&mut data)?;
        let opt = h.option;
        if shared.stopping.load(Ordering::SeqCst) && h.option != proto::OPT_ABORT {
            if h.option != proto::OPT_EXPORT_NAME {
                proto::write_option_reply(
                    wr,
                    opt,
                    proto::REP_ERR_SHUTDOWN,
                    b"the server is shutting down",
                )?;
            }
            return Ok(false);
        }
        match h.option {
            proto::OPT_EXPORT_NAME => {
                let asked = String::from_utf8_lossy(&data);
                if !shared.opts.accepts(&asked) {
                    // This option has no error reply: the spec says close.
                    warn!(
                        "NBD client asked for unknown export '{asked}' (serving '{name}'): closing"
                    );
                    return Ok(false);
                }
                wr.write_all(&proto::export_name_reply(
                    export.size_bytes(),
                    shared.tflags,
                    no_zeroes,
                ))?;
                return Ok(true);
            }
            proto::OPT_ABORT => {
                // The client may already be gone; that is fine.
                let _ = proto::write_option_reply(wr, opt, proto::REP_ACK, &[]);
                return Ok(false);
            }
            proto::OPT_LIST => {
                if !data.is_empty() {
                    proto::write_option_reply(
                        wr,
                        opt,
                        proto::REP_ERR_INVALID,
                        b"NBD_OPT_LIST takes no data",
                    )?;
                    continue;
                }
                proto::write_option_reply(wr, opt, proto::REP_SERVER, &proto::rep_server(name))?;
                proto::write_option_reply(wr, opt, proto::REP_ACK, &[])?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                let Some(req) = InfoRequest::decode(&data) else {
                    proto::write_option_reply(
                        wr,
                        opt,
                        proto::REP_ERR_INVALID,
                        b"malformed NBD_OPT_INFO/GO data",
                    )?;
                    continue;
                };
                if !shared.opts.accepts(&req.name) {
                    let msg = format!(
                        "unknown export '{}'; this server exports '{name}'",
                        req.name
                    );
                    proto::write_option_reply(wr, opt, proto::REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                proto::write_option_reply(
                    wr,
                    opt,
                    proto::REP_INFO,
                    &proto::info_export(export.size_bytes(), shared.tflags),
                )?;
                // Sent whether asked for or not (the spec allows it): the
                // export cannot take I/O below its minimum block.
                proto::write_option_reply(
                    wr,
                    opt,
                    proto::REP_INFO,
                    &proto::info_block_size(export.min_block(), PREFERRED_BLOCK, MAX_PAYLOAD),
                )?;
                if req.requests.contains(&proto::INFO_NAME) {
                    proto::write_option_reply(wr, opt, proto::REP_INFO, &proto::info_name(name))?;
                }
                proto::write_option_reply(wr, opt, proto::REP_ACK, &[])?;
                if h.option == proto::OPT_GO {
                    return Ok(true);
                }
            }
            other => {
                // STARTTLS, STRUCTURED_REPLY (simple replies only), meta
                // contexts and anything unknown.
                let msg = format!("option {other} is not supported");
                proto::write_option_reply(wr, opt, proto::REP_ERR_UNSUP, msg.as_bytes())?;
            }
        }
    }
}

/// A reply for the writer thread.
struct Reply {
    cookie: u64,
    error: u32,
    /// The data of a successful read.
    data: Option<Vec<u8>>,
    /// Bytes charged to the connection's budget for this request.
    charged: usize,
}

/// Work for the pool.
enum Job {
    Read {
        cookie: u64,
        offset: u64,
        len: usize,
    },
    Flush {
        cookie: u64,
    },
    Discard {
        cookie: u64,
        offset: u64,
        len: u64,
        zero: bool,
        /// Durable when answered (`NBD_CMD_FLAG_FUA`).
        fua: bool,
    },
}

/// In-flight requests and read bytes of one connection.
struct Budget {
    used: Mutex<(usize, usize)>,
    cv: Condvar,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            used: Mutex::new((0, 0)),
            cv: Condvar::new(),
        }
    }

    /// Wait for room for one more request holding `bytes` (a request
    /// alone always fits: `bytes` is at most `MAX_PAYLOAD`).
    fn acquire(&self, bytes: usize) {
        let mut g = lock(&self.used);
        while g.0 >= MAX_INFLIGHT || (g.1 > 0 && g.1 + bytes > MAX_INFLIGHT_BYTES) {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.0 += 1;
        g.1 += bytes;
    }

    fn release(&self, bytes: usize) {
        let mut g = lock(&self.used);
        g.0 = g.0.saturating_sub(1);
        g.1 = g.1.saturating_sub(bytes);
        self.cv.notify_all();
    }
}

/// A multi-producer queue whose receivers park on a condition variable.
/// (A crossbeam channel's receivers spin and `sched_yield` before
/// parking, which cost a sixth of the CPU on a 2-core host under fio
/// QD32 reads.) `recv` returns `None` once it is empty and every
/// [`QSender`] is gone.
struct Queue<T> {
    state: Mutex<(VecDeque<T>, usize)>,
    cv: Condvar,
}

/// The sending side of a [`Queue`]; the queue counts its clones.
struct QSender<T>(Arc<Queue<T>>);

fn queue<T>() -> (QSender<T>, Arc<Queue<T>>) {
    let q = Arc::new(Queue {
        state: Mutex::new((VecDeque::new(), 1)),
        cv: Condvar::new(),
    });
    (QSender(q.clone()), q)
}

impl<T> QSender<T> {
    fn send(&self, t: T) {
        lock(&self.0.state).0.push_back(t);
        self.0.cv.notify_one();
    }
}

impl<T> Clone for QSender<T> {
    fn clone(&self) -> Self {
        lock(&self.0.state).1 += 1;
        QSender(self.0.clone())
    }
}

impl<T> Drop for QSender<T> {
    fn drop(&mut self) {
        let mut g = lock(&self.0.state);
        g.1 -= 1;
        if g.1 == 0 {
            self.0.cv.notify_all();
        }
    }
}

impl<T> Queue<T> {
    fn recv(&self) -> Option<T> {
        let mut g = lock(&self.state);
        loop {
            if let Some(t) = g.0.pop_front() {
                return Some(t);
            }
            if g.1 == 0 {
                return None;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn is_empty(&self) -> bool {
        lock(&self.state).0.is_empty()
    }
}

/// The NBD error for an engine error.
fn error_code(e: &Error) -> u32 {
    proto::nbd_errno(e.kind().errno())
}

/// A connection's workers, started on demand.
struct Pool {
    shared: Arc<Shared>,
    replies: QSender<Reply>,
    tx: Option<QSender<Job>>,
    rx: Arc<Queue<Job>>,
    idle: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
    id: u64,
}

impl Pool {
    fn submit(&mut self, job: Job) {
        if self.idle.load(Ordering::SeqCst) == 0 && self.threads.len() < MAX_WORKERS {
            let (shared, rx, idle, replies) = (
                self.shared.clone(),
                self.rx.clone(),
                self.idle.clone(),
                self.replies.clone(),
            );
            match std::thread::Builder::new()
                .name(format!("nbd-{}-w{}", self.id, self.threads.len()))
                .spawn(move || worker(shared, rx, idle, replies))
            {
                Ok(t) => self.threads.push(t),
                Err(e) => {
                    if self.threads.is_empty() {
                        warn!("NBD: cannot start a worker ({e}); serving in the connection thread");
                        run_job(&self.shared, job, &self.replies);
                        return;
                    }
                }
            }
        }
        match &self.tx {
            Some(tx) => tx.send(job),
            None => run_job(&self.shared, job, &self.replies),
        }
    }

    /// Let the workers finish what is queued, and wait for them.
    fn finish(mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(
    shared: Arc<Shared>,
    rx: Arc<Queue<Job>>,
    idle: Arc<AtomicUsize>,
    replies: QSender<Reply>,
) {
    loop {
        idle.fetch_add(1, Ordering::SeqCst);
        let job = rx.recv();
        idle.fetch_sub(1, Ordering::SeqCst);
        match job {
            Some(job) => run_job(&shared, job, &replies),
            None => return,
        }
    }
}

fn run_job(shared: &Shared, job: Job, replies: &QSender<Reply>) {
    let export = shared.export.as_ref();
    let reply = match job {
        Job::Read {
            cookie,
            offset,
            len,
        } => {
            let mut buf = vec![0u8; len];
            match export.read(offset, &mut buf) {
                Ok(()) => Reply {
                    cookie,
                    error: 0,
                    data: Some(buf),
                    charged: len,
                },
                Err(e) => {
                    debug!("NBD read at {offset} of {len} bytes failed: {e}");
                    Reply {
                        cookie,
                        error: error_code(&e),
                        data: None,
                        charged: len,
                    }
                }
            }
        }
        Job::Flush { cookie } => Reply {
            cookie,
            error: export.flush().err().map_or(0, |e| {
                warn!("NBD flush failed: {e}");
                error_code(&e)
            }),
            data: None,
            charged: 0,
        },
        Job::Discard {
            cookie,
            offset,
            len,
            zero,
            fua,
        } => {
            let r = if zero {
                export.write_zeroes(offset, len, fua)
            } else {
                export.trim(offset, len, fua)
            };
            Reply {
                cookie,
                error: r.err().map_or(0, |e| {
                    debug!("NBD trim/write-zeroes at {offset} of {len} bytes failed: {e}");
                    error_code(&e)
                }),
                data: None,
                charged: 0,
            }
        }
    };
    replies.send(reply);
}

/// Write replies until every sender is gone. After a socket error, keep
/// draining (releasing the budget) so nothing waits on a dead client.
fn reply_writer(stream: Stream, rx: Arc<Queue<Reply>>, budget: Arc<Budget>, id: u64) {
    let shut = stream.try_clone().ok();
    let mut w = BufWriter::with_capacity(256 << 10, stream);
    let mut broken = false;
    while let Some(r) = rx.recv() {
        if !broken {
            let mut res = w.write_all(&proto::encode_reply(r.error, r.cookie));
            if let (Ok(()), Some(d)) = (&res, &r.data) {
                res = w.write_all(d);
            }
            if res.is_ok() && rx.is_empty() {
                res = w.flush();
            }
            if let Err(e) = res {
                debug!("NBD connection {id}: cannot send a reply: {e}");
                broken = true;
                // Wake the reader: the client is gone or not reading.
                if let Some(s) = &shut {
                    s.shutdown(Shutdown::Both);
                }
            }
        }
        budget.release(r.charged);
    }
    if !broken {
        let _ = w.flush();
    }
}

/// The transmission phase: read requests until the client disconnects,
/// errs, or the server stops; then finish what is in flight.
fn transmit(shared: &Arc<Shared>, mut rd: BufReader<Stream>, wr: Stream, id: u64) {
    let budget = Arc::new(Budget::new());
    let (reply_tx, reply_rx) = queue::<Reply>();
    let writer = {
        let budget = budget.clone();
        std::thread::Builder::new()
            .name(format!("nbd-{id}-reply"))
            .spawn(move || reply_writer(wr, reply_rx, budget, id))
    };
    let writer = match writer {
        Ok(t) => t,
        Err(e) => {
            warn!("NBD connection {id}: cannot start its reply thread: {e}");
            return;
        }
    };
    let (job_tx, job_rx) = queue();
    let mut pool = Pool {
        shared: shared.clone(),
        replies: reply_tx.clone(),
        tx: Some(job_tx),
        rx: job_rx,
        idle: Arc::new(AtomicUsize::new(0)),
        threads: Vec::new(),
        id,
    };
    let mut payload: Vec<u8> = Vec::new();
    let export = shared.export.clone();
    let size = export.size_bytes();
    let read_only = shared.read_only();
    let error_reply = |cookie: u64, error: u32| {
        budget.acquire(0);
        reply_tx.send(Reply {
            cookie,
            error,
            data: None,
            charged: 0,
        });
    };
    loop {
        let hdr = match proto::read_array::<{ proto::REQUEST_BYTES }>(&mut rd) {
            Ok(h) => h,
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    debug!("NBD connection {id}: read failed: {e}");
                }
                break;
            }
        };
        let Some(req) = Request::decode(&hdr) else {
            warn!("NBD connection {id}: request with a bad magic: closing");
            break;
        };
        let len = u64::from(req.length);
        let end = req.offset.checked_add(len);
        // EINVAL for a range that overflows; for one past the end, EINVAL
        // for reads and ENOSPC for writes (as the NBD spec asks).
        let range_error = |past_end: u32| match end {
            None => Some(proto::EINVAL),
            Some(e) if e > size => Some(past_end),
            Some(_) => None,
        };
        match req.kind {
            proto::CMD_DISC => break,
            proto::CMD_READ => {
                if req.length > MAX_PAYLOAD {
                    warn!(
                        "NBD connection {id}: read of {} bytes (at most {MAX_PAYLOAD})",
                        req.length
                    );
                    error_reply(req.cookie, proto::EINVAL);
                } else if let Some(err) = range_error(proto::EINVAL) {
                    error_reply(req.cookie, err);
                } else {
                    budget.acquire(req.length as usize);
                    pool.submit(Job::Read {
                        cookie: req.cookie,
                        offset: req.offset,
                        len: req.length as usize,
                    });
                }
            }
            proto::CMD_WRITE => {
                if req.length > MAX_PAYLOAD {
                    // The payload is not read: the stream cannot be
                    // followed any further.
                    warn!(
                        "NBD connection {id}: write of {} bytes (at most {MAX_PAYLOAD}): closing",
                        req.length
                    );
                    error_reply(req.cookie, proto::EINVAL);
                    break;
                }
                payload.resize(req.length as usize, 0);
                if let Err(e) = rd.read_exact(&mut payload) {
                    debug!("NBD connection {id}: client went away mid-payload: {e}");
                    break;
                }
                if read_only {
                    error_reply(req.cookie, proto::EPERM);
                } else if let Some(err) = range_error(proto::ENOSPC) {
                    error_reply(req.cookie, err);
                } else {
                    budget.acquire(0);
                    let tx = reply_tx.clone();
                    let cookie = req.cookie;
                    let fua = req.flags & proto::CMD_FLAG_FUA != 0;
                    let done: crate::volume::Completion = Box::new(move |r: Result<()>| {
                        let error = r.err().map_or(0, |e| {
                            debug!("NBD write failed: {e}");
                            error_code(&e)
                        });
                        tx.send(Reply {
                            cookie,
                            error,
                            data: None,
                            charged: 0,
                        });
                    });
                    if let Err(e) = export.submit_write(req.offset, &payload, fua, done) {
                        debug!("NBD write at {} failed: {e}", req.offset);
                        budget.release(0);
                        error_reply(req.cookie, error_code(&e));
                    }
                }
                // Keep the buffer for the next write, unless it is large.
                if payload.capacity() > 4 << 20 {
                    payload = Vec::new();
                }
            }
            proto::CMD_FLUSH => {
                budget.acquire(0);
                pool.submit(Job::Flush { cookie: req.cookie });
            }
            proto::CMD_TRIM | proto::CMD_WRITE_ZEROES => {
                if read_only {
                    error_reply(req.cookie, proto::EPERM);
                } else if let Some(err) = range_error(proto::ENOSPC) {
                    error_reply(req.cookie, err);
                } else {
                    budget.acquire(0);
                    pool.submit(Job::Discard {
                        cookie: req.cookie,
                        offset: req.offset,
                        len,
                        zero: req.kind == proto::CMD_WRITE_ZEROES,
                        fua: req.flags & proto::CMD_FLAG_FUA != 0,
                    });
                }
            }
            other => {
                debug!("NBD connection {id}: unknown command {other}");
                error_reply(req.cookie, proto::EINVAL);
            }
        }
    }
    // In-flight requests finish and are answered before the socket closes.
    pool.finish();
    drop(reply_tx);
    let _ = writer.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ends_when_every_sender_is_gone() {
        let (tx, rx) = queue::<u32>();
        let tx2 = tx.clone();
        tx.send(1);
        drop(tx);
        let t = {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(x) = rx.recv() {
                    got.push(x);
                }
                got
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "a sender is still alive");
        tx2.send(2);
        drop(tx2);
        assert_eq!(t.join().unwrap(), vec![1, 2]);
        assert!(rx.is_empty());
    }

    #[test]
    fn budget_bounds_requests_and_bytes() {
        let b = Arc::new(Budget::new());
        // One request alone always fits, even a maximal one.
        b.acquire(MAX_PAYLOAD as usize);
        b.acquire(MAX_PAYLOAD as usize);
        assert_eq!(*lock(&b.used), (2, 2 * MAX_PAYLOAD as usize));
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.acquire(1));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "the budget must hold a third read back");
        b.release(MAX_PAYLOAD as usize);
        t.join().unwrap();
        assert_eq!(*lock(&b.used), (2, MAX_PAYLOAD as usize + 1));
    }
}
