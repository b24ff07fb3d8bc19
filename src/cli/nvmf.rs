//! `nvmf-export` and `nvmf-unexport`: an NVMe-oF gateway for an attached
//! device, through the kernel's NVMe target (`nvmet`, `nvmet-tcp`), which
//! is configured through configfs under `/sys/kernel/config/nvmet`.
//!
//! The kernel serves the protocol; lsvd-ublk only writes its configuration:
//!
//! 1. `subsystems/NQN/` (mkdir creates the attributes and the
//!    `namespaces/` and `allowed_hosts/` groups), `attr_allow_any_host`, or
//!    for each `--host`: `hosts/HOSTNQN/` and a symlink
//!    `subsystems/NQN/allowed_hosts/HOSTNQN -> hosts/HOSTNQN`;
//! 2. `subsystems/NQN/namespaces/1/device_path` = `/dev/ublkbN`, then
//!    `enable` = 1 (the target opens the block device);
//! 3. a port `ports/ID/` with `addr_trtype`, `addr_adrfam`, `addr_traddr`,
//!    `addr_trsvcid` (an existing port with the same address is shared);
//! 4. the symlink `ports/ID/subsystems/NQN -> subsystems/NQN`, which starts
//!    the listener when it is the port's first.
//!
//! `nvmf-unexport` undoes it in reverse: the port links (and a port left
//! with no subsystem), the namespaces (disabled first), the host links,
//! the subsystem, and host entries no other subsystem allows. Nothing is
//! stored besides configfs: the device a subsystem serves is read back from
//! its namespaces' `device_path`.
//!
//! All configfs access goes through [`Configfs`], so the logic runs in unit
//! tests against an emulation in a temporary directory (`nvmf/tests.rs`):
//! real configfs creates attribute files on mkdir, refuses to remove an item
//! with children, and starts the target on a symlink.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::print_stdout;
use crate::ublk::kernel;
use crate::ublk::registry::{self, DevState};

/// Where configfs is mounted.
pub const CONFIGFS_MOUNT: &str = "/sys/kernel/config";
/// The NVMe target's directory in configfs.
pub const NVMET_ROOT: &str = "/sys/kernel/config/nvmet";
/// Prefix of the NQN derived from an image: `nqn.2024-01.io.lsvd:POOL.IMAGE`.
pub const NQN_PREFIX: &str = "nqn.2024-01.io.lsvd:";
/// Longest NQN, in bytes (NVMe base specification, NVMF_NQN_SIZE).
pub const NQN_MAX: usize = 223;
/// The discovery subsystem's NQN, which a subsystem may not take.
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// The namespace id each export uses.
const NSID: &str = "1";
/// The model string initiators see (`nvme list`), at most 40 bytes.
const MODEL: &str = "lsvd-ublk";

/// `nvmf-export` arguments.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The attached device: /dev/ublkbN or POOL/IMAGE.
    pub target: String,
    /// Subsystem NQN (default: nqn.2024-01.io.lsvd:POOL.IMAGE).
    #[arg(long)]
    pub nqn: Option<String>,
    /// Address to listen on (IPv4 or IPv6).
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: IpAddr,
    /// Port (transport service id) to listen on.
    #[arg(long, default_value_t = 4420)]
    pub port: u16,
    /// Transport.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Allow only this host NQN (repeatable). Without it any host that
    /// reaches the port may connect: NVMe/TCP here is unauthenticated.
    #[arg(long = "host", value_name = "HOSTNQN")]
    pub hosts: Vec<String>,
}

/// `nvmf-unexport` arguments.
#[derive(Debug, Args)]
pub struct UnexportArgs {
    /// What to stop exporting: /dev/ublkbN, POOL/IMAGE or an NQN.
    pub target: String,
    /// Only this subsystem NQN.
    #[arg(long)]
    pub nqn: Option<String>,
}

/// NVMe-oF transports (`addr_trtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// NVMe/TCP (module nvmet-tcp).
    Tcp,
    /// NVMe/RDMA (module nvmet-rdma).
    Rdma,
}

impl Transport {
    /// The value of `addr_trtype`.
    pub fn trtype(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Rdma => "rdma",
        }
    }

    /// The kernel module that provides it.
    fn module(self) -> &'static str {
        match self {
            Transport::Tcp => "nvmet-tcp",
            Transport::Rdma => "nvmet-rdma",
        }
    }
}

