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

/// End the process with `code`, from any thread: like
/// `std::process::exit`, except that when a thread of ours may still be
/// inside librados it leaves with `_exit` after a short wait, so that
/// librados' destructors never run under it
/// ([`backend::rados::client::exit_process`]). Every exit of a process that
/// may have used RADOS goes through here or through `main`'s return, which
/// calls the same check.
pub fn exit_now(code: i32) -> ! {
    #[cfg(feature = "rados")]
    backend::rados::client::exit_process(u8::try_from(code).unwrap_or(1));
    std::process::exit(code)
}
