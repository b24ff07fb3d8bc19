//! Which image each of our devices serves, and by which process.
//!
//! One small JSON file per device, `<run dir>/ublkb<N>.json` (run dir
//! `/run/lsvd-ublk`, or `$LSVD_RUN_DIR`). It is written (temp file + rename)
//! once the device is live and rewritten by a recovering server; a clean
//! detach removes it. It holds what `recover` needs to serve the same image
//! the same way: the image, queues, depth, block size and the complete
//! configuration. It is runtime state in tmpfs, not a persistent format:
//! the kernel's device state is the truth, and `list` checks both. Next to
//! each record, the live server's control socket `ublkb<N>.sock`
//! ([`control_path`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::kernel::{self, KernelState};
use crate::error::{Error, ErrorKind, Result};

/// One attached device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Device number N.
    pub dev_id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// `POOL/IMAGE`.
    pub image: String,
    /// Server process.
    pub pid: u32,
    /// Queues.
    pub queues: u16,
    /// Depth per queue.
    pub depth: u16,
    /// Logical block size.
    pub logical_block: u32,
    /// The complete configuration the server runs with (JSON).
    pub config: serde_json::Value,
    /// Server start, seconds since the epoch.
    pub started: u64,
}

/// The run directory.
pub fn run_dir() -> PathBuf {
    std::env::var_os("LSVD_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/lsvd-ublk"))
}

fn record_path(dev_id: u32) -> PathBuf {
    run_dir().join(format!("ublkb{dev_id}.json"))
}

/// The control socket of device `dev_id`'s server (see
/// [`super::control`]): `<run dir>/ublkb<N>.sock`.
pub fn control_path(dev_id: u32) -> PathBuf {
    run_dir().join(format!("ublkb{dev_id}.sock"))
}

/// Write (or replace) a record.
pub fn save(r: &Record) -> Result<()> {
    let dir = run_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let path = record_path(r.dev_id);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(r)
        .map_err(|e| Error::with_source(ErrorKind::Io, "cannot encode device record", e))?;
    std::fs::write(&tmp, text)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::io(format!("cannot rename {}", tmp.display()), e))
}

/// Remove the record of device `dev_id` (missing is fine).
pub fn remove(dev_id: u32) {
    let _ = std::fs::remove_file(record_path(dev_id));
}

/// Every record, sorted by device number. Unreadable files are skipped
/// with a warning.
pub fn all() -> Vec<Record> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(run_dir()) else {
        return v;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("ublkb") && name.ends_with(".json")) {
            continue;
        }
        match std::fs::read(ent.path())
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => v.push(r),
            Err(e) => tracing::warn!("ignoring {}: {e}", ent.path().display()),
        }
    }
    v.sort_by_key(|r| r.dev_id);
    v
}

/// What `list` reports for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DevState {
    /// The server runs and the device serves I/O.
    Live,
    /// The server is gone; the device holds I/O until `recover`.
    Quiesced,
    /// The server is gone and the device cannot be recovered (or is gone).
    Dead,
}

impl DevState {
    /// The name `list` prints (the same as in its JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            DevState::Live => "live",
            DevState::Quiesced => "quiesced",
            DevState::Dead => "dead",
        }
    }
}

/// Whether `pid` is a running lsvd-ublk process.
pub fn server_alive(pid: u32) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has exited already.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    if state == Some("Z") || state == Some("X") {
        return false;
    }
    // The program's file name, not its directory (a checkout may be called
    // lsvd-ublk too).
    cmd.split(|&b| b == 0)
        .next()
        .map(|argv0| {
            let argv0 = String::from_utf8_lossy(argv0);
            argv0
                .rsplit('/')
                .next()
                .unwrap_or("")
                .starts_with("lsvd-ublk")
        })
        .unwrap_or(false)
}

/// The state of a recorded device.
pub fn state_of(r: &Record) -> (DevState, KernelState) {
    let (s, k, _) = status_of(r);
    (s, k)
}

/// The state of a recorded device and, when the kernel has the device, the
/// ublk flags it was added with (`ublksrv_ctrl_dev_info::flags`, the mode
/// `list` shows; see [`kernel::flag_names`]).
pub fn status_of(r: &Record) -> (DevState, KernelState, Option<u64>) {
    let (k, info) = kernel::device_state(r.dev_id);
    let flags = info.map(|i| i.flags);
    let alive = server_alive(r.pid);
    let s = match k {
        KernelState::Live if alive => DevState::Live,
        KernelState::Quiesced => DevState::Quiesced,
        // A live device whose server is gone: the kernel has not noticed yet.
        KernelState::Live => DevState::Quiesced,
        _ if alive => DevState::Live,
        _ => DevState::Dead,
    };
    (s, k, flags)
}

/// Find the record for `target`: `POOL/IMAGE`, `/dev/ublkbN` or `ublkbN`.
pub fn find(target: &str) -> Option<Record> {
    let dev = target.strip_prefix("/dev/").unwrap_or(target);
    if let Some(n) = dev
        .strip_prefix("ublkb")
        .and_then(|n| n.parse::<u32>().ok())
    {
        return all().into_iter().find(|r| r.dev_id == n);
    }
    all().into_iter().find(|r| r.image == target)
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dev_id: u32, image: &str, pid: u32) -> Record {
        Record {
            dev_id,
            device: format!("/dev/ublkb{dev_id}"),
            image: image.into(),
            pid,
            queues: 2,
            depth: 64,
            logical_block: 512,
            config: serde_json::json!({"flush_msec": 1000}),
            started: now_secs(),
        }
    }

    #[test]
    fn records_round_trip_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        // The only test in this crate that uses LSVD_RUN_DIR.
        std::env::set_var("LSVD_RUN_DIR", dir.path());
        assert!(all().is_empty());
        let a = record(3, "p/a", u32::MAX - 1);
        let b = record(1, "p/b", u32::MAX - 2);
        save(&a).unwrap();
        save(&b).unwrap();
        // Junk and unrelated files are ignored.
        std::fs::write(dir.path().join("ublkb9.json"), b"{not json").unwrap();
        std::fs::write(dir.path().join("p-a.log"), b"log").unwrap();
        assert_eq!(all(), vec![b.clone(), a.clone()]);
        assert_eq!(find("p/a"), Some(a.clone()));
        assert_eq!(find("/dev/ublkb1"), Some(b.clone()));
        assert_eq!(find("ublkb3"), Some(a.clone()));
        assert_eq!(find("/dev/ublkb4"), None);
        assert_eq!(find("p/c"), None);
        // A record whose server does not exist is dead (no such device here).
        assert!(!server_alive(a.pid));
        if !std::path::Path::new(kernel::CONTROL_PATH).exists() {
            assert_eq!(state_of(&a), (DevState::Dead, KernelState::Missing));
        }
        // Rewriting replaces; removing forgets.
        let a2 = Record {
            pid: 7,
            ..a.clone()
        };
        save(&a2).unwrap();
        assert_eq!(find("p/a").map(|r| r.pid), Some(7));
        remove(3);
        assert_eq!(find("p/a"), None);
        std::env::remove_var("LSVD_RUN_DIR");
    }

    #[test]
    fn state_names_match_the_json() {
        for s in [DevState::Live, DevState::Quiesced, DevState::Dead] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn this_test_process_is_not_a_server() {
        // Our own pid is alive but is not an lsvd-ublk binary.
        assert!(!server_alive(std::process::id()));
    }
}