/// Access to the nvmet configfs tree. Paths are relative to its root
/// (`/sys/kernel/config/nvmet`); symlink targets too.
pub trait Configfs {
    /// Whether `path` exists (a symlink counts, even a dangling one).
    fn exists(&self, path: &Path) -> bool;
    /// Create a config item (configfs fills in its attributes).
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Remove a config item (it must have no children left).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// An attribute's value, without the trailing newline.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Store an attribute.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Link `link` to the item `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Remove the link `link`.
    fn unlink(&self, link: &Path) -> io::Result<()>;
    /// The names in directory `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// The real configfs (or any directory standing in for it) under `root`.
pub struct RealConfigfs {
    /// The nvmet directory, normally [`NVMET_ROOT`].
    pub root: PathBuf,
}

impl Configfs for RealConfigfs {
    fn exists(&self, path: &Path) -> bool {
        self.root.join(path).symlink_metadata().is_ok()
    }
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(self.root.join(path))
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(self.root.join(path))
    }
    fn read(&self, path: &Path) -> io::Result<String> {
        Ok(std::fs::read_to_string(self.root.join(path))?
            .trim_end()
            .to_string())
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // No O_CREAT or O_TRUNC: attributes exist already, and configfs
        // takes the whole value in one write.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.root.join(path))?;
        f.write_all(format!("{value}\n").as_bytes())
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(self.root.join(target), self.root.join(link))
    }
    fn unlink(&self, link: &Path) -> io::Result<()> {
        std::fs::remove_file(self.root.join(link))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.root.join(dir))? {
            v.push(e?.file_name().to_string_lossy().into_owned());
        }
        v.sort();
        Ok(v)
    }
}

/// What to export where.
#[derive(Clone, Debug)]
pub struct ExportSpec {
    /// Subsystem NQN.
    pub nqn: String,
    /// The block device, `/dev/ublkbN`.
    pub device: String,
    /// Allowed host NQNs; empty: any host.
    pub hosts: Vec<String>,
    /// Transport.
    pub transport: Transport,
    /// Listen address.
    pub addr: IpAddr,
    /// Listen port.
    pub port: u16,
}

/// What [`Nvmet::export`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Exported {
    /// The port id (`ports/ID`).
    pub port_id: u16,
    /// Whether the subsystem was created now (false: it existed already).
    pub new_subsystem: bool,
    /// Whether the port was created now (false: shared with other exports).
    pub new_port: bool,
    /// Whether the subsystem was linked to the port now (false: nothing
    /// changed at all when `new_subsystem` is false too).
    pub new_link: bool,
}

/// What [`Nvmet::unexport`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unexported {
    /// Port ids the subsystem was unlinked from.
    pub unlinked_ports: Vec<u16>,
    /// Ports removed because no subsystem was left on them.
    pub removed_ports: Vec<u16>,
    /// Host entries removed because no subsystem allowed them any more.
    pub removed_hosts: Vec<String>,
}

/// The nvmet configuration, read and changed through a [`Configfs`].
pub struct Nvmet<F: Configfs> {
    fs: F,
}

fn p(s: impl AsRef<str>) -> PathBuf {
    PathBuf::from(s.as_ref())
}

impl<F: Configfs> Nvmet<F> {
    /// Work on `fs`; it must hold the `subsystems`, `ports` and `hosts`
    /// groups (the nvmet module creates them).
    pub fn new(fs: F) -> anyhow::Result<Nvmet<F>> {
        for g in ["subsystems", "ports", "hosts"] {
            if !fs.exists(Path::new(g)) {
                bail!("the nvmet configfs tree has no '{g}' directory (is nvmet loaded?)");
            }
        }
        Ok(Nvmet { fs })
    }

    /// The configfs access, for tests.
    #[cfg(test)]
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// The names in `dir`, with context.
    fn list(&self, dir: &str) -> anyhow::Result<Vec<String>> {
        self.fs
            .list(Path::new(dir))
            .with_context(|| format!("cannot list nvmet {dir}"))
    }

    /// Every subsystem NQN.
    pub fn subsystems(&self) -> anyhow::Result<Vec<String>> {
        self.list("subsystems")
    }

    /// The block devices subsystem `nqn`'s namespaces serve, by namespace id.
    pub fn devices_of(&self, nqn: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut v = Vec::new();
        for ns in self.list(&format!("subsystems/{nqn}/namespaces"))? {
            let path = p(format!("subsystems/{nqn}/namespaces/{ns}/device_path"));
            let dev = self
                .fs
                .read(&path)
                .with_context(|| format!("cannot read nvmet {}", path.display()))?;
            v.push((ns, dev));
        }
        Ok(v)
    }

