//! End-to-end data checksums (DESIGN point 11): a flipped bit in an object
//! stored in the backend is an error on every read, is never cached, and is
//! never copied by GC into a new object with a valid checksum.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use lsvd::backend::{MemStore, ObjectStore, StoreLock};
use lsvd::config::Config;
use lsvd::format::gcobject::{self, GcHeader};
use lsvd::format::object::{self, ObjectHeader, OpKind};
use lsvd::format::superblock::{Superblock, INCOMPAT_CHUNK_CRCS};
use lsvd::units::ObjSeq;
use lsvd::volume::image::{create_image, object_name, parse_object_name};
use lsvd::volume::scrub::Scrub;
use lsvd::volume::{rcache_path, Volume, VolumeOptions};
use lsvd::ErrorKind;

use common::pattern;

const SIZE: u64 = 8 << 20;

fn config(no_rcache: bool) -> Config {
    Config {
        no_gc: true,
        no_rcache,
        gc_threshold: 90,
        gc_buffer_bytes: 128 << 10,
        // FLUSH waits for the backend, so everything is in objects.
        hard_flush: true,
        ..common::small_config()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, c: &Config) -> Volume {
    let mut c = c.clone();
    c.rcache_dir = dir.join("rcache");
    c.rcache_bytes = 4 << 20;
    Volume::open(VolumeOptions {
        config: c,
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap()
}

/// Close, drop the read cache file (so reads go to the store) and reopen.
fn reopen_cold(v: Volume, store: &Arc<dyn ObjectStore>, dir: &Path, c: &Config) -> Volume {
    v.close().unwrap();
    let _ = std::fs::remove_file(rcache_path(&dir.join("rcache"), "img"));
    open(store, dir, c)
}

fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(store.as_ref(), "img", SIZE).unwrap();
    (dir, store)
}

/// The header of object `seq` if it is a data object.
fn data_header(store: &Arc<dyn ObjectStore>, seq: ObjSeq) -> Option<ObjectHeader> {
    let name = object_name("img", seq);
    let b = store.get(&name, 0, 1 << 20).ok()?;
    (b.len() >= 8 && &b[..8] == object::MAGIC).then(|| ObjectHeader::decode(&b).unwrap())
}

/// Every GC object in the store, with its bytes.
fn gc_objects(store: &Arc<dyn ObjectStore>) -> Vec<(ObjSeq, GcHeader, Vec<u8>)> {
    let mut out = Vec::new();
    for n in store.list("img.").unwrap() {
        let b = store.get(&n, 0, 64 << 20).unwrap();
        if b.len() >= 8 && &b[..8] == gcobject::MAGIC {
            let h = GcHeader::decode(&b).unwrap();
            out.push((parse_object_name("img", &n).unwrap(), h, b));
        }
    }
    out
}

/// The data object whose write covers disk byte `disk_off`, and the
/// object-relative offset of that byte in it (the newest such object).
fn object_holding(store: &Arc<dyn ObjectStore>, disk_off: u64) -> (ObjSeq, u64) {
    let sector = disk_off / 512;
    let mut found = None;
    for n in store.list("img.").unwrap() {
        // (The image's other names, its high-water mark, are no objects.)
        let Some(seq) = parse_object_name("img", &n) else {
            continue;
        };
        let Some(h) = data_header(store, seq) else {
            continue;
        };
        for op in &h.ops {
            if op.kind == OpKind::Write
                && (op.lba.0..op.lba.0 + op.sectors as u64).contains(&sector)
            {
                let off = u64::from(h.header_bytes)
                    + (u64::from(op.data_offset) + sector - op.lba.0) * 512
                    + disk_off % 512;
                found = Some((seq, off));
            }
        }
    }
    found.expect("an object holds the byte")
}

/// XOR `mask` into byte `off` of object `seq` in place.
fn flip(store: &Arc<dyn ObjectStore>, seq: ObjSeq, off: u64, mask: u8) {
    let name = object_name("img", seq);
    let mut b = store.get(&name, 0, 64 << 20).unwrap();
    b[off as usize] ^= mask;
    store.put(&name, &b).unwrap();
}

fn superblock(store: &Arc<dyn ObjectStore>) -> Superblock {
    Superblock::decode(&store.get("img", 0, 1 << 20).unwrap()).unwrap()
}

fn flipped_bit_is_an_error_not_data(no_rcache: bool) {
    let (dir, store) = setup();
    let c = config(no_rcache);
    let v = open(&store, dir.path(), &c);
    let data = pattern(1, 1 << 20);
    v.write(0, &data).unwrap();
    v.flush().unwrap();
    assert_ne!(
        superblock(&store).incompat & INCOMPAT_CHUNK_CRCS,
        0,
        "the superblock says objects have chunk crcs"
    );
    // A bit of disk byte 70000 rots in the store.
    let (seq, off) = object_holding(&store, 70_000);
    flip(&store, seq, off, 0x08);
    let v = reopen_cold(v, &store, dir.path(), &c);
    let before = v.stats();
    let mut buf = vec![0u8; 4096];
    let e = v.read(68 * 1024, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&object_name("img", seq)) && msg.contains("fails its checksum"),
        "{msg}"
    );
    let after = v.stats();
    assert!(after.corrupt_chunks > before.corrupt_chunks, "{after:?}");
    assert_eq!(
        after.cache_inserts, before.cache_inserts,
        "the bad chunk was not cached"
    );
    // Not served on a second read either (nothing of it was cached), but
    // the rest of the disk reads fine and verified.
    assert_eq!(
        v.read(68 * 1024, &mut buf).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    let mut all = vec![0u8; 1 << 20];
    assert_eq!(v.read(0, &mut all).unwrap_err().kind(), ErrorKind::Corrupt);
    let mut head = vec![0u8; 32 << 10];
    v.read(0, &mut head).unwrap();
    assert!(head[..] == data[..32 << 10]);
    let mut tail = vec![0u8; 512 << 10];
    v.read(512 << 10, &mut tail).unwrap();
    assert!(tail[..] == data[512 << 10..]);
    let st = v.stats();
    assert!(st.chunks_verified > 0, "{st:?}");
    assert_eq!(st.corrupt_chunks, after.corrupt_chunks + 2, "{st:?}");
    // The store heals (a repair): the same reads now succeed.
    flip(&store, seq, off, 0x08);
    v.read(0, &mut all).unwrap();
    assert!(all == data);
    v.close().unwrap();
}

#[test]
fn a_flipped_bit_in_a_data_object_is_an_error_and_never_cached() {
    flipped_bit_is_an_error_not_data(false);
}

#[test]
fn a_flipped_bit_in_a_data_object_is_an_error_without_a_cache() {
    flipped_bit_is_an_error_not_data(true);
}

/// Object A holds the first 256 KiB; all but its first 4 KiB is then
/// overwritten, so A is a GC victim with 4 KiB live. Returns the model.
fn sparse_first_object(v: &Volume) -> Vec<u8> {
    let mut model = pattern(2, 1 << 20);
    v.write(0, &model).unwrap();
    v.flush().unwrap();
    let over = pattern(3, (256 << 10) - 4096);
    v.write(4096, &over).unwrap();
    model[4096..256 << 10].copy_from_slice(&over);
    v.flush().unwrap();
    model
}

/// A bit flipped in live data of a GC victim: a forced GC refuses to copy
/// it (error naming the object; no GC object copies from it), the victim is
/// kept, and the data stays detectably bad, also after a reopen.
fn gc_refuses_a_bad_chunk(no_rcache: bool) {
    let (dir, store) = setup();
    let c = config(no_rcache);
    let v = open(&store, dir.path(), &c);
    let model = sparse_first_object(&v);
    let (victim, off) = object_holding(&store, 1000);
    flip(&store, victim, off, 0x01);
    let v = reopen_cold(v, &store, dir.path(), &c);
    let e = v.gc_now().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&object_name("img", victim)) && msg.contains("skipped"),
        "{msg}"
    );
    for (seq, h, bytes) in gc_objects(&store) {
        h.verify_data(&bytes).unwrap();
        assert!(
            h.moves.iter().all(|m| m.src_obj != victim),
            "GC object {seq:?} copied from the corrupt object: {:?}",
            h.moves
        );
    }
    assert!(store.stat(&object_name("img", victim)).unwrap().is_some());
    let mut buf = vec![0u8; 4096];
    assert_eq!(v.read(0, &mut buf).unwrap_err().kind(), ErrorKind::Corrupt);
    let mut rest = vec![0u8; (1 << 20) - 65536];
    v.read(65536, &mut rest).unwrap();
    assert!(rest[..] == model[65536..]);
    // The victim survives a reopen, still bad.
    let v = reopen_cold(v, &store, dir.path(), &c);
    assert_eq!(v.read(0, &mut buf).unwrap_err().kind(), ErrorKind::Corrupt);
    assert!(v.stats().corrupt_chunks > 0);
    v.close().unwrap();
}

