//! The NBD wire protocol: constants and the encoding of every message the
//! server reads or writes. Pure: no I/O beyond `Read`/`Write` of bytes.
//!
//! All integers are big-endian (network order). Only what the server uses
//! is here: the fixed newstyle handshake, the options it answers and simple
//! replies, and structured replies (for reads and block status; no
//! extended headers).
//!
//! Handshake, server first:
//! ```text
//! S: u64 NBDMAGIC, u64 IHAVEOPT, u16 handshake flags
//! C: u32 client flags
//! C: u64 IHAVEOPT, u32 option, u32 length, [length bytes]     (repeated)
//! S: u64 REPLY_MAGIC, u32 option, u32 reply type, u32 length, [data]
//! ```
//! Transmission:
//! ```text
//! C: u32 REQUEST_MAGIC, u16 flags, u16 type, u64 cookie, u64 offset, u32 length, [payload]
//! S: u32 SIMPLE_REPLY_MAGIC, u32 error, u64 cookie, [data of a successful read]
//! S: u32 STRUCTURED_REPLY_MAGIC, u16 flags, u16 type, u64 cookie, u32 length, [payload]
//! ```

use std::io::{self, Read, Write};

/// `NBDMAGIC`, the first thing the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client wants no zero padding.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: FLUSH is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the FUA command flag is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: TRIM is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: WRITE_ZEROES is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: FLUSH and FUA act across all connections.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option: choose an export and start transmission (no error replies).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end the negotiation.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: upgrade to TLS (not supported).
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and start transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list the metadata contexts matching queries.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select the metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: accepted / end of a list.
pub const REP_ACK: u32 = 1;
/// Option reply: one export of a list.
pub const REP_SERVER: u32 = 2;
/// Option reply: one piece of export information.
pub const REP_INFO: u32 = 3;
/// Option reply: one metadata context (u32 id, name).
pub const REP_META_CONTEXT: u32 = 4;
/// Option error: unknown or unsupported option.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Option error: malformed option.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// Option error: no such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// Option error: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;

/// Information type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information type: the export's canonical name.
pub const INFO_NAME: u16 = 1;
/// Information type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (payload follows the header).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim (discard).
pub const CMD_TRIM: u16 = 4;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status of the selected metadata contexts.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag (write-zeroes only): the zeros must be written, not left
/// as a hole. Every write-zeroes here writes them anyway.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag (block status only): one descriptor is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply flag: the last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply type: no payload (a successful empty reply).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply type: u64 offset, then data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply type: u32 context id, then (u32 length, u32 flags)...
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply type: u32 error, u16 message length, message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// The one metadata context served: allocation of the image.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` flag: not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: reads as zeros.
pub const STATE_ZERO: u32 = 1 << 1;
/// Bytes of a structured reply chunk header.
pub const STRUCTURED_REPLY_BYTES: usize = 20;

/// The command flags the server accepts on command `kind`: FUA on every
/// command (it is advertised; on a read or flush it changes nothing),
/// NO_HOLE on write-zeroes, REQ_ONE on block status. Others (DF,
/// FAST_ZERO: their features are not negotiated; unknown bits) get EINVAL,
/// as the spec asks.
pub fn allowed_flags(kind: u16) -> u16 {
    match kind {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        _ => CMD_FLAG_FUA,
    }
}

/// NBD error: operation not permitted (read-only export).
pub const EPERM: u32 = 1;
/// NBD error: I/O error.
pub const EIO: u32 = 5;
/// NBD error: out of memory.
pub const ENOMEM: u32 = 12;
/// NBD error: invalid argument.
pub const EINVAL: u32 = 22;
/// NBD error: no space (writes past the end).
pub const ENOSPC: u32 = 28;
/// NBD error: value too large.
pub const EOVERFLOW: u32 = 75;
/// NBD error: not supported.
pub const ENOTSUP: u32 = 95;
/// NBD error: server shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Bytes of a transmission request header.
pub const REQUEST_BYTES: usize = 28;
/// Bytes of a simple reply header.
pub const REPLY_BYTES: usize = 16;
/// Zero padding after an `NBD_OPT_EXPORT_NAME` reply without NO_ZEROES.
pub const EXPORT_NAME_PADDING: usize = 124;

