//! Journal replay: walk the record chain from the superblock's start and
//! hand every valid entry to the caller, stopping at the first record that
//! is missing, torn, from another generation, out of sequence or from an
//! older epoch than the record before it (or than the superblock's start
//! epoch).

use std::fs::File;
use std::path::Path;

use crate::error::Result;
use crate::format::journal::{
    JournalSuper, RecordEntry, RecordHeader, RecordKind, BLOCK, REC_VERSION, REC_VERSION_LEGACY,
    SB_VERSION_LEGACY,
};
use crate::io::{read_exact_at, AlignedBuf};
use crate::units::{Epoch, JournalSeq, Lba};

use super::ReplayEntry;

/// Receives each valid record's first sequence, entries and data; returns
/// whether to go on.
pub(crate) type OnRecord<'a> = dyn FnMut(JournalSeq, &[RecordEntry], &[u8]) -> Result<bool> + 'a;

/// A record found by the scan (its space stays in use until released).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScannedRecord {
    /// Virtual position (see `writer`): offsets never wrap there.
    pub vpos: u64,
    /// First sequence (for wrap: the next sequence).
    pub first_seq: JournalSeq,
    /// Number of entries.
    pub entries: u64,
    /// Epoch of the session that wrote it.
    pub epoch: Epoch,
}

/// What the scan found.
pub(crate) struct ScanResult {
    /// Records of the chain, in order.
    pub records: Vec<ScannedRecord>,
    /// Virtual head: where the next record goes.
    pub head_v: u64,
    /// Virtual start (the superblock's start).
    pub start_v: u64,
    /// Next sequence after the chain.
    pub next_seq: JournalSeq,
    /// Why the scan stopped (for the log).
    pub stop_reason: String,
    /// Epoch of the chain's last record (the start epoch if it is empty).
    pub last_epoch: Epoch,
}