#[test]
fn gc_refuses_to_copy_a_bad_chunk_and_it_stays_detectable() {
    gc_refuses_a_bad_chunk(false);
}

#[test]
fn gc_without_a_cache_refuses_to_copy_a_bad_chunk() {
    gc_refuses_a_bad_chunk(true);
}

/// The same victim without the flip is cleaned into a GC object; a bit
/// flipped in the GC object's data is then an error on read.
#[test]
fn a_flipped_bit_in_a_gc_object_is_an_error() {
    let (dir, store) = setup();
    let c = config(false);
    let v = open(&store, dir.path(), &c);
    let model = sparse_first_object(&v);
    let r = v.gc_now().unwrap();
    assert!(r.objects_cleaned > 0, "{r:?}");
    let gcs = gc_objects(&store);
    let (seq, h, _) = gcs
        .iter()
        .find(|(_, h, _)| h.moves.iter().any(|m| m.lba.0 == 0))
        .expect("a GC object holds LBA 0");
    assert!(h.chunk_crcs().is_some(), "GC objects are version 2");
    let m = h.moves.iter().find(|m| m.lba.0 == 0).unwrap();
    let off = u64::from(h.header_bytes) + u64::from(m.data_offset) * 512 + 100;
    flip(&store, *seq, off, 0x80);
    let v = reopen_cold(v, &store, dir.path(), &c);
    let mut buf = vec![0u8; 4096];
    let e = v.read(0, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains(&object_name("img", *seq)), "{e}");
    let mut rest = vec![0u8; (1 << 20) - 65536];
    v.read(65536, &mut rest).unwrap();
    assert!(rest[..] == model[65536..]);
    v.close().unwrap();
}