/// The NBD error value for a negative Linux errno (as produced by
/// [`crate::ErrorKind::errno`]): the NBD values are the Linux numbers, but
/// only a few are defined; everything else is EIO.
pub fn nbd_errno(neg_errno: i32) -> u32 {
    match (-neg_errno) as u32 {
        e @ (EPERM | EIO | ENOMEM | EINVAL | ENOSPC | EOVERFLOW | ENOTSUP | ESHUTDOWN) => e,
        _ => EIO,
    }
}

/// The server's opening: magic, newstyle magic, handshake flags.
pub fn encode_greeting(flags: u16) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&flags.to_be_bytes());
    b
}

/// An option request header (the data follows and is read separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option number.
    pub option: u32,
    /// Bytes of data that follow.
    pub length: u32,
}

impl OptionHeader {
    /// Decode 16 bytes; `None` if the magic is not `IHAVEOPT`.
    pub fn decode(b: &[u8; 16]) -> Option<OptionHeader> {
        if be_u64(&b[0..8]) != IHAVEOPT {
            return None;
        }
        Some(OptionHeader {
            option: be_u32(&b[8..12]),
            length: be_u32(&b[12..16]),
        })
    }

    /// Encode (the client side, for tests and tools).
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Write one option reply.
pub fn write_option_reply(
    w: &mut impl Write,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "option reply too long"))?;
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b)
}

/// `NBD_INFO_EXPORT` data: type, size, transmission flags.
pub fn info_export(size: u64, tflags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..12].copy_from_slice(&tflags.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` data: type, minimum, preferred, maximum.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&min.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..14].copy_from_slice(&max.to_be_bytes());
    b
}

/// `NBD_INFO_NAME` data: type, name.
pub fn info_name(name: &str) -> Vec<u8> {
    let mut b = INFO_NAME.to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

/// `NBD_REP_SERVER` data: name length, name.
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut b = (name.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size and transmission flags, then
/// 124 zero bytes unless NO_ZEROES was agreed.
pub fn export_name_reply(size: u64, tflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        b.resize(10 + EXPORT_NAME_PADDING, 0);
    }
    b
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: an export name and the
/// information types asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (may be empty: the default export).
    pub name: String,
    /// Information types requested.
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// Decode, checking every length against the data; `None` if malformed.
    pub fn decode(data: &[u8]) -> Option<InfoRequest> {
        let name_len = be_u32(data.get(0..4)?) as usize;
        let name_end = 4usize.checked_add(name_len)?;
        let name = std::str::from_utf8(data.get(4..name_end)?).ok()?;
        let n = be_u16(data.get(name_end..name_end + 2)?) as usize;
        let rest = data.get(name_end + 2..)?;
        if rest.len() != n * 2 {
            return None;
        }
        Some(InfoRequest {
            name: name.to_owned(),
            requests: rest.chunks_exact(2).map(be_u16).collect(),
        })
    }

    /// Encode (the client side, for tests and tools).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = (self.name.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for r in &self.requests {
            b.extend_from_slice(&r.to_be_bytes());
        }
        b
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`:
/// an export name and queries (u32 name length, name, u32 number of
/// queries, each u32 length and string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name.
    pub name: String,
    /// Queries (context names, or a namespace such as `base:` to list).
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    /// Decode, checking every length against the data; `None` if malformed.
    pub fn decode(data: &[u8]) -> Option<MetaContextRequest> {
        let string = |at: usize| -> Option<(String, usize)> {
            let n = be_u32(data.get(at..at.checked_add(4)?)?) as usize;
            let end = (at + 4).checked_add(n)?;
            let s = std::str::from_utf8(data.get(at + 4..end)?).ok()?;
            Some((s.to_owned(), end))
        };
        let (name, mut at) = string(0)?;
        let n = be_u32(data.get(at..at + 4)?) as usize;
        at += 4;
        let mut queries = Vec::new();
        for _ in 0..n {
            let (q, end) = string(at)?;
            queries.push(q);
            at = end;
        }
        (at == data.len()).then_some(MetaContextRequest { name, queries })
    }

    /// Encode (the client side, for tests and tools).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = (self.name.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&(self.queries.len() as u32).to_be_bytes());
        for q in &self.queries {
            b.extend_from_slice(&(q.len() as u32).to_be_bytes());
            b.extend_from_slice(q.as_bytes());
        }
        b
    }
}

