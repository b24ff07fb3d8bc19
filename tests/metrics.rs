//! Live metrics end to end: the built binary runs `serve-nbd` on the host
//! (dir backend in a temporary directory, run directory `$LSVD_RUN_DIR`
//! there), a small NBD client written here does a known number of
//! requests of each type while other threads scrape `GET /metrics`, and
//! the scrapes are checked with a parser written here from the text
//! format's description (not the server's own): every line is a sample or
//! a comment, every family has `# HELP` and `# TYPE` before its samples,
//! counters end in `_total`, histogram buckets are cumulative and end in
//! `+Inf` equal to `_count`. Also: silent metrics clients do not block the
//! server, `metrics_listen` off / TCP / non-loopback, and `iostat`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

const SIZE: u64 = 64 << 20;

struct Env {
    cli: common::CliEnv,
}

impl Env {
    /// A scratch environment with the image `p/img`, and `extra` config
    /// keys (a JSON fragment such as `"metrics_listen":"off"`).
    fn new(extra: &str) -> Env {
        let mut cli = common::CliEnv::new();
        if !extra.is_empty() {
            cli.config = format!("{},{extra}}}", cli.config.trim_end_matches('}'));
        }
        let env = Env { cli };
        let out = env
            .cmd(&["create", "p/img", "--size", &SIZE.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        env
    }

    fn run_dir(&self) -> PathBuf {
        self.cli.path("run")
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.cli.cmd(args);
        c.env("LSVD_RUN_DIR", self.run_dir());
        c
    }

    /// `serve-nbd p/img` on a unix socket; waits for its address line.
    fn serve(&self) -> Server {
        let sock = self.cli.path("nbd.sock");
        let log = self.cli.path("server.log");
        let listen = format!("unix:{}", sock.display());
        let mut child = self
            .cmd(&["serve-nbd", "p/img", "--listen", &listen])
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
        let metrics = self
            .run_dir()
            .join(format!("nbd-{}.metrics.sock", child.id()));
        Server {
            child,
            sock,
            metrics,
            log,
        }
    }
}

struct Server {
    child: Child,
    sock: PathBuf,
    metrics: PathBuf,
    log: PathBuf,
}

impl Server {
    /// SIGTERM and wait; returns whether it exited 0 and how long it took.
    fn stop(mut self) -> (bool, Duration) {
        let t = Instant::now();
        // SAFETY: plain syscall on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(r, 0);
        let st = self.child.wait().unwrap();
        if !st.success() {
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        (st.success(), t.elapsed())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

// ---- A minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies).

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;

struct Nbd {
    s: UnixStream,
}

impl Nbd {
    fn open(sock: &Path) -> Nbd {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(u64::from_be_bytes(g[..8].try_into().unwrap()), NBDMAGIC);
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut opt = IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        let name = b"img";
        opt.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
        opt.extend_from_slice(name);
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt).unwrap();
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut d = vec![0u8; len as usize];
            s.read_exact(&mut d).unwrap();
            match kind {
                1 => return Nbd { s },
                3 => continue,
                e => panic!("NBD_OPT_GO failed: {e:#x}"),
            }
        }
    }

    /// One request and its reply's error (read data is consumed).
    fn call(&mut self, kind: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> u32 {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), REPLY_MAGIC);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        if err == 0 && kind == CMD_READ {
            let mut d = vec![0u8; len as usize];
            self.s.read_exact(&mut d).unwrap();
        }
        err
    }
}

// ---- The exposition: fetching and checking it.

/// `GET /metrics` over the unix socket `path`: the body of a 200 answer.
fn scrape(path: &Path) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    http_body(&resp)
}

fn http_body(resp: &str) -> String {
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP head");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    assert_eq!(len, body.len());
    body.to_owned()
}

/// Samples by `name{labels sorted}`.
type Samples = BTreeMap<String, f64>;

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Check `text` against the exposition format and return its samples.
fn check_format(text: &str) -> Samples {
    let mut help: HashMap<String, ()> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = Samples::new();
    // Histogram name -> (le, cumulative count) in order, and _count.
    let mut buckets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let (kw, name) = (p.next().unwrap(), p.next().expect("a name"));
            assert!(is_name(name), "{line}");
            match kw {
                "HELP" => {
                    assert!(!p.next().unwrap_or("").is_empty(), "empty help: {line}");
                    assert!(help.insert(name.into(), ()).is_none(), "HELP twice: {line}");
                }
                "TYPE" => {
                    let t = p.next().unwrap();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(help.contains_key(name), "TYPE before HELP: {line}");
                    assert!(types.insert(name.into(), t.into()).is_none(), "{line}");
                }
                _ => panic!("unknown comment {line}"),
            }
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "{line:?}");
        // name{k="v",...} value
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(is_name(name), "{line}");
        let mut lv: Vec<(String, String)> = Vec::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, r) = rest.split_once("=\"").expect("label=\"value\"");
            assert!(is_name(k), "{line}");
            let end = r.find('"').expect("closing quote");
            lv.push((k.into(), r[..end].into()));
            rest = r[end + 1..].strip_prefix(',').unwrap_or(&r[end + 1..]);
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let t = types
            .get(family)
            .unwrap_or_else(|| panic!("sample without TYPE: {line}"));
        if t == "counter" {
            assert!(family.ends_with("_total"), "counter not _total: {line}");
            assert!(value >= 0.0, "{line}");
        }
        let others: Vec<String> = lv
            .iter()
            .filter(|(k, _)| k != "le")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let key_base = format!("{family}{{{}}}", others.join(","));
        if t == "histogram" {
            if name.ends_with("_bucket") {
                let le = lv.iter().find(|(k, _)| k == "le").expect("le").1.clone();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                buckets
                    .entry(key_base.clone())
                    .or_default()
                    .push((le, value));
            } else if name.ends_with("_count") {
                counts.insert(key_base.clone(), value);
            }
        }
        let mut sorted = lv.clone();
        sorted.sort();
        let key = format!(
            "{name}{{{}}}",
            sorted
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(out.insert(key, value).is_none(), "duplicate sample: {line}");
    }
    for (h, bs) in &buckets {
        assert!(
            bs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{h}: {bs:?}"
        );
        let last = bs.last().unwrap();
        assert_eq!(last.0, f64::INFINITY, "{h} ends with +Inf");
        assert_eq!(Some(&last.1), counts.get(h), "{h}: +Inf bucket = _count");
    }
    assert!(!buckets.is_empty());
    out
}

