//! Guarantee 9 at shutdown: `close`, `crash` and drop return in bounded
//! time while garbage collection waits for a put that can never succeed
//! (a GC object the store always refuses, then every put refused: the
//! backend is down). Each ending runs on its own thread, so a hang fails
//! the test instead of hanging it.

mod common;

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lsvd::backend::{FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::volume::image::create_image;
use lsvd::volume::{Volume, VolumeOptions};
use lsvd::ErrorKind;

use common::pattern;

const SIZE: u64 = 4 << 20;

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, c: &Config) -> Volume {
    Volume::open(VolumeOptions {
        config: Config {
            rcache_dir: dir.join("rcache"),
            rcache_bytes: 4 << 20,
            ..c.clone()
        },
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap()
}

/// Aggressive background GC and `io_timeout_msec` of `timeout`.
fn config(timeout: Duration) -> Config {
    Config {
        gc_threshold: 90,
        gc_interval_msec: 10,
        gc_rate_bytes: 0,
        io_timeout_msec: timeout.as_millis() as u64,
        ..common::small_config()
    }
}

/// An open volume whose background GC has submitted an object the store
/// refuses for good, with every later put refused too for `settle` before
/// this returns. Returns the volume, the store without faults and the image
/// as acknowledged.
fn gc_stuck_on_a_put(
    dir: &Path,
    c: &Config,
    settle: Duration,
) -> (Volume, Arc<dyn ObjectStore>, Arc<FaultStore>, Vec<u8>) {
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let fault = Arc::new(FaultStore::new(mem.clone(), 5));
    fault.add_rule(
        FaultRule::fail(FaultOp::Put, ErrorKind::Io)
            .data_starting_with(lsvd::format::gcobject::MAGIC),
    );
    let store: Arc<dyn ObjectStore> = fault.clone();
    let v = open(&store, dir, c);
    let mut model = vec![0u8; SIZE as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    // Overwrites make sparse objects until GC tries to put its first one.
    // Every 8th write goes to a block of the upper three quarters, each
    // written once per 6,144 writes: every object keeps some live data, so
    // GC must copy it into a GC object rather than only delete objects that
    // died whole (with overwrites alone, a fast machine kills every object
    // before GC looks at it, and no GC object is ever put).
    while fault.counts().injected_for(FaultOp::Put) == 0 {
        assert!(
            Instant::now() < deadline,
            "GC never put an object: {:?}",
            v.stats()
        );
        let block = if i % 8 == 7 {
            256 + (i / 8) % 768
        } else {
            i * 7919 % 256
        };
        let off = block * 4096;
        let d = pattern(i, 4096);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&d);
        i += 1;
        if i.is_multiple_of(64) {
            v.flush().unwrap();
        }
    }
    // The backend goes down: no put succeeds any more.
    fault.add_rule(FaultRule::fail(FaultOp::Put, ErrorKind::Io));
    // The put workers and GC settle into their retries and waits.
    std::thread::sleep(settle);
    (v, mem, fault, model)
}

/// Run `f` on a thread; its result and how long it took, or a test failure
/// (never a hang) if it has not returned within `limit`.
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = f();
        let _ = tx.send((r, t0.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok(x) => x,
        Err(_) => panic!("{what} did not return within {limit:?}: it hangs"),
    }
}

/// The journal kept every acknowledged write: reopened on the healthy
/// store, the image is as written.
fn assert_image(mem: &Arc<dyn ObjectStore>, dir: &Path, c: &Config, model: &[u8], what: &str) {
    let v = open(mem, dir, c);
    let mut buf = vec![1u8; SIZE as usize];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "{what}: reopened image differs");
    v.close().unwrap();
}

#[test]
fn close_returns_an_error_within_io_timeout_while_gc_waits_on_a_failing_put() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let timeout = Duration::from_secs(2);
    let c = config(timeout);
    let (v, mem, fault, model) = gc_stuck_on_a_put(dir.path(), &c, Duration::from_millis(300));
    let (r, took) = bounded("close", timeout + Duration::from_secs(5), move || v.close());
    let e = r.expect_err("close cannot destage past a GC object that is never put");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(
        e.to_string().contains("img"),
        "the error names the image: {e}"
    );
    assert!(took < timeout + Duration::from_secs(5), "{took:?}");
    assert!(fault.counts().injected_for(FaultOp::Put) > 1);
    assert_image(&mem, dir.path(), &c, &model, "after the failed close");
}

#[test]
fn crash_and_drop_return_promptly_while_gc_waits_on_a_failing_put() {
    // A long io_timeout: returning promptly must not depend on it.
    let timeout = Duration::from_secs(30);
    let c = config(timeout);
    for ending in ["crash", "drop"] {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        // Long enough for the put retries to back off to their longest
        // sleep (2 s), which a stop must not sit out.
        let (v, mem, _fault, model) = gc_stuck_on_a_put(dir.path(), &c, Duration::from_secs(3));
        let ((), took) = bounded(ending, Duration::from_secs(5), move || {
            if ending == "crash" {
                v.crash()
            } else {
                drop(v)
            }
        });
        assert!(took < Duration::from_secs(1), "{ending} took {took:?}");
        assert_image(&mem, dir.path(), &c, &model, ending);
    }
}

/// Issue 17, bug 5: a close that times out on a full store says that the
/// journal keeps every write for the next open, except on a volume whose
/// caller removes the image when it fails (`import`, `set_disposable`),
/// where that would contradict "the partly written image was removed".
#[test]
fn a_disposable_volume_does_not_promise_a_replay() {
    for disposable in [false, true] {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        create_image(mem.as_ref(), "img", SIZE).unwrap();
        let fault = Arc::new(FaultStore::new(mem.clone(), 5));
        let store: Arc<dyn ObjectStore> = fault.clone();
        let v = open(&store, dir.path(), &config(Duration::from_millis(500)));
        // The store is full from here on.
        fault.add_rule(FaultRule::fail(FaultOp::Put, ErrorKind::NoSpace));
        if disposable {
            v.set_disposable();
        }
        v.write(0, &pattern(1, 256 << 10)).unwrap();
        let e = v
            .close()
            .expect_err("every put fails: the close cannot finish");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert_eq!(
            e.to_string().contains("journal keeps every write"),
            !disposable,
            "disposable {disposable}: {e}"
        );
    }
}
