//! The one public error type: a small matchable [`ErrorKind`], a context
//! string (image, object, offset, operation) and an optional source.
//!
//! `Display` prints the kind's message and the context only; callers that
//! want the whole chain walk `source()` (the CLI does).

use std::fmt;

/// What went wrong, coarsely, so callers can match on it. The ublk and NBD
/// front ends map each kind to one errno in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller passed something invalid (size, alignment, range, name).
    InvalidInput,
    /// The image (or object) does not exist.
    NotFound,
    /// The image already exists.
    AlreadyExists,
    /// The image is open by another process (or another handle here).
    Locked,
    /// A persistent structure failed validation (magic, version, checksum).
    Corrupt,
    /// The journal belongs to another image or another format.
    Mismatch,
    /// The store or the journal device refused or failed an operation.
    Io,
    /// The store is full.
    NoSpace,
    /// An operation did not finish in time.
    Timeout,
    /// The volume is shut down or crashed; no more I/O is accepted.
    Closed,
    /// Configuration is invalid.
    Config,
    /// This server was fenced: another server broke its lock and the
    /// backend refuses its writes for good (RADOS: blocklisted).
    Fenced,
    /// A write to something read-only (a snapshot, a read-only export).
    ReadOnly,
    /// Still needed by something else (a snapshot with clones, an image
    /// with snapshots).
    InUse,
    /// No access: file permissions, a read-only file system or the store's
    /// capabilities refused the operation (`EACCES`, `EPERM`, `EROFS`), as
    /// for a user who may only read.
    PermissionDenied,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Locked => "locked",
            ErrorKind::Corrupt => "corrupt data",
            ErrorKind::Mismatch => "identity mismatch",
            ErrorKind::Io => "I/O error",
            ErrorKind::NoSpace => "no space",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Closed => "volume closed",
            ErrorKind::Config => "configuration error",
            ErrorKind::Fenced => "fenced",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::InUse => "in use",
            ErrorKind::PermissionDenied => "permission denied",
        }
    }

    /// The negative errno a block front end returns for this kind.
    pub fn errno(self) -> i32 {
        -(match self {
            ErrorKind::InvalidInput => libc::EINVAL,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::AlreadyExists => libc::EEXIST,
            ErrorKind::Locked => libc::EBUSY,
            ErrorKind::Corrupt => libc::EUCLEAN,
            ErrorKind::Mismatch => libc::EINVAL,
            ErrorKind::Io => libc::EIO,
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::Timeout => libc::ETIMEDOUT,
            ErrorKind::Closed => libc::ESHUTDOWN,
            ErrorKind::Config => libc::EINVAL,
            ErrorKind::Fenced => libc::ESHUTDOWN,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::InUse => libc::EBUSY,
            ErrorKind::PermissionDenied => libc::EACCES,
        })
    }
}

/// The crate's error: kind + context + source.
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// For a `Corrupt` error of one 64 KiB chunk of an object's data: the
    /// object-relative offset of that chunk's first data byte, so that a
    /// reader of several chunks can tell the bad one from the good ones.
    bad_chunk: Option<u64>,
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` whose message is `context`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Error {
        Error {
            kind,
            context: context.into(),
            source: None,
            bad_chunk: None,
        }
    }

    /// A new error wrapping `source`.
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error {
            kind,
            context: context.into(),
            source: Some(Box::new(source)),
            bad_chunk: None,
        }
    }

    /// An I/O error with context; `ENOSPC` becomes [`ErrorKind::NoSpace`],
    /// `ENOENT` [`ErrorKind::NotFound`] and `EACCES`, `EPERM` and `EROFS`
    /// [`ErrorKind::PermissionDenied`].
    pub fn io(context: impl Into<String>, e: std::io::Error) -> Error {
        let kind = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::ETIMEDOUT) => ErrorKind::Timeout,
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                ErrorKind::PermissionDenied
            }
            _ => ErrorKind::Io,
        };
        Error::with_source(kind, context, e)
    }

    /// The kind, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The context message.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The same error with `prefix: ` put before its context.
    pub fn prefixed(mut self, prefix: impl fmt::Display) -> Error {
        self.context = format!("{prefix}: {}", self.context);
        self
    }

    /// The same error marked as the failure of the one data chunk at
    /// object-relative byte `offset` (see [`Error::bad_chunk`]).
    pub fn in_chunk(mut self, offset: u64) -> Error {
        self.bad_chunk = Some(offset);
        self
    }

    /// The chunk this error is about, if it is a `Corrupt` error of one
    /// data chunk (a checksum mismatch): the object-relative offset of its
    /// first data byte. `None` for everything else, a bad header included.
    pub fn bad_chunk(&self) -> Option<u64> {
        self.bad_chunk
    }

    /// A copy for fanning one failure out to many waiters (the source is
    /// flattened into the message).
    pub fn duplicate(&self) -> Error {
        let mut context = self.context.clone();
        if let Some(s) = &self.source {
            context = format!("{context}: {s}");
        }
        Error {
            bad_chunk: self.bad_chunk,
            ..Error::new(self.kind, context)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.context)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        if let Some(s) = &self.source {
            write!(f, " (caused by: {s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|b| b.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// Return early with an error of `kind`.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)*)))
    };
}
