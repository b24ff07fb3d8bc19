//! Talking to the ublk driver: presence and privilege checks, feature
//! negotiation, device state, and a watchdog so that no control command can
//! hang the process on a broken driver.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use libublk::ctrl::UblkCtrl;
use libublk::sys;

use crate::error::{Error, ErrorKind, Result};

/// The driver's control device.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// The oldest Linux release supported: the first whose ublk driver takes
/// the ioctl-encoded commands (`UBLK_U_CMD_*`, `UBLK_U_IO_*`) that libublk
/// sends (kernel commit 2d786e66c966, "block: ublk: switch to ioctl
/// command encoding", merged for 6.4). The driver itself is older (6.0,
/// user recovery 6.1), and libublk retries a refused control command with
/// its legacy opcode, but nothing before 6.4 is tested, and a kernel built
/// without `CONFIG_BLKDEV_UBLK_LEGACY_OPCODES` takes only the new ones.
/// Tested: Debian's 6.12 and 7.x. Releases are not checked up front (a
/// distribution kernel may carry the driver of a newer release); this is
/// named when the driver is missing or refuses `ADD_DEV`.
pub const MIN_KERNEL: (u32, u32) = (6, 4);

/// How long one control command may take before the process gives up.
/// `START_USER_RECOVERY` retries for up to 30 s while the old server's
/// resources are released, so this is longer.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(45);

/// The flags recovery needs: user recovery with re-issue, so a server killed
/// by SIGKILL leaves a quiesced device whose in-flight I/O is re-issued to
/// the next server (the journal makes re-issued writes harmless: they
/// rewrite the same data).
pub const RECOVERY_FLAGS: u64 =
    (sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64;

/// Flags asked for only when the driver reports them in its features
/// (`UBLK_U_CMD_GET_FEATURES`), so an older driver never sees a flag it does
/// not know: `UBLK_F_UPDATE_SIZE` (Linux 6.16), which `resize` uses to change
/// an attached device's size ([`KernelDevice::set_size`]).
///
/// The 6.16+ driver does not check this device flag when it handles
/// `UPDATE_SIZE` (the feature bit is what tells a server the command
/// exists); we ask for it anyway so the device's flags, which `list` shows,
/// say what the server will do, and the server decides from the device's
/// flags, not from the driver's features.
///
/// Not `UBLK_F_QUIESCE`: it is for a server that sends
/// `UBLK_U_CMD_QUIESCE_DEV` to hand the device to its successor, and ours
/// never does (an upgrade is a kill and `recover`), so the flag would claim
/// a mode we do not implement.
///
/// Not zero copy (`UBLK_F_SUPPORT_ZERO_COPY`, 6.15; `UBLK_F_AUTO_BUF_REG`,
/// 6.16): with it the request's pages are only reachable as an io_uring
/// fixed buffer, never as bytes in our memory. Every write's 4 KiB blocks
/// must be checksummed (the journal record's crc is what tells a torn
/// record after a power cut) and kept in the open batch until they are
/// packed into an object; every read-cache hit is checked against its
/// block crc before it is returned. Both need the bytes in user space, so
/// zero copy would either drop those checks or read the data back, a copy
/// by another name. Not `UBLK_F_PER_IO_DAEMON` (6.16) either: each queue
/// already has one thread serving all its tags, which is what the flag
/// would let us leave.
pub const OPTIONAL_FLAGS: u64 = sys::UBLK_F_UPDATE_SIZE as u64;

/// Every flag we may ask for (the mask for a recovered device's flags).
pub const WANTED_FLAGS: u64 = RECOVERY_FLAGS | OPTIONAL_FLAGS;

/// The flags to ask for at device add, given the driver's features
/// (`None`: a driver before Linux 6.5 that cannot report them, which has
/// user recovery since 6.1 and none of the optional flags).
pub fn wanted_flags(features: Option<u64>) -> u64 {
    match features {
        Some(f) => f & WANTED_FLAGS,
        None => RECOVERY_FLAGS,
    }
}

/// Fail clearly when the driver is missing.
pub fn check_driver() -> Result<()> {
    if !Path::new(CONTROL_PATH).exists() {
        // Not `NotFound`: that is an unknown image, pool or snapshot to a
        // script reading the exit status.
        return Err(Error::new(
            ErrorKind::Unsupported,
            missing_driver_message(&running_kernel()),
        ));
    }
    Ok(())
}

/// The running kernel's release, as `uname -r` prints it.
pub fn running_kernel() -> String {
    // SAFETY: `utsname` is plain bytes, so all zeros is a valid value, and
    // uname only writes into the struct we pass.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the struct outlives the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname fills `release` with a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Major and minor version of a kernel release (`6.1.0-37-amd64`: 6.1).
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What the running kernel `release` has to do with the minimum, for an
/// error about a missing or refusing driver.
fn kernel_note(release: &str) -> String {
    let (maj, min) = MIN_KERNEL;
    match release_version(release) {
        Some(v) if v < MIN_KERNEL => format!(
            "this kernel, {release}, is older than Linux {maj}.{min}, the first whose ublk \
             driver takes the ioctl-encoded commands (UBLK_U_CMD_*) that lsvd-ublk sends; \
             lsvd-ublk supports Linux {maj}.{min} or later"
        ),
        _ => format!("this kernel is {release}; lsvd-ublk supports Linux {maj}.{min} or later"),
    }
}

/// The error when [`CONTROL_PATH`] is missing, on kernel `release`.
pub fn missing_driver_message(release: &str) -> String {
    format!(
        "{CONTROL_PATH} does not exist: the ublk driver is not loaded. Run `modprobe ublk_drv` \
         (it needs a kernel built with CONFIG_BLK_DEV_UBLK, which Debian 12's own 6.1 kernel \
         is not); {}",
        kernel_note(release)
    )
}

/// The error when the driver refuses `ADD_DEV` with `errno` (positive) on
/// kernel `release`; `detail` is libublk's error. An errno that an old or
/// unknown command gets (EINVAL, ENOTTY, EOPNOTSUPP, ENODEV) names the
/// supported kernels; another (EPERM, ENOMEM, ...) does not.
pub fn add_dev_error_message(detail: &str, errno: Option<i32>, release: &str) -> String {
    let refused = matches!(
        errno,
        Some(libc::EINVAL | libc::ENOTTY | libc::EOPNOTSUPP | libc::ENODEV)
    );
    if refused {
        format!(
            "cannot add a ublk device: the driver refused ADD_DEV: {detail}; {}",
            kernel_note(release)
        )
    } else {
        format!("cannot add a ublk device: {detail}")
    }
}

/// Fail clearly when we are not root.
pub fn check_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{what} needs root: adding and serving a ublk device needs CAP_SYS_ADMIN \
                 (unprivileged ublk devices are not supported)"
            ),
        ));
    }
    Ok(())
}

