//! `iostat [POOL/IMAGE|ENDPOINT] [--interval S] [--count N]`: a live view
//! of the servers' I/O, like `rbd perf image iostat`: per image, read and
//! write requests per second, bytes per second and mean latency over each
//! interval, from two scrapes of its metrics ([`crate::metrics`]).
//!
//! Servers are found by their default metrics sockets in the run directory
//! (`<run dir>/ublkb<N>.metrics.sock`, `<run dir>/nbd-<pid>.metrics.sock`;
//! the run directory is `/run/lsvd-ublk` or `$LSVD_RUN_DIR`). A server whose
//! `metrics_listen` names another address is reached by giving that
//! address (`unix:PATH` or `IP:PORT`) as the argument.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use super::print_stdout;
use crate::metrics::http::{scrape, Endpoint};
use crate::metrics::text;
use crate::ublk::registry;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// File name suffix of the default metrics sockets.
pub const SOCKET_SUFFIX: &str = ".metrics.sock";

/// `iostat` arguments.
#[derive(Debug, Args)]
pub struct IostatArgs {
    /// POOL/IMAGE to show (default: every server found in the run
    /// directory), or a server's metrics endpoint: unix:PATH or IP:PORT.
    pub target: Option<String>,
    /// Seconds between reports.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Reports to print, then exit (default: until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
}

/// The default metrics socket of the `serve-nbd` server with pid `pid`.
pub fn nbd_socket(pid: u32) -> PathBuf {
    registry::run_dir().join(format!("nbd-{pid}{SOCKET_SUFFIX}"))
}

/// What one scrape says about one server.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counters {
    image: String,
    /// Per op (`read`, `write`): requests, bytes, latency seconds summed.
    ops: BTreeMap<String, (f64, f64, f64)>,
}

/// Read the counters `iostat` shows from an exposition.
fn counters(body: &str) -> anyhow::Result<Counters> {
    let samples = text::parse(body).map_err(|e| anyhow::anyhow!("bad metrics text: {e}"))?;
    let mut c = Counters::default();
    for s in samples {
        if s.name == "lsvd_server_info" {
            c.image = s.label("image").unwrap_or("?").to_owned();
            continue;
        }
        let field = match s.name.as_str() {
            "lsvd_io_requests_total" => 0,
            "lsvd_io_bytes_total" => 1,
            "lsvd_io_latency_seconds_sum" => 2,
            _ => continue,
        };
        let slot = c
            .ops
            .entry(s.label("op").unwrap_or("").to_owned())
            .or_default();
        *[&mut slot.0, &mut slot.1, &mut slot.2][field] = s.value;
    }
    Ok(c)
}

/// The endpoints to scrape: the one named, or every default socket in the
/// run directory.
fn endpoints(target: Option<&str>) -> anyhow::Result<(Vec<Endpoint>, Option<String>)> {
    if let Some(t) = target {
        if let Some(p) = t.strip_prefix("unix:") {
            return Ok((vec![Endpoint::Unix(PathBuf::from(p))], None));
        }
        if let Ok(a) = t.parse() {
            return Ok((vec![Endpoint::Tcp(a)], None));
        }
        super::parse_spec(t.split('@').next().unwrap_or(t))?;
    }
    let dir = registry::run_dir();
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(SOCKET_SUFFIX) {
                found.push(Endpoint::Unix(e.path()));
            }
        }
    }
    found.sort_by_key(|e| e.to_string());
    Ok((found, target.map(str::to_owned)))
}