/// `NBD_REP_META_CONTEXT` data: context id, name.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(name.as_bytes());
    b
}

/// A structured reply chunk header; `length` bytes of payload follow.
pub fn encode_structured(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; STRUCTURED_REPLY_BYTES];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// Command (`CMD_*`).
    pub kind: u16,
    /// Opaque value echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (of the payload, for a write).
    pub length: u32,
}

impl Request {
    /// Decode 28 bytes; `None` if the magic is wrong.
    pub fn decode(b: &[u8; REQUEST_BYTES]) -> Option<Request> {
        if be_u32(&b[0..4]) != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: be_u16(&b[4..6]),
            kind: be_u16(&b[6..8]),
            cookie: be_u64(&b[8..16]),
            offset: be_u64(&b[16..24]),
            length: be_u32(&b[24..28]),
        })
    }

    /// Encode (the client side, for tests and tools).
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut b = [0u8; REQUEST_BYTES];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header.
pub fn encode_reply(error: u32, cookie: u64) -> [u8; REPLY_BYTES] {
    let mut b = [0u8; REPLY_BYTES];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Read exactly `N` bytes.
pub fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_bad_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(Request::decode(&b), Some(r));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(Request::decode(&bad), None);
    }

    #[test]
    fn info_request_lengths_are_checked() {
        let r = InfoRequest {
            name: "img".into(),
            requests: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let b = r.encode();
        assert_eq!(InfoRequest::decode(&b), Some(r));
        // Truncated anywhere, or with trailing bytes: refused.
        for n in 0..b.len() {
            assert_eq!(InfoRequest::decode(&b[..n]), None, "truncated at {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(InfoRequest::decode(&long), None);
        // A name length running past the data (or overflowing) is refused.
        let mut huge = b.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(InfoRequest::decode(&huge), None);
        // Bad UTF-8 in the name is refused.
        let mut bad = b;
        bad[4] = 0xff;
        assert_eq!(InfoRequest::decode(&bad), None);
    }

    #[test]
    fn replies_and_errnos() {
        let r = encode_reply(EINVAL, 7);
        assert_eq!(&r[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[4..8], &22u32.to_be_bytes());
        assert_eq!(nbd_errno(-libc::EINVAL), EINVAL);
        assert_eq!(nbd_errno(-libc::ENOSPC), ENOSPC);
        assert_eq!(nbd_errno(-libc::ESHUTDOWN), ESHUTDOWN);
        assert_eq!(nbd_errno(-libc::ETIMEDOUT), EIO);
        assert_eq!(nbd_errno(-libc::EUCLEAN), EIO);
        assert_eq!(export_name_reply(1, 2, true).len(), 10);
        assert_eq!(export_name_reply(1, 2, false).len(), 134);
        let mut v = Vec::new();
        write_option_reply(&mut v, OPT_GO, REP_ACK, &[]).unwrap();
        assert_eq!(v.len(), 20);
        assert_eq!(&v[0..8], &OPT_REPLY_MAGIC.to_be_bytes());
        let h = OptionHeader {
            option: OPT_LIST,
            length: 0,
        };
        assert_eq!(OptionHeader::decode(&h.encode()), Some(h));
        let s = encode_structured(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 9, 12);
        assert_eq!(&s[0..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&s[4..8], &[0, 1, 0, 5]);
        assert_eq!(&s[16..20], &12u32.to_be_bytes());
    }

    #[test]
    fn meta_context_request_lengths_are_checked() {
        let r = MetaContextRequest {
            name: "img".into(),
            queries: vec![CONTEXT_BASE_ALLOCATION.into(), "qemu:dirty-bitmap:x".into()],
        };
        let b = r.encode();
        assert_eq!(MetaContextRequest::decode(&b), Some(r));
        for n in 0..b.len() {
            assert_eq!(
                MetaContextRequest::decode(&b[..n]),
                None,
                "truncated at {n}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(MetaContextRequest::decode(&long), None);
        let mut huge = b;
        huge[7 + 4..7 + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(MetaContextRequest::decode(&huge), None);
    }
}
