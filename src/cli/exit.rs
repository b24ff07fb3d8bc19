//! How a failed command ends: its exit status (README "Exit status"), the
//! error on stderr as text or, for a command run with `--json`, as one
//! JSON object line, and the quiet end of a command whose stdout reader
//! went away.
//!
//! The status comes from the first (outermost) typed [`Error`] found in the
//! `anyhow` cause chain; the CLI's own argument checks raise typed errors
//! too (see the `fail!` macro in `cli/mod.rs`).

use std::io::Write;

use crate::error::{Error, ErrorKind};

/// What a failed command's exit status says. Success is 0; clap's usage
/// errors are 2, as [`Status::InvalidArgument`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Any other failure (I/O, corruption, a full store, a timeout, ...).
    Failure,
    /// A bad argument, name, size or configuration (also clap's usage
    /// errors).
    InvalidArgument,
    /// An unknown pool, image, snapshot or device.
    NotFound,
    /// The image, snapshot or output file already exists.
    AlreadyExists,
    /// Busy or in use: the image is open, locked or attached elsewhere, a
    /// snapshot is being read, or something still depends on it.
    Busy,
    /// `import` stopped by a signal (after removing its image).
    Interrupted,
    /// `export -`: the reader of stdout went away before the end.
    ReaderGone,
}

/// Marks an error as "the reader of stdout went away" (`export -` to a
/// closed pipe): the command ends quietly with status 141.
/// Holds the `EPIPE` write error.
#[derive(Debug)]
pub struct ReaderGone(pub std::io::Error);

impl std::fmt::Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of the output went away")
    }
}

impl std::error::Error for ReaderGone {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Status {
    /// The status of a failed command.
    pub fn of(e: &anyhow::Error) -> Status {
        if e.chain().any(|c| c.is::<super::transfer::Interrupted>()) {
            return Status::Interrupted;
        }
        if e.chain().any(|c| c.is::<ReaderGone>()) {
            return Status::ReaderGone;
        }
        match kind_of(e) {
            Some(ErrorKind::InvalidInput | ErrorKind::Config) => Status::InvalidArgument,
            Some(ErrorKind::NotFound) => Status::NotFound,
            Some(ErrorKind::AlreadyExists) => Status::AlreadyExists,
            Some(ErrorKind::Locked | ErrorKind::InUse) => Status::Busy,
            _ => Status::Failure,
        }
    }

    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Status::Failure => 1,
            Status::InvalidArgument => 2,
            Status::NotFound => 3,
            Status::AlreadyExists => 4,
            Status::Busy => 5,
            Status::Interrupted => 130,
            // What a shell reports for a writer killed by SIGPIPE.
            Status::ReaderGone => 141,
        }
    }

    /// The name in a `--json` error's `kind`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Failure => "failure",
            Status::InvalidArgument => "invalid_argument",
            Status::NotFound => "not_found",
            Status::AlreadyExists => "already_exists",
            Status::Busy => "busy",
            Status::Interrupted => "interrupted",
            Status::ReaderGone => "reader_gone",
        }
    }
}

/// The kind of the outermost typed error in `e`'s cause chain.
fn kind_of(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .map(Error::kind)
}

/// Report `e` on stderr and return its status: the text form
/// (`lsvd-ublk: error: ...` and one `caused by:` line per cause), or with
/// `json` one line `{"error":{...}}` (see [`json_error`]). A stdout reader
/// that went away is not reported.
pub fn report(e: &anyhow::Error, json: bool) -> Status {
    let status = Status::of(e);
    if status == Status::ReaderGone {
        return status;
    }
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    let mut err = std::io::stderr().lock();
    // Nothing to do if stderr is gone too.
    if json {
        let line = json_error(status, kind_of(e), &e.to_string(), &causes);
        let _ = writeln!(err, "{line}");
    } else {
        let _ = writeln!(err, "lsvd-ublk: error: {e}");
        for cause in causes {
            let _ = writeln!(err, "  caused by: {cause}");
        }
    }
    status
}