    /// The subsystems with a namespace on `device`.
    pub fn exported_as(&self, device: &str) -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        for nqn in self.subsystems()? {
            if self.devices_of(&nqn)?.iter().any(|(_, d)| d == device) {
                v.push(nqn);
            }
        }
        Ok(v)
    }

    /// The port ids, with their address: (id, trtype, traddr, trsvcid).
    fn ports(&self) -> anyhow::Result<Vec<(u16, String, String, String)>> {
        let mut v = Vec::new();
        for id in self.list("ports")? {
            let Ok(n) = id.parse::<u16>() else { continue };
            let attr = |a: &str| {
                self.fs
                    .read(&p(format!("ports/{id}/{a}")))
                    .unwrap_or_default()
            };
            v.push((
                n,
                attr("addr_trtype"),
                attr("addr_traddr"),
                attr("addr_trsvcid"),
            ));
        }
        Ok(v)
    }

    /// The ports subsystem `nqn` is linked to.
    pub fn ports_of(&self, nqn: &str) -> anyhow::Result<Vec<u16>> {
        let mut v = Vec::new();
        for (id, ..) in self.ports()? {
            if self.fs.exists(&p(format!("ports/{id}/subsystems/{nqn}"))) {
                v.push(id);
            }
        }
        Ok(v)
    }

    /// Whether `nqn` allows any host, and the hosts it allows by name.
    fn host_policy(&self, nqn: &str) -> anyhow::Result<(bool, BTreeSet<String>)> {
        let any = self
            .fs
            .read(&p(format!("subsystems/{nqn}/attr_allow_any_host")))
            .with_context(|| format!("cannot read attr_allow_any_host of {nqn}"))?
            == "1";
        let hosts = self
            .list(&format!("subsystems/{nqn}/allowed_hosts"))?
            .into_iter()
            .collect();
        Ok((any, hosts))
    }

    /// Export `spec.device` as `spec.nqn` on the port. Idempotent: the same
    /// export again changes nothing; the same subsystem on another port is
    /// linked there too. Refused: a device exported under another NQN, an
    /// NQN serving another device or with other allowed hosts. On an error
    /// everything this call created is removed again.
    pub fn export(&self, spec: &ExportSpec) -> anyhow::Result<Exported> {
        check_nqn(&spec.nqn).context("bad subsystem NQN")?;
        for h in &spec.hosts {
            check_nqn(h).with_context(|| format!("bad --host {h}"))?;
        }
        for other in self.exported_as(&spec.device)? {
            if other != spec.nqn {
                bail!(
                    "{} is already exported as {other}: unexport it first \
                     (`lsvd-ublk nvmf-unexport {other}`)",
                    spec.device
                );
            }
        }
        let sub = format!("subsystems/{}", spec.nqn);
        // mkdir decides who made the subsystem, not an `exists` check
        // before it: another `nvmf-export` of the same NQN (a boot unit and
        // a manual run) may make it in between. Only the maker undoes it on
        // a failure; the other checks it is the same export (review5
        // finding 4: the loser removed the winner's export).
        let new_subsystem = match self.fs.mkdir(Path::new(&sub)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot create nvmet subsystem {}", spec.nqn)))
            }
        };
        if new_subsystem {
            self.fill_subsystem(spec).inspect_err(|_| {
                let _ = self.unexport(&spec.nqn);
            })?;
        } else {
            self.check_existing(spec)?;
        }
        match self.link_port(spec) {
            Ok((port_id, new_port, new_link)) => Ok(Exported {
                port_id,
                new_subsystem,
                new_port,
                new_link,
            }),
            Err(e) => {
                if new_subsystem {
                    let _ = self.unexport(&spec.nqn);
                }
                Err(e)
            }
        }
    }

    /// An existing subsystem `spec.nqn` must be this export: same device,
    /// same hosts. Re-enables a namespace left disabled.
    fn check_existing(&self, spec: &ExportSpec) -> anyhow::Result<()> {
        let nqn = &spec.nqn;
        let devices = self.devices_of(nqn)?;
        let Some((ns, _)) = devices.iter().find(|(_, d)| *d == spec.device) else {
            let what = if devices.is_empty() {
                "no device".to_owned()
            } else {
                devices
                    .iter()
                    .map(|(_, d)| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "NQN {nqn} is already exported, serving {what}, not {}: choose another \
                 --nqn, or `lsvd-ublk nvmf-unexport {nqn}` first",
                spec.device
            );
        };
        let (any, hosts) = self.host_policy(nqn)?;
        let want: BTreeSet<String> = spec.hosts.iter().cloned().collect();
        if any != want.is_empty() || (!any && hosts != want) {
            let now = if any {
                "any host".to_owned()
            } else {
                hosts.into_iter().collect::<Vec<_>>().join(", ")
            };
            bail!(
                "NQN {nqn} is already exported allowing {now}: `lsvd-ublk nvmf-unexport {nqn}` \
                 first to change its hosts"
            );
        }
        let enable = p(format!("subsystems/{nqn}/namespaces/{ns}/enable"));
        if self.fs.read(&enable).unwrap_or_default() != "1" {
            self.fs
                .write(&enable, "1")
                .with_context(|| format!("cannot enable namespace {ns} of {nqn}"))?;
        }
        Ok(())
    }

    /// Steps 1 and 2: the subsystem, its hosts and its namespace.
    fn fill_subsystem(&self, spec: &ExportSpec) -> anyhow::Result<()> {
        let nqn = &spec.nqn;
        let sub = format!("subsystems/{nqn}");
        // The model is informational (`nvme list` on the initiator); an
        // older kernel without the attribute is no reason to fail.
        if let Err(e) = self.fs.write(&p(format!("{sub}/attr_model")), MODEL) {
            tracing::warn!("cannot set the model of {nqn}: {e}");
        }
        let any = if spec.hosts.is_empty() { "1" } else { "0" };
        self.fs
            .write(&p(format!("{sub}/attr_allow_any_host")), any)
            .with_context(|| format!("cannot set attr_allow_any_host of {nqn}"))?;
        for h in &spec.hosts {
            let host = format!("hosts/{h}");
            if !self.fs.exists(Path::new(&host)) {
                self.fs
                    .mkdir(Path::new(&host))
                    .with_context(|| format!("cannot create nvmet host {h}"))?;
            }
            self.fs
                .symlink(Path::new(&host), &p(format!("{sub}/allowed_hosts/{h}")))
                .with_context(|| format!("cannot allow host {h} on {nqn}"))?;
        }
        let ns = format!("{sub}/namespaces/{NSID}");
        self.fs
            .mkdir(Path::new(&ns))
            .with_context(|| format!("cannot create namespace {NSID} of {nqn}"))?;
        self.fs
            .write(&p(format!("{ns}/device_path")), &spec.device)
            .with_context(|| format!("cannot set the device_path of {nqn} to {}", spec.device))?;
        self.fs
            .write(&p(format!("{ns}/enable")), "1")
            .with_context(|| {
                format!(
                    "cannot enable namespace {NSID} of {nqn} on {} (the kernel log says why)",
                    spec.device
                )
            })?;
        Ok(())
    }

    /// Steps 3 and 4: find or make the port, link the subsystem to it.
    /// Returns (port id, port created, link created).
    fn link_port(&self, spec: &ExportSpec) -> anyhow::Result<(u16, bool, bool)> {
        let nqn = &spec.nqn;
        let (trtype, addr, svc) = (
            spec.transport.trtype(),
            spec.addr.to_string(),
            spec.port.to_string(),
        );
        let ports = self.ports()?;
        let existing = ports
            .iter()
            .find(|(_, t, a, s)| *t == trtype && *a == addr && *s == svc)
            .map(|(id, ..)| *id);
        let (id, new_port) = match existing {
            Some(id) => (id, false),
            None => {
                let used: BTreeSet<u16> = ports.iter().map(|(id, ..)| *id).collect();
                let Some(id) = (1..=u16::MAX).find(|i| !used.contains(i)) else {
                    bail!("no free nvmet port id");
                };
                self.create_port(id, spec).inspect_err(|_| {
                    let _ = self.fs.rmdir(&p(format!("ports/{id}")));
                })?;
                (id, true)
            }
        };
        let link = p(format!("ports/{id}/subsystems/{nqn}"));
        if self.fs.exists(&link) {
            return Ok((id, new_port, false));
        }
        if let Err(e) = self.fs.symlink(&p(format!("subsystems/{nqn}")), &link) {
            if new_port {
                let _ = self.fs.rmdir(&p(format!("ports/{id}")));
            }
            let hint = match e.raw_os_error() {
                Some(libc::EADDRINUSE) => ": the address is in use (another listener?)",
                Some(libc::EADDRNOTAVAIL) => ": no interface has that address",
                _ => " (the kernel log says why; is the transport's module loaded?)",
            };
            return Err(anyhow::Error::new(e).context(format!(
                "cannot listen for {nqn} on {trtype} {}{hint}",
                host_port(&spec.addr, spec.port)
            )));
        }
        Ok((id, new_port, true))
    }

    fn create_port(&self, id: u16, spec: &ExportSpec) -> anyhow::Result<()> {
        let port = format!("ports/{id}");
        self.fs
            .mkdir(Path::new(&port))
            .with_context(|| format!("cannot create nvmet port {id}"))?;
        let adrfam = if spec.addr.is_ipv4() { "ipv4" } else { "ipv6" };
        for (attr, value) in [
            ("addr_trtype", spec.transport.trtype().to_owned()),
            ("addr_adrfam", adrfam.to_owned()),
            ("addr_traddr", spec.addr.to_string()),
            ("addr_trsvcid", spec.port.to_string()),
        ] {
            self.fs
                .write(&p(format!("{port}/{attr}")), &value)
                .with_context(|| format!("cannot set {attr} of nvmet port {id} to {value}"))?;
        }
        Ok(())
    }

    /// Remove subsystem `nqn` and what only it used (see the module doc for
    /// the order). A subsystem that does not exist is not an error: the
    /// result is then empty.
    pub fn unexport(&self, nqn: &str) -> anyhow::Result<Unexported> {
        let mut done = Unexported::default();
        let sub = format!("subsystems/{nqn}");
        if !self.fs.exists(Path::new(&sub)) {
            return Ok(done);
        }
        // Ports first: initiators lose the listener before the namespace.
        for id in self.ports_of(nqn)? {
            self.fs
                .unlink(&p(format!("ports/{id}/subsystems/{nqn}")))
                .with_context(|| format!("cannot unlink {nqn} from nvmet port {id}"))?;
            done.unlinked_ports.push(id);
            if self.list(&format!("ports/{id}/subsystems"))?.is_empty() {
                // A port with referrals (or anything else) stays.
                match self.fs.rmdir(&p(format!("ports/{id}"))) {
                    Ok(()) => done.removed_ports.push(id),
                    Err(e) => {
                        tracing::warn!("nvmet port {id} has no subsystem left but stays: {e}")
                    }
                }
            }
        }
        for ns in self.list(&format!("{sub}/namespaces"))? {
            let dir = format!("{sub}/namespaces/{ns}");
            if self
                .fs
                .read(&p(format!("{dir}/enable")))
                .unwrap_or_default()
                == "1"
            {
                self.fs
                    .write(&p(format!("{dir}/enable")), "0")
                    .with_context(|| format!("cannot disable namespace {ns} of {nqn}"))?;
            }
            self.fs
                .rmdir(Path::new(&dir))
                .with_context(|| format!("cannot remove namespace {ns} of {nqn}"))?;
        }
        let hosts = self.list(&format!("{sub}/allowed_hosts"))?;
        for h in &hosts {
            self.fs
                .unlink(&p(format!("{sub}/allowed_hosts/{h}")))
                .with_context(|| format!("cannot remove host {h} from {nqn}"))?;
        }
        self.fs
            .rmdir(Path::new(&sub))
            .with_context(|| format!("cannot remove nvmet subsystem {nqn}"))?;
        for h in hosts {
            let still_used = self.subsystems()?.iter().any(|s| {
                self.fs
                    .exists(&p(format!("subsystems/{s}/allowed_hosts/{h}")))
            });
            if !still_used && self.fs.rmdir(&p(format!("hosts/{h}"))).is_ok() {
                done.removed_hosts.push(h);
            }
        }
        Ok(done)
    }
}

