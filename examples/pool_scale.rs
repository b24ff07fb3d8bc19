//! Open, `info` and `rm` of one image in a crowded pool against the same
//! image alone in its pool (issue 16, part 2: no pool-wide listing on a
//! per-image path). Directory backend, or RADOS with `--rados`.
//!
//! `cargo run --release --example pool_scale [IMAGES] [OBJECTS_PER_IMAGE] [REPS]`
//! (default 1,000 images of 100 objects: 100,000 objects; 5 repetitions).
//!
//! `cargo run --release --features rados --example pool_scale -- --rados CEPH_CONF
//! [IMAGES] [OBJECTS_PER_IMAGE] [REPS]`: the same on the Ceph cluster of
//! CEPH_CONF (client `admin`), e.g. one from `scripts/ceph-test-cluster.sh
//! start DIR` (CEPH_CONF is then `DIR/ceph.conf`). The two pools,
//! `ps-empty` and `ps-crowded`, are created with the `ceph` CLI (which must
//! be on the PATH; the run refuses to start if either already exists) with
//! the cluster's default pool settings, and deleted again at the end (this
//! needs `mon allow pool delete`, which the test cluster sets).
//!
//! 1. Two pools: `empty` holds only the image `img`; `crowded` holds `img`
//!    and IMAGES other images' objects (small placeholder objects named as
//!    their objects are, written directly: their content is never read).
//!    Dir: `DirStore`s under a temporary directory, placeholders written as
//!    files. RADOS: placeholders written by 16 threads of `put`s through
//!    one `RadosStore`; the time taken is printed (`fill_secs`).
//! 2. `img` is built the same way in both: created, 96 objects written
//!    (64 KiB objects), closed; then 16 more written and the volume
//!    dropped as in a crash, so the next open recovers. (The journals stay
//!    in a local temporary directory on both backends.)
//! 3. Timed, REPS times in each pool, interleaved: `Volume::open` (then a
//!    crash, untimed, so every open recovers the same way), `info`.
//!    Reported: the mean of each and `ratio` = crowded / empty (target for
//!    the open: <= 1.2).
//! 4. For comparison, the cost the mark avoids: the same open in the
//!    crowded pool of the image made old (no mark, `INCOMPAT_HWM` clear),
//!    which lists the pool once (`open_listing_secs`; `listing_over_mark`
//!    is its ratio to the crowded open of step 3). The same is done, and
//!    timed, in the empty pool too (`open_listing_empty_secs`): the
//!    listing open places the mark afresh, and how far above the image's
//!    last object it lies sets how many objects the next open probes for,
//!    so both images must go through the same steps for step 5 to compare
//!    like with like.
//! 5. The open of the image closed cleanly (nothing to replay), in each
//!    pool (`open_clean_*`).
//! 6. `rm` of `img` in each pool (`rm_secs`).
//!
//! Every store is wrapped in a counter of its calls: the calls of the last
//! timed open of each kind are printed (`ops_*`: puts, gets, stats,
//! deletes, lists, locks), so that a ratio away from 1 can be told apart
//! as more work or slower calls in the crowded pool.
//!
//! Prints one `key=value` line per figure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lsvd::backend::{DirStore, ObjectStore, StoreLock};
use lsvd::config::Config;
use lsvd::format::superblock::INCOMPAT_HWM;
use lsvd::volume::image::{
    create_image, hwm_name, image_info, read_superblock, remove_image, ImageSpec,
};
use lsvd::volume::{Volume, VolumeOptions};

fn config() -> Config {
    Config {
        backend_obj_bytes: 64 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 16 << 20,
        checkpoint_interval_objs: 32,
        no_gc: true,
        ..Config::default()
    }
}

fn open(store: &Arc<Ops>, dir: &Path) -> Volume {
    Volume::open(VolumeOptions {
        config: config(),
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap_or_else(|e| panic!("open: {e:?}"))
}

fn write_objects(v: &Volume, n: u64, seed: u64) {
    for i in 0..n {
        let d: Vec<u8> = (0..64 << 10).map(|j| (i * 7 + j + seed) as u8).collect();
        v.write(((i * 13 + seed) % 256) * (64 << 10), &d).unwrap();
    }
    v.flush().unwrap();
}

/// Counts the calls made to the store it wraps: put, get, stat, delete,
/// list, lock.
struct Ops {
    inner: Arc<dyn ObjectStore>,
    n: [AtomicU64; 6],
}

impl Ops {
    fn bump(&self, i: usize) {
        self.n[i].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.n[i].load(Ordering::Relaxed))
    }
}

/// The calls made between two `Ops::counts`, as `put:N,get:N,...`.
fn ops_between(before: [u64; 6], after: [u64; 6]) -> String {
    ["put", "get", "stat", "delete", "list", "lock"]
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k}:{}", after[i] - before[i]))
        .collect::<Vec<_>>()
        .join(",")
}

