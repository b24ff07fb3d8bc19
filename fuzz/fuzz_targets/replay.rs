//! Journal replay over a fuzzed journal file: an image's journal is left
//! holding acknowledged writes, trims and write-zeroes that never reached
//! the store (a crash with an open batch); each input flips or overwrites
//! its bytes (resealing the record it lands in, under the journal's
//! generation, when asked, so the change reaches the checks behind the
//! record crc), and the image is opened: journal replay, then a read of
//! the whole disk. The open must succeed or fail with an error, and so
//! must the reads; nothing may panic or hang.
#![no_main]
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lsvd::backend::mem::MemStore;
use lsvd::backend::ObjectStore;
use lsvd::config::Config;
use lsvd::format::journal::{JournalSuper, RecordHeader};
use lsvd::volume::{Volume, VolumeOptions};

const IMAGE: &str = "img";
const SIZE: u64 = 4 << 20;

struct Base {
    objects: Vec<(String, Vec<u8>)>,
    journal: Vec<u8>,
    dir: tempfile::TempDir,
}

fn config() -> Config {
    Config {
        no_rcache: true,
        flush_msec: 60_000,
        wlog_bytes: 2 << 20,
        wlog_chunk_bytes: 64 << 10,
        backend_obj_bytes: 256 << 10,
        ..Config::default()
    }
}

fn open(store: Arc<dyn ObjectStore>, journal: PathBuf) -> lsvd::Result<Volume> {
    Volume::open(VolumeOptions {
        config: config(),
        store,
        image: IMAGE.into(),
        journal_path: journal,
        io_log: None,
    })
}

fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        lsvd::catalog::image::create_image(store.as_ref(), IMAGE, SIZE).unwrap();
        let path = dir.path().join("base.wlog");
        let v = open(store.clone(), path.clone()).unwrap();
        for i in 0..60u64 {
            let off = (i * 7919 % 1000) * 4096;
            match i % 7 {
                3 => v.trim(off, 8192).unwrap(),
                5 => v.write_zeroes(off, 4096).unwrap(),
                6 => v.write(off + 512, &[i as u8; 1024]).unwrap(),
                _ => v
                    .write(off, &vec![i as u8 + 1; 4096 * (1 + i as usize % 5)])
                    .unwrap(),
            }
            if i % 10 == 9 {
                v.flush().unwrap();
            }
        }
        v.flush().unwrap();
        v.crash();
        let journal = std::fs::read(&path).unwrap();
        let mut names = store.list(IMAGE).unwrap();
        names.sort();
        let objects = names
            .into_iter()
            .map(|n| {
                let b = store.get(&n, 0, 64 << 20).unwrap();
                (n, b)
            })
            .collect();
        Base {
            objects,
            journal,
            dir,
        }
    })
}

fn u32_at(d: &[u8], at: usize) -> usize {
    let mut w = [0u8; 4];
    for (i, x) in w.iter_mut().enumerate() {
        *x = d.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(w) as usize
}

fuzz_target!(|data: &[u8]| {
    let b = base();
    let mut j = b.journal.clone();
    let generation = JournalSuper::decode(&j).map(|s| s.generation).ok();
    let mut d = data;
    while d.len() >= 6 {
        let (op, n) = (d[0], d[1] as usize);
        let at = u32_at(d, 2) % j.len();
        d = &d[6..];
        let n = n.min(d.len());
        match op % 3 {
            0 => j[at] ^= d.first().copied().unwrap_or(1).max(1),
            _ => {
                let end = (at + n).min(j.len());
                j[at..end].copy_from_slice(&d[..end - at]);
                d = &d[n..];
                // Reseal the record whose block the change starts in (its
                // header starts on a 4 KiB boundary).
                if op % 3 == 2 {
                    if let Some(g) = generation {
                        RecordHeader::reseal(&mut j[at & !4095..], g);
                    }
                }
            }
        }
    }
    let path = b
        .dir
        .path()
        .join(format!("img-{}.wlog", std::process::id()));
    std::fs::write(&path, &j).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    for (name, o) in &b.objects {
        store.put(name, o).unwrap();
    }
    if let Ok(v) = open(store, path.clone()) {
        let mut buf = vec![0u8; SIZE as usize];
        let _ = v.read(0, &mut buf);
        v.crash();
    }
    let _ = std::fs::remove_file(&path);
});