/// A deadline for a control command: if it is not dropped within
/// [`CONTROL_TIMEOUT`], the process reports the stuck command and exits with
/// status 1. A command the driver never completes cannot be cancelled, and
/// exiting is better than hanging.
pub struct Watchdog {
    tx: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Start the clock for `what`.
    pub fn arm(what: &str) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let name = what.to_owned();
        let thread = std::thread::Builder::new()
            .name("ublk-watchdog".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(CONTROL_TIMEOUT) {
                    let msg = format!(
                        "lsvd-ublk: error: ublk control command {name} did not complete in {} s: \
                         the ublk driver is not responding",
                        CONTROL_TIMEOUT.as_secs()
                    );
                    tracing::error!("{msg}");
                    eprintln!("{msg}");
                    crate::exit_now(1);
                }
            })
            .ok();
        Watchdog {
            tx: Some(tx),
            thread,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Run a control command under a [`Watchdog`].
pub fn with_deadline<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let _w = Watchdog::arm(what);
    f()
}

/// The driver's feature bits (`UBLK_U_CMD_GET_FEATURES`, Linux 6.5+);
/// `None` on older kernels.
pub fn driver_features() -> Option<u64> {
    with_deadline("GET_FEATURES", UblkCtrl::get_features)
}

/// The kernel's view of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelState {
    /// Serving I/O.
    Live,
    /// Its server is gone; I/O is held until a new server recovers it.
    Quiesced,
    /// Stopped (not serving, not recoverable).
    Dead,
    /// I/O fails until recovered (recovery with FAIL_IO).
    FailIo,
    /// No such device.
    Missing,
}

impl KernelState {
    fn from_raw(s: u16) -> KernelState {
        match s as u32 {
            sys::UBLK_S_DEV_LIVE => KernelState::Live,
            sys::UBLK_S_DEV_QUIESCED => KernelState::Quiesced,
            sys::UBLK_S_DEV_FAIL_IO => KernelState::FailIo,
            _ => KernelState::Dead,
        }
    }
}

/// The state of device `id`, with its info when it exists.
pub fn device_state(id: u32) -> (KernelState, Option<sys::ublksrv_ctrl_dev_info>) {
    if !Path::new(CONTROL_PATH).exists() {
        return (KernelState::Missing, None);
    }
    let Ok(id_i) = i32::try_from(id) else {
        return (KernelState::Missing, None);
    };
    match with_deadline("GET_DEV_INFO", || UblkCtrl::new_simple(id_i)) {
        Ok(c) => {
            // A control from `new_simple` never deletes its device on drop.
            let info = c.dev_info();
            (KernelState::from_raw(info.state), Some(info))
        }
        Err(_) => (KernelState::Missing, None),
    }
}