/// Scrub beside an open image whose GC deletes objects and whose
/// checkpoints retire pieces meanwhile: never a false "bad" (what went away
/// is counted as vanished), and once closed it scrubs clean and unchanged.
#[test]
fn scrub_beside_an_open_image_reports_no_false_corruption() {
    use lsvd::volume::scrub::Scrub;
    let (dir, store) = setup();
    let c = config(false);
    let v = open(&store, dir.path(), &c);
    v.write(0, &pattern(4, 2 << 20)).unwrap();
    v.flush().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let off = (i * 7919 % 500) * 4096;
                let d = pattern(100 + i, 4096);
                v.write(off, &d).unwrap();
                if i % 50 == 49 {
                    v.flush().unwrap();
                    v.gc_now().unwrap();
                }
                i += 1;
            }
        });
        // Scrub until GC has written a few objects (and so retired
        // checkpoints and deleted objects) meanwhile.
        let t0 = std::time::Instant::now();
        let mut scrubs = 0;
        while scrubs < 10
            || (v.stats().gc_objects < 3 && t0.elapsed() < std::time::Duration::from_secs(60))
        {
            let r = Scrub::plan(store.clone(), "img", "p/img")
                .unwrap()
                .run(2, &|_| {});
            assert!(r.clean(), "{r:?}");
            assert!(r.objects > 0, "{r:?}");
            scrubs += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(v.stats().gc_objects > 0, "GC ran during the scrubs");
    v.close().unwrap();
    let r = Scrub::plan(store.clone(), "img", "p/img")
        .unwrap()
        .run(1, &|_| {});
    assert!(r.clean() && !r.changed && r.vanished == 0, "{r:?}");
    assert!(r.chunks > 0 && r.checkpoints > 0, "{r:?}");
}

/// GC without a read cache (each read widened to whole chunks and
/// checked): everything it copies reads back exactly.
#[test]
fn gc_without_a_cache_copies_exactly() {
    let (dir, store) = setup();
    let c = config(true);
    let v = open(&store, dir.path(), &c);
    let mut model = pattern(5, 2 << 20);
    v.write(0, &model).unwrap();
    for i in 0..300u64 {
        let off = (i * 7919 % 512) * 4096;
        let d = pattern(1000 + i, 4096);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&d);
    }
    v.flush().unwrap();
    let r = v.gc_now().unwrap();
    assert!(r.objects_cleaned > 0 && r.bytes_copied > 0, "{r:?}");
    let v = reopen_cold(v, &store, dir.path(), &c);
    let mut buf = vec![0u8; 2 << 20];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "after GC without a cache");
    assert!(v.stats().chunks_verified > 0);
    v.close().unwrap();
}