fn get(s: &Samples, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:?}", s.keys().collect::<Vec<_>>()))
}

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counters_match_the_requests_done() {
    let env = Env::new("");
    let server = env.serve();
    wait_for(&server.metrics);
    let before = check_format(&scrape(&server.metrics));
    // Scrapes all through the I/O: each must be well formed.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (stop, path) = (stop.clone(), server.metrics.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                check_format(&scrape(&path));
                n += 1;
            }
            n
        })
    };
    let mut c = Nbd::open(&server.sock);
    let (writes, reads, flushes, trims, zeroes) = (37u64, 11u64, 5u64, 3u64, 2u64);
    for i in 0..writes {
        let fua = if i % 5 == 0 { FLAG_FUA } else { 0 };
        let data = common::pattern(i, 4096);
        assert_eq!(c.call(CMD_WRITE, fua, i * 4096, 4096, &data), 0);
    }
    for i in 0..reads {
        assert_eq!(c.call(CMD_READ, 0, i * 8192, 8192, &[]), 0);
    }
    // A read past the end: answered with an error.
    assert_ne!(c.call(CMD_READ, 0, SIZE, 4096, &[]), 0);
    for _ in 0..flushes {
        assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]), 0);
    }
    for i in 0..trims {
        assert_eq!(c.call(CMD_TRIM, 0, (1 << 20) + i * 65536, 65536, &[]), 0);
    }
    for i in 0..zeroes {
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, 0, (2 << 20) + i * 16384, 16384, &[]),
            0
        );
    }
    stop.store(true, Ordering::SeqCst);
    let scrapes = scraper.join().unwrap();
    assert!(scrapes > 0);
    let after = check_format(&scrape(&server.metrics));

    let delta = |key: &str| get(&after, key) - get(&before, key);
    for (op, n, bytes, errors) in [
        ("write", writes, writes * 4096, 0),
        ("read", reads + 1, reads * 8192, 1),
        ("flush", flushes, 0, 0),
        ("discard", trims, trims * 65536, 0),
        ("write_zeroes", zeroes, zeroes * 16384, 0),
    ] {
        let l = format!("{{op={op}}}");
        assert_eq!(
            delta(&format!("lsvd_io_requests_total{l}")),
            n as f64,
            "{op}"
        );
        assert_eq!(
            delta(&format!("lsvd_io_bytes_total{l}")),
            bytes as f64,
            "{op}"
        );
        assert_eq!(
            delta(&format!("lsvd_io_errors_total{l}")),
            errors as f64,
            "{op}"
        );
        assert_eq!(
            delta(&format!("lsvd_io_latency_seconds_count{l}")),
            n as f64,
            "{op}"
        );
        assert_eq!(
            delta(&format!(
                "lsvd_io_latency_seconds_bucket{{le=+Inf,op={op}}}"
            )),
            n as f64,
            "{op}"
        );
        assert!(
            delta(&format!("lsvd_io_latency_seconds_sum{l}")) > 0.0,
            "{op}"
        );
    }
    let info = after
        .keys()
        .find(|k| k.starts_with("lsvd_server_info{"))
        .unwrap();
    assert!(
        info.contains("image=p/img") && info.contains("frontend=nbd"),
        "{info}"
    );
    // The engine's side.
    assert!(get(&after, "lsvd_journal_capacity_bytes{}") > 0.0);
    assert!(delta("lsvd_volume_write_bytes_total{}") >= (writes * 4096) as f64);
    assert!(get(&after, "lsvd_backend_requests_total{op=get}") >= 1.0);
    for key in [
        "lsvd_journal_used_bytes{}",
        "lsvd_destage_backlog_bytes{}",
        "lsvd_destage_backlog_batches{}",
        "lsvd_cache_hits_total{}",
        "lsvd_cache_misses_total{}",
        "lsvd_gc_objects_deleted_total{}",
        "lsvd_gc_bytes_freed_total{}",
        "lsvd_backend_errors_total{op=put}",
    ] {
        get(&after, key);
    }
    let metrics = server.metrics.clone();
    let (ok, _) = server.stop();
    assert!(ok);
    assert!(!metrics.exists(), "the metrics socket is removed at exit");
}