/// `HOST:PORT`, with brackets around an IPv6 address.
fn host_port(addr: &IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Check an NQN: `nqn.YYYY-MM.` and a reverse domain name (the NVMe base
/// specification's form; the `nqn.2014-08.org.nvmexpress:uuid:...` form
/// fits it too), at most [`NQN_MAX`] bytes, printable, no '/' (a configfs
/// directory name) and not the discovery NQN.
pub fn check_nqn(nqn: &str) -> anyhow::Result<()> {
    if nqn.len() > NQN_MAX {
        bail!(
            "NQN '{nqn}' is {} bytes long; at most {NQN_MAX} are allowed",
            nqn.len()
        );
    }
    let b = nqn.as_bytes();
    let date_ok = nqn.starts_with("nqn.")
        && b.len() > 12
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && (b[9] - b'0') * 10 + (b[10] - b'0') >= 1
        && (b[9] - b'0') * 10 + (b[10] - b'0') <= 12
        && b[11] == b'.';
    if !date_ok {
        bail!(
            "NQN '{nqn}' does not start with nqn.YYYY-MM. and a reverse domain name \
             (e.g. nqn.2024-01.io.lsvd:pool.image)"
        );
    }
    let domain = nqn[12..].split(':').next().unwrap_or("");
    if domain.is_empty() {
        bail!("NQN '{nqn}' has no domain name after its date");
    }
    if let Some(c) = nqn
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        bail!("NQN '{nqn}' contains {c:?}");
    }
    if nqn == DISCOVERY_NQN {
        bail!("{DISCOVERY_NQN} is the discovery subsystem's NQN");
    }
    Ok(())
}

/// The NQN of an image: `nqn.2024-01.io.lsvd:POOL.IMAGE`, and for a
/// snapshot device `...:POOL.IMAGE.SNAP` (names hold no '.', so this is
/// unambiguous).
pub fn default_nqn(image: &str) -> String {
    format!("{NQN_PREFIX}{}", image.replace(['/', '@'], "."))
}

/// The running system's nvmet tree, loading the modules `transport` needs
/// first (none for `None`: unexport only reads what exists). Errors say
/// what is missing: the module, the configfs mount.
fn system(transport: Option<Transport>) -> anyhow::Result<Nvmet<RealConfigfs>> {
    let root = Path::new(NVMET_ROOT);
    if transport.is_some() && !Path::new("/sys/module/nvmet").exists() {
        modprobe("nvmet")?;
    }
    if !configfs_mounted()? {
        bail!(
            "configfs is not mounted at {CONFIGFS_MOUNT}: `mount -t configfs none {CONFIGFS_MOUNT}` \
             (systemd mounts it at boot)"
        );
    }
    if !root.is_dir() {
        bail!(
            "{NVMET_ROOT} does not exist: the NVMe target (module nvmet, CONFIG_NVME_TARGET) \
             is not loaded"
        );
    }
    if let Some(t) = transport {
        let sys = format!("/sys/module/{}", t.module().replace('-', "_"));
        if !Path::new(&sys).exists() {
            modprobe(t.module())?;
        }
    }
    Nvmet::new(RealConfigfs {
        root: root.to_path_buf(),
    })
}

/// `modprobe NAME`, with a clear error.
fn modprobe(name: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("modprobe")
        .arg(name)
        .output()
        .with_context(|| format!("cannot run modprobe {name} (kmod installed?)"))?;
    if !out.status.success() {
        bail!(
            "cannot load kernel module {name}: modprobe says '{}' (this kernel may lack \
             the NVMe target: CONFIG_NVME_TARGET, CONFIG_NVME_TARGET_TCP)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether /proc/mounts lists configfs at [`CONFIGFS_MOUNT`].
fn configfs_mounted() -> anyhow::Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == CONFIGFS_MOUNT && f[2] == "configfs"
    }))
}