/// Delete device `id` (used for a device whose server died and that will
/// not be recovered).
pub fn delete_device(id: u32) -> Result<()> {
    let id_i = i32::try_from(id)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("bad device id {id}")))?;
    let ctrl = with_deadline("GET_DEV_INFO", || UblkCtrl::new_simple(id_i))
        .map_err(|e| Error::new(ErrorKind::NotFound, format!("no ublk device {id}: {e}")))?;
    with_deadline("STOP_DEV", || ctrl.kill_dev())
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot stop ublk device {id}: {e}")))?;
    // DEL_DEV_ASYNC (Linux 6.9+) does not wait for the last opener (a
    // lazily unmounted file system, say) to let go.
    with_deadline("DEL_DEV", || {
        ctrl.del_dev_async().or_else(|_| ctrl.del_dev())
    })
    .map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot delete ublk device {id}: {e}"),
        )
    })?;
    Ok(())
}

/// Whether a device with these flags (`ublksrv_ctrl_dev_info::flags`, or
/// the driver's feature bits; `None`: unknown, so no) can change its size
/// while live (`UBLK_F_UPDATE_SIZE`, Linux 6.16 and later).
pub fn can_update_size(flags: Option<u64>) -> bool {
    flags.is_some_and(|f| f & sys::UBLK_F_UPDATE_SIZE as u64 != 0)
}

/// A live device as the control channel's resize sees it (see
/// [`super::control::DeviceSize`]).
pub struct KernelDevice {
    /// Device number N.
    pub dev_id: u32,
    /// Whether the driver has `UBLK_F_UPDATE_SIZE`.
    pub update_size: bool,
}

impl super::control::DeviceSize for KernelDevice {
    fn path(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    /// From `/sys/block/ublkbN/size` (512-byte sectors): the capacity the
    /// block layer really uses, whatever size the server last set.
    fn size(&self) -> Result<u64> {
        let p = format!("/sys/block/ublkb{}/size", self.dev_id);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(format!("read {p}"), e))?;
        text.trim()
            .parse::<u64>()
            .map(|sectors| sectors << 9)
            .map_err(|e| Error::with_source(ErrorKind::Corrupt, format!("{p}: {text:?}"), e))
    }

    fn can_resize(&self) -> bool {
        self.update_size
    }

    fn set_size(&self, bytes: u64) -> Result<()> {
        let id = i32::try_from(self.dev_id).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("bad device id {}", self.dev_id),
            )
        })?;
        with_deadline("UPDATE_SIZE", || {
            UblkCtrl::new_simple(id).and_then(|c| c.update_size(bytes))
        })
        .map(|_| ())
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "UPDATE_SIZE of ublk device {} to {bytes} bytes: {e}",
                    self.dev_id
                ),
            )
        })
    }
}

