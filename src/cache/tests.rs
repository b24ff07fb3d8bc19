use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;

const IMG: ImageUuid = ImageUuid([7; 16]);

fn object(obj: u64, len: usize) -> Vec<u8> {
    let mut x = obj.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fake backend: object `n` is `object(n, 200 KiB + n * 512)`.
struct Store {
    gets: AtomicUsize,
}

impl Store {
    fn new() -> Store {
        Store {
            gets: AtomicUsize::new(0),
        }
    }
    fn len(obj: ObjSeq) -> usize {
        200 * 1024 + obj.0 as usize * 512
    }
    fn get(&self, obj: ObjSeq, off: u64, len: usize) -> Result<Vec<u8>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let o = object(obj.0, Store::len(obj));
        let a = (off as usize).min(o.len());
        let b = (a + len).min(o.len());
        Ok(o[a..b].to_vec())
    }
    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

fn read(c: &Cache, s: &Store, obj: u64, off: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let o = ObjSeq(obj);
    c.read(o, off, &mut out, &|a, n| s.get(o, a, n)).unwrap();
    assert!(
        out[..] == object(obj, Store::len(o))[off as usize..off as usize + len],
        "object {obj} at {off}"
    );
    out
}

fn dir() -> tempfile::TempDir {
    // As the journal tests: /tmp is a real file system here (O_DIRECT).
    tempfile::tempdir_in("/tmp").unwrap()
}

const MIB: u64 = 1 << 20;

#[test]
fn miss_then_hit_and_persisted_after_flush() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 3, 4096, 8192);
    assert_eq!(s.gets(), 1);
    read(&c, &s, 3, 0, 65536);
    read(&c, &s, 3, 512, 512);
    assert_eq!(s.gets(), 1);
    // Spanning chunks 1, 2 and 3 (the short last chunk: the object's end).
    read(&c, &s, 3, 65536 + 1024, 2 * 65536);
    let end = Store::len(ObjSeq(3)) as u64;
    read(&c, &s, 3, end - 1024, 1024);
    // Chunks 1-3 missed together: one backend get for the three.
    assert_eq!(s.gets(), 2);
    let k = c.counters();
    assert_eq!((k.misses, k.inserts), (4, 4));
    assert!(k.hits >= 2);
    // Past the object's end: a clear error, not a panic.
    let mut out = vec![0u8; 4096];
    let e = c
        .read(ObjSeq(3), end, &mut out, &|a, l| s.get(ObjSeq(3), a, l))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    let n = s.gets();
    c.flush().unwrap();
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    assert_eq!(c.valid_chunks(), 4);
    read(&c, &s, 3, 0, 3 * 65536);
    read(&c, &s, 3, end - 1024, 1024);
    assert_eq!(s.gets(), n, "hits after reopen");
    // Hits alone still reach the persisted counters.
    c.flush().unwrap();
    let info = Cache::inspect(&p, IMG).unwrap().unwrap();
    assert_eq!(info.counters.hits, k.hits + 4);
    assert!(info.formatted && info.owner_match);
    assert_eq!(info.valid_chunks, 4);
    assert_eq!(
        info.counters.misses, 5,
        "four chunks and the read past the end"
    );
}

#[test]
fn unflushed_inserts_are_lost_not_wrong() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 5, 0, 4096);
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    assert_eq!(c.valid_chunks(), 0);
    read(&c, &s, 5, 0, 4096);
    assert_eq!(s.gets(), 2);
}

#[test]
fn corrupt_chunk_block_is_dropped_and_refetched() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 9, 0, 4096);
    c.flush().unwrap();
    let layout = c.layout;
    drop(c);
    // Flip one byte of block 3 of the only slot in use (slot 0).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let at = layout.slot_off(0) + 3 * 4096 + 17;
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    b[0] ^= 0x40;
    std::os::unix::fs::FileExt::write_all_at(&f, &b, at).unwrap();
    drop(f);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 9, 0, 4096);
    assert_eq!(s.gets(), 1, "an intact block is a hit");
    read(&c, &s, 9, 3 * 4096, 4096);
    assert_eq!(s.gets(), 2, "the corrupt block is refetched");
    assert_eq!(c.counters().corrupt, 1);
    read(&c, &s, 9, 3 * 4096, 4096);
    assert_eq!(s.gets(), 2, "and cached again");
    assert_eq!(c.counters().corrupt, 1);
}

