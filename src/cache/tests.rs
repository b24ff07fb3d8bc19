use std::sync::atomic::AtomicUsize;

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
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
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
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
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
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
    read(&c, &s, 5, 0, 4096);
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
    assert_eq!(c.valid_chunks(), 0);
    read(&c, &s, 5, 0, 4096);
    assert_eq!(s.gets(), 2);
}

#[test]
fn corrupt_chunk_block_is_dropped_and_refetched() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
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
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
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
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
    read(&c, &s, 2, 0, 4096);
    c.flush().unwrap();
    drop(c);
    let other = ImageUuid([8; 16]);
    let info = Cache::inspect(&p, other).unwrap().unwrap();
    assert!(info.formatted && !info.owner_match);
    let c = Cache::open(&p, other, 4 * MIB, ObjSeq(100)).unwrap();
    assert_eq!(c.valid_chunks(), 0, "another image's cache is discarded");
    read(&c, &s, 2, 0, 4096);
    assert_eq!(s.gets(), 2);
    c.flush().unwrap();
    drop(c);
    let c = Cache::open(&p, other, 8 * MIB, ObjSeq(100)).unwrap();
    assert_eq!(c.valid_chunks(), 0, "resized: reformatted");
    drop(c);
    std::fs::write(&p, vec![0u8; 4 << 20]).unwrap();
    let c = Cache::open(&p, other, 4 * MIB, ObjSeq(100)).unwrap();
    assert_eq!(c.valid_chunks(), 0);
    read(&c, &s, 2, 0, 4096);
    drop(c);
    assert!(
        Cache::open(&p, IMG, 64 * 1024, ObjSeq(1)).is_err(),
        "too small"
    );
}

#[test]
fn bad_index_block_loses_only_its_entries() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 16 * MIB, ObjSeq(1000)).unwrap();
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
    let c = Cache::open(&p, IMG, 16 * MIB, ObjSeq(1000)).unwrap();
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
    let c = Cache::open(&p, IMG, 16 * MIB, ObjSeq(1000)).unwrap();
    assert_eq!(c.counters().corrupt, 0);
    assert_eq!(c.valid_chunks(), 60);
}

#[test]
fn entries_above_the_last_object_are_dropped() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
    read(&c, &s, 4, 0, 4096);
    read(&c, &s, 6, 0, 4096);
    c.flush().unwrap();
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(5)).unwrap();
    assert_eq!(c.valid_chunks(), 1);
    drop(c);
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
    assert_eq!(c.valid_chunks(), 1, "the drop was durable");
}

#[test]
fn concurrent_misses_on_one_chunk_fetch_once() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
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
    // An error reaches every waiter.
    let failing = |_: u64, _: usize| -> Result<Vec<u8>> {
        std::thread::sleep(std::time::Duration::from_millis(50));
        Err(Error::new(ErrorKind::NotFound, "gone"))
    };
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let (c, failing) = (&c, &failing);
            sc.spawn(move || {
                let mut out = vec![0u8; 512];
                let e = c.read(ObjSeq(8), 0, &mut out, failing).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::NotFound);
            });
        }
    });
}

#[test]
fn eviction_keeps_reads_correct() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    // 512 KiB: 6 slots after the superblock and index.
    let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000)).unwrap();
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
    let c = Cache::open(&p, IMG, 512 * 1024, ObjSeq(1000)).unwrap();
    for obj in 1..=20u64 {
        read(&c, &s, obj, 0, 8192);
    }
    assert_eq!(c.counters().corrupt, 0);
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let _c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(1)).unwrap();
    let e = Cache::open(&p, IMG, 4 * MIB, ObjSeq(1)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Locked);
}

#[test]
fn insert_object_then_hit() {
    let d = dir();
    let p = d.path().join("img.rcache");
    let s = Store::new();
    let c = Cache::open(&p, IMG, 4 * MIB, ObjSeq(100)).unwrap();
    let o = object(11, Store::len(ObjSeq(11)));
    c.insert_object(ObjSeq(11), &o).unwrap();
    read(&c, &s, 11, 0, o.len());
    assert_eq!(s.gets(), 0);
}