/// The `--json` form of an error, one line:
/// `{"error":{"kind":"not_found","exit_code":3,"error_kind":"not_found",
/// "message":"cannot read image p/x","causes":["not found: ..."]}}`.
/// `kind` is the exit status's name, `error_kind` the engine's finer
/// [`ErrorKind`] (`locked`, `in_use`, `corrupt`, ...; null if none).
pub fn json_error(
    status: Status,
    kind: Option<ErrorKind>,
    message: &str,
    causes: &[String],
) -> String {
    /// The fields, in this order (a struct, not `json!`, which sorts them).
    #[derive(serde::Serialize)]
    struct Body<'a> {
        kind: &'static str,
        exit_code: u8,
        error_kind: Option<&'static str>,
        message: &'a str,
        causes: &'a [String],
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        error: Body<'a>,
    }
    let line = Line {
        error: Body {
            kind: status.name(),
            exit_code: status.code(),
            error_kind: kind.map(ErrorKind::name),
            message,
            causes,
        },
    };
    // Plain strings and numbers: encoding cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// A clap error (usage, or `--help`/`--version`): with `--json` among the
/// arguments a usage error is printed as a JSON error line (status 2);
/// otherwise clap prints and exits as usual.
pub fn usage_error(e: clap::Error, json: bool) -> ! {
    if json && e.use_stderr() {
        // The error part of clap's text, before its usage lines, on one line.
        let text = e.render().to_string();
        let head = text.split("\n\n").next().unwrap_or_default();
        let head = head.strip_prefix("error: ").unwrap_or(head);
        let message = head.split_whitespace().collect::<Vec<_>>().join(" ");
        let line = json_error(Status::InvalidArgument, None, &message, &[]);
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        std::process::exit(Status::InvalidArgument.code().into());
    }
    e.exit()
}

/// Whether `e` is a write to a pipe whose reader has gone (`EPIPE`).
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_typed_error_in_the_chain() {
        let typed = |k| anyhow::Error::new(Error::new(k, "x")).context("outer");
        assert_eq!(Status::of(&typed(ErrorKind::NotFound)).code(), 3);
        assert_eq!(Status::of(&typed(ErrorKind::AlreadyExists)).code(), 4);
        assert_eq!(Status::of(&typed(ErrorKind::Locked)).code(), 5);
        assert_eq!(Status::of(&typed(ErrorKind::InUse)).code(), 5);
        assert_eq!(Status::of(&typed(ErrorKind::InvalidInput)).code(), 2);
        assert_eq!(Status::of(&typed(ErrorKind::Config)).code(), 2);
        assert_eq!(Status::of(&typed(ErrorKind::Corrupt)).code(), 1);
        assert_eq!(Status::of(&typed(ErrorKind::Unsupported)).code(), 1);
        assert_eq!(Status::of(&anyhow::anyhow!("plain")).code(), 1);
        let interrupted = anyhow::Error::new(super::super::transfer::Interrupted).context("x");
        assert_eq!(Status::of(&interrupted).code(), 130);
        let gone = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let gone = anyhow::Error::new(ReaderGone(gone)).context("export failed");
        assert_eq!(Status::of(&gone).code(), 141);
    }

    #[test]
    fn the_json_error_is_one_line_with_kind_code_message_and_causes() {
        let line = json_error(
            Status::Busy,
            Some(ErrorKind::Locked),
            "cannot remove image p/i",
            &["locked: held".into()],
        );
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(r#"{"error":{"kind":"busy","exit_code":5,"#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["kind"], "busy");
        assert_eq!(v["error"]["exit_code"], 5);
        assert_eq!(v["error"]["error_kind"], "locked");
        assert_eq!(v["error"]["message"], "cannot remove image p/i");
        assert_eq!(v["error"]["causes"], serde_json::json!(["locked: held"]));
    }
}