#[test]
fn foreign_wrong_size_and_blank_files_are_reformatted() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 2, 0, 4096);
    c.flush().unwrap();
    drop(c);
    let other = ImageUuid([8; 16]);
    let info = Cache::inspect(&p, other).unwrap().unwrap();
    assert!(info.formatted && !info.owner_match);
    let c = Cache::open(&p, other, 4 * MIB, ObjSeq(100), 0).unwrap();
    assert_eq!(c.valid_chunks(), 0, "another image's cache is discarded");
    read(&c, &s, 2, 0, 4096);
    assert_eq!(s.gets(), 2);
    c.flush().unwrap();
    drop(c);
    let c = Cache::open(&p, other, 8 * MIB, ObjSeq(100), 0).unwrap();
    assert_eq!(c.valid_chunks(), 0, "resized: reformatted");
    drop(c);
    std::fs::write(&p, vec![0u8; 4 << 20]).unwrap();
    let c = Cache::open(&p, other, 4 * MIB, ObjSeq(100), 0).unwrap();
    assert_eq!(c.valid_chunks(), 0);
    read(&c, &s, 2, 0, 4096);
    drop(c);
    assert!(
        Cache::open(&p, IMG, 64 * 1024, ObjSeq(1), 0).is_err(),
        "too small"
    );
}

#[test]
fn bad_index_block_loses_only_its_entries() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 16 * MIB, ObjSeq(1000), 0).unwrap();
    // Slots are handed out 0, 1, 2, ...: 60 chunks span index blocks 0 and 1.
    for obj in 1..=60u64 {
        read(&c, &s, obj, 0, 4096);
    }
    c.flush().unwrap();
    let layout = c.layout;
    drop(c);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let at = layout.index_block_off(1) + 100;
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff, 0xee], at).unwrap();
    drop(f);
    let c = Cache::open(&p, IMG, 16 * MIB, ObjSeq(1000), 0).unwrap();
    assert_eq!(c.valid_chunks(), ENTRIES_PER_BLOCK);
    assert_eq!(c.counters().corrupt, 1);
    let before = s.gets();
    for obj in 1..=60u64 {
        read(&c, &s, obj, 0, 4096);
    }
    assert_eq!(s.gets() - before, 60 - ENTRIES_PER_BLOCK);
    c.flush().unwrap();
    drop(c);
    // The bad block was rewritten: nothing is corrupt on the next open.
    let c = Cache::open(&p, IMG, 16 * MIB, ObjSeq(1000), 0).unwrap();
    assert_eq!(c.counters().corrupt, 0);
    assert_eq!(c.valid_chunks(), 60);
}

#[test]
fn entries_above_the_last_object_are_dropped() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 4, 0, 4096);
    read(&c, &s, 6, 0, 4096);
    c.flush().unwrap();
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(5), 0).unwrap();
    assert_eq!(c.valid_chunks(), 1);
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    assert_eq!(c.valid_chunks(), 1, "the drop was durable");
}

/// The superblock as on disk.
fn super_on_disk(p: &Path) -> CacheSuper {
    let f = std::fs::read(p).unwrap();
    CacheSuper::decode(&f[..BLOCK_BYTES]).unwrap()
}

