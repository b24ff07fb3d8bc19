//! Image lifecycle without opening: names, create, remove, list, info.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::ObjectStore;
use crate::config::Config;
use crate::error::Result;
use crate::units::ImageUuid;

/// `POOL/IMAGE` as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Pool (a directory of the dir backend, a RADOS pool later).
    pub pool: String,
    /// Image name within the pool.
    pub image: String,
}

impl ImageSpec {
    /// Parse `pool/image`; both parts non-empty, of `[A-Za-z0-9_-]`, at most 96 bytes.
    pub fn parse(s: &str) -> Result<ImageSpec> {
        let _ = s;
        todo!()
    }

    /// The journal path for this image under `config.wlog_dir`.
    pub fn journal_path(&self, config: &Config) -> PathBuf {
        let _ = config;
        todo!()
    }
}

impl std::fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)
    }
}

/// Open the object store of `pool` as configured (`create`: make the pool if missing).
pub fn open_store(config: &Config, pool: &str, create: bool) -> Result<Arc<dyn ObjectStore>> {
    let _ = (config, pool, create);
    todo!()
}

/// What `info` shows about an image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    /// `pool/image`.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Closed cleanly last time.
    pub clean: bool,
    /// Data and checkpoint objects in the store.
    pub objects: u64,
    /// Bytes of those objects.
    pub stored_bytes: u64,
    /// Checkpoints listed in the superblock (first object sequence of each).
    pub checkpoints: Vec<u64>,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
}

/// Create an image of `size_bytes` (a positive multiple of 4096). Fails if it exists.
pub fn create_image(store: &dyn ObjectStore, image: &str, size_bytes: u64) -> Result<ImageUuid> {
    let _ = (store, image, size_bytes);
    todo!()
}

/// Remove an image: all its objects, its superblock and (if given) its journal file.
/// Fails with `Locked` if it is open.
pub fn remove_image(
    store: &dyn ObjectStore,
    image: &str,
    journal: Option<&std::path::Path>,
) -> Result<()> {
    let _ = (store, image, journal);
    todo!()
}

/// Images in a pool, sorted.
pub fn list_images(store: &dyn ObjectStore) -> Result<Vec<String>> {
    let _ = store;
    todo!()
}

/// Describe an image without opening it.
pub fn image_info(store: &dyn ObjectStore, spec: &ImageSpec) -> Result<ImageInfo> {
    let _ = (store, spec);
    todo!()
}