/// Scrub `img` of `store` with `threads` readers.
fn scrub_now(store: &Arc<dyn ObjectStore>, threads: usize) -> lsvd::volume::scrub::ScrubReport {
    lsvd::volume::scrub::Scrub::plan(store.clone(), "img", "p/img")
        .unwrap()
        .run(threads, &|_| {})
}

/// A closed image (no read cache) whose newest checkpoint names object 1.
fn closed_image_with_data() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let (dir, store) = setup();
    let v = open(&store, dir.path(), &config(true));
    v.write(0, &pattern(1, 2 << 20)).unwrap();
    v.flush().unwrap();
    v.close().unwrap();
    (dir, store)
}

/// A data object the image's newest checkpoint still needs is lost, and the superblock is rewritten once while the scrub
/// runs (what an attached server does at every checkpoint). The loss is
/// bad, not "vanished": the superblock at the end still needs the object.
#[test]
fn scrub_reports_a_lost_needed_object_although_the_superblock_changed_meanwhile() {
    let (_dir, store) = closed_image_with_data();
    let name = object_name("img", ObjSeq(1));
    assert!(store.stat(&name).unwrap().is_some());
    store.delete(&name).unwrap();
    // Detached and unchanged: the loss is reported.
    let r = scrub_now(&store, 1);
    assert!(!r.clean(), "{r:?}");
    // The same loss, with one superblock rewrite during the scrub.
    let plan = lsvd::volume::scrub::Scrub::plan(store.clone(), "img", "p/img").unwrap();
    let mut sb = superblock(&store);
    sb.update_seq += 1;
    store.put("img", &sb.encode()).unwrap();
    let r = plan.run(1, &|_| {});
    assert!(
        !r.clean(),
        "scrub says clean although the superblock still lists a checkpoint naming the lost object {name}: {r:?}"
    );
    assert!(r.changed, "{r:?}");
    assert!(r.bad.iter().any(|b| b.object == name), "{r:?}");
}

/// A store that reports rot as an I/O error (RADOS
/// returns EIO when BlueStore's own checksum fails on every replica; a
/// directory store on btrfs or ZFS does the same) must not end the scrub:
/// the object is reported as bad and the rest is still checked.
#[test]
fn scrub_reports_an_unreadable_object_and_checks_the_rest() {
    use lsvd::backend::{FaultOp, FaultRule, FaultStore};
    let (_dir, inner) = closed_image_with_data();
    let name = object_name("img", ObjSeq(1));
    let fault = Arc::new(FaultStore::new(inner.clone(), 1));
    fault.add_rule(FaultRule::fail(FaultOp::Get, ErrorKind::Io).named(name.clone()));
    let store: Arc<dyn ObjectStore> = fault.clone();
    let r =
        lsvd::volume::scrub::Scrub::plan(store.clone(), "img", "p/img").map(|p| p.run(2, &|_| {}));
    let r = r.expect("a report naming the unreadable object");
    assert!(r.bad.iter().any(|b| b.object == name), "{r:?}");
    assert!(
        r.bad.iter().all(|b| b.object == name),
        "only the unreadable object is bad: {r:?}"
    );
    // The checkpoint and the superblock were still read and checked.
    assert!(r.checkpoints > 0 && r.checkpoint_pieces > 0, "{r:?}");
}