#[test]
fn a_journal_generation_change_drops_every_entry() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    // A new file records the generation it was opened with.
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 5).unwrap();
    assert_eq!(super_on_disk(&p).journal_gen, 5);
    assert_eq!(c.journal_gen(), 5);
    read(&c, &s, 3, 0, 4096);
    read(&c, &s, 4, 0, 4096);
    c.flush().unwrap();
    drop(c);
    // The same generation (the same journal attached again): kept.
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 5).unwrap();
    assert_eq!(c.valid_chunks(), 2);
    assert_eq!(c.open_drops(), OpenDrops::default());
    let n = s.gets();
    read(&c, &s, 3, 0, 4096);
    assert_eq!(s.gets(), n, "a hit");
    c.flush().unwrap();
    drop(c);
    // The image was attached with another journal meanwhile (generation
    // 7): every entry is dropped before anything is served, even below
    // the last object.
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 7).unwrap();
    assert_eq!(c.valid_chunks(), 0);
    assert_eq!(
        c.open_drops(),
        OpenDrops {
            stale: 0,
            journal_gen: 2,
            journal_gen_changed: true
        }
    );
    read(&c, &s, 3, 0, 4096);
    assert_eq!(s.gets(), n + 1, "a miss");
    // A crash before the new generation is recorded (no flush, no
    // set_journal_gen): the file still records 5.
    drop(c);
    assert_eq!(super_on_disk(&p).journal_gen, 5);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 7).unwrap();
    assert_eq!(c.valid_chunks(), 0);
    let drops = c.open_drops();
    assert!(drops.journal_gen_changed);
    assert_eq!(drops.journal_gen, 0, "the first drop was durable");
    // This attach records its own generation: one superblock write, the
    // persisted counters unchanged.
    let before = super_on_disk(&p);
    c.set_journal_gen(9).unwrap();
    assert_eq!(c.journal_gen(), 9);
    let after = super_on_disk(&p);
    assert_eq!(after.journal_gen, 9);
    assert_eq!(after.counters, before.counters);
    assert_eq!(after.generation, before.generation);
    read(&c, &s, 6, 0, 4096);
    c.flush().unwrap();
    assert_eq!(super_on_disk(&p).journal_gen, 9, "kept by the close flush");
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 9).unwrap();
    assert_eq!(c.valid_chunks(), 1, "kept under the recorded generation");
    assert!(!c.open_drops().journal_gen_changed);
    drop(c);
    // A generation change drops everything even when the last object would
    // also drop some: both are counted.
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(1), 11).unwrap();
    assert_eq!(c.valid_chunks(), 0);
    assert_eq!(c.open_drops().journal_gen, 1);
}

#[test]
fn a_version_1_file_is_reformatted() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 5).unwrap();
    read(&c, &s, 3, 0, 4096);
    c.flush().unwrap();
    drop(c);
    // What a version 1 build would have left: the version field says 1.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &1u32.to_le_bytes(), 8).unwrap();
    drop(f);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 5).unwrap();
    assert_eq!(c.valid_chunks(), 0, "reformatted, not trusted");
    drop(c);
    let sup = super_on_disk(&p);
    assert_eq!(sup.journal_gen, 5);
}

#[test]
fn concurrent_misses_on_one_chunk_fetch_once() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    let slow = |a: u64, n: usize| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.get(ObjSeq(7), a, n)
    };
    std::thread::scope(|sc| {
        for i in 0..8u64 {
            let (c, slow) = (&c, &slow);
            sc.spawn(move || {
                let mut out = vec![0u8; 4096];
                c.read(ObjSeq(7), i * 4096, &mut out, slow).unwrap();
                assert!(out[..] == object(7, Store::len(ObjSeq(7)))[i as usize * 4096..][..4096]);
            });
        }
    });
    assert_eq!(s.gets(), 1);
    // An error reaches every waiter, from the one fetch.
    let fetches = AtomicUsize::new(0);
    let failing = |_: u64, _: usize| -> Result<Vec<u8>> {
        fetches.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(200));
        Err(Error::new(ErrorKind::NotFound, "gone"))
    };
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let (c, failing, barrier) = (&c, &failing, &barrier);
            sc.spawn(move || {
                let mut out = vec![0u8; 512];
                barrier.wait();
                let e = c.read(ObjSeq(8), 0, &mut out, failing).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::NotFound);
            });
        }
    });
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for all four");
}