/// Scan the chain. `on_record` gets each valid record's entries with their
/// data (in order); it returns whether to go on. Its first error aborts
/// the scan.
pub(crate) fn scan(
    file: &File,
    path: &Path,
    sb: &JournalSuper,
    on_record: &mut OnRecord<'_>,
) -> Result<ScanResult> {
    let data_start = sb.data_start();
    let data_size = sb.size - data_start;
    // Virtual positions start at the superblock's physical start so that
    // phys(v) = data_start + (v - start_v') % data_size.
    let start_v = sb.start_offset - data_start;
    let phys = |v: u64| data_start + v % data_size;
    let mut v = start_v;
    let mut expect = sb.start_seq;
    // Epochs never decrease along a chain: a record of an older epoch after
    // the start (or after a newer record) was left behind a hole that an
    // earlier open cut, and the chain ends there.
    let mut floor = sb.start_epoch;
    let record_version = if sb.version == SB_VERSION_LEGACY {
        REC_VERSION_LEGACY
    } else {
        REC_VERSION
    };
    let mut records = Vec::new();
    let mut win = Window {
        file,
        path,
        size: sb.size,
        buf: AlignedBuf::new(0),
        start: 0,
        len: 0,
    };
    let stop_reason;
    loop {
        if v - start_v >= data_size {
            stop_reason = "went once around the journal".to_string();
            break;
        }
        let p = phys(v);
        let first = win.get(p, BLOCK as usize)?;
        let h = match RecordHeader::decode(first) {
            Ok(h) => h,
            Err(crate::format::FormatError::Truncated { .. }) if first[..4] == *b"LSJR" => {
                // A header longer than one block: decode it whole.
                let hb = u32::from_le_bytes([first[8], first[9], first[10], first[11]]) as u64;
                if hb == 0 || !hb.is_multiple_of(BLOCK) || hb > 64 << 20 || p + hb > sb.size {
                    stop_reason = format!("bad record header at offset {p}");
                    break;
                }
                match RecordHeader::decode(win.get(p, hb as usize)?) {
                    Ok(h) => h,
                    Err(e) => {
                        stop_reason = format!("bad record header at offset {p} ({e})");
                        break;
                    }
                }
            }
            Err(e) => {
                stop_reason = format!("no valid record at offset {p} ({e})");
                break;
            }
        };
        if h.version != record_version {
            stop_reason = format!(
                "record at offset {p} has version {}, the journal's records are version {record_version}",
                h.version
            );
            break;
        }
        let total = h.total_bytes();
        if p + total > sb.size {
            stop_reason = format!("record at offset {p} runs past the journal end");
            break;
        }
        if h.first_seq != expect {
            stop_reason = format!(
                "record at offset {p} has sequence {}, expected {}",
                h.first_seq, expect
            );
            break;
        }
        let body = win.get(p, total as usize)?;
        if let Err(e) = h.verify(body, sb.generation) {
            stop_reason = format!("record at offset {p}: {e}");
            break;
        }
        // Checked after the crc, so the epoch read is the one written.
        if h.epoch < floor || h.epoch > sb.epoch {
            stop_reason = format!(
                "record at offset {p} (sequence {}) has epoch {}, outside [{floor}, {}]: \
                 left behind a hole an earlier open cut",
                h.first_seq, h.epoch, sb.epoch
            );
            break;
        }
        floor = h.epoch;
        match h.kind {
            RecordKind::Wrap => {
                let vlen = sb.size - p;
                records.push(ScannedRecord {
                    vpos: v,
                    first_seq: h.first_seq,
                    entries: 0,
                    epoch: h.epoch,
                });
                v += vlen;
            }
            RecordKind::Entries => {
                let hb = h.header_bytes as usize;
                let go_on = on_record(
                    h.first_seq,
                    &h.entries,
                    &body[hb..hb + h.data_bytes as usize],
                )?;
                records.push(ScannedRecord {
                    vpos: v,
                    first_seq: h.first_seq,
                    entries: h.entries.len() as u64,
                    epoch: h.epoch,
                });
                expect = JournalSeq(h.first_seq.0.saturating_add(h.entries.len() as u64));
                v += total;
                if !go_on {
                    stop_reason = "stopped by the caller".into();
                    break;
                }
            }
        }
    }
    Ok(ScanResult {
        records,
        head_v: v,
        start_v,
        next_seq: expect,
        stop_reason,
        last_epoch: floor,
    })
}

/// Sequential reader over the journal with read-ahead: replay reads each
/// byte once, in large O_DIRECT reads.
struct Window<'a> {
    file: &'a File,
    path: &'a Path,
    size: u64,
    buf: AlignedBuf,
    start: u64,
    len: usize,
}

impl Window<'_> {
    /// Read-ahead size.
    const CHUNK: usize = 8 << 20;

    /// Bytes `[p, p + n)` of the journal (`p` and `n` multiples of the block
    /// size, `p + n` within the journal).
    fn get(&mut self, p: u64, n: usize) -> Result<&[u8]> {
        if p < self.start || p + n as u64 > self.start + self.len as u64 {
            let want = n.max(Self::CHUNK).min((self.size - p) as usize).max(n);
            if self.buf.capacity() < want {
                self.buf = AlignedBuf::new(want);
            }
            self.buf.set_len(want);
            read_exact_at(self.file, &mut self.buf, p, self.path)?;
            self.start = p;
            self.len = want;
        }
        let at = (p - self.start) as usize;
        Ok(&self.buf[at..at + n])
    }
}

/// Split a record's data among its entries, in order.
pub(crate) fn entries_with_data<'a>(
    first_seq: JournalSeq,
    entries: &'a [RecordEntry],
    data: &'a [u8],
) -> impl Iterator<Item = ReplayEntry<'a>> + 'a {
    let mut off = 0usize;
    entries.iter().enumerate().map(move |(i, x)| {
        let n = x.data_bytes() as usize;
        let d = &data[off..off + n];
        off += n;
        ReplayEntry {
            seq: JournalSeq(first_seq.0.saturating_add(i as u64)),
            kind: x.kind,
            lba: Lba(x.lba.0),
            sectors: x.sectors,
            data: d,
        }
    })
}