/// One bad chunk in a multi-chunk cache miss fails only the reads that
/// cover it: a concurrent reader of a good chunk of the same run (which
/// joins that run's fetch) gets its data, not the error. The run's fetch
/// is slowed so that the second reader joins it.
#[test]
fn a_bad_chunk_in_a_run_fails_only_the_readers_that_cover_it() {
    use lsvd::backend::{FaultAction, FaultOp, FaultRule, FaultStore};
    let (dir, mem) = setup();
    // One journal record and one object op for the whole 192 KiB write.
    let c = Config {
        wlog_chunk_bytes: 256 << 10,
        backend_obj_bytes: 1 << 20,
        ..config(false)
    };
    let data = pattern(7, 192 << 10);
    let v = open(&mem, dir.path(), &c);
    v.write(0, &data).unwrap();
    v.flush().unwrap();
    v.close().unwrap();
    let _ = std::fs::remove_file(rcache_path(&dir.path().join("rcache"), "img"));
    // The object holding LBA 0: rot a byte in its third 64 KiB chunk.
    let (seq, h) = (1..20)
        .find_map(|s| {
            let h = data_header(&mem, ObjSeq(s))?;
            (h.ops.iter().any(|o| o.lba.0 == 0 && o.sectors >= 384)).then_some((ObjSeq(s), h))
        })
        .expect("one object holds the 192 KiB write");
    let name = object_name("img", seq);
    assert!(h.header_bytes < 65536);
    flip(&mem, seq, 2 * 65536 + 100, 1);
    let fault = Arc::new(FaultStore::new(mem.clone(), 5));
    fault.add_rule(
        FaultRule::new(
            FaultOp::Get,
            FaultAction::Delay(std::time::Duration::from_millis(400)),
        )
        .named(name.clone()),
    );
    let store: Arc<dyn ObjectStore> = fault.clone();
    let v = open(&store, dir.path(), &c);
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| {
            let mut big = vec![0u8; 192 << 10];
            v.read(0, &mut big).map(|_| ())
        });
        std::thread::sleep(std::time::Duration::from_millis(150));
        let b = sc.spawn(|| {
            let mut small = vec![0u8; 4096];
            v.read(0, &mut small).map(|_| small)
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let e = a.expect_err("the big read covers the bad chunk");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // The object is named once, not twice.
    assert_eq!(e.to_string().matches(name.as_str()).count(), 1, "{e}");
    let small = b.expect("the small read covers only a good chunk");
    assert!(small[..] == data[..4096]);
    // Found once, by the run's get (the good chunks' own gets pass).
    assert_eq!(v.stats().corrupt_chunks, 1, "{:?}", v.stats());
    // A later read of the two good chunks alone is served.
    let mut again = vec![0u8; 64 << 10];
    v.read(0, &mut again).unwrap();
    assert!(again[..] == data[..64 << 10]);
    v.close().unwrap();
}

/// A bad object *header* under a multi-chunk cache miss fails the whole
/// read once: it is not narrowed down chunk by chunk (which would read,
/// count and log the header again for every chunk of the run).
#[test]
fn a_bad_header_under_a_multi_chunk_miss_is_found_once() {
    let (dir, store) = setup();
    let c = Config {
        wlog_chunk_bytes: 1 << 20,
        wlog_bytes: 8 << 20,
        backend_obj_bytes: 2 << 20,
        ..config(false)
    };
    let v = open(&store, dir.path(), &c);
    v.write(0, &pattern(7, 512 << 10)).unwrap();
    v.flush().unwrap();
    // Closed: a checkpoint names the object, so the next open does not
    // read its header.
    v.close().unwrap();
    let _ = std::fs::remove_file(rcache_path(&dir.path().join("rcache"), "img"));
    let seq = (1..20)
        .map(ObjSeq)
        .find(|&s| data_header(&store, s).is_some_and(|h| h.ops.iter().any(|o| o.lba.0 == 0)))
        .expect("an object holds LBA 0");
    // A byte of the header's op table: the header crc fails.
    flip(&store, seq, 80, 0x01);
    let v = open(&store, dir.path(), &c);
    let before = v.stats();
    let mut buf = vec![0u8; 512 << 10];
    let e = v.read(0, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let after = v.stats();
    assert_eq!(after.corrupt_chunks, before.corrupt_chunks + 1, "{after:?}");
    v.close().unwrap();
}

type Hook = Box<dyn FnOnce() + Send>;

/// A store that runs `hook` once, at the first stat or get of `trigger`,
/// before forwarding it: what a server doing something at that moment
/// looks like to a scrub.
struct HookStore {
    inner: Arc<dyn ObjectStore>,
    trigger: String,
    hook: Mutex<Option<Hook>>,
}

impl HookStore {
    fn fire(&self, name: &str) {
        if name == self.trigger {
            let h = self.hook.lock().unwrap().take();
            if let Some(h) = h {
                h();
            }
        }
    }
}

impl ObjectStore for HookStore {
    fn put(&self, name: &str, data: &[u8]) -> lsvd::error::Result<()> {
        self.inner.put(name, data)
    }
    fn get(&self, name: &str, offset: u64, len: usize) -> lsvd::error::Result<Vec<u8>> {
        self.fire(name);
        self.inner.get(name, offset, len)
    }
    fn stat(&self, name: &str) -> lsvd::error::Result<Option<u64>> {
        self.fire(name);
        self.inner.stat(name)
    }
    fn delete(&self, name: &str) -> lsvd::error::Result<()> {
        self.inner.delete(name)
    }
    fn list(&self, prefix: &str) -> lsvd::error::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn lock(&self, name: &str, owner: &str) -> lsvd::error::Result<Box<dyn StoreLock>> {
        self.inner.lock(name, owner)
    }
    fn describe(&self) -> String {
        format!("hook:{}", self.inner.describe())
    }
}

/// An attached server publishes two checkpoints while the scrub is
/// reading the checkpoints its first superblock lists (a forced GC run does
/// exactly that, as does a busy server in two checkpoint intervals). Both
/// listed checkpoints become tombstones. The scrub must plan again from the
/// newer superblock, not count them as vanished and roll forward from
/// object 1 (which GC deleted), checking nothing and calling the image
/// clean although a data object it needs has a rotten chunk.
#[test]
fn scrub_racing_two_checkpoint_publishes_still_finds_rot() {
    let (dir, store) = setup();
    let c = config(true);
    let v = Arc::new(open(&store, dir.path(), &c));
    // Objects 1.. die and are deleted by GC (a hole at the bottom).
    v.write(0, &pattern(1, 2 << 20)).unwrap();
    v.flush().unwrap();
    v.write(0, &pattern(2, 2 << 20)).unwrap();
    v.flush().unwrap();
    v.gc_now().unwrap();
    assert!(store
        .stat(&object_name("img", ObjSeq(1)))
        .unwrap()
        .is_none());
    // Live data at 4 MiB, then garbage so that the next GC run publishes
    // two checkpoints.
    let live = pattern(3, 1 << 20);
    v.write(4 << 20, &live).unwrap();
    v.flush().unwrap();
    v.write(0, &pattern(4, 2 << 20)).unwrap();
    v.flush().unwrap();
    // A checkpoint after all of it (so it is in tables, not rolled forward
    // only): one more GC run.
    v.gc_now().unwrap();
    // Rot in the live data at 4 MiB + 100 KiB.
    let (seq, off) = object_holding(&store, (4 << 20) + (100 << 10));
    flip(&store, seq, off, 0x20);
    let rotten = object_name("img", seq);
    // Without a concurrent change the scrub reports it.
    let quiet = Scrub::plan(store.clone(), "img", "p/img")
        .unwrap()
        .run(1, &|_| {});
    assert!(quiet.bad.iter().any(|b| b.object == rotten), "{quiet:?}");
    // Now with the server publishing two checkpoints (a GC run that has
    // garbage to free) while the scrub reads the newest listed one.
    v.write(0, &pattern(5, 2 << 20)).unwrap();
    v.flush().unwrap();
    let s0 = superblock(&store);
    assert_eq!(s0.checkpoints.len(), 2, "{s0:?}");
    let first_piece = object_name("img", s0.checkpoints[0].seq);
    let vh = v.clone();
    let hooked: Arc<dyn ObjectStore> = Arc::new(HookStore {
        inner: store.clone(),
        trigger: first_piece,
        hook: Mutex::new(Some(Box::new(move || {
            let _ = vh.gc_now();
        }))),
    });
    let r = Scrub::plan(hooked, "img", "p/img").unwrap().run(1, &|_| {});
    let s1 = superblock(&store);
    assert!(
        s1.checkpoints
            .iter()
            .all(|c| !s0.checkpoints.iter().any(|o| o.seq == c.seq)),
        "both listed checkpoints were replaced: {s0:?} -> {s1:?}"
    );
    // The rotten object is still needed: the image reads it.
    let mut buf = vec![0u8; 1 << 20];
    let e = v.read(4 << 20, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(r.changed, "{r:?}");
    assert!(
        r.bad.iter().any(|b| b.object == rotten),
        "scrub misses the rotten chunk of {rotten}, needed by the superblock at the end \
         ({} objects checked, {} vanished): {r:?}",
        r.objects,
        r.vanished
    );
    assert!(r.objects > 0, "{r:?}");
    Arc::try_unwrap(v).ok().unwrap().close().unwrap();
}