#[test]
fn eviction_keeps_reads_correct() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    // 512 KiB: 6 slots after the superblock and index.
    let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000), 0).unwrap();
    let slots = c.chunks() as u64;
    assert!(slots >= 4);
    for round in 0..3 {
        for obj in 1..=20u64 {
            read(&c, &s, obj, 4096 * (obj % 3), 4096);
        }
        let _ = round;
    }
    let k = c.counters();
    assert!(k.evictions > 0, "{k:?}");
    assert!(c.valid_chunks() as u64 <= slots);
    c.flush().unwrap();
    drop(c);
    let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000), 0).unwrap();
    for obj in 1..=20u64 {
        read(&c, &s, obj, 0, 8192);
    }
    assert_eq!(c.counters().corrupt, 0);
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let _c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(1), 0).unwrap();
    let e = Cache::open(&p, IMG, 4 * MIB, ObjSeq(1), 0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Locked);
}

#[test]
fn insert_object_then_hit() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    let o = object(11, Store::len(ObjSeq(11)));
    c.insert_object(ObjSeq(11), &[], &o, None).unwrap();
    read(&c, &s, 11, 0, o.len());
    assert_eq!(s.gets(), 0);
}

/// A destaged object is offered as its header and its data buffer, not as
/// one copy: wherever the header ends (within the first chunk, at a chunk
/// boundary, past it), every chunk is cached with the object's bytes, from
/// aligned buffers (written as they are) and unaligned ones (copied), with
/// block crcs read from the bytes or joined from the destager's block crcs.
#[test]
fn insert_object_from_header_and_data_caches_every_chunk() {
    let d = dir();
    let s = Store::new();
    let len = Store::len(ObjSeq(11));
    let o = object(11, len);
    let mut n = 0;
    for h in [4096usize, 65536, 69632, 131072 + 8192] {
        let blocks = crate::format::block_crcs(&o[h..]);
        for aligned in [true, false] {
            for given in [false, true] {
                n += 1;
                let p = d.path().join(format!("img{n}.rcache"));
                let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
                let mut head = AlignedBuf::new(h);
                head.copy_from_slice(&o[..h]);
                let mut data_a = AlignedBuf::new(len - h);
                data_a.copy_from_slice(&o[h..]);
                // One byte in, so the data is not block-aligned.
                let data_u: Vec<u8> = std::iter::once(0).chain(o[h..].iter().copied()).collect();
                let data: &[u8] = if aligned { &data_a } else { &data_u[1..] };
                let b = given.then_some(&blocks[..]);
                c.insert_object(ObjSeq(11), &head, data, b).unwrap();
                assert_eq!(
                    c.counters().inserts,
                    len.div_ceil(65536) as u64,
                    "header {h}"
                );
                read(&c, &s, 11, 0, len);
                assert_eq!(s.gets(), 0, "header {h}: every byte from the cache");
            }
        }
    }
}

/// The block crcs handed in are the ones the cache keeps: crcs of other
/// bytes make every data block fail its check, so the reads go to the
/// store (and return the right bytes), never the cached ones.
#[test]
fn insert_object_keeps_the_block_crcs_it_is_given() {
    let d = dir();
    let s = Store::new();
    let len = Store::len(ObjSeq(11));
    let o = object(11, len);
    let h = 8192;
    let wrong = crate::format::block_crcs(&object(12, len - h));
    let c = Cache::open(&d.path().join("img.rcache"), IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    c.insert_object(ObjSeq(11), &o[..h], &o[h..], Some(&wrong))
        .unwrap();
    read(&c, &s, 11, h as u64, 4096);
    assert_eq!(s.gets(), 1, "a block with a wrong crc is not served");
    assert!(c.counters().corrupt > 0, "and is counted corrupt");
}

/// A maintainer thread like the volume's `lsvd-rcache` writer, until `stop`.
fn maintainer<'s>(
    sc: &'s std::thread::Scope<'s, '_>,
    c: &'s Cache,
    stop: &'s std::sync::atomic::AtomicBool,
) {
    let wake = c.maintainer();
    sc.spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let _ = wake.recv_timeout(std::time::Duration::from_millis(5));
            c.insert_deferred();
            c.maintain();
        }
    });
}