/// The subsystems exporting `device` on this system, for `detach`: empty
/// when nvmet is not loaded or configfs not mounted.
pub fn exported_as(device: &str) -> Vec<String> {
    if !Path::new(NVMET_ROOT).is_dir() {
        return Vec::new();
    }
    Nvmet::new(RealConfigfs {
        root: PathBuf::from(NVMET_ROOT),
    })
    .and_then(|n| n.exported_as(device))
    .unwrap_or_default()
}

/// `nvmf-export DEVICE|POOL/IMAGE`: prints the NQN.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    kernel::check_root("nvmf-export")?;
    let _serial = serialize()?;
    let Some(r) = registry::find(&args.target) else {
        if args.target.starts_with("/dev/") || args.target.starts_with("ublkb") {
            bail!(
                "{} is not a device attached by lsvd-ublk (see `lsvd-ublk list`)",
                args.target
            );
        }
        bail!(
            "image {} is not attached: `lsvd-ublk attach {}` first",
            args.target,
            args.target
        );
    };
    match registry::state_of(&r).0 {
        DevState::Live => {}
        DevState::Quiesced => eprintln!(
            "lsvd-ublk: warning: the server of {} is gone; its I/O waits for `lsvd-ublk recover {}`",
            r.device, r.image
        ),
        DevState::Dead => bail!(
            "{} (image {}) has no server and cannot be recovered: attach the image again",
            r.device,
            r.image
        ),
    }
    let is_block = std::fs::metadata(&r.device)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    if !is_block {
        bail!("{} (image {}) is not a block device", r.device, r.image);
    }
    let nqn = args.nqn.clone().unwrap_or_else(|| default_nqn(&r.image));
    let spec = ExportSpec {
        nqn,
        device: r.device.clone(),
        hosts: args.hosts.clone(),
        transport: args.transport,
        addr: args.addr,
        port: args.port,
    };
    // Validate before loading modules.
    check_nqn(&spec.nqn).with_context(|| match &args.nqn {
        Some(_) => "bad --nqn".to_owned(),
        None => format!(
            "the NQN derived from {} does not work: give one with --nqn",
            r.image
        ),
    })?;
    let nvmet = system(Some(args.transport))?;
    let done = nvmet.export(&spec)?;
    if !done.new_subsystem && !done.new_link {
        eprintln!(
            "lsvd-ublk: {} is already exported as {} on {} {} (port {})",
            spec.device,
            spec.nqn,
            spec.transport.trtype(),
            host_port(&spec.addr, spec.port),
            done.port_id
        );
    }
    print_stdout(&spec.nqn)
}