/// Scrape every endpoint; those that do not answer (a server that exited
/// and left its socket, say) are left out.
fn scrape_all(eps: &[Endpoint], image: Option<&str>) -> BTreeMap<String, Counters> {
    let mut out = BTreeMap::new();
    for ep in eps {
        let Ok(body) = scrape(ep, SCRAPE_TIMEOUT) else {
            continue;
        };
        match counters(&body) {
            Ok(c) if image.is_none_or(|i| i == c.image) => {
                out.insert(ep.to_string(), c);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("{ep}: {e}"),
        }
    }
    out
}

/// `1.5 MiB/s`.
fn rate_bytes(v: f64) -> String {
    format!("{}/s", super::human_bytes(v.max(0.0) as u64))
}

/// One report: a header and a row per server seen in both scrapes.
fn report(
    before: &BTreeMap<String, Counters>,
    after: &BTreeMap<String, Counters>,
    secs: f64,
) -> String {
    let mut out = format!(
        "{:<32} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "NAME", "WR", "RD", "WR_BYTES", "RD_BYTES", "WR_LAT", "RD_LAT"
    );
    let mut rows: Vec<(String, String)> = Vec::new();
    for (key, a) in after {
        let Some(b) = before.get(key) else { continue };
        let d = |op: &str| {
            let x = a.ops.get(op).copied().unwrap_or_default();
            let y = b.ops.get(op).copied().unwrap_or_default();
            (x.0 - y.0, x.1 - y.1, x.2 - y.2)
        };
        let (w, r) = (d("write"), d("read"));
        let lat = |(n, _, s): (f64, f64, f64)| {
            if n > 0.0 {
                format!("{:.2} ms", s / n * 1e3)
            } else {
                "0.00 ms".to_owned()
            }
        };
        rows.push((
            a.image.clone(),
            format!(
                "{:<32} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
                a.image,
                format!("{:.0}/s", w.0 / secs),
                format!("{:.0}/s", r.0 / secs),
                rate_bytes(w.1 / secs),
                rate_bytes(r.1 / secs),
                lat(w),
                lat(r)
            ),
        ));
    }
    rows.sort();
    for (_, r) in rows {
        out.push('\n');
        out.push_str(&r);
    }
    out
}

/// `iostat`.
pub fn iostat(args: &IostatArgs) -> anyhow::Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0 && args.interval <= 86400.0) {
        bail!("--interval must be a number of seconds above 0");
    }
    if args.count == Some(0) {
        return Ok(());
    }
    let (eps, image) = endpoints(args.target.as_deref())?;
    let mut before = scrape_all(&eps, image.as_deref());
    if before.is_empty() {
        let dir = registry::run_dir();
        match &args.target {
            Some(t) if image.is_none() => bail!("no metrics server answers at {t}"),
            Some(t) => bail!(
                "no server of image {t} with metrics in {} (servers whose metrics_listen \
                 names another address: give that address instead)",
                dir.display()
            ),
            None => bail!(
                "no lsvd-ublk server with metrics in {} (set LSVD_RUN_DIR if they use another \
                 run directory; a server whose metrics_listen names another address: give that \
                 address)",
                dir.display()
            ),
        }
    }
    let mut t0 = Instant::now();
    let mut done = 0u64;
    loop {
        std::thread::sleep(Duration::from_secs_f64(args.interval));
        let after = scrape_all(&eps, image.as_deref());
        let t1 = Instant::now();
        print_stdout(&report(&before, &after, (t1 - t0).as_secs_f64())).context("iostat")?;
        before = after;
        t0 = t1;
        done += 1;
        if args.count.is_some_and(|c| done >= c) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(image: &str, w: u64, wb: u64, wsum: f64) -> String {
        format!(
            "# HELP lsvd_server_info i\n# TYPE lsvd_server_info gauge\n\
             lsvd_server_info{{image=\"{image}\",frontend=\"nbd\"}} 1\n\
             lsvd_io_requests_total{{op=\"write\"}} {w}\n\
             lsvd_io_bytes_total{{op=\"write\"}} {wb}\n\
             lsvd_io_latency_seconds_sum{{op=\"write\"}} {wsum}\n"
        )
    }

    #[test]
    fn a_report_is_the_difference_of_two_scrapes() {
        let mut before = BTreeMap::new();
        before.insert(
            "a".to_owned(),
            counters(&body("p/x", 10, 40960, 0.5)).unwrap(),
        );
        let mut after = BTreeMap::new();
        after.insert(
            "a".to_owned(),
            counters(&body("p/x", 210, 40960 + 200 * 4096, 0.7)).unwrap(),
        );
        // A server seen once only is left out.
        after.insert("b".to_owned(), counters(&body("p/y", 1, 1, 1.0)).unwrap());
        let r = report(&before, &after, 2.0);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 2, "{r}");
        assert!(lines[0].starts_with("NAME"));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols,
            ["p/x", "100/s", "0/s", "400", "KiB/s", "0", "B/s", "1.00", "ms", "0.00", "ms"]
        );
    }
}