impl ObjectStore for Ops {
    fn put(&self, name: &str, data: &[u8]) -> lsvd::Result<()> {
        self.bump(0);
        self.inner.put(name, data)
    }
    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> lsvd::Result<()> {
        self.bump(0);
        self.inner.put_parts(name, parts)
    }
    fn get(&self, name: &str, offset: u64, len: usize) -> lsvd::Result<Vec<u8>> {
        self.bump(1);
        self.inner.get(name, offset, len)
    }
    fn stat(&self, name: &str) -> lsvd::Result<Option<u64>> {
        self.bump(2);
        self.inner.stat(name)
    }
    fn delete(&self, name: &str) -> lsvd::Result<()> {
        self.bump(3);
        self.inner.delete(name)
    }
    fn list(&self, prefix: &str) -> lsvd::Result<Vec<String>> {
        self.bump(4);
        self.inner.list(prefix)
    }
    fn lock(&self, name: &str, owner: &str) -> lsvd::Result<Box<dyn StoreLock>> {
        self.bump(5);
        self.inner.lock(name, owner)
    }
    fn lock_holders(&self, name: &str) -> lsvd::Result<Vec<String>> {
        self.inner.lock_holders(name)
    }
    fn break_lock(&self, name: &str) -> lsvd::Result<Vec<String>> {
        self.inner.break_lock(name)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Where the two pools live.
enum Backend {
    /// `DirStore`s under this directory.
    Dir(PathBuf),
    /// RADOS pools of the cluster of this ceph.conf.
    #[cfg(feature = "rados")]
    Rados(rados::Pools),
}

/// The placeholder objects of `images` other images of `objects` objects
/// each: the superblock `otherNNNN` and `otherNNNN.<seq>`.
fn placeholder_names(image: u64, objects: u64) -> impl Iterator<Item = String> {
    (1..=objects)
        .map(move |s| format!("other{image:04}.{s:016x}"))
        .chain(std::iter::once(format!("other{image:04}")))
}

/// A pool named `name` holding `img` built as in step 2, and `images`
/// other images of `objects` objects each; its journal directory (local,
/// under `tmp`).
fn pool(
    backend: &Backend,
    tmp: &Path,
    name: &str,
    images: u64,
    objects: u64,
) -> (Arc<Ops>, PathBuf) {
    let inner: Arc<dyn ObjectStore> = match backend {
        Backend::Dir(root) => {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..images {
                for n in placeholder_names(i, objects) {
                    std::fs::write(dir.join(n), b"x").unwrap();
                }
            }
            Arc::new(DirStore::open(&dir).unwrap())
        }
        #[cfg(feature = "rados")]
        Backend::Rados(pools) => {
            let store = pools.create(name);
            let t = Instant::now();
            rados::fill(&store, images, objects);
            if images > 0 {
                println!(
                    "fill_secs={:.1} fill_objects={}",
                    t.elapsed().as_secs_f64(),
                    images * (objects + 1)
                );
            }
            store
        }
    };
    let ops = Arc::new(Ops {
        inner,
        n: Default::default(),
    });
    let store = ops.clone();
    let jdir = tmp.join(format!("{name}-journal"));
    std::fs::create_dir_all(&jdir).unwrap();
    create_image(store.as_ref(), "img", 16 << 20).unwrap();
    let v = open(&store, &jdir);
    write_objects(&v, 96, 1);
    v.close().unwrap();
    let v = open(&store, &jdir);
    write_objects(&v, 16, 2);
    v.crash();
    drop(store);
    (ops, jdir)
}

#[cfg(feature = "rados")]
mod rados {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use lsvd::backend::ObjectStore;
    use lsvd::config::{BackendKind, Config};

    /// Threads putting placeholder objects.
    const FILL_THREADS: u64 = 16;

    /// The pools this run created; deleted when dropped (also on a panic).
    pub struct Pools {
        pub conf: PathBuf,
        created: std::cell::RefCell<Vec<String>>,
    }

    /// `ceph -c CONF ARGS`, bounded in time; its stdout, or a panic.
    fn ceph(conf: &std::path::Path, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .arg("60")
            .arg("ceph")
            .arg("-c")
            .arg(conf)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run ceph {args:?}: {e}"));
        if !out.status.success() {
            panic!(
                "ceph {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    impl Pools {
        pub fn new(conf: PathBuf) -> Pools {
            Pools {
                conf,
                created: Default::default(),
            }
        }

        /// Create pool `ps-NAME` (refusing one that exists) and open it.
        pub fn create(&self, name: &str) -> Arc<dyn ObjectStore> {
            let pool = format!("ps-{name}");
            let existing = ceph(&self.conf, &["osd", "pool", "ls"]);
            if existing.lines().any(|l| l.trim() == pool) {
                panic!("pool {pool} already exists: delete it first (ceph osd pool rm {pool} {pool} --yes-i-really-really-mean-it)");
            }
            ceph(&self.conf, &["osd", "pool", "create", &pool]);
            self.created.borrow_mut().push(pool.clone());
            ceph(
                &self.conf,
                &["osd", "pool", "application", "enable", &pool, "lsvd"],
            );
            let config = Config {
                backend: BackendKind::Rados,
                ceph_conf: Some(self.conf.clone()),
                ..super::config()
            };
            let store = lsvd::backend::rados::open(&config, &pool)
                .unwrap_or_else(|e| panic!("open pool {pool}: {e:?}"));
            // Ready once a put works (the new pool's PGs are active).
            let deadline = Instant::now() + Duration::from_secs(120);
            while let Err(e) = store.put("ps-probe", b"x") {
                assert!(Instant::now() < deadline, "pool {pool} not ready: {e:?}");
                std::thread::sleep(Duration::from_millis(500));
            }
            store.delete("ps-probe").unwrap();
            assert!(store.list("").unwrap().is_empty(), "pool {pool} not empty");
            store
        }
    }

    impl Drop for Pools {
        fn drop(&mut self) {
            for pool in self.created.borrow().iter() {
                let ok = Command::new("timeout")
                    .arg("60")
                    .arg("ceph")
                    .arg("-c")
                    .arg(&self.conf)
                    .args(["osd", "pool", "rm", pool, pool])
                    .arg("--yes-i-really-really-mean-it")
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if !ok {
                    eprintln!("could not delete pool {pool}: delete it by hand");
                }
            }
        }
    }

    /// Put the placeholder objects of `images` images of `objects` objects
    /// each, from several threads.
    pub fn fill(store: &Arc<dyn ObjectStore>, images: u64, objects: u64) {
        std::thread::scope(|s| {
            for t in 0..FILL_THREADS {
                s.spawn(move || {
                    for i in (t..images).step_by(FILL_THREADS as usize) {
                        for n in super::placeholder_names(i, objects) {
                            store.put(&n, b"x").unwrap();
                        }
                    }
                });
            }
        });
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let rados_conf = if args.first().map(String::as_str) == Some("--rados") {
        assert!(args.len() >= 2, "--rados needs the path of a ceph.conf");
        let conf = PathBuf::from(args.remove(1));
        args.remove(0);
        Some(conf)
    } else {
        None
    };
    let args: Vec<u64> = args
        .iter()
        .map(|a| a.parse().expect("numbers: IMAGES OBJECTS_PER_IMAGE REPS"))
        .collect();
    let images = args.first().copied().unwrap_or(1000);
    let objects = args.get(1).copied().unwrap_or(100);
    let reps = args.get(2).copied().unwrap_or(5).max(1);
    let tmp = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or("/tmp".into())).unwrap();
    let backend = match rados_conf {
        None => Backend::Dir(tmp.path().to_owned()),
        #[cfg(feature = "rados")]
        Some(conf) => Backend::Rados(rados::Pools::new(conf)),
        #[cfg(not(feature = "rados"))]
        Some(_) => panic!("--rados needs the example built with --features rados"),
    };
    println!(
        "backend={}",
        match &backend {
            Backend::Dir(_) => "dir",
            #[cfg(feature = "rados")]
            Backend::Rados(_) => "rados",
        }
    );
    let (empty, empty_j) = pool(&backend, tmp.path(), "empty", 0, 0);
    let (crowded, crowded_j) = pool(&backend, tmp.path(), "crowded", images, objects);
    println!(
        "images={images} objects_per_image={objects} pool_objects={}",
        images * (objects + 1)
    );
    let spec = ImageSpec {
        pool: "p".into(),
        image: "img".into(),
    };
    let (mut open_e, mut open_c, mut info_e, mut info_c) = (vec![], vec![], vec![], vec![]);
    let (mut ops_e, mut ops_c) = (String::new(), String::new());
    for _ in 0..reps {
        for (store, j, opens, infos, ops) in [
            (&empty, &empty_j, &mut open_e, &mut info_e, &mut ops_e),
            (&crowded, &crowded_j, &mut open_c, &mut info_c, &mut ops_c),
        ] {
            let before = store.counts();
            let t = Instant::now();
            let v = open(store, j);
            opens.push(t.elapsed().as_secs_f64());
            *ops = ops_between(before, store.counts());
            v.crash();
            let t = Instant::now();
            let i = image_info(store.as_ref(), &spec).unwrap();
            infos.push(t.elapsed().as_secs_f64());
            assert!(i.objects >= 96);
        }
    }
    println!(
        "open_empty_secs={:.4} open_crowded_secs={:.4} open_ratio={:.2}",
        mean(&open_e),
        mean(&open_c),
        mean(&open_c) / mean(&open_e)
    );
    println!("ops_open_empty={ops_e} ops_open_crowded={ops_c}");
    println!(
        "info_empty_secs={:.4} info_crowded_secs={:.4} info_ratio={:.2}",
        mean(&info_e),
        mean(&info_c),
        mean(&info_c) / mean(&info_e)
    );
    // The image made old: the open lists the pool once (and writes the mark
    // again, so each repetition clears it first). Done in both pools, so
    // that both images keep the same history (the mark's distance above
    // the last object, hence the probes of a later open, depends on it).
    let (mut listing_e, mut listing_c) = (vec![], vec![]);
    for _ in 0..reps {
        for (store, j, opens) in [
            (&empty, &empty_j, &mut listing_e),
            (&crowded, &crowded_j, &mut listing_c),
        ] {
            let mut sb = read_superblock(store.as_ref(), "img").unwrap();
            sb.incompat &= !INCOMPAT_HWM;
            store.put("img", &sb.encode()).unwrap();
            store.delete(&hwm_name("img")).unwrap();
            let before = store.counts();
            let t = Instant::now();
            let v = open(store, j);
            opens.push(t.elapsed().as_secs_f64());
            ops_c = ops_between(before, store.counts());
            v.crash();
        }
    }
    println!(
        "open_listing_secs={:.4} listing_over_mark={:.2} open_listing_empty_secs={:.4}",
        mean(&listing_c),
        mean(&listing_c) / mean(&open_c),
        mean(&listing_e)
    );
    println!("ops_open_listing={ops_c}");
    // A clean image: nothing to replay or destage at the open, so only the
    // open's own reads and probes (and its superblock write) are timed.
    for (store, j) in [(&empty, &empty_j), (&crowded, &crowded_j)] {
        open(store, j).close().unwrap();
    }
    let (mut clean_e, mut clean_c) = (vec![], vec![]);
    for _ in 0..reps {
        for (store, j, opens, ops) in [
            (&empty, &empty_j, &mut clean_e, &mut ops_e),
            (&crowded, &crowded_j, &mut clean_c, &mut ops_c),
        ] {
            let before = store.counts();
            let t = Instant::now();
            let v = open(store, j);
            opens.push(t.elapsed().as_secs_f64());
            *ops = ops_between(before, store.counts());
            v.close().unwrap();
        }
    }
    println!(
        "open_clean_empty_secs={:.4} open_clean_crowded_secs={:.4} open_clean_ratio={:.2}",
        mean(&clean_e),
        mean(&clean_c),
        mean(&clean_c) / mean(&clean_e)
    );
    println!("ops_open_clean_empty={ops_e} ops_open_clean_crowded={ops_c}");
    for (name, store, j) in [
        ("empty", &empty, &empty_j),
        ("crowded", &crowded, &crowded_j),
    ] {
        let t = Instant::now();
        remove_image(store.as_ref(), "img", Some(&j.join("img.wlog"))).unwrap();
        println!("rm_{name}_secs={:.4}", t.elapsed().as_secs_f64());
    }
}