#[test]
fn eviction_stress_eight_threads() {
    use rand::{Rng, SeedableRng};
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    for background in [true, false] {
        let _ = std::fs::remove_file(&p);
        // 512 KiB: 6 slots.
        let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000), 0).unwrap();
        assert!(c.chunks() <= 8);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            if background {
                maintainer(sc, &c, &stop);
            }
            let readers: Vec<_> = (0..8u64)
                .map(|t| {
                    let (c, s) = (&c, &s);
                    sc.spawn(move || {
                        let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
                        for _ in 0..300 {
                            let obj = rng.gen_range(1..=10u64);
                            let olen = Store::len(ObjSeq(obj)) as u64;
                            let len = 512 * rng.gen_range(1..=300u64);
                            let len = len.min(olen);
                            let off = 512 * rng.gen_range(0..=(olen - len) / 512);
                            // `read` checks every byte against the oracle.
                            read(c, s, obj, off, len as usize);
                        }
                    })
                })
                .collect();
            for r in readers {
                r.join().unwrap();
            }
            stop.store(true, Ordering::SeqCst);
        });
        let k = c.counters();
        assert!(k.evictions > 0, "{k:?}");
        assert_eq!(k.corrupt, 0, "{k:?}");
        assert!(c.valid_chunks() <= c.chunks() as usize);
        c.flush().unwrap();
        drop(c);
        let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000), 0).unwrap();
        for obj in 1..=10u64 {
            read(&c, &s, obj, 0, Store::len(ObjSeq(obj)));
        }
        assert_eq!(c.counters().corrupt, 0);
    }
}

#[test]
fn a_panicking_leader_does_not_hang_its_waiters() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    let fetches = AtomicUsize::new(0);
    let panicking = |_: u64, _: usize| -> Result<Vec<u8>> {
        fetches.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(200));
        panic!("backend exploded");
    };
    let barrier = std::sync::Barrier::new(4);
    let outcomes: Vec<std::thread::Result<Result<()>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (c, panicking, barrier) = (&c, &panicking, &barrier);
                sc.spawn(move || {
                    let mut out = vec![0u8; 4096];
                    barrier.wait();
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        c.read(ObjSeq(4), 0, &mut out, panicking)
                    }))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(
        outcomes.iter().filter(|o| o.is_err()).count(),
        1,
        "the leader panicked"
    );
    for o in outcomes.iter().filter_map(|o| o.as_ref().ok()) {
        assert!(o.is_err(), "a waiter gets an error, not data");
    }
    assert!(lock(&c.inflight).is_empty());
    // Later readers fetch afresh and are served.
    read(&c, &s, 4, 0, 4096);
    read(&c, &s, 4, 4096, 4096);
    assert_eq!(s.gets(), 1);
}

#[test]
fn multi_chunk_misses_fetch_each_chunk_once() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    let fetched = Mutex::new(Vec::new());
    let slow = |a: u64, n: usize| {
        fetched.lock().unwrap().push((a, n));
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.get(ObjSeq(6), a, n)
    };
    let barrier = std::sync::Barrier::new(6);
    std::thread::scope(|sc| {
        for t in 0..6u64 {
            let (c, slow, barrier) = (&c, &slow, &barrier);
            sc.spawn(move || {
                // Overlapping ranges of two or three chunks.
                let off = t * 15000;
                let len = 100_000 + (t as usize % 2) * 30_000;
                let mut out = vec![0u8; len];
                barrier.wait();
                c.read(ObjSeq(6), off, &mut out, slow).unwrap();
                assert!(out[..] == object(6, Store::len(ObjSeq(6)))[off as usize..][..len]);
            });
        }
    });
    let mut chunks = Vec::new();
    for &(a, n) in fetched.lock().unwrap().iter() {
        assert_eq!(a % CHUNK_BYTES, 0);
        for k in 0..(n as u64).div_ceil(CHUNK_BYTES) {
            chunks.push(a / CHUNK_BYTES + k);
        }
    }
    let n = chunks.len();
    chunks.sort_unstable();
    chunks.dedup();
    assert_eq!(chunks.len(), n, "a chunk was fetched twice: {fetched:?}");
    assert_eq!(c.counters().misses, n as u64);
}

