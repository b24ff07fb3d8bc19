//! Lock owner strings: who holds an image's lock (or a snapshot's), as the
//! store reports it to `lock ls`, `status` and `info`.
//!
//! Written by the taker, `host H pid P WHAT [by ROLE [at ADDRESS]] since
//! UNIX`, where WHAT is `image UUID` (an open image) or `reader of
//! IMAGE@SNAP` (a snapshot reader), ROLE the kind of process (`attach` for
//! a ublk server, `serve-nbd`, or the command, e.g. `gc`), ADDRESS where an
//! NBD server listens, and UNIX the time the lock was taken (seconds since
//! the epoch). Older servers wrote the same string without the part after
//! WHAT; [`LockOwner::parse`] reads both. A store may add its own
//! description after it (RADOS: ` (client.N at ADDR)`). Tokens hold no
//! spaces (host names, UUIDs, image names, URIs do not), so the string is
//! parsed word by word; nothing but display and `status` reads it, and
//! `attach`'s takeover of a dead local server's lock only matches its
//! `host H pid P image ` prefix ([`super::image::lock_owner_for`]).

use std::sync::Mutex;

use serde::Serialize;

use super::image::lock_owner;

/// The role and address this process names in the locks it takes.
static ROLE: Mutex<Option<(String, Option<String>)>> = Mutex::new(None);

/// Name this process's role (`attach`, `serve-nbd`, `gc`, ...) and, for an
/// NBD server, its address, in every lock it takes from now on.
pub fn set_lock_role(role: &str, address: Option<&str>) {
    *ROLE.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((role.to_owned(), address.map(str::to_owned)));
}

/// This host's name, as lock owner strings name it.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// The owner string of a lock this process takes for `what` (`image UUID`,
/// `reader of IMAGE@SNAP`): host, pid, what, role, address, time.
pub fn lock_owner_of(what: &str) -> String {
    let mut s = format!("{} {what}", lock_owner());
    if let Some((role, addr)) = ROLE.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        s.push_str(&format!(" by {role}"));
        if let Some(a) = addr {
            s.push_str(&format!(" at {a}"));
        }
    }
    s.push_str(&format!(
        " since {}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    s
}

/// A lock owner string taken apart (every part optional: an older or a
/// foreign string yields what it has).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LockOwner {
    /// The holder's host.
    pub host: Option<String>,
    /// The holder's pid on that host.
    pub pid: Option<u32>,
    /// The image UUID (an image's lock).
    pub image_uuid: Option<String>,
    /// `IMAGE@SNAP` (a snapshot reader's lock).
    pub reader_of: Option<String>,
    /// The kind of process: `attach` (ublk), `serve-nbd`, a command.
    pub role: Option<String>,
    /// Where an NBD server listens.
    pub address: Option<String>,
    /// When the lock was taken, seconds since the epoch.
    pub since: Option<u64>,
    /// What the store adds (RADOS: `client.N at ADDR`).
    pub client: Option<String>,
}

impl LockOwner {
    /// Take `s` apart; unknown words are skipped.
    pub fn parse(s: &str) -> LockOwner {
        let mut o = LockOwner::default();
        let mut s = s.trim();
        if let Some((head, tail)) = s.rsplit_once(" (") {
            if let Some(c) = tail.strip_suffix(')') {
                o.client = Some(c.to_owned());
                s = head;
            }
        }
        let words: Vec<&str> = s.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            let next = words.get(i + 1).map(|w| (*w).to_owned());
            match (words[i], next) {
                ("host", Some(v)) => o.host = Some(v),
                ("pid", Some(v)) => o.pid = v.parse().ok(),
                ("image", Some(v)) => o.image_uuid = Some(v),
                ("of", Some(v)) if i > 0 && words[i - 1] == "reader" => o.reader_of = Some(v),
                ("by", Some(v)) => o.role = Some(v),
                ("at", Some(v)) => o.address = Some(v),
                ("since", Some(v)) => o.since = v.parse().ok(),
                _ => {
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_old_and_new() {
        // The form servers wrote before roles and times.
        let old = LockOwner::parse("host h1 pid 42 image 5f0c-uuid");
        assert_eq!(old.host.as_deref(), Some("h1"));
        assert_eq!(old.pid, Some(42));
        assert_eq!(old.image_uuid.as_deref(), Some("5f0c-uuid"));
        assert_eq!((old.role, old.since), (None, None));

        let rados = LockOwner::parse(
            "host h2 pid 7 reader of img@s1 by serve-nbd at nbd://127.0.0.1:10809/img@s1 \
             since 1765000000 (client.4171 at 10.0.0.5:0/3210)",
        );
        assert_eq!(rados.reader_of.as_deref(), Some("img@s1"));
        assert_eq!(rados.role.as_deref(), Some("serve-nbd"));
        assert_eq!(
            rados.address.as_deref(),
            Some("nbd://127.0.0.1:10809/img@s1")
        );
        assert_eq!(rados.since, Some(1_765_000_000));
        assert_eq!(
            rados.client.as_deref(),
            Some("client.4171 at 10.0.0.5:0/3210")
        );

        // What this process writes parses back (role set last wins).
        set_lock_role("gc", None);
        let mine = LockOwner::parse(&lock_owner_of("image u-1"));
        assert_eq!(mine.pid, Some(std::process::id()));
        assert_eq!(mine.role.as_deref(), Some("gc"));
        assert_eq!(mine.image_uuid.as_deref(), Some("u-1"));
        assert!(mine.since.is_some_and(|t| t > 1_700_000_000));
        assert!(lock_owner_of("image u-1").starts_with(&format!("{} image ", lock_owner())));
        assert_eq!(LockOwner::parse("<unknown>"), LockOwner::default());
    }
}
