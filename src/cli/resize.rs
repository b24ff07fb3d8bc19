//! `resize POOL/IMAGE --size N [--allow-shrink]`.
//!
//! A detached image is opened (which takes its lock, as `gc` does),
//! resized ([`crate::volume::Volume::resize`]) and closed cleanly. An
//! attached image's lock is held by its server, so the request goes to that
//! server over its control socket ([`crate::ublk::control`]); the server
//! resizes the open volume and, where the kernel's ublk driver can, the
//! block device.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::device::ask_attached;
use super::{
    check_image_size, human_bytes, open_volume, parse_size_arg, parse_spec, print_stdout,
    store_for, with_volume,
};
use crate::config::Config;
use crate::ublk::control::Control;
use crate::volume::image;

/// `resize` arguments.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// Image as POOL/IMAGE.
    pub image: String,
    /// New size, e.g. 20G (a positive multiple of 4K, at most 1P).
    #[arg(long, short = 's', value_parser = parse_size_arg)]
    pub size: u64,
    /// Allow a smaller size: the data beyond it is discarded for good.
    #[arg(long)]
    pub allow_shrink: bool,
    /// Seconds to wait for the server of an attached image to answer (a
    /// resize waits until the backend holds the trim of the range that
    /// leaves or enters the image).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// `N bytes (10 GiB)`.
fn both(n: u64) -> String {
    format!("{} ({n} bytes)", human_bytes(n))
}

/// `resize POOL/IMAGE --size N [--allow-shrink]`.
pub fn resize(config: &Config, args: &ResizeArgs) -> anyhow::Result<()> {
    let spec = parse_spec(&args.image)?;
    check_image_size(args.size)?;
    let store = store_for(config, &spec.pool, false)?;
    // Checked here for a clear message before anything is opened; the
    // volume checks again under its lock.
    let old = image::read_superblock(store.as_ref(), &spec.image)
        .with_context(|| format!("cannot read image {spec}"))?
        .size_bytes;
    if args.size < old && !args.allow_shrink {
        fail!(
            InvalidInput,
            "image {spec} is {}; shrinking it to {} discards its last {}: pass --allow-shrink \
             to do that",
            both(old),
            both(args.size),
            human_bytes(old - args.size)
        );
    }
    let req = Control::Resize {
        size: args.size,
        allow_shrink: args.allow_shrink,
    };
    let what = format!("resize image {spec}");
    if let Some(r) = ask_attached(&spec, &req, Duration::from_secs(args.timeout), &what) {
        return print_stdout(&format!("image {spec} {}", r?));
    }
    if args.size == old {
        return print_stdout(&format!(
            "image {spec} is already {}: nothing to do",
            both(old)
        ));
    }
    let mut config = config.clone();
    // The resize does its own work; no background GC besides it.
    config.no_gc = true;
    let vol = open_volume(&config, store, &spec)?;
    let done = with_volume(
        vol,
        &spec,
        |v| v.resize(args.size, args.allow_shrink),
        &format!("cannot resize image {spec}"),
    )?;
    print_stdout(&if done.changed() {
        format!(
            "image {spec} resized from {} to {}",
            both(done.old_bytes),
            both(done.new_bytes)
        )
    } else {
        format!(
            "image {spec} is already {}: nothing to do",
            both(done.old_bytes)
        )
    })
}
