//! The pool's catalog, without opening an image: names, create, remove,
//! list and info of images (`image.rs`), clone metadata (`clone.rs`)
//! and lock owner strings (`owner.rs`). It reads and writes superblocks
//! only; the open engine is [`crate::volume`], which builds on this (and
//! re-exports it at its old paths, `crate::volume::image` and
//! `crate::volume::{clone_image, find_clones}`). Nothing here imports
//! from `volume`.

mod clone;
pub mod image;
pub mod owner;

pub(crate) use clone::no_such_snapshot;
pub use clone::{clone_image, find_clones, MAX_CHAIN};
