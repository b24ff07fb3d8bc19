//! The persistent read cache through the public Volume API.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsvd::backend::{
    CountingStore, FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore,
};
use lsvd::config::Config;
use lsvd::format::rcache::{decode_index_block, CacheSuper, CHUNK_BYTES};
use lsvd::units::ObjSeq;
use lsvd::volume::image::{create_image, object_name, parse_object_name, read_superblock};
use lsvd::volume::{Volume, VolumeOptions};
use lsvd::ErrorKind;

use common::pattern;

const SIZE: u64 = 4 << 20;

struct Env {
    dir: tempfile::TempDir,
    counting: Arc<CountingStore>,
    store: Arc<dyn ObjectStore>,
}

fn config(dir: &Path) -> Config {
    Config {
        rcache_dir: dir.join("rcache"),
        rcache_bytes: 8 << 20,
        ..common::small_config()
    }
}

impl Env {
    fn new() -> Env {
        Env::with_store(|s| s)
    }

    /// `wrap` may put another layer (e.g. delays) above the counting store.
    fn with_store(wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Env {
        // /tmp is a real file system here: the cache file needs O_DIRECT.
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let counting = Arc::new(CountingStore::new(Arc::new(MemStore::new())));
        let store = wrap(counting.clone());
        for img in ["img", "other"] {
            create_image(store.as_ref(), img, SIZE).unwrap();
        }
        Env {
            dir,
            counting,
            store,
        }
    }

    fn open_with(&self, image: &str, c: &Config) -> Volume {
        Volume::open(VolumeOptions {
            config: c.clone(),
            store: self.store.clone(),
            image: image.into(),
            journal_path: self.dir.path().join(format!("{image}.wlog")),
            io_log: None,
        })
        .unwrap()
    }

    fn open(&self, image: &str) -> Volume {
        self.open_with(image, &config(self.dir.path()))
    }

    fn cache_path(&self, image: &str) -> PathBuf {
        lsvd::volume::rcache_path(&self.dir.path().join("rcache"), image)
    }

    fn gets(&self) -> u64 {
        self.counting.stats().gets
    }
}

/// Write `SIZE` bytes of pattern `seed` and close.
fn fill(env: &Env, image: &str, seed: u64) -> Vec<u8> {
    let v = env.open(image);
    let data = pattern(seed, SIZE as usize);
    for (i, c) in data.chunks(256 << 10).enumerate() {
        v.write(i as u64 * (256 << 10), c).unwrap();
    }
    v.close().unwrap();
    data
}

fn read_all(v: &Volume, expect: &[u8]) {
    let mut buf = vec![0u8; expect.len()];
    for off in (0..expect.len()).step_by(64 << 10) {
        v.read(off as u64, &mut buf[off..off + (64 << 10)]).unwrap();
    }
    assert!(buf == expect, "read back differs");
}

/// Decode the cache file's superblock and the entries of one index block.
fn cache_entries(path: &Path) -> (CacheSuper, Vec<(u32, lsvd::format::rcache::IndexEntry)>) {
    let f = std::fs::read(path).unwrap();
    let s = CacheSuper::decode(&f[..4096]).unwrap();
    let mut out = Vec::new();
    for b in 0..s.layout.index_blocks {
        let at = s.layout.index_block_off(b) as usize;
        if let Ok(es) = decode_index_block(&f[at..at + 4096], &s.cache_uuid, s.generation, b) {
            for (i, e) in es.into_iter().enumerate() {
                if !e.is_empty() {
                    out.push((b * 51 + i as u32, e));
                }
            }
        }
    }
    (s, out)
}

#[test]
fn read_after_write_hits_after_destage() {
    let env = Env::new();
    let c = Config {
        hard_flush: true,
        ..config(env.dir.path())
    };
    let v = env.open_with("img", &c);
    let data = pattern(1, 512 << 10);
    v.write(0, &data[..256 << 10]).unwrap();
    v.write(256 << 10, &data[256 << 10..]).unwrap();
    // With hard_flush, FLUSH returns once both objects are applied.
    v.flush().unwrap();
    // Two 256 KiB objects with a 4 KiB header: 5 chunks each, inserted by
    // the cache writer as they were put.
    let deadline = Instant::now() + Duration::from_secs(10);
    while v.stats().cache_inserts < 10 {
        assert!(Instant::now() < deadline, "{:?}", v.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let gets = env.gets();
    read_all(&v, &data);
    let st = v.stats();
    assert_eq!(env.gets(), gets, "no backend read: {st:?}");
    assert_eq!(st.cache_misses, 0, "{st:?}");
    assert!(st.cache_hits >= 8, "{st:?}");
    v.close().unwrap();
}

#[test]
fn hits_survive_close_and_reopen() {
    let env = Env::new();
    let data = fill(&env, "img", 2);
    let v = env.open("img");
    read_all(&v, &data);
    v.close().unwrap();
    let v = env.open("img");
    let gets = env.gets();
    read_all(&v, &data);
    let st = v.stats();
    assert_eq!(env.gets(), gets, "every read hit the cache: {st:?}");
    assert_eq!(st.cache_misses, 0);
    assert!(st.cache_hits >= SIZE / CHUNK_BYTES, "{st:?}");
    v.close().unwrap();
    // The same after a crash (the index of the last flush is kept).
    let v = env.open("img");
    read_all(&v, &data);
    v.crash();
    let v = env.open("img");
    let gets = env.gets();
    read_all(&v, &data);
    assert_eq!(env.gets(), gets, "{:?}", v.stats());
    v.close().unwrap();
}

#[test]
fn corrupt_cached_chunk_is_detected_and_refetched() {
    let env = Env::new();
    let data = fill(&env, "img", 3);
    let v = env.open("img");
    read_all(&v, &data);
    v.close().unwrap();
    // Flip one byte inside a cached chunk on disk.
    let path = env.cache_path("img");
    let (s, entries) = cache_entries(&path);
    let (slot, e) = entries
        .iter()
        .find(|(_, e)| e.len as u64 == CHUNK_BYTES)
        .unwrap();
    let at = s.layout.slot_off(*slot) + 4096 * 5 + 123;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    b[0] ^= 0x10;
    std::os::unix::fs::FileExt::write_all_at(&f, &b, at).unwrap();
    drop(f);
    let v = env.open("img");
    let gets = env.gets();
    read_all(&v, &data);
    let st = v.stats();
    assert_eq!(st.cache_corrupt, 1, "{st:?} (chunk {e:?})");
    assert!(env.gets() > gets, "the corrupt chunk was refetched");
    assert_eq!(st.cache_misses, 1, "{st:?}");
    v.close().unwrap();
}

#[test]
fn another_images_cache_file_is_discarded() {
    let env = Env::new();
    let mine = fill(&env, "img", 4);
    // "other" has objects with the same sequences and offsets, other bytes.
    let theirs = fill(&env, "other", 5);
    let v = env.open("other");
    read_all(&v, &theirs);
    v.close().unwrap();
    std::fs::copy(env.cache_path("other"), env.cache_path("img")).unwrap();
    let v = env.open("img");
    let mut first = vec![0u8; 64 << 10];
    v.read(0, &mut first).unwrap();
    assert!(first[..] == mine[..64 << 10]);
    assert_eq!(v.stats().cache_hits, 0, "{:?}", v.stats());
    read_all(&v, &mine);
    v.close().unwrap();
}

#[test]
fn one_bad_index_block_loses_only_its_entries() {
    let env = Env::new();
    let data = fill(&env, "img", 6);
    let v = env.open("img");
    read_all(&v, &data);
    v.close().unwrap();
    let path = env.cache_path("img");
    let (s, before) = cache_entries(&path);
    let in_block_1 = before.iter().filter(|(slot, _)| slot / 51 == 1).count();
    assert!(
        in_block_1 > 0 && before.len() > in_block_1,
        "{}",
        before.len()
    );
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 8], s.layout.index_block_off(1) + 200)
        .unwrap();
    drop(f);
    let v = env.open("img");
    read_all(&v, &data);
    let st = v.stats();
    assert_eq!(st.cache_corrupt, 1, "{st:?}");
    assert!(st.cache_misses > 0 && st.cache_hits > 0, "{st:?}");
    assert!(st.cache_misses <= in_block_1 as u64, "{st:?}");
    v.close().unwrap();
}

#[test]
fn concurrent_readers_of_one_cold_chunk_make_one_backend_get() {
    let env = Env::with_store(|s| {
        let f = FaultStore::new(s, 0);
        f.add_rule(FaultRule::new(
            FaultOp::Get,
            FaultAction::Delay(Duration::from_millis(20)),
        ));
        Arc::new(f)
    });
    let data = fill(&env, "img", 7);
    std::fs::remove_file(env.cache_path("img")).unwrap();
    let v = env.open("img");
    let round = |base: usize| {
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|sc| {
            for t in 0..8usize {
                let (v, data, barrier) = (&v, &data, &barrier);
                sc.spawn(move || {
                    let off = base + t * 4096;
                    let mut b = vec![0u8; 4096];
                    barrier.wait();
                    v.read(off as u64, &mut b).unwrap();
                    assert!(b[..] == data[off..off + 4096]);
                });
            }
        });
    };
    let gets = env.gets();
    round(1 << 20);
    let st = v.stats();
    // One get of the chunk for all eight readers, plus one of the object's
    // header for its chunk crcs (once per object per open, also single
    // flight), never one per reader.
    assert_eq!(env.gets() - gets, 2, "{st:?}");
    assert_eq!(st.backend_reads, 1);
    assert_eq!(st.cache_misses, 1);
    // Another cold chunk of the same object: exactly one get.
    let gets = env.gets();
    round((1 << 20) + (64 << 10));
    let st = v.stats();
    assert_eq!(env.gets() - gets, 1, "{st:?}");
    assert_eq!(st.backend_reads, 2);
    assert_eq!(st.cache_misses, 2);
    v.close().unwrap();
}