/// How long `nvmf-export`/`nvmf-unexport` wait for another one to finish.
const SERIAL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// One `nvmf-export`/`nvmf-unexport` at a time on this host: an flock on
/// `<run dir>/nvmf.lock`, held until the returned file is dropped (the
/// kernel drops it if we die). Configfs steps are not atomic: an unexport
/// removing a port that has just lost its last subsystem could otherwise
/// remove the port an export is about to link to. The wait is bounded.
fn serialize() -> anyhow::Result<std::fs::File> {
    let dir = registry::run_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("nvmf.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let deadline = std::time::Instant::now() + SERIAL_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(crate::Error::new(
                    crate::ErrorKind::Locked,
                    format!(
                        "another nvmf-export or nvmf-unexport has held {} for {} s \
                         (`fuser {}` names it)",
                        path.display(),
                        SERIAL_WAIT.as_secs(),
                        path.display()
                    ),
                )
                .into())
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e).context(format!("cannot lock {}", path.display())))
            }
        }
    }
}

/// `nvmf-unexport DEVICE|POOL/IMAGE|NQN [--nqn NQN]`.
pub fn unexport(args: &UnexportArgs) -> anyhow::Result<()> {
    kernel::check_root("nvmf-unexport")?;
    let _serial = serialize()?;
    let nvmet = match system(None) {
        Ok(n) => n,
        // Nothing can be exported without the target.
        Err(_) if configfs_mounted().unwrap_or(false) && !Path::new(NVMET_ROOT).exists() => {
            eprintln!("lsvd-ublk: nvmet is not loaded: nothing is exported");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut nqns: BTreeSet<String> = BTreeSet::new();
    if let Some(n) = &args.nqn {
        nqns.insert(n.clone());
    } else if args.target.starts_with("nqn.") {
        nqns.insert(args.target.clone());
    } else {
        let record = registry::find(&args.target);
        let device = match &record {
            Some(r) => Some(r.device.clone()),
            None if args.target.starts_with("/dev/") => Some(args.target.clone()),
            None => None,
        };
        if let Some(d) = device {
            nqns.extend(nvmet.exported_as(&d)?);
        }
        let image = record
            .map(|r| r.image)
            .unwrap_or_else(|| args.target.clone());
        if !image.starts_with("/dev/") {
            let n = default_nqn(&image);
            if nvmet.subsystems()?.contains(&n) {
                nqns.insert(n);
            }
        }
    }
    let existing = nvmet.subsystems()?;
    let mut any = false;
    for nqn in nqns {
        if !existing.contains(&nqn) {
            continue;
        }
        nvmet
            .unexport(&nqn)
            .with_context(|| format!("cannot unexport {nqn}"))?;
        any = true;
    }
    if !any {
        eprintln!("lsvd-ublk: {} is not exported: nothing to do", args.target);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