#[test]
fn cache_file_io_errors_are_misses_and_turn_the_cache_off() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 3, 0, 3 * 65536);
    assert_eq!(s.gets(), 1);
    c.inject_faults(FAULT_READ);
    // Each read hits EIO on the cache file and is served by the backend.
    read(&c, &s, 3, 0, 4096);
    assert_eq!(s.gets(), 2);
    assert_eq!(c.io_errors(), 1);
    assert!(!c.is_off());
    // A write error (the refetched chunk is already held: a new one).
    c.inject_faults(FAULT_READ | FAULT_WRITE | FAULT_SYNC);
    read(&c, &s, 4, 8192, 4096);
    assert_eq!(c.io_errors(), 2, "the insert's write failed");
    for i in 0..IO_ERRORS_OFF {
        read(&c, &s, 3, 4096 * (i % 16), 4096);
    }
    assert!(c.is_off());
    // Off: straight to the backend, every read still right.
    let g = s.gets();
    read(&c, &s, 3, 65536 - 1024, 4096);
    read(&c, &s, 3, 0, Store::len(ObjSeq(3)));
    assert_eq!(s.gets(), g + 2);
    assert!(c.flush().is_ok(), "an off cache has nothing to flush");
    // Past the object's end is still an error when off.
    let mut out = vec![0u8; 4096];
    let end = Store::len(ObjSeq(3)) as u64;
    let e = c
        .read(ObjSeq(3), end - 512, &mut out, &|a, l| {
            s.get(ObjSeq(3), a, l)
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    drop(c);
    // The file is intact for the next open.
    c_reopen_hits(&p, &s);
}

fn c_reopen_hits(p: &Path, s: &Store) {
    let c = Cache::open(p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, s, 3, 0, 4096);
    assert_eq!(c.counters().corrupt, 0);
}

#[test]
fn a_failed_flush_loses_nothing_and_frees_no_slot() {
    let s = Store::new();
    for mask in [FAULT_SYNC, FAULT_WRITE] {
        let d = dir();
        let p = d.path().join("img.rcache");
        let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000), 0).unwrap();
        let n = c.chunks() as u64;
        for obj in 1..=n {
            read(&c, &s, obj, 0, 4096);
        }
        c.flush().unwrap();
        assert!(lock(&c.slots).free.is_empty());
        // Misses now need an eviction, whose invalidation flush fails.
        c.inject_faults(mask);
        for obj in n + 1..=n + 4 {
            read(&c, &s, obj, 0, 4096);
        }
        {
            let sl = lock(&c.slots);
            assert!(sl.free.is_empty(), "no slot freed by a failed flush");
            assert!(!sl.pending_free.is_empty() && !sl.dirty.is_empty());
        }
        assert!(c.io_errors() > 0 && !c.is_off());
        assert!(c.sync_index().is_err());
        c.inject_faults(0);
        // Healed: the retried flush frees the slots, the misses are cached.
        for obj in n + 1..=n + 4 {
            read(&c, &s, obj, 0, 4096);
        }
        c.sync_index().unwrap();
        let held = c.valid_chunks();
        assert!(held > 0);
        // A crash (no clean flush) and a reopen: every byte still right.
        drop(c);
        let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000), 0).unwrap();
        assert_eq!(c.counters().corrupt, 0);
        assert_eq!(c.valid_chunks(), held);
        // Newest first: those are held (older ones get evicted meanwhile).
        for obj in (1..=n + 4).rev() {
            read(&c, &s, obj, 0, 4096);
        }
        assert_eq!(c.counters().corrupt, 0);
        assert!(c.counters().hits > 0);
    }
}