#[test]
fn eviction_under_a_small_cache() {
    let env = Env::new();
    let c = Config {
        rcache_bytes: 256 << 10,
        ..config(env.dir.path())
    };
    let data = fill(&env, "img", 8);
    for _ in 0..2 {
        let v = env.open_with("img", &c);
        read_all(&v, &data);
        read_all(&v, &data);
        // Inserts and evictions happen on the cache's maintainer thread,
        // which a loaded machine may not have run yet: wait for it (reading
        // again keeps it fed), bounded.
        let deadline = Instant::now() + Duration::from_secs(20);
        while v.stats().cache_evictions == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            read_all(&v, &data);
        }
        let st = v.stats();
        assert!(st.cache_evictions > 0, "{st:?}");
        assert_eq!(st.cache_corrupt, 0, "{st:?}");
        v.close().unwrap();
    }
}

#[test]
fn no_rcache_reads_the_backend_and_a_missing_object_is_a_clear_error() {
    let env = Env::new();
    let data = fill(&env, "img", 9);
    let c = Config {
        no_rcache: true,
        ..config(env.dir.path())
    };
    assert!(env.cache_path("img").exists());
    let v = env.open_with("img", &c);
    // Removed: a later open with a cache must not trust entries this open
    // could not drop (recovery may reuse object sequences).
    assert!(!env.cache_path("img").exists());
    read_all(&v, &data);
    let st = v.stats();
    assert_eq!(
        (st.cache_hits, st.cache_misses, st.cache_inserts),
        (0, 0, 0)
    );
    assert!(!env.cache_path("img").exists());
    // An object the map still names is gone: the read fails (after looking
    // the range up again) instead of returning wrong bytes, as lost data
    // (`Corrupt`), not as a missing image (review5 finding 3).
    env.store
        .delete(&object_name("img", lsvd::units::ObjSeq(1)))
        .unwrap();
    let mut b = vec![0u8; 4096];
    let e = v.read(0, &mut b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("missing from the store"), "{e}");
    v.crash();
}

