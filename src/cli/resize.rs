//! `resize POOL/IMAGE --size N [--allow-shrink]`.
//!
//! A detached image is opened (which takes its lock, as `gc` does),
//! resized ([`crate::volume::Volume::resize`]) and closed cleanly. An
//! attached image's lock is held by its server, so the request goes to that
//! server over its control socket ([`crate::ublk::control`]); the server
//! resizes the open volume and, where the kernel's ublk driver can, the
//! block device.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use super::{
    check_image_size, human_bytes, open_volume, parse_size_arg, parse_spec, print_stdout, store_for,
};
use crate::config::Config;
use crate::ublk::control::{self, Control, Reply};
use crate::ublk::registry::{self, DevState, Record};
use crate::volume::image;
use crate::volume::ImageSpec;

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
        bail!(
            "image {spec} is {}; shrinking it to {} discards its last {}: pass --allow-shrink \
             to do that",
            both(old),
            both(args.size),
            human_bytes(old - args.size)
        );
    }
    let name = spec.to_string();
    if let Some(r) = registry::all().into_iter().find(|r| r.image == name) {
        return match registry::state_of(&r).0 {
            DevState::Live => resize_attached(&spec, &r, args),
            _ => bail!(
                "image {spec} is attached as {} but its server (pid {}) is not running: \
                 `lsvd-ublk recover {}` takes the device over (then resize), `lsvd-ublk \
                 detach --force {}` removes it",
                r.device,
                r.pid,
                r.device,
                r.device
            ),
        };
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
    let done = match vol.resize(args.size, args.allow_shrink) {
        Ok(d) => d,
        Err(e) => {
            let _ = vol.close();
            return Err(anyhow::Error::new(e).context(format!("cannot resize image {spec}")));
        }
    };
    vol.close()
        .with_context(|| format!("cannot close image {spec} after resizing it"))?;
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

/// Ask the server of attached image `spec` (record `r`) to resize it.
fn resize_attached(spec: &ImageSpec, r: &Record, args: &ResizeArgs) -> anyhow::Result<()> {
    let path = registry::control_path(r.dev_id);
    if !path.exists() {
        bail!(
            "image {spec} is attached as {}, but its server (pid {}) has no control socket {} \
             (a server that predates live resize, or one that could not create it; see its \
             log): detach the image, resize it, attach it again",
            r.device,
            r.pid,
            path.display()
        );
    }
    let req = Control::Resize {
        size: args.size,
        allow_shrink: args.allow_shrink,
    };
    let reply =
        control::request(&path, &req, Duration::from_secs(args.timeout)).with_context(|| {
            format!(
                "cannot get the server of {} (pid {}) to resize image {spec}",
                r.device, r.pid
            )
        })?;
    match reply {
        Reply::Resized { message, .. } | Reply::Done { message } => {
            print_stdout(&format!("image {spec} {message}"))
        }
        Reply::Error { error } => bail!(
            "the server of {} (pid {}) could not resize image {spec}: {error}",
            r.device,
            r.pid
        ),
    }
}