#[test]
fn a_superblock_of_another_size_is_reformatted() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 2, 0, 65536);
    c.flush().unwrap();
    drop(c);
    // A crash during a resize to 8 MiB: the file grew, block 0 did not.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let c = Cache::open(&p, IMG, 8 * MIB, ObjSeq(100), 0).unwrap();
    assert_eq!(c.valid_chunks(), 0, "reformatted");
    read(&c, &s, 2, 0, 65536);
    assert_eq!(s.gets(), 2);
    c.flush().unwrap();
    drop(c);
    let info = Cache::inspect(&p, IMG).unwrap().unwrap();
    assert!(info.formatted && info.chunks == Layout::for_size(8 * MIB).unwrap().nchunks as u64);
}

#[test]
fn counters_are_persisted_at_flush_only() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 2, 0, 4096);
    read(&c, &s, 2, 0, 4096);
    c.sync_index().unwrap();
    let info = Cache::inspect(&p, IMG).unwrap().unwrap();
    assert_eq!(
        info.counters,
        CacheCounters::default(),
        "block 0 is not rewritten"
    );
    assert_eq!(info.valid_chunks, 1);
    c.flush().unwrap();
    let info = Cache::inspect(&p, IMG).unwrap().unwrap();
    assert_eq!((info.counters.hits, info.counters.misses), (1, 1));
}

/// Read a planned hit the way a ublk queue does: one io_uring READ of the
/// cache file (O_DIRECT) into an aligned buffer; returns the CQE result.
fn ring_read(c: &Cache, h: &HitPlan, buf: &mut AlignedBuf) -> i32 {
    let mut ring = io_uring::IoUring::new(4).unwrap();
    let sqe = io_uring::opcode::Read::new(
        io_uring::types::Fd(c.raw_fd()),
        buf.as_mut_ptr(),
        h.nbytes as u32,
    )
    .offset(h.file_off)
    .build();
    // SAFETY: `buf` outlives the read: we wait for its completion here.
    unsafe { ring.submission().push(&sqe).unwrap() };
    ring.submit_and_wait(1).unwrap();
    let r = ring.completion().next().unwrap().result();
    r
}

#[test]
fn a_planned_hit_read_with_io_uring_verifies_in_place() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    let o = ObjSeq(5);
    let want = object(5, Store::len(o));
    // Not cached yet: no plan.
    assert!(c.plan_hit(o, 8192, 8192).is_none());
    read(&c, &s, 5, 0, 4096);
    let hits = c.counters().hits;
    let mut buf = AlignedBuf::new(CHUNK_BYTES as usize);
    let h = c.plan_hit(o, 8192, 8192).expect("cached");
    assert_eq!(h.nbytes, 8192);
    let r = ring_read(&c, &h, &mut buf);
    assert!(c.finish_hit(&h, r, &buf[..]));
    assert_eq!(&buf[..8192], &want[8192..16384]);
    assert_eq!(c.counters().hits, hits, "counted by the caller");
    c.count_hit(&h);
    assert_eq!(c.counters().hits, hits + 1);
    // Not whole blocks, or across two chunks: not planned (the caller reads
    // those another way).
    assert!(c.plan_hit(o, 512, 4096).is_none());
    assert!(c.plan_hit(o, 4096, 1024).is_none());
    assert!(c.plan_hit(o, CHUNK_BYTES - 4096, 8192).is_none());
    assert!(c.plan_hit(o, 0, 0).is_none());
    // A failed or short read is a miss, and a failed one is counted.
    let h = c.plan_hit(o, 0, 4096).unwrap();
    assert!(!c.finish_hit(&h, -libc::EIO, &buf[..]));
    assert_eq!(c.io_errors(), 1);
    assert!(!c.finish_hit(&h, 2048, &buf[..]));
    assert_eq!(s.gets(), 1);
}