/// Data objects of `image` in the store, by sequence.
fn object_seqs(env: &Env, image: &str) -> Vec<u64> {
    let mut v: Vec<u64> = env
        .store
        .list(&format!("{image}."))
        .unwrap()
        .iter()
        .filter_map(|n| parse_object_name(image, n))
        .map(|s| s.0)
        .collect();
    v.sort_unstable();
    v
}

/// This host caches objects and crashes; another host attaches the image
/// with its own journal and its own cache, its recovery deletes the objects
/// above a gap and its writes reuse their sequences; this host attaches
/// again with its old cache file. The image's journal generation changed
/// meanwhile, so the cache drops everything: the reused sequences are
/// never served from it (their crcs would validate: they cover the key and
/// the data, not which object of that sequence the data came from).
#[test]
fn an_attach_with_another_journal_drops_the_cache() {
    let env = Env::new();
    let dir = env.dir.path();
    let a = Config {
        // No checkpoint among this host's objects, so a gap in them is
        // where recovery stops; no GC objects.
        checkpoint_interval_objs: 1000,
        no_gc: true,
        hard_flush: true,
        ..config(dir)
    };
    let path = env.cache_path("img");
    // Host A: write half the disk, read it all back (cached), crash.
    let v = env.open_with("img", &a);
    let old = pattern(21, SIZE as usize / 2);
    for (i, c) in old.chunks(256 << 10).enumerate() {
        v.write(i as u64 * (256 << 10), c).unwrap();
    }
    v.flush().unwrap();
    read_all(&v, &old);
    let seqs = object_seqs(&env, "img");
    assert!(seqs.len() >= 6 && seqs[0] == 1, "{seqs:?}");
    let last_a = *seqs.last().unwrap();
    // Wait for the writer thread's index flush to name every object.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, entries) = cache_entries(&path);
        let cached: std::collections::BTreeSet<u64> =
            entries.iter().map(|(_, e)| e.obj.0).collect();
        if seqs.iter().all(|s| cached.contains(s)) {
            break;
        }
        assert!(Instant::now() < deadline, "cached {cached:?} of {seqs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    v.crash();
    let gen_a = read_superblock(env.store.as_ref(), "img")
        .unwrap()
        .journal_gen;
    // What the cache holds for the objects from the gap up.
    let gap = 3u64;
    let file = std::fs::read(&path).unwrap();
    let (s, entries) = cache_entries(&path);
    let held: Vec<(u64, u32, Vec<u8>)> = entries
        .iter()
        .filter(|(_, e)| e.obj.0 >= gap)
        .map(|(slot, e)| {
            let at = s.layout.slot_off(*slot) as usize;
            (e.obj.0, e.chunk, file[at..at + e.len as usize].to_vec())
        })
        .collect();
    assert!(!held.is_empty());

    // Host B: object `gap` was lost (say its put never completed); B has
    // its own journal and cache directory. Recovery deletes the objects
    // above the gap, B's writes take their sequences with other data.
    env.store.delete(&object_name("img", ObjSeq(gap))).unwrap();
    let b = Config {
        rcache_dir: dir.join("rcache-b"),
        ..a.clone()
    };
    let vb = Volume::open(VolumeOptions {
        config: b,
        store: env.store.clone(),
        image: "img".into(),
        journal_path: dir.join("img-b.wlog"),
        io_log: None,
    })
    .unwrap();
    let new = pattern(22, SIZE as usize);
    for (i, c) in new.chunks(256 << 10).enumerate() {
        vb.write(i as u64 * (256 << 10), c).unwrap();
    }
    vb.close().unwrap();
    let gen_b = read_superblock(env.store.as_ref(), "img")
        .unwrap()
        .journal_gen;
    assert_ne!(gen_a, gen_b, "B's journal has another generation");
    assert!(
        *object_seqs(&env, "img").last().unwrap() > last_a,
        "B's objects reach past A's: the drop above the last object does not apply"
    );
    // The test has teeth: A's cache names chunks of sequences that now hold
    // other objects, under entries whose crcs are valid. Served, they would
    // be stale.
    let stale = held
        .iter()
        .filter(|(obj, chunk, bytes)| {
            let now = env
                .store
                .get(
                    &object_name("img", ObjSeq(*obj)),
                    *chunk as u64 * CHUNK_BYTES,
                    bytes.len(),
                )
                .unwrap();
            now.len() == bytes.len() && now != *bytes
        })
        .count();
    assert!(stale > 0, "no cached chunk of a reused sequence differs");

    // Host A again, with its old journal (stale now) and its old cache.
    let v = env.open_with("img", &a);
    // Every entry was dropped, durably, before anything was read; the
    // cache now records the generation of this attach.
    let (s, entries) = cache_entries(&path);
    assert!(entries.is_empty(), "{} entries kept", entries.len());
    let gen_now = read_superblock(env.store.as_ref(), "img")
        .unwrap()
        .journal_gen;
    assert_ne!(gen_now, gen_b);
    assert_eq!(s.journal_gen, gen_now.0);
    read_all(&v, &new);
    read_all(&v, &new);
    let st = v.stats();
    assert!(st.cache_hits > 0, "{st:?}");
    v.close().unwrap();
    // And after a clean reopen by the same host, the cache serves again.
    let v = env.open_with("img", &a);
    let gets = env.gets();
    read_all(&v, &new);
    assert_eq!(env.gets(), gets, "{:?}", v.stats());
    v.close().unwrap();
}