/// Short names of a device's flags for `lsvd-ublk list`, in bit order:
/// the modes an operator cares about ("user-recovery", "reissue",
/// "update-size", "quiesce", ...). Bits without a name here are left out.
pub fn flag_names(flags: u64) -> Vec<&'static str> {
    let names = [
        (sys::UBLK_F_SUPPORT_ZERO_COPY, "zero-copy"),
        (sys::UBLK_F_USER_RECOVERY, "user-recovery"),
        (sys::UBLK_F_USER_RECOVERY_REISSUE, "reissue"),
        (sys::UBLK_F_UNPRIVILEGED_DEV, "unprivileged"),
        (sys::UBLK_F_USER_COPY, "user-copy"),
        (sys::UBLK_F_ZONED, "zoned"),
        (sys::UBLK_F_USER_RECOVERY_FAIL_IO, "fail-io"),
        (sys::UBLK_F_UPDATE_SIZE, "update-size"),
        (sys::UBLK_F_AUTO_BUF_REG, "auto-buf-reg"),
        (sys::UBLK_F_QUIESCE, "quiesce"),
        (sys::UBLK_F_PER_IO_DAEMON, "per-io-daemon"),
    ];
    names
        .iter()
        .filter(|(b, _)| flags & u64::from(*b) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Names of the feature bits we care about, for messages.
pub fn describe_flags(flags: u64) -> String {
    let names = [
        (sys::UBLK_F_USER_RECOVERY as u64, "USER_RECOVERY"),
        (
            sys::UBLK_F_USER_RECOVERY_REISSUE as u64,
            "USER_RECOVERY_REISSUE",
        ),
        (sys::UBLK_F_USER_COPY as u64, "USER_COPY"),
        (sys::UBLK_F_UNPRIVILEGED_DEV as u64, "UNPRIVILEGED_DEV"),
        (sys::UBLK_F_CMD_IOCTL_ENCODE as u64, "CMD_IOCTL_ENCODE"),
        (sys::UBLK_F_UPDATE_SIZE as u64, "UPDATE_SIZE"),
        (sys::UBLK_F_QUIESCE as u64, "QUIESCE"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}

/// Whether someone holds the block device open (a mounted file system, a
/// running program): an exclusive open fails with EBUSY.
pub fn device_busy(path: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    matches!(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_render_the_modes_in_bit_order() {
        assert!(flag_names(0).is_empty());
        assert_eq!(flag_names(RECOVERY_FLAGS), vec!["user-recovery", "reissue"]);
        assert_eq!(
            flag_names(WANTED_FLAGS),
            vec!["user-recovery", "reissue", "update-size"]
        );
        let all = (sys::UBLK_F_QUIESCE
            | sys::UBLK_F_UPDATE_SIZE
            | sys::UBLK_F_USER_COPY
            | sys::UBLK_F_SUPPORT_ZERO_COPY) as u64;
        assert_eq!(
            flag_names(all),
            vec!["zero-copy", "user-copy", "update-size", "quiesce"]
        );
        // A bit we have no name for is left out, not shown as a number.
        assert_eq!(flag_names(1 << 63), Vec::<&str>::new());
    }

    /// The errors for a missing or refusing driver name the minimum
    /// release and the running one, and say "older" only when it is.
    #[test]
    fn driver_errors_name_the_supported_and_the_running_kernel() {
        assert_eq!(release_version("6.1.0-37-amd64"), Some((6, 1)));
        assert_eq!(release_version("6.12.95+deb12-amd64"), Some((6, 12)));
        assert_eq!(release_version("7.3.4+deb13-amd64"), Some((7, 3)));
        assert_eq!(release_version("5.14.0-427.el9.x86_64"), Some((5, 14)));
        assert_eq!(release_version("unknown"), None);

        let m = missing_driver_message("6.1.0-37-amd64");
        assert!(m.starts_with("/dev/ublk-control does not exist"), "{m}");
        assert!(m.contains("modprobe ublk_drv"), "{m}");
        assert!(
            m.contains("this kernel, 6.1.0-37-amd64, is older than Linux 6.4"),
            "{m}"
        );
        assert!(m.contains("supports Linux 6.4 or later"), "{m}");
        let m = missing_driver_message("6.12.95+deb12-amd64");
        assert!(m.contains("this kernel is 6.12.95+deb12-amd64;"), "{m}");
        assert!(!m.contains("older"), "{m}");

        let detail = "uring IO failure -22 (Invalid argument (os error 22))";
        let m = add_dev_error_message(detail, Some(libc::EINVAL), "6.3.0");
        assert!(m.contains("refused ADD_DEV"), "{m}");
        assert!(
            m.contains("this kernel, 6.3.0, is older than Linux 6.4"),
            "{m}"
        );
        let m = add_dev_error_message(detail, Some(libc::EOPNOTSUPP), "6.12.95+deb12-amd64");
        assert!(m.contains("this kernel is 6.12.95+deb12-amd64"), "{m}");
        assert!(m.contains("Linux 6.4 or later"), "{m}");
        // Not a refused command: no talk of kernel versions.
        let m = add_dev_error_message("permission denied", Some(libc::EPERM), "6.1.0");
        assert_eq!(m, "cannot add a ublk device: permission denied");
        assert!(!running_kernel().is_empty());
    }

    #[test]
    fn wanted_flags_never_exceed_the_drivers_features() {
        // What Debian's 6.12 reports: recovery, but no UPDATE_SIZE/QUIESCE.
        let f612 = (sys::UBLK_F_USER_RECOVERY
            | sys::UBLK_F_USER_RECOVERY_REISSUE
            | sys::UBLK_F_USER_COPY
            | sys::UBLK_F_UNPRIVILEGED_DEV
            | sys::UBLK_F_ZONED) as u64;
        assert_eq!(wanted_flags(Some(f612)), RECOVERY_FLAGS);
        // A 6.16+ driver: UPDATE_SIZE too, and still no QUIESCE.
        let f7 = f612 | (sys::UBLK_F_UPDATE_SIZE | sys::UBLK_F_QUIESCE) as u64;
        assert_eq!(
            wanted_flags(Some(f7)),
            RECOVERY_FLAGS | sys::UBLK_F_UPDATE_SIZE as u64
        );
        // Before 6.5 (no GET_FEATURES): recovery only.
        assert_eq!(wanted_flags(None), RECOVERY_FLAGS);
        assert!(can_update_size(Some(wanted_flags(Some(f7)))));
        assert!(!can_update_size(Some(wanted_flags(Some(f612)))));
        assert!(!can_update_size(None));
    }
}
