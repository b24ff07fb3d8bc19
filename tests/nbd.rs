//! `lsvd-ublk serve-nbd` end to end: the built binary serves an image of a
//! dir-backend store in a temporary directory (on ext4, `/tmp`) on a unix
//! socket, and a small NBD client written here from the protocol
//! description (not the server's own encoder) drives it: negotiation,
//! I/O against an in-memory oracle, read-only refusal, hostile input while
//! another connection keeps working, several connections sharing FLUSH,
//! SIGKILL and restart, SIGTERM as a clean close, and the `--listen` checks;
//! and reading snapshots (`serve-nbd`, `export`, `info`) from a read-only
//! store and as a user with read access only.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};

mod common;

const SIZE: u64 = 64 << 20;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

// Transmission flags.
const HAS_FLAGS: u16 = 1;
const READ_ONLY: u16 = 2;
const SEND_FLUSH: u16 = 4;
const SEND_FUA: u16 = 8;
const SEND_TRIM: u16 = 32;
const SEND_WRITE_ZEROES: u16 = 64;
const CAN_MULTI_CONN: u16 = 256;

use common::CliEnv as Env;

impl Env {
    /// A scratch environment with the image `p/img` of [`SIZE`] bytes.
    fn with_image() -> Env {
        let env = Env::new();
        let out = env
            .cmd(&["create", "p/img", "--size", &SIZE.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        env
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    /// Start `serve-nbd p/img` on the unix socket (plus `extra` flags) and
    /// wait for its address line.
    fn serve(&self, extra: &[&str]) -> Server {
        let listen = format!("unix:{}", self.sock().display());
        let mut args = vec!["serve-nbd", "p/img", "--listen", &listen];
        args.extend_from_slice(extra);
        self.serve_args(&args)
    }

    fn serve_args(&self, args: &[&str]) -> Server {
        self.serve_cmd(self.cmd(args))
    }

    /// Start `cmd` (a `serve-nbd` command) and wait for its address line.
    fn serve_cmd(&self, mut cmd: std::process::Command) -> Server {
        let log = self.dir.path().join("server.log");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            !line.is_empty(),
            "serve-nbd printed no address: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Server {
            child,
            uri: line.trim().to_owned(),
            log,
        }
    }
}

struct Server {
    child: Child,
    uri: String,
    log: PathBuf,
}

impl Server {
    fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server died: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGTERM and wait; returns whether it exited 0.
    fn stop(mut self) -> bool {
        self.signal(libc::SIGTERM);
        let st = self.child.wait().unwrap();
        if !st.success() {
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        st.success()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes(b[i..i + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[i..i + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(b[i..i + 8].try_into().unwrap())
}

/// A hand-written NBD client.
struct Client {
    s: UnixStream,
    size: u64,
    tflags: u16,
}

/// Negotiation state before transmission.
struct Nego {
    s: UnixStream,
}

impl Nego {
    /// Connect and exchange the greeting; `no_zeroes`: the client flag.
    fn connect(sock: &Path, no_zeroes: bool) -> Nego {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(u64_at(&g, 0), NBDMAGIC);
        assert_eq!(u64_at(&g, 8), IHAVEOPT);
        // FIXED_NEWSTYLE | NO_ZEROES.
        assert_eq!(u16_at(&g, 16), 3);
        let cflags: u32 = if no_zeroes { 3 } else { 1 };
        s.write_all(&cflags.to_be_bytes()).unwrap();
        Nego { s }
    }

    fn send_opt(&mut self, opt: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// One option reply: (option, type, data).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u64_at(&h, 0), OPT_REPLY_MAGIC);
        let mut d = vec![0u8; u32_at(&h, 16) as usize];
        self.s.read_exact(&mut d).unwrap();
        (u32_at(&h, 8), u32_at(&h, 12), d)
    }

    fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut b = (name.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            b.extend_from_slice(&r.to_be_bytes());
        }
        b
    }

    /// INFO or GO: the replies up to ACK or an error. Returns the info
    /// replies (type -> data), or the error type and message.
    fn info(&mut self, opt: u32, name: &str, reqs: &[u16]) -> InfoResult {
        self.send_opt(opt, &Self::info_data(name, reqs));
        let mut infos = Vec::new();
        loop {
            let (o, t, d) = self.reply();
            assert_eq!(o, opt);
            match t {
                REP_INFO => infos.push((u16_at(&d, 0), d[2..].to_vec())),
                REP_ACK => return Ok(infos),
                e => return Err((e, String::from_utf8_lossy(&d).into_owned())),
            }
        }
    }

    fn go(mut self, name: &str) -> Client {
        let infos = self.info(OPT_GO, name, &[3]).unwrap();
        let (_, exp) = infos.iter().find(|(t, _)| *t == 0).unwrap();
        Client {
            size: u64_at(exp, 0),
            tflags: u16_at(exp, 8),
            s: self.s,
        }
    }
}

/// Info replies of INFO/GO (type, data), or the error reply (type, message).
type InfoResult = Result<Vec<(u16, Vec<u8>)>, (u32, String)>;

/// A simple reply: (error, cookie, data).
type Reply = (u32, u64, Vec<u8>);

impl Client {
    fn open(sock: &Path) -> Client {
        Nego::connect(sock, true).go("img")
    }

    fn send(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// Read one reply; `read_len(cookie)` says how much data follows a
    /// successful reply to that cookie.
    fn recv(&mut self, read_len: impl Fn(u64) -> usize) -> Reply {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32_at(&h, 0), REPLY_MAGIC);
        let (err, cookie) = (u32_at(&h, 4), u64_at(&h, 8));
        let mut d = Vec::new();
        if err == 0 {
            d.resize(read_len(cookie), 0);
            self.s.read_exact(&mut d).unwrap();
        }
        (err, cookie, d)
    }

    fn call(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> Reply {
        self.send(kind, flags, 99, offset, len, payload);
        let n = if kind == CMD_READ { len as usize } else { 0 };
        let r = self.recv(|_| n);
        assert_eq!(r.1, 99);
        r
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        match self.call(CMD_READ, 0, offset, len, &[]) {
            (0, _, d) => Ok(d),
            (e, _, _) => Err(e),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> u32 {
        let flags = if fua { FLAG_FUA } else { 0 };
        self.call(CMD_WRITE, flags, offset, data.len() as u32, data)
            .0
    }

    fn flush(&mut self) -> u32 {
        self.call(CMD_FLUSH, 0, 0, 0, &[]).0
    }

    fn discard(&mut self, kind: u16, offset: u64, len: u32) -> u32 {
        self.call(kind, 0, offset, len, &[]).0
    }

    /// The server closed the connection (EOF or reset, no more replies).
    fn assert_closed(&mut self) {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("the server kept the connection open"),
        }
    }

    /// A write then a read back of a fresh pattern at `offset`.
    fn round_trip(&mut self, offset: u64, seed: u64) {
        let data = common::pattern(seed, 8192);
        assert_eq!(self.write(offset, &data, false), 0);
        assert!(
            self.read(offset, 8192).unwrap() == data,
            "round trip at {offset}"
        );
    }
}

#[test]
fn negotiation_options() {
    let env = Env::with_image();
    let server = env.serve(&[]);
    let sock = env.sock();
    assert_eq!(
        server.uri,
        format!("nbd+unix:///img?socket={}", sock.display())
    );

    let mut n = Nego::connect(&sock, true);
    // LIST: one export, the image name.
    n.send_opt(OPT_LIST, &[]);
    let (o, t, d) = n.reply();
    assert_eq!((o, t), (OPT_LIST, REP_SERVER));
    assert_eq!(u32_at(&d, 0), 3);
    assert_eq!(&d[4..], b"img");
    assert_eq!(n.reply().1, REP_ACK);
    // LIST with data is malformed.
    n.send_opt(OPT_LIST, b"x");
    assert_eq!(n.reply().1, REP_ERR_INVALID);
    // Unknown options and structured replies are refused, not fatal.
    n.send_opt(4242, b"whatever");
    assert_eq!(
        n.reply(),
        (4242, REP_ERR_UNSUP, n_msg("option 4242 is not supported"))
    );
    // STRUCTURED_REPLY takes no data (accepted without: see
    // block_status_reports_holes_and_data).
    n.send_opt(OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(n.reply().1, REP_ERR_INVALID);
    // A wrong name: ERR_UNKNOWN naming what is served.
    let (e, msg) = n.info(OPT_INFO, "nope", &[]).unwrap_err();
    assert_eq!(e, REP_ERR_UNKNOWN);
    assert!(msg.contains("'nope'") && msg.contains("'img'"), "{msg}");
    let (e, _) = n.info(OPT_GO, "p/other", &[]).unwrap_err();
    assert_eq!(e, REP_ERR_UNKNOWN);
    // Malformed INFO data (name length past the end).
    n.send_opt(OPT_INFO, &[0, 0, 1, 0, b'i']);
    assert_eq!(n.reply().1, REP_ERR_INVALID);
    // INFO: size, flags, block sizes, name.
    let infos = n.info(OPT_INFO, "img", &[3, 1]).unwrap();
    let get = |t: u16| infos.iter().find(|(x, _)| *x == t).map(|(_, d)| d.clone());
    let exp = get(0).expect("NBD_INFO_EXPORT");
    assert_eq!(u64_at(&exp, 0), SIZE);
    assert_eq!(
        u16_at(&exp, 8),
        HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN
    );
    let bs = get(3).expect("NBD_INFO_BLOCK_SIZE");
    assert_eq!(
        (u32_at(&bs, 0), u32_at(&bs, 4), u32_at(&bs, 8)),
        (512, 4096, 32 << 20)
    );
    assert_eq!(get(1).expect("NBD_INFO_NAME"), b"img");
    // Then GO on the same connection, under each accepted name.
    let mut c = n.go("img");
    assert_eq!(c.size, SIZE);
    c.round_trip(0, 1);
    for name in ["", "p/img"] {
        let mut c = Nego::connect(&sock, true).go(name);
        c.round_trip(4096, 2);
    }

    // Old-style EXPORT_NAME, with and without the 124 zero bytes.
    for no_zeroes in [true, false] {
        let mut n = Nego::connect(&sock, no_zeroes);
        n.send_opt(OPT_EXPORT_NAME, b"img");
        let mut b = vec![0u8; if no_zeroes { 10 } else { 134 }];
        n.s.read_exact(&mut b).unwrap();
        assert_eq!(u64_at(&b, 0), SIZE);
        assert!(b[10..].iter().all(|&x| x == 0));
        let mut c = Client {
            size: SIZE,
            tflags: u16_at(&b, 8),
            s: n.s,
        };
        assert_ne!(c.tflags & CAN_MULTI_CONN, 0);
        c.round_trip(8192, 3);
        c.send(CMD_DISC, 0, 1, 0, 0, &[]);
        c.assert_closed();
    }
    // EXPORT_NAME with a wrong name: closed (it has no error reply).
    let mut n = Nego::connect(&sock, true);
    n.send_opt(OPT_EXPORT_NAME, b"wrong");
    let mut b = [0u8; 1];
    assert!(matches!(n.s.read(&mut b), Ok(0) | Err(_)));
    // ABORT: acknowledged, then closed.
    let mut n = Nego::connect(&sock, true);
    n.send_opt(OPT_ABORT, &[]);
    assert_eq!(n.reply().1, REP_ACK);
    assert!(matches!(n.s.read(&mut b), Ok(0) | Err(_)));
    assert!(server.stop());
}

fn n_msg(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_META_CONTEXT: u32 = 4;
const CMD_BLOCK_STATUS: u16 = 7;
const FLAG_DF: u16 = 4;
const FLAG_REQ_ONE: u16 = 8;
const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
const HOLE_ZERO: u32 = 3;

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut b = (name.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        b.extend_from_slice(&(q.len() as u32).to_be_bytes());
        b.extend_from_slice(q.as_bytes());
    }
    b
}

impl Nego {
    /// LIST or SET_META_CONTEXT: the contexts replied (id, name), or the
    /// error reply type.
    fn meta(&mut self, opt: u32, name: &str, queries: &[&str]) -> Result<Vec<(u32, String)>, u32> {
        self.send_opt(opt, &meta_data(name, queries));
        let mut out = Vec::new();
        loop {
            let (o, t, d) = self.reply();
            assert_eq!(o, opt);
            match t {
                REP_META_CONTEXT => {
                    out.push((u32_at(&d, 0), String::from_utf8(d[4..].to_vec()).unwrap()))
                }
                REP_ACK => return Ok(out),
                e => return Err(e),
            }
        }
    }

    /// Structured replies and `base:allocation`, then GO; returns the
    /// client and the context's id.
    fn go_with_allocation(mut self, name: &str) -> (Client, u32) {
        self.send_opt(OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(self.reply().1, REP_ACK);
        let ctx = self
            .meta(OPT_SET_META_CONTEXT, name, &["base:allocation"])
            .unwrap();
        assert_eq!(ctx.len(), 1);
        (self.go(name), ctx[0].0)
    }
}

/// A structured reply chunk: (flags, type, cookie, payload).
type Chunk = (u16, u16, u64, Vec<u8>);

impl Client {
    fn chunk(&mut self) -> Chunk {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32_at(&h, 0), STRUCTURED_MAGIC, "not a structured reply");
        let mut d = vec![0u8; u32_at(&h, 16) as usize];
        self.s.read_exact(&mut d).unwrap();
        (u16_at(&h, 4), u16_at(&h, 6), u64_at(&h, 8), d)
    }

    /// BLOCK_STATUS for context `ctx`: the descriptors (length, flags), or
    /// the error of a simple reply.
    fn block_status(
        &mut self,
        ctx: u32,
        flags: u16,
        offset: u64,
        len: u32,
    ) -> Result<Vec<(u32, u32)>, u32> {
        self.send(CMD_BLOCK_STATUS, flags, 7, offset, len, &[]);
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h[..4]).unwrap();
        if u32_at(&h, 0) == REPLY_MAGIC {
            self.s.read_exact(&mut h[4..16]).unwrap();
            assert_eq!(u64_at(&h, 8), 7);
            let err = u32_at(&h, 4);
            assert_ne!(err, 0, "a simple reply to block status must be an error");
            return Err(err);
        }
        assert_eq!(u32_at(&h, 0), STRUCTURED_MAGIC, "not a structured reply");
        self.s.read_exact(&mut h[4..]).unwrap();
        let mut d = vec![0u8; u32_at(&h, 16) as usize];
        self.s.read_exact(&mut d).unwrap();
        let (f, t, cookie) = (u16_at(&h, 4), u16_at(&h, 6), u64_at(&h, 8));
        assert_eq!((f, t, cookie), (1, 5, 7), "one BLOCK_STATUS chunk, DONE");
        assert_eq!(u32_at(&d, 0), ctx);
        assert!(d.len() >= 12 && (d.len() - 4).is_multiple_of(8), "{d:?}");
        let ext: Vec<(u32, u32)> = d[4..]
            .chunks(8)
            .map(|c| (u32_at(c, 0), u32_at(c, 4)))
            .collect();
        let sum: u64 = ext.iter().map(|e| u64::from(e.0)).sum();
        assert!(
            sum <= u64::from(len),
            "{ext:?} describes more than {len} bytes"
        );
        assert!(
            ext.iter().all(|e| e.0 > 0 && e.1 & !HOLE_ZERO == 0),
            "{ext:?}"
        );
        if flags & FLAG_REQ_ONE != 0 {
            assert_eq!(ext.len(), 1, "REQ_ONE: one descriptor");
        }
        Ok(ext)
    }

    /// A read under structured replies: the data, or the error chunk's.
    fn read_structured(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send(CMD_READ, 0, 8, offset, len, &[]);
        let (f, t, cookie, d) = self.chunk();
        assert_eq!((f & 1, cookie), (1, 8));
        match t {
            1 => {
                assert_eq!(u64_at(&d, 0), offset);
                Ok(d[8..].to_vec())
            }
            0x8001 => Err(u32_at(&d, 0)),
            other => panic!("reply type {other} to a read"),
        }
    }
}

/// `NBD_CMD_BLOCK_STATUS` with `base:allocation` (issue 17, item 10):
/// negotiation (structured replies first, LIST and SET, unknown contexts
/// ignored), holes and data of an image with unflushed writes, REQ_ONE,
/// the errors of bad requests, structured reads, and the same answers
/// after a restart (from the durable map), from a snapshot export and from
/// a clone (its parent's data where it has none of its own).
#[test]
fn block_status_reports_holes_and_data() {
    const M: u64 = 1 << 20;
    let env = Env::with_image();
    let server = env.serve(&[]);
    let sock = env.sock();
    // Written, not flushed: in the overlay, not in the store yet.
    let mut plain = Client::open(&sock);
    let data = common::pattern(21, 8192);
    assert_eq!(plain.write(M, &data, false), 0);
    assert_eq!(plain.write(40 * M, &data, false), 0);
    assert_eq!(plain.discard(CMD_TRIM, 40 * M, 4096), 0);
    // Block status without a negotiated context: EINVAL.
    assert_eq!(plain.block_status(1, 0, 0, 4096), Err(EINVAL));

    let mut n = Nego::connect(&sock, true);
    // Meta contexts need structured replies first.
    assert_eq!(
        n.meta(OPT_SET_META_CONTEXT, "img", &["base:allocation"]),
        Err(REP_ERR_INVALID)
    );
    assert_eq!(
        n.meta(OPT_LIST_META_CONTEXT, "img", &[]),
        Err(REP_ERR_INVALID)
    );
    n.send_opt(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(n.reply().1, REP_ACK);
    let base = (0, "base:allocation".to_owned());
    assert_eq!(
        n.meta(OPT_LIST_META_CONTEXT, "img", &[]),
        Ok(vec![base.clone()])
    );
    assert_eq!(
        n.meta(OPT_LIST_META_CONTEXT, "img", &["base:"]),
        Ok(vec![base])
    );
    assert_eq!(
        n.meta(OPT_LIST_META_CONTEXT, "img", &["qemu:dirty-bitmap:x"]),
        Ok(vec![])
    );
    assert_eq!(
        n.meta(OPT_SET_META_CONTEXT, "nope", &["base:allocation"]),
        Err(REP_ERR_UNKNOWN)
    );
    // Malformed: a query length past the end.
    let mut bad = meta_data("img", &["base:allocation"]);
    bad.truncate(bad.len() - 1);
    n.send_opt(OPT_SET_META_CONTEXT, &bad);
    assert_eq!(n.reply().1, REP_ERR_INVALID);
    // Unknown contexts are ignored; base:allocation gets a non-zero id.
    let ctx = n
        .meta(
            OPT_SET_META_CONTEXT,
            "img",
            &["qemu:allocation-depth", "base:allocation"],
        )
        .unwrap();
    assert_eq!(ctx.len(), 1);
    assert_eq!(ctx[0].1, "base:allocation");
    let id = ctx[0].0;
    assert_ne!(id, 0);
    let mut c = n.go("img");

    let hole = HOLE_ZERO;
    let m = M as u32;
    assert_eq!(
        c.block_status(id, 0, 0, 4 * m),
        Ok(vec![(m, hole), (8192, 0), (3 * m - 8192, hole)])
    );
    // The trimmed half of the second write is a hole again.
    assert_eq!(
        c.block_status(id, 0, 40 * M - 4096, 3 * 4096),
        Ok(vec![(8192, hole), (4096, 0)])
    );
    assert_eq!(
        c.block_status(id, FLAG_REQ_ONE, 0, 4 * m),
        Ok(vec![(m, hole)])
    );
    assert_eq!(
        c.block_status(id, FLAG_REQ_ONE, M + 4096, m),
        Ok(vec![(4096, 0)])
    );
    // A range ending inside an extent is clipped to it; FUA is accepted.
    assert_eq!(
        c.block_status(id, FLAG_FUA, M - 512, 1024),
        Ok(vec![(512, hole), (512, 0)])
    );
    // Bad requests: EINVAL, and the connection goes on.
    assert_eq!(c.block_status(id, 0, SIZE - 4096, 8192), Err(EINVAL));
    assert_eq!(c.block_status(id, 0, u64::MAX - 511, 4096), Err(EINVAL));
    assert_eq!(c.block_status(id, 0, 0, 0), Err(EINVAL));
    assert_eq!(c.block_status(id, FLAG_DF, 0, 4096), Err(EINVAL));
    assert_eq!(
        c.block_status(id, 0, 100, 4096),
        Err(EINVAL),
        "misaligned after GO asked for block sizes"
    );
    // Reads come as structured chunks now.
    assert!(c.read_structured(M, 8192).unwrap() == data);
    assert_eq!(c.read_structured(SIZE, 4096), Err(EINVAL));
    // Structured replies without a context: block status is EINVAL.
    let mut n = Nego::connect(&sock, true);
    n.send_opt(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(n.reply().1, REP_ACK);
    assert_eq!(
        n.meta(OPT_SET_META_CONTEXT, "img", &["x-other:thing"]),
        Ok(vec![])
    );
    let mut none = n.go("img");
    assert_eq!(none.block_status(1, 0, 0, 4096), Err(EINVAL));
    drop((c, none, plain));
    assert!(server.stop());

    // After a clean stop: the same, from the durable map.
    let expect = vec![(m, hole), (8192, 0), (3 * m - 8192, hole)];
    let server = env.serve(&[]);
    let (mut c, id) = Nego::connect(&sock, true).go_with_allocation("img");
    assert_eq!(c.block_status(id, 0, 0, 4 * m), Ok(expect.clone()));
    drop(c);
    assert!(server.stop());

    // A snapshot export and a clone of it.
    for args in [
        vec!["snap", "create", "p/img@s1"],
        vec!["clone", "p/img@s1", "p/child"],
    ] {
        let out = env.cmd(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let listen = format!("unix:{}", sock.display());
    let server = env.serve_args(&["serve-nbd", "p/img@s1", "--listen", &listen]);
    let (mut s, id) = Nego::connect(&sock, true).go_with_allocation("img@s1");
    assert_eq!(s.block_status(id, 0, 0, 4 * m), Ok(expect.clone()));
    drop(s);
    assert!(server.stop());
    let server = env.serve_args(&["serve-nbd", "p/child", "--listen", &listen]);
    let (mut k, id) = Nego::connect(&sock, true).go_with_allocation("child");
    // The parent's data reads through: data; then the clone's own write.
    assert_eq!(k.block_status(id, 0, 0, 4 * m), Ok(expect));
    assert_eq!(k.write(2 * M, &data[..4096], false), 0);
    assert_eq!(
        k.block_status(id, 0, M, 2 * m),
        Ok(vec![
            (8192, 0),
            (m - 8192, hole),
            (4096, 0),
            (m - 4096, hole)
        ])
    );
    drop(k);
    assert!(server.stop());
}

#[test]
fn io_matches_an_oracle() {
    let env = Env::with_image();
    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    let mut oracle = vec![0u8; SIZE as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Unwritten space reads as zeros.
    assert_eq!(c.read(0, 1 << 20).unwrap(), vec![0u8; 1 << 20]);
    for i in 0..400u64 {
        let sectors = rng.gen_range(1..=256u64);
        let len = sectors * 512;
        let off = rng.gen_range(0..(SIZE - len) / 512) * 512;
        match rng.gen_range(0..10) {
            0..=3 => {
                let data = common::pattern(i, len as usize);
                assert_eq!(c.write(off, &data, rng.gen_bool(0.3)), 0);
                oracle[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            4 => {
                assert_eq!(c.discard(CMD_TRIM, off, len as u32), 0);
                oracle[off as usize..(off + len) as usize].fill(0);
            }
            5 => {
                assert_eq!(c.discard(CMD_WRITE_ZEROES, off, len as u32), 0);
                oracle[off as usize..(off + len) as usize].fill(0);
            }
            6 => assert_eq!(c.flush(), 0),
            _ => {
                let got = c.read(off, len as u32).unwrap();
                assert!(
                    got == oracle[off as usize..(off + len) as usize],
                    "op {i}: read at {off} of {len} differs from the oracle"
                );
            }
        }
    }
    // Pipelined: 32 writes in flight, then 32 reads in flight, replies
    // matched by cookie (they may come back in any order).
    let mut expect = std::collections::HashMap::new();
    for k in 0..32u64 {
        let off = k * 65536 + 512;
        let data = common::pattern(1000 + k, 65536);
        oracle[off as usize..off as usize + 65536].copy_from_slice(&data);
        c.send(CMD_WRITE, 0, k, off, 65536, &data);
    }
    for _ in 0..32 {
        let (e, cookie, _) = c.recv(|_| 0);
        assert_eq!(e, 0);
        assert!(cookie < 32);
    }
    for k in 0..32u64 {
        let off = k * 65536;
        expect.insert(100 + k, off);
        c.send(CMD_READ, 0, 100 + k, off, 65536 + 1024, &[]);
    }
    for _ in 0..32 {
        let (e, cookie, d) = c.recv(|_| 65536 + 1024);
        assert_eq!(e, 0);
        let off = expect.remove(&cookie).expect("a reply to a request sent") as usize;
        assert!(
            d == oracle[off..off + 65536 + 1024],
            "pipelined read {cookie}"
        );
    }
    // A maximal 32 MiB write and read.
    let big = common::pattern(77, 32 << 20);
    assert_eq!(c.write(SIZE - (32 << 20), &big, true), 0);
    assert!(c.read(SIZE - (32 << 20), 32 << 20).unwrap() == big);
    oracle[(SIZE as usize - (32 << 20))..].copy_from_slice(&big);
    assert_eq!(c.flush(), 0);
    // Everything, once more, in 1 MiB reads.
    for off in (0..SIZE).step_by(1 << 20) {
        assert!(c.read(off, 1 << 20).unwrap() == oracle[off as usize..off as usize + (1 << 20)]);
    }
    // Misaligned I/O is refused (the advertised minimum is 512).
    assert_eq!(c.read(100, 512), Err(EINVAL));
    assert_eq!(c.write(512, &[1u8; 100], false), EINVAL);
    c.send(CMD_DISC, 0, 0, 0, 0, &[]);
    c.assert_closed();
    assert!(server.stop());
}

#[test]
fn read_only_export_refuses_writes() {
    let env = Env::with_image();
    // Some data first, through a writable server.
    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    let data = common::pattern(5, 4096);
    assert_eq!(c.write(0, &data, true), 0);
    drop(c);
    assert!(server.stop());

    let mut server = env.serve(&["--read-only"]);
    let mut c = Client::open(&env.sock());
    assert_eq!(
        c.tflags,
        HAS_FLAGS | READ_ONLY | SEND_FLUSH | SEND_FUA | CAN_MULTI_CONN
    );
    assert_eq!(c.write(0, &[9u8; 4096], false), EPERM);
    assert_eq!(c.write(0, &[9u8; 4096], true), EPERM);
    assert_eq!(c.discard(CMD_TRIM, 0, 4096), EPERM);
    assert_eq!(c.discard(CMD_WRITE_ZEROES, 0, 4096), EPERM);
    assert_eq!(c.flush(), 0);
    // The refused payload was consumed: the stream is still in step.
    assert_eq!(c.read(0, 4096).unwrap(), data);
    server.assert_alive();
    assert!(server.stop());
}

#[test]
fn hostile_input_leaves_other_connections_working() {
    let env = Env::with_image();
    let mut server = env.serve(&[]);
    let sock = env.sock();
    let mut good = Client::open(&sock);
    good.round_trip(0, 1);

    let mut c = Client::open(&sock);
    // Out of range: EINVAL for reads and trims, ENOSPC for writes (whose
    // payload is still consumed) and write-zeroes.
    assert_eq!(c.read(SIZE - 512, 1024), Err(EINVAL));
    assert_eq!(c.read(SIZE, 512), Err(EINVAL));
    assert_eq!(c.write(SIZE - 512, &[1u8; 1024], false), ENOSPC);
    assert_eq!(c.discard(CMD_TRIM, SIZE, 4096), EINVAL);
    assert_eq!(c.discard(CMD_TRIM, SIZE - 512, 4096), EINVAL);
    assert_eq!(c.discard(CMD_WRITE_ZEROES, SIZE - 4096, 8192), ENOSPC);
    // Command flags: FUA is accepted on every command, NO_HOLE only on
    // write-zeroes; anything else gets EINVAL (a write's payload is still
    // consumed, and the connection goes on).
    const NO_HOLE: u16 = 2;
    assert_eq!(c.call(CMD_READ, FLAG_FUA, 0, 512, &[]).0, 0);
    assert_eq!(c.call(CMD_FLUSH, FLAG_FUA, 0, 0, &[]).0, 0);
    assert_eq!(
        c.call(CMD_WRITE_ZEROES, NO_HOLE | FLAG_FUA, 0, 4096, &[]).0,
        0
    );
    assert_eq!(c.call(CMD_WRITE, NO_HOLE, 0, 512, &[9u8; 512]).0, EINVAL);
    assert_eq!(c.call(CMD_WRITE, 1 << 15, 0, 512, &[9u8; 512]).0, EINVAL);
    assert_eq!(c.call(CMD_READ, 1 << 2, 0, 512, &[]).0, EINVAL);
    assert_eq!(c.call(CMD_TRIM, NO_HOLE, 0, 4096, &[]).0, EINVAL);
    assert_eq!(c.call(CMD_FLUSH, 1 << 4, 0, 0, &[]).0, EINVAL);
    assert_eq!(
        c.read(0, 512).unwrap(),
        vec![0u8; 512],
        "the refused writes wrote nothing"
    );
    // offset + length overflows u64: EINVAL, the payload consumed.
    let top = u64::MAX - 511;
    assert_eq!(c.read(top, 4096), Err(EINVAL));
    assert_eq!(c.write(top, &[2u8; 4096], false), EINVAL);
    assert_eq!(c.discard(CMD_TRIM, top, 4096), EINVAL);
    // Unknown commands (and BLOCK_STATUS, CACHE: not negotiated).
    for kind in [5u16, 7, 42, u16::MAX] {
        assert_eq!(c.call(kind, 0, 0, 4096, &[]).0, EINVAL, "command {kind}");
    }
    // A read longer than the advertised maximum: EINVAL, still connected.
    assert_eq!(c.read(0, 64 << 20), Err(EINVAL));
    c.round_trip(1 << 20, 2);
    // A write longer than the maximum: EINVAL, and the connection closes
    // (its payload is not read).
    c.send(CMD_WRITE, 0, 7, 0, 64 << 20, &[0u8; 4096]);
    let (e, cookie, _) = c.recv(|_| 0);
    assert_eq!((e, cookie), (EINVAL, 7));
    c.assert_closed();
    good.round_trip(8192, 3);

    // A bad request magic: closed.
    let mut c = Client::open(&sock);
    c.s.write_all(&[0xde; 28]).unwrap();
    c.assert_closed();
    good.round_trip(16384, 4);

    // The client vanishes mid-payload, and mid-header.
    let mut c = Client::open(&sock);
    c.send(CMD_WRITE, 0, 1, 0, 1 << 20, &[7u8; 1000]);
    drop(c);
    let mut c = Client::open(&sock);
    c.s.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(c);
    // Requests in flight when the client vanishes (writes to a region of
    // their own: they may still complete).
    let mut c = Client::open(&sock);
    for k in 0..16 {
        c.send(CMD_WRITE, 0, k, (8 << 20) + k * 4096, 4096, &[5u8; 4096]);
        c.send(CMD_READ, 0, 100 + k, 0, 1 << 20, &[]);
    }
    drop(c);
    good.round_trip(32768, 5);

    // Negotiation garbage: a bad option magic, an unknown client flag, a
    // huge option length, a bare connect and close.
    let mut n = Nego::connect(&sock, true);
    n.s.write_all(&[0x55; 16]).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(n.s.read(&mut b), Ok(0) | Err(_)));
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    let mut n = Nego::connect(&sock, true);
    let mut h = IHAVEOPT.to_be_bytes().to_vec();
    h.extend_from_slice(&OPT_GO.to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    n.s.write_all(&h).unwrap();
    assert!(matches!(n.s.read(&mut b), Ok(0) | Err(_)));
    drop(UnixStream::connect(&sock).unwrap());

    // The first connection never noticed; the server is alive and stops
    // cleanly.
    good.round_trip(65536, 6);
    assert_eq!(good.flush(), 0);
    server.assert_alive();
    drop(good);
    assert!(server.stop());
}

/// FUA on TRIM and WRITE_ZEROES is honoured like FUA on WRITE: the reply
/// comes only after a journal fdatasync. Served in process (the same
/// `lsvd::nbd::serve` as `serve-nbd`) so the volume's counters can be read.
#[test]
fn fua_trim_and_write_zeroes_reply_after_a_journal_sync() {
    use lsvd::backend::{MemStore, ObjectStore};
    use lsvd::nbd::{Export, Listener, ServeOptions};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    lsvd::volume::image::create_image(store.as_ref(), "img", 4 << 20).unwrap();
    let vol = Arc::new(
        lsvd::volume::Volume::open(lsvd::volume::VolumeOptions {
            config: lsvd::config::Config {
                rcache_dir: dir.path().join("rcache"),
                rcache_bytes: 4 << 20,
                ..common::small_config()
            },
            store,
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        })
        .unwrap(),
    );
    let sock = dir.path().join("nbd.sock");
    let listener = Listener::Unix(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (export, stop) = (vol.clone() as Arc<dyn Export>, stop.clone());
        let opts = ServeOptions {
            name: "img".into(),
            aliases: vec![],
            read_only: false,
            limits: Default::default(),
            metrics: None,
        };
        std::thread::spawn(move || {
            lsvd::nbd::serve(export, listener, opts, |wait| {
                std::thread::sleep(wait.min(Duration::from_millis(20)));
                stop.load(Ordering::SeqCst)
            })
        })
    };
    let mut c = Client::open(&sock);
    assert_eq!(c.write(0, &common::pattern(1, 64 << 10), false), 0);
    // Durability points: fdatasyncs and RWF_DSYNC record writes.
    let syncs = || {
        let s = vol.stats();
        s.journal_syncs + s.journal_dsync_writes
    };
    let s0 = syncs();
    assert_eq!(c.discard(CMD_TRIM, 0, 4096), 0);
    assert_eq!(c.discard(CMD_WRITE_ZEROES, 4096, 4096), 0);
    assert_eq!(syncs(), s0, "no journal sync without FUA");
    for (i, kind) in [CMD_TRIM, CMD_WRITE_ZEROES].into_iter().enumerate() {
        let before = syncs();
        let off = (2 + i as u64) * 4096;
        assert_eq!(c.call(kind, FLAG_FUA, off, 4096, &[]).0, 0);
        assert!(
            syncs() > before,
            "command {kind} with FUA: replied before a sync"
        );
    }
    assert_eq!(c.read(0, 4 * 4096).unwrap(), vec![0u8; 4 * 4096]);
    drop(c);
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap().unwrap();
    Arc::try_unwrap(vol)
        .ok()
        .expect("the server let go of the volume")
        .close()
        .unwrap();
}

#[test]
fn connections_share_flush_and_data_survive_sigkill() {
    let env = Env::with_image();
    let server = env.serve(&[]);
    let sock = env.sock();
    const CONNS: u64 = 4;
    const WRITES: u64 = 32;
    const LEN: u64 = 64 << 10;
    // Each connection writes its own region, pipelined.
    let writers: Vec<_> = (0..CONNS)
        .map(|k| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = Client::open(&sock);
                for i in 0..WRITES {
                    let off = (k * WRITES + i) * LEN;
                    c.send(
                        CMD_WRITE,
                        0,
                        i,
                        off,
                        LEN as u32,
                        &common::pattern(k * 1000 + i, LEN as usize),
                    );
                }
                for _ in 0..WRITES {
                    assert_eq!(c.recv(|_| 0).0, 0);
                }
                c
            })
        })
        .collect();
    let mut clients: Vec<Client> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    // One FLUSH, on the last connection, covers every connection's writes
    // (CAN_MULTI_CONN); a read on another connection sees all of them.
    assert_eq!(clients[3].flush(), 0);
    let check = |c: &mut Client| {
        for k in 0..CONNS {
            for i in 0..WRITES {
                let off = (k * WRITES + i) * LEN;
                assert!(
                    c.read(off, LEN as u32).unwrap() == common::pattern(k * 1000 + i, LEN as usize),
                    "connection {k} write {i}"
                );
            }
        }
    };
    check(&mut clients[0]);
    // A FUA write is durable without a flush.
    let fua = common::pattern(4242, 4096);
    assert_eq!(clients[1].write(SIZE - 4096, &fua, true), 0);
    // Kill -9 with the connections open; a new server recovers from the
    // journal.
    server.kill();
    drop(clients);
    let server = env.serve(&[]);
    let mut c = Client::open(&sock);
    check(&mut c);
    assert_eq!(c.read(SIZE - 4096, 4096).unwrap(), fua);
    drop(c);
    // SIGTERM: exit 0 with the image marked clean, the socket removed.
    assert!(server.stop());
    assert!(!sock.exists(), "the socket must be removed at exit");
    let out = env.cmd(&["info", "p/img"]).output().unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("clean yes"), "{info}");
}

#[test]
fn stop_finishes_requests_in_flight() {
    let env = Env::with_image();
    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    let data = common::pattern(9, 1 << 20);
    for k in 0..8u64 {
        c.send(CMD_WRITE, 0, k, k << 20, 1 << 20, &data);
    }
    c.send(CMD_FLUSH, 0, 8, 0, 0, &[]);
    server.signal(libc::SIGTERM);
    // Every request read before the stop is answered.
    let mut seen = Vec::new();
    for _ in 0..9 {
        let (e, cookie, _) = c.recv(|_| 0);
        assert_eq!(e, 0);
        seen.push(cookie);
    }
    seen.sort();
    assert_eq!(seen, (0..9).collect::<Vec<_>>());
    let mut server = server;
    assert!(server.child.wait().unwrap().success());
    // Written and closed cleanly.
    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    for k in 0..8u64 {
        assert!(c.read(k << 20, 1 << 20).unwrap() == data);
    }
    drop(c);
    assert!(server.stop());
}

#[test]
fn listen_checks() {
    let env = Env::with_image();
    let run = |args: &[&str]| {
        let out = env.cmd(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let m = run(&["serve-nbd", "p/img", "--listen", "0.0.0.0:0"]);
    assert!(
        m.contains("--allow-remote") && m.contains("authentication"),
        "{m}"
    );
    let m = run(&["serve-nbd", "p/img@snap1", "--listen", "127.0.0.1:0"]);
    assert!(m.contains("no snapshot 'snap1'"), "{m}");
    let m = run(&["serve-nbd", "p/nope", "--listen", "127.0.0.1:0"]);
    assert!(m.contains("p/nope"), "{m}");
    // A path that is not a socket is never replaced.
    let file = env.dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let m = run(&[
        "serve-nbd",
        "p/img",
        "--listen",
        &format!("unix:{}", file.display()),
    ]);
    assert!(m.contains("is not a socket"), "{m}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // A stale socket (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(env.sock()).unwrap());
    assert!(env.sock().exists());
    let server = env.serve(&[]);
    // A live one is not: a second server is refused (the socket answers).
    let m = run(&[
        "serve-nbd",
        "p/img",
        "--listen",
        &format!("unix:{}", env.sock().display()),
    ]);
    assert!(m.contains("in use"), "{m}");
    Client::open(&env.sock()).round_trip(0, 1);
    assert!(server.stop());
    // TCP on loopback, an ephemeral port: the printed address is usable.
    let server = env.serve_args(&["serve-nbd", "p/img", "--listen", "127.0.0.1:0"]);
    let rest = server
        .uri
        .strip_prefix("nbd://127.0.0.1:")
        .expect(&server.uri);
    let port: u16 = rest
        .strip_suffix("/img")
        .expect(&server.uri)
        .parse()
        .unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(u64_at(&g, 0), NBDMAGIC);
    drop(s);
    assert!(server.stop());
}

/// A snapshot is served read-only, without the image's lock: beside a
/// writable export of the image itself, it keeps the snapshot's content.
#[test]
fn snapshot_export_is_read_only_and_isolated() {
    let env = Env::with_image();
    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    let data = common::pattern(7, 1 << 20);
    assert_eq!(c.write(0, &data, true), 0);
    drop(c);
    assert!(server.stop());
    let out = env.cmd(&["snap", "create", "p/img@s1"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // The image, writable, on one socket; its snapshot on another.
    let server = env.serve(&[]);
    let snap_sock = env.dir.path().join("snap.sock");
    let listen = format!("unix:{}", snap_sock.display());
    let mut snap_server = env.serve_args(&["serve-nbd", "p/img@s1", "--listen", &listen]);
    assert!(
        snap_server.uri.contains("/img@s1?socket="),
        "{}",
        snap_server.uri
    );
    let mut live = Client::open(&env.sock());
    assert_eq!(live.write(0, &common::pattern(8, 1 << 20), true), 0);
    let mut s = Nego::connect(&snap_sock, true).go("img@s1");
    assert_eq!(s.tflags & READ_ONLY, READ_ONLY);
    assert_eq!(s.write(0, &[1u8; 4096], false), EPERM);
    assert_eq!(s.discard(CMD_TRIM, 0, 4096), EPERM);
    assert!(s.read(0, 1 << 20).unwrap() == data, "the snapshot changed");
    assert!(live.read(0, 1 << 20).unwrap() == common::pattern(8, 1 << 20));
    drop(s);
    drop(live);
    snap_server.assert_alive();
    assert!(snap_server.stop());
    assert!(server.stop());
}

/// Issue 13's reproduction from the command line: writes 1..12 are
/// journaled (one record each) and the server is killed before any
/// destage; record 5 never reached the disk (zeroed here, as a power cut
/// with a volatile cache leaves it). The next server replays 1..4; a new
/// write W (FUA, then FLUSH) goes where old write 7 was and lands in record
/// 5's place; a clean stop, another start: W must read back, and nothing of
/// the old writes 5..12.
#[test]
fn stale_journal_record_after_a_hole_never_replays() {
    let mut env = Env::with_image();
    // No batch is destaged before the kill.
    env.config = env.config.replacen('}', r#","flush_msec":600000}"#, 1);
    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    let data = |i: u64| common::pattern(1000 + i, 4096);
    for i in 1..=12u64 {
        assert_eq!(c.write(i * 4096, &data(i), false), 0);
    }
    server.kill();
    drop(c);
    // Record i (8 KiB: a header block and a data block) sits at
    // 8192 + (i - 1) * 8192, after the two superblock slots.
    let journal = env.path("wlog/p/img.wlog");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 8192], 8192 + 4 * 8192).unwrap();
    drop(f);

    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    for i in 1..=12u64 {
        let want = if i <= 4 { data(i) } else { vec![0u8; 4096] };
        assert!(
            c.read(i * 4096, 4096).unwrap() == want,
            "write {i} after the first restart"
        );
    }
    let w = common::pattern(77, 4096);
    assert_eq!(c.write(7 * 4096, &w, true), 0);
    assert_eq!(c.flush(), 0);
    drop(c);
    assert!(server.stop());

    let server = env.serve(&[]);
    let mut c = Client::open(&env.sock());
    assert!(
        c.read(7 * 4096, 4096).unwrap() == w,
        "the flushed write W was overwritten by a stale journal record"
    );
    for i in (5..=12u64).filter(|&i| i != 7) {
        assert_eq!(
            c.read(i * 4096, 4096).unwrap(),
            vec![0u8; 4096],
            "old write {i} came back"
        );
    }
    drop(c);
    assert!(server.stop());
}

// ---------------------------------------------------------------------------
// Hostile clients (issue 15): each scenario runs against a server with short
// deadlines and small memory budgets, beside a well-behaved client that
// reads 4 KiB at random offsets all along. Each asserts: the well-behaved
// client is served throughout (every read answered, correctly); the
// server's peak RSS stays within its memory budget plus a fixed allowance
// over its quiet baseline; a new client gets a slot; SIGTERM ends the
// server promptly and cleanly with the hostile clients still connected.
// Each prints the baseline and hostile p99 of the 4 KiB reads and the RSS.

/// The limits of the hostile-client tests.
const H_NEGOTIATE: u64 = 2;
const H_IDLE: u64 = 2;
const H_TRANSFER: u64 = 3;
const H_SHUTDOWN: u64 = 3;
const H_CONN_MEM: u64 = 16 << 20;
const H_MEM: u64 = 64 << 20;
const H_SLOTS: u64 = 16;
/// RSS allowed above the quiet baseline besides the payload budget: the
/// engine's batches and journal staging, the read cache's index, thread
/// stacks and socket buffers of the connections.
const H_RSS_ALLOWANCE: u64 = 160 << 20;

fn hostile_env() -> Env {
    let mut env = Env::with_image();
    let extra = format!(
        r#","nbd_negotiate_timeout_secs":{H_NEGOTIATE},"nbd_idle_timeout_secs":{H_IDLE},"nbd_transfer_timeout_secs":{H_TRANSFER},"nbd_shutdown_secs":{H_SHUTDOWN},"nbd_conn_memory_bytes":{H_CONN_MEM},"nbd_memory_bytes":{H_MEM},"nbd_max_connections":{H_SLOTS}}}"#
    );
    env.config.pop();
    env.config.push_str(&extra);
    env
}

/// (VmRSS, VmHWM) of `pid`, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// Reset the peak RSS (VmHWM) of `pid` to its current RSS.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn p99(lat: &mut [Duration]) -> Duration {
    lat.sort();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)]
}

/// The well-behaved client: 4 KiB reads at random offsets of the first
/// 1 MiB (written with a known pattern) until `stop`, each checked and
/// timed. A read that takes over 20 s fails the socket timeout (a panic).
fn good_reader(
    sock: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    min_reads: usize,
) -> std::thread::JoinHandle<Vec<Duration>> {
    // Connected before the hostile clients come.
    let mut c = Client::open(&sock);
    std::thread::spawn(move || {
        let data = common::pattern(77, 1 << 20);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut lat = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) || lat.len() < min_reads {
            let off = rng.gen_range(0..256u64) * 4096;
            let t = std::time::Instant::now();
            let got = c.read(off, 4096).expect("a well-behaved read failed");
            lat.push(t.elapsed());
            assert!(got == data[off as usize..][..4096], "read at {off}");
            std::thread::sleep(Duration::from_millis(2));
        }
        lat
    })
}

/// Connect and GO (requesting block sizes), or the I/O error of a refused
/// connection.
fn try_open(sock: &Path) -> std::io::Result<Client> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut g = [0u8; 18];
    s.read_exact(&mut g)?;
    s.write_all(&3u32.to_be_bytes())?;
    let data = Nego::info_data("img", &[3]);
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(&data);
    s.write_all(&b)?;
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h)?;
        let mut d = vec![0u8; u32_at(&h, 16) as usize];
        s.read_exact(&mut d)?;
        match u32_at(&h, 12) {
            REP_INFO => {}
            REP_ACK => break,
            e => panic!("GO refused with {e:#x}"),
        }
    }
    Ok(Client {
        s,
        size: SIZE,
        tflags: 0,
    })
}

/// A client that connects while the hostile ones hold their connections
/// must get a slot within `within` (retrying while it is refused).
fn newcomer_gets_in(sock: &Path, within: Duration) {
    let t = std::time::Instant::now();
    loop {
        if let Ok(mut c) = try_open(sock) {
            c.read(0, 4096).unwrap();
            return;
        }
        assert!(
            t.elapsed() < within,
            "a new client got no slot within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Run `hostile` (which returns what must stay alive until the server
/// stops) beside the well-behaved client, then check memory, service and
/// shutdown. `journal_delay_ms`: LSVD_FAULT_JOURNAL_DELAY_MS for the server.
fn hostile_scenario(
    name: &str,
    journal_delay_ms: u64,
    expect_log: &[&str],
    hostile: impl FnOnce(&Path) -> Box<dyn FnOnce()>,
) {
    let env = hostile_env();
    let listen = format!("unix:{}", env.sock().display());
    let mut cmd = env.cmd(&["serve-nbd", "p/img", "--listen", &listen]);
    cmd.env("LSVD_FAULT_JOURNAL_DELAY_MS", journal_delay_ms.to_string());
    let mut server = env.serve_cmd(cmd);
    let pid = server.child.id();
    // A failed check must not leave the server running.
    struct KillOnPanic(u32);
    impl Drop for KillOnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                // SAFETY: a plain syscall on our child's pid.
                unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
            }
        }
    }
    let _guard = KillOnPanic(pid);
    let sock = env.sock();
    {
        let mut c = Client::open(&sock);
        assert_eq!(c.write(0, &common::pattern(77, 1 << 20), false), 0);
        assert_eq!(c.flush(), 0);
    }
    // Quiet baseline.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut base_lat = good_reader(sock.clone(), stop, 300).join().unwrap();
    let base_rss = rss(pid).0;
    reset_peak(pid);
    // Hostile phase, the well-behaved client reading throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = good_reader(sock.clone(), stop.clone(), 50);
    let held = hostile(&sock);
    newcomer_gets_in(&sock, Duration::from_secs(H_NEGOTIATE + H_IDLE + 10));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut lat = good.join().unwrap();
    server.assert_alive();
    let peak = rss(pid).1;
    // SIGTERM with the hostile clients still connected.
    let t = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    let st = server.child.wait().unwrap();
    let stop_time = t.elapsed();
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    eprintln!(
        "HOSTILE {name}: rss quiet {} MiB, peak {} MiB (budget {} MiB + allowance {} MiB); \
         4K read p99 quiet {:?} ({} reads), hostile {:?} ({} reads); stop {:?}",
        base_rss >> 20,
        peak >> 20,
        H_MEM >> 20,
        H_RSS_ALLOWANCE >> 20,
        p99(&mut base_lat),
        base_lat.len(),
        p99(&mut lat),
        lat.len(),
        stop_time
    );
    assert!(st.success(), "the server did not stop cleanly: {log}");
    assert!(
        stop_time < Duration::from_secs(H_SHUTDOWN + 15),
        "stop took {stop_time:?}: {log}"
    );
    assert!(
        peak <= base_rss + H_MEM + H_RSS_ALLOWANCE,
        "peak RSS {peak} over quiet {base_rss} + budget + allowance"
    );
    for e in expect_log {
        assert!(log.contains(e), "the server log lacks '{e}': {log}");
    }
    // Served throughout: no read waited for a hostile client's deadline
    // (a client over its budget holds back only itself).
    let worst = lat.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_secs(H_TRANSFER),
        "a well-behaved 4 KiB read waited {worst:?}, as long as a hostile client's deadline"
    );
    held()
}

/// 100 connections that never negotiate, and 100 that negotiate and then
/// send nothing: the first are closed at the handshake deadline, the
/// second give their slots to newcomers once idle.
#[test]
fn hostile_idle_connections() {
    hostile_scenario(
        "idle",
        0,
        &[
            "handshake not finished within 2s",
            "idle for",
            "slots are taken",
        ],
        |sock| {
            let mut held = Vec::new();
            for _ in 0..100 {
                if let Ok(s) = UnixStream::connect(sock) {
                    held.push(s);
                }
            }
            std::thread::sleep(Duration::from_secs(H_NEGOTIATE + 1));
            // Every one of them was closed at its handshake deadline (or
            // refused: the slots were taken).
            for s in &mut held {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut g = [0u8; 64];
                let mut n = 0;
                loop {
                    match s.read(&mut g) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                assert!(n <= 18, "only the greeting was sent");
            }
            // Idle after a full handshake: they hold slots until newcomers need
            // them (then the longest idle goes).
            let mut idle = Vec::new();
            for _ in 0..100 {
                if let Ok(c) = try_open(sock) {
                    idle.push(c);
                }
            }
            assert!(!idle.is_empty());
            std::thread::sleep(Duration::from_secs(H_IDLE + 1));
            Box::new(move || drop((held, idle)))
        },
    );
}

/// A slowloris: one byte a second, in the handshake and in a write's
/// payload. Both are closed at their deadlines.
#[test]
fn hostile_slowloris() {
    hostile_scenario(
        "slowloris",
        0,
        &["handshake not finished", "payload did not arrive within 3s"],
        |sock| {
            let mut hs = UnixStream::connect(sock).unwrap();
            let mut w = Client::open(sock);
            let mut hdr = REQUEST_MAGIC.to_be_bytes().to_vec();
            hdr.extend_from_slice(&0u16.to_be_bytes());
            hdr.extend_from_slice(&CMD_WRITE.to_be_bytes());
            hdr.extend_from_slice(&1u64.to_be_bytes());
            hdr.extend_from_slice(&(2u64 << 20).to_be_bytes());
            hdr.extend_from_slice(&(1u32 << 20).to_be_bytes());
            w.s.write_all(&hdr).unwrap();
            let t = std::time::Instant::now();
            let (mut hs_open, mut w_open) = (true, true);
            while hs_open || w_open {
                assert!(
                    t.elapsed() < Duration::from_secs(H_NEGOTIATE.max(H_TRANSFER) + 10),
                    "a slowloris is still connected after {:?}",
                    t.elapsed()
                );
                std::thread::sleep(Duration::from_secs(1));
                if hs_open {
                    hs_open = hs.write_all(&[0]).is_ok();
                }
                if w_open {
                    w_open = w.s.write_all(&[0xab]).is_ok();
                }
            }
            Box::new(move || drop((hs, w)))
        },
    );
}

/// Clients that send reads and never read the replies: each is held to
/// its memory budget (its socket is not read), and closed once a reply
/// cannot be sent within the transfer deadline.
#[test]
fn hostile_non_reader() {
    hostile_scenario("non-reader", 0, &["the client does not read"], |sock| {
        let mut held = Vec::new();
        for (k, len) in [(0u64, 32u32 << 20), (1, 1 << 20)] {
            let c = Client::open(sock);
            let mut s = c.s.try_clone().unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let t = std::thread::spawn(move || {
                // Until the server stops reading (budget) or closes us.
                for i in 0..10_000u64 {
                    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
                    b.extend_from_slice(&0u16.to_be_bytes());
                    b.extend_from_slice(&CMD_READ.to_be_bytes());
                    b.extend_from_slice(&(k << 32 | i).to_be_bytes());
                    b.extend_from_slice(&0u64.to_be_bytes());
                    b.extend_from_slice(&len.to_be_bytes());
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
            });
            held.push((c, t));
        }
        std::thread::sleep(Duration::from_secs(H_TRANSFER + 2));
        Box::new(move || {
            for (c, t) in held {
                drop(c);
                t.join().unwrap();
            }
        })
    });
}

/// 1 GiB of writes (1 MiB each, 64 in flight) sent as fast as the server
/// takes them, against a journal that holds every completion 20 ms.
#[test]
fn hostile_write_flood() {
    hostile_scenario(
        "write flood",
        20,
        &["journal completion is delayed"],
        |sock| {
            let c = Client::open(sock);
            let mut tx = c.s.try_clone().unwrap();
            let mut rx = c;
            let total: u64 = 1024;
            let sender = std::thread::spawn(move || {
                let data = vec![0x5au8; 1 << 20];
                for i in 0..total {
                    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
                    b.extend_from_slice(&0u16.to_be_bytes());
                    b.extend_from_slice(&CMD_WRITE.to_be_bytes());
                    b.extend_from_slice(&i.to_be_bytes());
                    b.extend_from_slice(&((2 << 20) + (i % 60) * (1 << 20)).to_be_bytes());
                    b.extend_from_slice(&(1u32 << 20).to_be_bytes());
                    tx.write_all(&b).unwrap();
                    tx.write_all(&data).unwrap();
                }
            });
            for _ in 0..total {
                let (e, _, _) = rx.recv(|_| 0);
                assert_eq!(e, 0);
            }
            sender.join().unwrap();
            Box::new(move || drop(rx))
        },
    );
}

/// Garbage after the server's greeting, and after a handshake.
#[test]
fn hostile_garbage_after_the_magic() {
    hostile_scenario("garbage", 0, &["bad magic"], |sock| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for i in 0..60 {
            let junk: Vec<u8> = (0..rng.gen_range(1..200_000)).map(|_| rng.gen()).collect();
            if i % 2 == 0 {
                let mut s = UnixStream::connect(sock).unwrap();
                let mut g = [0u8; 18];
                s.read_exact(&mut g).unwrap();
                let _ = s.write_all(&junk);
            } else {
                let mut c = Client::open(sock);
                let _ = c.s.write_all(&junk);
            }
        }
        Box::new(|| ())
    });
}

/// A client that did not negotiate block sizes (`NBD_OPT_EXPORT_NAME`) is
/// served at any byte alignment (read-modify-write); one that did gets
/// EINVAL for misaligned requests.
#[test]
fn misaligned_requests_follow_the_block_size_negotiation() {
    let env = Env::with_image();
    let server = env.serve(&[]);
    let sock = env.sock();
    let mut n = Nego::connect(&sock, true);
    n.send_opt(OPT_EXPORT_NAME, b"img");
    let mut b = [0u8; 10];
    n.s.read_exact(&mut b).unwrap();
    let mut legacy = Client {
        size: SIZE,
        tflags: u16_at(&b, 8),
        s: n.s,
    };
    let mut oracle = vec![0u8; 64 << 10];
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for round in 0..200u64 {
        let off = rng.gen_range(0..(60u64 << 10));
        let len = rng.gen_range(1..4000u32);
        match round % 3 {
            0 | 1 => {
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                assert_eq!(legacy.write(off, &data, round % 2 == 0), 0);
                oracle[off as usize..][..len as usize].copy_from_slice(&data);
            }
            _ => {
                assert_eq!(legacy.discard(CMD_WRITE_ZEROES, off, len), 0);
                oracle[off as usize..][..len as usize].fill(0);
            }
        }
        let got = legacy.read(off, len).unwrap();
        assert!(
            got == oracle[off as usize..][..len as usize],
            "round {round}"
        );
    }
    assert!(legacy.read(0, 64 << 10).unwrap() == oracle);
    // A misaligned trim is accepted (it trims the whole blocks inside).
    assert_eq!(legacy.discard(CMD_TRIM, 100, 5000), 0);
    // GO with NBD_INFO_BLOCK_SIZE requested: the client promised.
    let mut strict = Client::open(&sock);
    assert_eq!(strict.read(1, 512), Err(EINVAL));
    assert_eq!(strict.write(512, &[1u8; 100], false), EINVAL);
    assert_eq!(strict.discard(CMD_WRITE_ZEROES, 3, 512), EINVAL);
    assert_eq!(strict.discard(CMD_TRIM, 512, 3), EINVAL);
    // Zero-length at a misaligned offset is misaligned too.
    assert_eq!(strict.read(3, 0), Err(EINVAL));
    assert_eq!(strict.write(3, &[], false), EINVAL);
    assert!(strict.read(4096, 512).is_ok());
    // GO without it: served at any alignment.
    let mut n = Nego::connect(&sock, true);
    let infos = n.info(OPT_GO, "img", &[]).unwrap();
    assert!(
        infos.iter().any(|(t, _)| *t == 3),
        "block sizes sent anyway"
    );
    let mut loose = Client {
        size: SIZE,
        tflags: 0,
        s: n.s,
    };
    assert_eq!(loose.write(7, b"hello", false), 0);
    assert_eq!(
        loose.read(5, 9).unwrap(),
        [oracle[5], oracle[6], b'h', b'e', b'l', b'l', b'o', oracle[12], oracle[13]]
    );
    drop((legacy, strict, loose));
    assert!(server.stop());
}

/// SIGTERM while a client neither reads its replies nor disconnects (and
/// its transfer deadline is far off): the server closes it after
/// `nbd_shutdown_secs` and exits cleanly, instead of waiting for it.
#[test]
fn stop_is_bounded_with_a_client_that_does_not_read() {
    let mut env = Env::with_image();
    env.config.pop();
    env.config
        .push_str(r#","nbd_shutdown_secs":2,"nbd_transfer_timeout_secs":600}"#);
    let mut server = env.serve(&[]);
    let sock = env.sock();
    let mut c = Client::open(&sock);
    // Reads whose replies fill the socket buffers and then the budget.
    for i in 0..64u64 {
        c.send(CMD_READ, 0, i, 0, 32 << 20, &[]);
    }
    std::thread::sleep(Duration::from_secs(1));
    server.assert_alive();
    let t = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    let st = server.child.wait().unwrap();
    let took = t.elapsed();
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(st.success(), "{log}");
    assert!(log.contains("still open after 2s"), "{log}");
    assert!(
        took < Duration::from_secs(2 + 15),
        "stop took {took:?}: {log}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "the client had its 2 s: {took:?}"
    );
    drop(c);
}

impl Env {
    /// `lsvd-ublk --config CONFIG ARGS...` with another configuration.
    fn cmd_with(&self, config: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lsvd-ublk"));
        c.current_dir(self.dir.path())
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("LSVD_LOG");
        c
    }

    /// [`Env::cmd`] run as user and group 65534 (nobody), no other groups.
    fn cmd_as_nobody(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("setpriv");
        c.current_dir(self.dir.path())
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_lsvd-ublk"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("LSVD_LOG");
        c
    }

    /// Write `data` at offset 0 through a writable server, stop it, and
    /// take snapshots `s1` and `s2`; `s1` is then read once (an export),
    /// which leaves its reader-lock file behind, `s2` never is.
    fn with_snapshots(data: &[u8]) -> Env {
        let env = Env::with_image();
        let server = env.serve(&[]);
        let mut c = Client::open(&env.sock());
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            assert_eq!(c.write((i as u64) << 20, piece, true), 0);
        }
        drop(c);
        assert!(server.stop());
        for snap in ["p/img@s1", "p/img@s2"] {
            let out = env.cmd(&["snap", "create", snap]).output().unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let out = env.cmd(&["export", "p/img@s1", "-"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_image(&out.stdout, data);
        assert!(env.path("store/p/.lock.lsvd:s.img@s1").exists());
        assert!(!env.path("store/p/.lock.lsvd:s.img@s2").exists());
        env
    }
}

/// `got` is the whole image: `data` at offset 0, zeros after it.
fn assert_image(got: &[u8], data: &[u8]) {
    assert_eq!(got.len() as u64, SIZE);
    assert!(got[..data.len()] == *data, "the data differs");
    assert!(
        got[data.len()..].iter().all(|&b| b == 0),
        "the tail is not zero"
    );
}

/// Read `len` bytes from offset 0 in 1 MiB requests.
fn read_all(c: &mut Client, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let n = (len - out.len()).min(1 << 20);
        out.extend(c.read(out.len() as u64, n as u32).unwrap());
    }
    out
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// A read-only view of a directory: a bind mount remounted read-only,
/// lazily unmounted at drop.
struct RoMount(PathBuf);

impl RoMount {
    /// Mount `src` read-only at `dst`; `None` where mounting is not
    /// permitted (not root, or a container without CAP_SYS_ADMIN).
    fn new(src: &Path, dst: &Path) -> Option<RoMount> {
        std::fs::create_dir_all(dst).unwrap();
        let mount = |args: &[&std::ffi::OsStr]| {
            std::process::Command::new("mount")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !mount(&["--bind".as_ref(), src.as_os_str(), dst.as_os_str()]) {
            return None;
        }
        let m = RoMount(dst.to_owned());
        mount(&["-o".as_ref(), "remount,bind,ro".as_ref(), dst.as_os_str()]).then_some(m)
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 17 item 11: a snapshot is read from a store mounted read-only.
/// `export` and `serve-nbd` of it work, whether its reader-lock file exists
/// (`s1`: then the lock is taken, on a read-only descriptor) or not (`s2`:
/// read without it, with a warning), and so do `info`, `ls` and `snap ls`;
/// `create` fails with a permission error. A writer, which cannot see the
/// lockless reader, may remove the snapshot and GC its objects: the
/// reader's reads then fail with EIO, never with other data.
#[test]
fn snapshot_reads_from_a_read_only_store() {
    let data = common::pattern(21, 3 << 20);
    let env = Env::with_snapshots(&data);
    let ro = env.path("ro");
    let Some(_mount) = RoMount::new(&env.path("store"), &ro) else {
        eprintln!(
            "skipped: cannot bind-mount read-only here (not root?); \
             snapshot_reads_as_a_user_without_write_access covers the unprivileged reader"
        );
        return;
    };
    let e = std::fs::File::create(ro.join("p/probe")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let config = env.config.replace("/store\"", "/ro\"");
    assert_ne!(config, env.config);
    let before = names(&ro.join("p"));
    for snap in ["s1", "s2"] {
        let spec = format!("p/img@{snap}");
        let out = env
            .cmd_with(&config, &["export", &spec, "-"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "export {spec}: {stderr}");
        assert_image(&out.stdout, &data);
        assert_eq!(
            stderr.contains("without its reader lock"),
            snap == "s2",
            "{spec}: {stderr}"
        );
    }
    let run = |args: &[&str]| {
        let out = env.cmd_with(&config, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let info = run(&["info", "p/img"]);
    assert!(
        info.contains("snapshot s1") && info.contains("snapshot s2"),
        "{info}"
    );
    assert_eq!(run(&["ls", "p"]).trim(), "img");
    assert!(run(&["snap", "ls", "p/img"]).contains("s2"));
    let out = env
        .cmd_with(&config, &["create", "p/new", "--size", "1M"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("lsvd-ublk: error: ")
            && stderr.contains("permission denied")
            && stderr.contains("Read-only file system"),
        "{stderr}"
    );

    // Served from the read-only store, without a read cache: every read
    // goes to the store.
    let sock = env.path("snap.sock");
    let listen = format!("unix:{}", sock.display());
    let no_cache = config.replacen('{', r#"{"no_rcache":true,"#, 1);
    let mut server =
        env.serve_cmd(env.cmd_with(&no_cache, &["serve-nbd", "p/img@s2", "--listen", &listen]));
    let mut c = Nego::connect(&sock, true).go("img@s2");
    assert_eq!(c.tflags & READ_ONLY, READ_ONLY);
    assert!(read_all(&mut c, data.len()) == data, "served data differs");
    assert_eq!(names(&ro.join("p")), before, "a reader changed the store");

    // A writer overwrites the image and removes both snapshots (it cannot
    // see the lockless reader of s2), and GC deletes their objects. (The
    // reader's log keeps its inode under a name of its own.)
    std::fs::rename(&server.log, env.path("reader.log")).unwrap();
    server.log = env.path("reader.log");
    let writer = env.serve(&[]);
    let mut w = Client::open(&env.sock());
    let new = common::pattern(22, data.len());
    for (i, piece) in new.chunks(1 << 20).enumerate() {
        assert_eq!(w.write((i as u64) << 20, piece, true), 0);
    }
    drop(w);
    assert!(writer.stop());
    for snap in ["p/img@s1", "p/img@s2"] {
        let out = env.cmd(&["snap", "rm", snap]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = env.cmd(&["gc", "p/img"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !env.path("store/p/img.0000000000000001").exists(),
        "GC kept the snapshot's first object: {:?}",
        names(&env.path("store/p"))
    );
    // The reader's reads of them now fail; nothing else is served.
    for off in [0u64, 1 << 20, 2 << 20] {
        assert_eq!(c.read(off, 4096), Err(EIO), "read at {off}");
    }
    server.assert_alive();
    drop(c);
    assert!(server.stop());
    let log = std::fs::read_to_string(env.path("reader.log")).unwrap();
    assert!(
        log.contains("NBD read at 0") && log.contains("probably removed"),
        "{log}"
    );
}

/// Issue 17 item 11: a user who may read the store but write nothing of
/// it (nor the journal or read-cache directories, nor read the cache)
/// exports and serves snapshots, with and without their reader-lock file,
/// and runs `info`, `ls` and `snap ls`; `create` and opening the image
/// itself fail with a permission error, and the store is left unchanged.
#[test]
fn snapshot_reads_as_a_user_without_write_access() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching to an unprivileged user needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let data = common::pattern(23, 3 << 20);
    let env = Env::with_snapshots(&data);
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    // The scratch directory is private (0700) when made: open it to all.
    // The store, journal and cache directories are root's, 0755; the
    // cache's pool directory is closed too, so `info` cannot read it.
    mode(env.dir.path(), 0o755).unwrap();
    mode(&env.path("rcache/p"), 0o700).unwrap();
    let before = names(&env.path("store/p"));
    for snap in ["s1", "s2"] {
        let spec = format!("p/img@{snap}");
        let out = env.cmd_as_nobody(&["export", &spec, "-"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "export {spec}: {stderr}");
        assert_image(&out.stdout, &data);
        assert_eq!(
            stderr.contains("without its reader lock"),
            snap == "s2",
            "{spec}: {stderr}"
        );
    }
    let run = |args: &[&str]| {
        let out = env.cmd_as_nobody(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let info = run(&["info", "p/img"]);
    assert!(
        info.contains("snapshot s2") && info.contains("read cache not readable"),
        "{info}"
    );
    assert!(run(&["info", "p/img", "--json"]).contains("\"cache_unreadable\""));
    assert_eq!(run(&["ls", "p"]).trim(), "img");
    assert!(run(&["snap", "ls", "p/img"]).contains("s1"));
    for args in [
        &["create", "p/new", "--size", "1M"][..],
        &["export", "p/img", "-"][..],
    ] {
        let out = env.cmd_as_nobody(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("lsvd-ublk: error: ")
                && stderr.contains("permission denied")
                && stderr.contains("Permission denied (os error 13)")
                && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    // serve-nbd, on a socket in a directory the user may write.
    let socks = env.path("socks");
    std::fs::create_dir(&socks).unwrap();
    mode(&socks, 0o777).unwrap();
    let sock = socks.join("snap.sock");
    let listen = format!("unix:{}", sock.display());
    for snap in ["s1", "s2"] {
        let spec = format!("p/img@{snap}");
        let mut server =
            env.serve_cmd(env.cmd_as_nobody(&["serve-nbd", &spec, "--listen", &listen]));
        let mut c = Nego::connect(&sock, true).go(&format!("img@{snap}"));
        assert_eq!(c.tflags & READ_ONLY, READ_ONLY);
        assert!(
            read_all(&mut c, data.len()) == data,
            "{spec}: served data differs"
        );
        drop(c);
        server.assert_alive();
        assert!(server.stop());
    }
    assert_eq!(
        names(&env.path("store/p")),
        before,
        "a reader changed the store"
    );
}
