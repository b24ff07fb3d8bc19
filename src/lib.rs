//! lsvd-ublk: a log-structured virtual disk.
//!
//! Writes are made durable in a local O_DIRECT journal, acknowledged, then
//! packed in write order into large objects in an object store. See
//! `docs/format.md` for every persistent layout and `README.md` for the
//! consistency guarantees.
//!
//! Layers, lowest first: [`units`]/[`error`]/[`wait`] (every wait's one
//! shape: deadline and cancel flag), [`format`] (pure layouts),
//! [`io`], [`backend`], [`map`], [`journal`], [`catalog`] (images in a
//! pool, without opening one), [`volume`], [`metrics`] (live counters and
//! their exposition), the front ends
//! [`ublk`] and [`nbd`], [`cli`].

pub mod backend;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod crashtest;
pub mod error;
pub mod failpoint;
pub mod format;
pub mod gc;
pub mod io;
pub mod journal;
pub mod map;
pub mod metrics;
pub mod nbd;
pub mod powercut;
pub mod ublk;
pub mod units;
pub mod volume;
pub mod wait;

pub use error::{Error, ErrorKind, Result};
