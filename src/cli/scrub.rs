//! `scrub POOL/IMAGE [--json] [--threads N]`: read and verify everything
//! the image needs (see [`crate::volume::scrub`]); non-zero exit if
//! anything is bad.

use anyhow::{bail, Context};

use super::{human_bytes, parse_spec, print_stdout, store_for};
use crate::config::Config;
use crate::volume::scrub::{Scrub, ScrubReport};

/// Arguments of `scrub`.
#[derive(Debug, clap::Args)]
pub struct ScrubArgs {
    /// Image as POOL/IMAGE.
    pub image: String,
    /// Print one JSON object (counts and every bad piece) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Objects read at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
}

/// Run `scrub`.
pub fn scrub(config: &Config, args: &ScrubArgs) -> anyhow::Result<()> {
    let spec = parse_spec(&args.image)?;
    let store = store_for(config, &spec.pool, false)?;
    let plan = Scrub::plan(store, &spec.image, &spec.to_string())
        .with_context(|| format!("cannot scrub image {spec}"))?;
    let pb = super::transfer::progress_bar(plan.estimated_bytes(), &format!("scrubbing {spec}"));
    let report = plan.run(args.threads as usize, &|n| pb.inc(n));
    pb.finish_and_clear();
    let text = if args.json {
        serde_json::to_string_pretty(&report).context("cannot encode the scrub report as JSON")?
    } else {
        format_report(&report)
    };
    print_stdout(&text)?;
    if !report.clean() {
        let first = &report.bad[0];
        bail!(
            "image {spec}: {} bad piece{} (first: {}{}: {})",
            report.bad.len(),
            if report.bad.len() == 1 { "" } else { "s" },
            first.object,
            first
                .offset
                .map(|o| format!(" at byte {o}"))
                .unwrap_or_default(),
            first.error
        );
    }
    Ok(())
}

/// The human-readable report: one summary line, then one line per bad
/// piece.
fn format_report(r: &ScrubReport) -> String {
    let rate = if r.seconds > 0.0 {
        format!(", {}/s", human_bytes((r.bytes as f64 / r.seconds) as u64))
    } else {
        String::new()
    };
    let mut out = format!(
        "image '{}': {} objects ({} read{rate}), {} checkpoints ({} pieces), {} chunks verified{}{} in {:.1} s: {}",
        r.image,
        r.objects,
        human_bytes(r.bytes),
        r.checkpoints,
        r.checkpoint_pieces,
        r.chunks,
        if r.legacy_objects > 0 {
            format!(", {} version-1 objects verified whole", r.legacy_objects)
        } else {
            String::new()
        },
        if r.changed {
            format!(
                "; the image changed meanwhile ({} pieces vanished)",
                r.vanished
            )
        } else {
            String::new()
        },
        r.seconds,
        if r.clean() {
            "clean".to_owned()
        } else {
            format!("{} bad", r.bad.len())
        }
    );
    for b in &r.bad {
        out.push_str(&format!(
            "\n  {}{}: {}",
            b.object,
            b.offset
                .map(|o| format!(" at byte {o}"))
                .unwrap_or_default(),
            b.error
        ));
    }
    out
}
