//! Recovery over a fuzzed set of objects in an in-memory store: a real
//! image (data objects, GC objects, checkpoints, superblock) is built once;
//! each input then flips, overwrites, truncates or deletes its objects
//! (resealing data and GC objects and the superblock when asked, so the
//! changes reach the checks behind their crcs) and recovers the map as an
//! open does. Recovery must fail with an error or give a map whose every
//! extent lies inside the data area of its object (`fuzz_recover` panics
//! otherwise).
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lsvd::backend::mem::MemStore;
use lsvd::backend::ObjectStore;
use lsvd::config::Config;
use lsvd::format::gcobject::{self, GcHeader};
use lsvd::format::object::{self, ObjectHeader};
use lsvd::format::superblock::Superblock;
use lsvd::volume::{Volume, VolumeOptions};

const IMAGE: &str = "img";

/// The objects of an image after writes, trims, overwrites, a GC pass and
/// a clean close: (name, bytes), the superblock first.
fn baseline() -> &'static Vec<(String, Vec<u8>)> {
    static B: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        lsvd::catalog::image::create_image(store.as_ref(), IMAGE, 4 << 20).unwrap();
        let config = Config {
            backend_obj_bytes: 64 << 10,
            wlog_chunk_bytes: 16 << 10,
            checkpoint_interval_objs: 4,
            no_rcache: true,
            gc_threshold: 90,
            ..Config::default()
        };
        let v = Volume::open(VolumeOptions {
            config,
            store: store.clone(),
            image: IMAGE.into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        })
        .unwrap();
        for i in 0..120u64 {
            let off = (i * 7919 % 900) * 4096;
            let len = 4096 * (1 + i as usize % 6);
            v.write(off, &vec![i as u8 + 1; len]).unwrap();
            if i % 17 == 0 {
                v.trim(off, 8192).unwrap();
            }
            if i % 40 == 39 {
                v.flush().unwrap();
            }
        }
        let _ = v.gc_now();
        v.close().unwrap();
        let mut names = store.list(IMAGE).unwrap();
        names.sort();
        names.sort_by_key(|n| n != IMAGE);
        names
            .into_iter()
            .map(|n| {
                let b = store.get(&n, 0, 64 << 20).unwrap();
                (n, b)
            })
            .collect()
    })
}

fn reseal(name: &str, b: &mut [u8]) {
    if name == IMAGE {
        Superblock::reseal(b);
    } else if b.starts_with(object::MAGIC) {
        ObjectHeader::reseal(b);
    } else if b.starts_with(gcobject::MAGIC) {
        GcHeader::reseal(b);
    }
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    for (i, x) in w.iter_mut().enumerate() {
        *x = d.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    let mut objects = baseline().clone();
    let mut d = data;
    while d.len() >= 6 && !objects.is_empty() {
        let (op, idx) = (d[0], d[1] as usize % objects.len());
        let arg = u32_at(d, 2) as usize;
        d = &d[6..];
        let (name, b) = &mut objects[idx];
        match op % 5 {
            0 | 1 if !b.is_empty() => {
                let at = arg % b.len();
                b[at] ^= d.first().copied().unwrap_or(1).max(1);
                d = d.get(1..).unwrap_or(&[]);
                if op % 5 == 1 {
                    reseal(name, b);
                }
            }
            2 => {
                objects.remove(idx);
            }
            3 => b.truncate(arg % (b.len() + 1)),
            4 if !b.is_empty() && !d.is_empty() => {
                let at = arg % b.len();
                let n = (d[0] as usize).min(d.len() - 1);
                let src = &d[1..1 + n];
                let end = (at + n).min(b.len());
                b[at..end].copy_from_slice(&src[..end - at]);
                d = &d[1 + n..];
                reseal(name, b);
            }
            _ => {}
        }
    }
    let store = MemStore::new();
    for (name, b) in &objects {
        store.put(name, b).unwrap();
    }
    let _ = lsvd::volume::fuzz_recover(&store, IMAGE);
});