#[test]
fn silent_metrics_clients_do_not_block_the_server() {
    let env = Env::new("");
    let server = env.serve();
    wait_for(&server.metrics);
    // More silent clients than the responder serves at once, one with
    // half a request head.
    let mut silent: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(&server.metrics).unwrap())
        .collect();
    silent[0].write_all(b"GET /metr").unwrap();
    let t = Instant::now();
    let mut c = Nbd::open(&server.sock);
    for i in 0..200u64 {
        assert_eq!(
            c.call(CMD_WRITE, 0, i * 4096, 4096, &common::pattern(i, 4096)),
            0
        );
    }
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]), 0);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "I/O took {:?}",
        t.elapsed()
    );
    // The silent ones are dropped after the request timeout (5 s): scrapes
    // work again although they never hang up.
    let t = Instant::now();
    let body = loop {
        let mut s = UnixStream::connect(&server.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        if !resp.is_empty() {
            break http_body(&resp);
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "scrapes never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let s = check_format(&body);
    assert_eq!(get(&s, "lsvd_io_requests_total{op=write}"), 200.0);
    // A stop with silent clients connected is prompt and clean.
    let more: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&server.metrics).unwrap())
        .collect();
    let (ok, took) = server.stop();
    assert!(ok);
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    drop((silent, more));
}

#[test]
fn iostat_shows_the_served_image() {
    let env = Env::new("");
    let server = env.serve();
    wait_for(&server.metrics);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, sock) = (stop.clone(), server.sock.clone());
        std::thread::spawn(move || {
            let mut c = Nbd::open(&sock);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(c.call(CMD_WRITE, 0, (i % 4096) * 4096, 4096, &[7; 4096]), 0);
                i += 1;
            }
            i
        })
    };
    let out = env
        .cmd(&["iostat", "p/img", "--interval", "1", "--count", "2"])
        .output()
        .unwrap();
    let all = env.cmd(&["iostat", "--count", "1"]).output().unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (i, l) in lines.iter().enumerate() {
        if i % 2 == 0 {
            assert!(l.starts_with("NAME") && l.contains("WR_LAT"), "{text}");
        } else {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols[0], "p/img", "{text}");
            let wr: f64 = cols[1].trim_end_matches("/s").parse().unwrap();
            assert!(wr > 0.0, "writes were running: {text}");
        }
    }
    let text = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(all.status.success(), "{all:?}");
    assert!(text.lines().nth(1).unwrap().starts_with("p/img "), "{text}");
    let none = env
        .cmd(&["iostat", "p/other", "--count", "1"])
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no server of image p/other"));
    assert!(server.stop().0);
}

#[test]
fn metrics_listen_off_tcp_and_non_loopback() {
    // Off: no socket, the server works.
    let env = Env::new(r#""metrics_listen":"off""#);
    let server = env.serve();
    let mut c = Nbd::open(&server.sock);
    assert_eq!(c.call(CMD_WRITE, 0, 0, 4096, &[1; 4096]), 0);
    let socks: Vec<_> = std::fs::read_dir(env.run_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".metrics.sock"))
                .collect()
        })
        .unwrap_or_default();
    assert!(socks.is_empty(), "{socks:?}");
    drop(c);
    assert!(server.stop().0);

    // TCP on a loopback port chosen by the kernel: the log names it.
    let env = Env::new(r#""metrics_listen":"127.0.0.1:0""#);
    let server = env.serve();
    let log = server.log();
    let addr = log
        .split("metrics at http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"))
        .to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let samples = check_format(&http_body(&resp));
    get(&samples, "lsvd_io_requests_total{op=write}");
    assert!(server.stop().0);

    // A non-loopback address is refused when the configuration loads,
    // before anything is opened or served.
    let mut cli = common::CliEnv::new();
    cli.config = format!(
        r#"{},"metrics_listen":"0.0.0.0:9477"}}"#,
        cli.config.trim_end_matches('}')
    );
    let out = cli
        .cmd(&["serve-nbd", "p/img", "--listen", "unix:/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics_listen") && err.contains("not a loopback address"),
        "{err}"
    );
}
