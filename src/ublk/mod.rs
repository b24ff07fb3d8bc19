//! The block device: serving an image as `/dev/ublkbN` through the Linux
//! ublk driver (libublk), and the bookkeeping that `attach`, `detach`,
//! `list` and `recover` need.
//!
//! - [`server`]: the data path (one thread and io_uring per queue).
//! - [`control`]: the server's control socket (live resize).
//! - [`wake`]: waking a queue's ring when another thread finishes its work.
//! - [`pool`]: worker threads for reads and for writes waiting for space.
//! - [`kernel`]: driver checks, features, device state, control timeouts.
//! - [`registry`]: which process serves which image on which device.
//! - [`notify`]: systemd readiness.

pub mod control;
pub mod kernel;
pub mod notify;
pub mod pool;
pub mod registry;
pub mod server;
pub mod wake;
