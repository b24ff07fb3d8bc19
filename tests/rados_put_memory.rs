//! Memory per RADOS put in flight (issue 18 item 4): librados copies a
//! put's data into its own buffer when the operation is built, so a put in
//! flight holds that one copy and none of ours. Before, our own joined copy
//! was kept to completion as well: 16.07 MiB per 8 MiB put in flight, now
//! 8.07 MiB (8 puts in flight, 1 GiB).
//!
//! Its own test binary: it reads the process's peak RSS, which nothing else
//! may raise meanwhile. Needs the test cluster (scripts/test.sh).
#![cfg(feature = "rados")]

mod common;

use std::sync::Arc;

use common::rados::Namespace;
use lsvd::backend::ObjectStore;

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// 8 threads put 16 objects of a 4 KiB header and 8 MiB of data each (as
/// destage does, `put_parts`): the peak RSS grows by less than 1.5 objects
/// per put in flight (one copy, librados', plus slack), where two copies
/// were held before.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn a_put_in_flight_holds_one_copy_of_its_object() {
    let ns = Namespace::new("putmem");
    let store = Arc::new(ns.store(30));
    let (threads, per, obj) = (8usize, 16usize, 8usize << 20);
    // The callers' own buffers (destage's batches), allocated and touched
    // before the baseline.
    let bufs: Vec<Arc<(Vec<u8>, Vec<u8>)>> = (0..threads)
        .map(|t| Arc::new((vec![t as u8 + 1; 4096], vec![t as u8 + 7; obj])))
        .collect();
    store.put("warm", b"x").unwrap();
    // Reset the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = status_kib("VmRSS:");
    let t0 = std::time::Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (s, b) = (store.clone(), bufs[t].clone());
            std::thread::spawn(move || {
                for i in 0..per {
                    s.put_parts(&format!("o.{t}.{i}"), &[&b.0, &b.1]).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let took = t0.elapsed();
    let peak = status_kib("VmHWM:");
    let per_put = (peak.saturating_sub(base) as f64 / 1024.0) / threads as f64;
    eprintln!(
        "put memory: RSS {} MiB before, peak {} MiB: {per_put:.2} MiB per {} MiB put in flight \
         ({threads} in flight, {} MiB in {took:?})",
        base / 1024,
        peak / 1024,
        obj >> 20,
        (threads * per * obj) >> 20
    );
    let bound = 1.5 * (obj >> 20) as f64;
    assert!(
        per_put < bound,
        "{per_put:.2} MiB per put in flight, more than {bound} MiB: a second copy of the data is kept"
    );
    for t in 0..threads {
        for i in 0..per {
            store.delete(&format!("o.{t}.{i}")).unwrap();
        }
    }
    store.delete("warm").unwrap();
}