#[test]
fn a_planned_hit_fails_on_rot_and_on_a_slot_rewritten_under_it() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    let o = ObjSeq(9);
    read(&c, &s, 9, 0, 4096);
    let mut buf = AlignedBuf::new(CHUNK_BYTES as usize);
    // Rot in block 2 of the slot: the check fails, the entry is dropped and
    // counted, and the next read refetches it.
    let h = c.plan_hit(o, 2 * 4096, 4096).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xa5; 64], h.file_off + 100).unwrap();
    drop(f);
    let r = ring_read(&c, &h, &mut buf);
    assert!(!c.finish_hit(&h, r, &buf[..]));
    assert_eq!(c.counters().corrupt, 1);
    assert!(c.plan_hit(o, 2 * 4096, 4096).is_none(), "entry dropped");
    read(&c, &s, 9, 2 * 4096, 4096);
    assert_eq!(s.gets(), 2);
    // A slot whose entry changes between the plan and the check (evicted
    // and refilled by another reader): a miss, whatever the bytes say.
    let h = c.plan_hit(o, 0, 4096).unwrap();
    let r = ring_read(&c, &h, &mut buf);
    {
        let mut sl = lock(&c.slots);
        c.clear_slot(&mut sl, h.slot);
    }
    assert!(!c.finish_hit(&h, r, &buf[..]));
    assert_eq!(c.counters().corrupt, 1, "a rewrite is not rot");
    // Injected read faults reach ring reads too.
    read(&c, &s, 9, 16 * 4096, 4096);
    let h = c.plan_hit(o, 16 * 4096, 4096).unwrap();
    let r = ring_read(&c, &h, &mut buf);
    c.inject_faults(FAULT_READ);
    assert!(!c.finish_hit(&h, r, &buf[..]));
}

/// With a maintainer, a reader's miss returns before its chunk is written
/// to the cache file; until the maintainer writes it, readers are served
/// from the fetched copy (no second fetch), and afterwards from the file.
#[test]
fn a_miss_leaves_its_cache_write_to_the_maintainer() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    let _wake = c.maintainer();
    read(&c, &s, 5, 4096, 8192);
    assert_eq!(s.gets(), 1);
    assert_eq!(c.counters().inserts, 0, "not written by the reader");
    assert_eq!(c.valid_chunks(), 0);
    read(&c, &s, 5, 0, 65536);
    read(&c, &s, 5, 60000 & !511, 512);
    assert_eq!(s.gets(), 1, "served from the fetched chunk");
    // The ublk queue's path: not a file hit yet, but copied from memory.
    assert!(c.plan_hit(ObjSeq(5), 4096, 4096).is_none());
    let mut q = vec![0u8; 8192];
    assert!(c.copy_deferred(ObjSeq(5), 4096, &mut q));
    assert!(q[..] == object(5, Store::len(ObjSeq(5)))[4096..12288]);
    // Not all of a range that reaches into an unfetched chunk.
    assert!(!c.copy_deferred(ObjSeq(5), 60 * 1024, &mut q));
    c.insert_deferred();
    assert_eq!(c.counters().inserts, 1);
    assert_eq!(c.valid_chunks(), 1);
    let hits = c.counters().hits;
    read(&c, &s, 5, 512, 4096);
    assert_eq!(s.gets(), 1);
    assert_eq!(c.counters().hits, hits + 1);
    // Only the file serves it now: the list is empty.
    assert!(lock(&c.deferred).is_empty());
    // Without a maintainer the reader writes at once (as before).
    drop(c);
    let _ = std::fs::remove_file(&p);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100), 0).unwrap();
    read(&c, &s, 6, 0, 4096);
    assert_eq!(c.counters().inserts, 1);
}

/// A miss the maintainer caches after refilling the free list is not
/// counted as left uncached (review of 477cca3).
#[test]
fn a_deferred_miss_cached_on_retry_is_not_counted_as_skipped() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    // 512 KiB: a few slots, so the free list runs dry.
    let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000), 0).unwrap();
    let _wake = c.maintainer();
    let n = c.chunks() as u64 + 3;
    for obj in 1..=n {
        read(&c, &s, obj, 0, 4096);
        c.insert_deferred();
        let gets = s.gets();
        read(&c, &s, obj, 0, 4096);
        assert_eq!(s.gets(), gets, "object {obj} cached");
    }
    assert_eq!(c.counters().inserts, n);
    assert_eq!(c.skipped_inserts(), 0, "every miss was cached");
}
