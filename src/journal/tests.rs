use super::*;
use crate::format::object::OpKind;
use crate::io::AppendBuf;
use std::sync::mpsc;

fn opts(dir: &Path, size: u64) -> JournalOptions {
    JournalOptions {
        path: dir.join("j.wlog"),
        size,
        depth: 4,
        max_record_data: 64 << 10,
        io_timeout: Duration::from_secs(5),
        io_log: None,
        allow_tmpfs: false,
    }
}

fn write_entry(lba: u64, sectors: u32) -> RecordEntry {
    RecordEntry {
        lba: Lba(lba),
        sectors,
        kind: OpKind::Write,
    }
}

type Seen = Vec<(u64, OpKind, u64, Vec<u8>)>;

fn open(
    o: &JournalOptions,
    uuid: ImageUuid,
    gen: Generation,
    backend: u64,
) -> Result<(Journal, OpenReport, Seen)> {
    let mut seen = Vec::new();
    let (j, r) = Journal::open(
        o,
        uuid,
        gen,
        JournalSeq(backend),
        Arc::new(JournalShared::default()),
        &mut |e| {
            seen.push((e.seq.0, e.kind, e.lba.0, e.data.to_vec()));
            Ok(())
        },
        &mut || Ok(()),
    )?;
    Ok((j, r, seen))
}

/// Append `entries` with `data` (one span per entry), wait for it.
fn append_spans(j: &Journal, seq: u64, entries: &[RecordEntry], data: &[Span]) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    j.append(Append {
        first_seq: JournalSeq(seq),
        entries,
        data,
        fua: false,
        done: Some(Box::new(move |r| {
            let _ = tx.send(r);
        })),
    });
    rx.recv().unwrap()
}

#[test]
fn records_from_aligned_and_unaligned_spans_replay_exactly() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 1 << 20);
    let uuid = ImageUuid([1; 16]);
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    // One batch-like buffer: 4 KiB, 512 B, 3.5 KiB, 8 KiB, so the second
    // and third spans are not block aligned and the fourth is again.
    let mut b = AppendBuf::new(1 << 16);
    let sizes = [4096usize, 512, 3584, 8192];
    let spans: Vec<Span> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let at = b.append(&vec![i as u8 + 1; n]);
            b.span(at, n)
        })
        .collect();
    let other = Span::copy_of(&[9u8; 4096]);
    // One byte off any memory alignment: always copied (unless the journal
    // takes any address).
    let mut odd = AppendBuf::new(4096);
    odd.append(&[0]);
    odd.append(&[7u8; 512]);
    let odd = odd.span(1, 512);
    let e = |lba: u64, n: usize| write_entry(lba, (n / 512) as u32);
    let records: [(u64, Vec<RecordEntry>, Vec<Span>); 4] = [
        // A whole block and a partial one (joined: 4.5 KiB from an aligned
        // address).
        (1, vec![e(0, 4096), e(100, 512)], spans[..2].to_vec()),
        // A start 512 bytes past a block boundary.
        (3, vec![e(200, 3584)], spans[2..3].to_vec()),
        // Two aligned spans of different buffers.
        (
            4,
            vec![e(300, 8192), e(400, 4096)],
            vec![spans[3].clone(), other],
        ),
        (6, vec![e(500, 512)], vec![odd]),
    ];
    let dio = writer::journal_dio(&std::fs::File::open(&o.path).unwrap());
    let mut copied = 0;
    for (seq, entries, data) in &records {
        append_spans(&j, *seq, entries, data).unwrap();
        let mut joined: Vec<Span> = Vec::new();
        for s in data {
            match joined.last_mut() {
                Some(l) if l.continued_by(s) => l.join(s),
                _ => joined.push(s.clone()),
            }
        }
        copied += u64::from(!writer::direct_ok(&joined, dio));
    }
    assert_eq!(j.shared().copied_records(), copied, "alignment {dio:?}");
    assert_eq!(j.shared().records(), 4);
    if dio.0 > 1 {
        assert!(copied >= 1, "the copy path ran");
    }
    assert!(copied < 4, "the writev path ran");
    flush_wait(&j, 6).unwrap();
    j.shutdown(false).unwrap();
    let (_j, r2, seen) = open(&o, uuid, r.generation, 0).unwrap();
    assert_eq!(r2.replayed, 6);
    let want: [(u64, u64, usize, u8); 6] = [
        (1, 0, 4096, 1),
        (2, 100, 512, 2),
        (3, 200, 3584, 3),
        (4, 300, 8192, 4),
        (5, 400, 4096, 9),
        (6, 500, 512, 7),
    ];
    for (s, w) in seen.iter().zip(want) {
        assert_eq!((s.0, s.2, s.3.len()), (w.0, w.1, w.2));
        assert!(s.3.iter().all(|&x| x == w.3), "entry {} data", w.0);
    }
}

/// Append one write of `sectors` at `lba` filled with `fill`, wait for it.
fn append_wait(j: &Journal, seq: u64, lba: u64, sectors: u32, fill: u8, fua: bool) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    j.append(Append {
        first_seq: JournalSeq(seq),
        entries: &[write_entry(lba, sectors)],
        data: &[Span::copy_of(&vec![fill; sectors as usize * 512])],
        fua,
        done: Some(Box::new(move |r| {
            let _ = tx.send(r);
        })),
    });
    rx.recv().unwrap()
}

fn flush_wait(j: &Journal, upto: u64) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    j.flush(
        JournalSeq(upto),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv().unwrap()
}

#[test]
fn append_flush_replay() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 1 << 20);
    let uuid = ImageUuid([1; 16]);
    let (j, r, seen) = open(&o, uuid, Generation(0), 0).unwrap();
    assert_eq!(r.discarded, Discarded::Blank);
    assert!(seen.is_empty());
    for i in 1..=10u64 {
        append_wait(&j, i, i * 8, 8, i as u8, i == 5).unwrap();
    }
    flush_wait(&j, 10).unwrap();
    assert!(j.shared().syncs() >= 1);
    j.shutdown(false).unwrap();
    let (j, r2, seen) = open(&o, uuid, r.generation, 0).unwrap();
    assert_eq!(r2.replayed, 10);
    assert_eq!(r2.next_seq, JournalSeq(11));
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.0, i as u64 + 1);
        assert_eq!(s.2, (i as u64 + 1) * 8);
        assert!(s.3.iter().all(|&b| b == i as u8 + 1));
    }
    drop(j);
    // Entries the backend already has are skipped.
    let (_j, r3, seen) = open(&o, uuid, r.generation, 4).unwrap();
    assert_eq!(r3.replayed, 6);
    assert_eq!(seen[0].0, 5);
}

#[test]
fn wraps_around_when_space_is_released() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 256 << 10);
    let uuid = ImageUuid([2; 16]);
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    // 200 records of 12 KiB in a 252 KiB data area: wraps many times.
    for i in 1..=200u64 {
        append_wait(&j, i, i, 16, i as u8, false).unwrap();
        if i > 5 {
            j.shared().release(JournalSeq(i - 5));
        }
    }
    flush_wait(&j, 200).unwrap();
    j.shutdown(false).unwrap();
    let (_j, r2, seen) = open(&o, uuid, r.generation, 195).unwrap();
    assert_eq!(r2.replayed, 5);
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, vec![196, 197, 198, 199, 200]);
    assert!(seen[4].3.iter().all(|&b| b == 200));
}

#[test]
fn full_journal_times_out_without_release() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mut o = opts(dir.path(), 64 << 10);
    o.io_timeout = Duration::from_millis(300);
    let (j, _, _) = open(&o, ImageUuid([3; 16]), Generation(0), 0).unwrap();
    let mut last = Ok(());
    for i in 1..=20u64 {
        last = append_wait(&j, i, i, 8, 1, false);
        if last.is_err() {
            break;
        }
    }
    let e = last.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

#[test]
fn torn_tail_stops_replay() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 1 << 20);
    let uuid = ImageUuid([4; 16]);
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    for i in 1..=3u64 {
        append_wait(&j, i, i, 8, 9, false).unwrap();
    }
    j.shutdown(false).unwrap();
    // Tear the third record: flip a data byte (records are 8 KiB each).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&o.path)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55], 8192 + 2 * 8192 + 4096 + 100).unwrap();
    drop(f);
    let (j, r2, seen) = open(&o, uuid, r.generation, 0).unwrap();
    assert_eq!(r2.replayed, 2);
    assert_eq!(seen.len(), 2);
    // New writes continue after the valid chain and replay later.
    append_wait(&j, 3, 77, 8, 3, true).unwrap();
    j.shutdown(false).unwrap();
    let (_j, r3, seen) = open(&o, uuid, r.generation, 0).unwrap();
    assert_eq!(r3.replayed, 3);
    assert_eq!(seen[2].2, 77);
}

#[test]
fn foreign_stale_and_gapped_journals() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 1 << 20);
    let uuid = ImageUuid([5; 16]);
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    for i in 1..=4u64 {
        append_wait(&j, i, i, 8, 9, false).unwrap();
    }
    j.shutdown(false).unwrap();
    // Another image's journal is refused by name.
    let e = open(&o, ImageUuid([6; 16]), Generation(0), 0)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Mismatch);
    assert!(e.to_string().contains("belongs to image"), "{e}");
    // A backend that is behind the journal's chain start is a gap: nothing
    // replays, a new chain starts at backend + 1.
    {
        let (j2, r2, seen) = open(&o, uuid, r.generation, 0).unwrap();
        assert_eq!(seen.len(), 4);
        drop(j2);
        let _ = r2;
    }
    let (_j, r4, seen) = open(&o, uuid, Generation(12345), 0).unwrap();
    assert_eq!(r4.discarded, Discarded::Stale);
    assert!(seen.is_empty());
    assert_eq!(r4.next_seq, JournalSeq(1));
}

#[test]
fn corrupt_superblock_is_refused() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 1 << 20);
    let uuid = ImageUuid([7; 16]);
    drop(open(&o, uuid, Generation(0), 0).unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&o.path)
        .unwrap();
    // One bad copy: the other slot is used.
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff], 20).unwrap();
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    assert_eq!(r.discarded, Discarded::No);
    drop(j);
    // Both bad: refused.
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff], 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff], 4096 + 20).unwrap();
    drop(f);
    let e = open(&o, uuid, Generation(0), 0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("no valid superblock copy"), "{e}");
}

/// A kill while a new journal is being zero-filled leaves only the
/// temporary file: the next open creates a journal of the full size (a
/// short journal at the real path would make writes wait for space they
/// can never get). An empty file at the path is replaced the same way.
#[test]
fn interrupted_creation_never_leaves_a_short_journal() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 8 << 20);
    let mut tmp = o.path.as_os_str().to_owned();
    tmp.push(".creating");
    // What a kill after the first MiB of the fill leaves.
    std::fs::write(&tmp, vec![0u8; 1 << 20]).unwrap();
    let uuid = ImageUuid::new_random();
    let (j, _, _) = open(&o, uuid, Generation(1), 0).unwrap();
    assert_eq!(std::fs::metadata(&o.path).unwrap().len(), 8 << 20);
    assert!(!std::path::Path::new(&tmp).exists());
    append_wait(&j, 1, 0, 8, 0xAB, true).unwrap();
    drop(j);

    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 8 << 20);
    std::fs::write(&o.path, b"").unwrap();
    let (j, _, _) = open(&o, uuid, Generation(1), 0).unwrap();
    assert_eq!(std::fs::metadata(&o.path).unwrap().len(), 8 << 20);
    drop(j);
}

/// Overwrite `len` bytes at `off` of the journal file with zeros (a write
/// that never reached the disk).
fn zero_range(path: &Path, off: u64, len: usize) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; len], off).unwrap();
}

/// Issue 13's reproduction: record 5 of 12 never reached the disk (a power
/// cut with a volatile cache), records 6..12 did. The next open replays
/// 1..4 and stops at the hole; a new write W lands in record 5's place
/// (same size, same sequence) and is flushed. Reopened, the old record 6
/// (same generation, the expected sequence, a valid crc) follows W: it and
/// the rest of the old chain must not replay, or old write 7 would
/// overwrite W. They carry an older epoch than W.
#[test]
fn stale_record_after_a_hole_never_replays_over_newer_data() {
    for clean in [false, true] {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let o = opts(dir.path(), 1 << 20);
        let uuid = ImageUuid([8; 16]);
        let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
        // Writes 1..12, one 8 KiB record each (4 KiB header + 4 KiB data),
        // write i at LBA 8 * i.
        for i in 1..=12u64 {
            append_wait(&j, i, i * 8, 8, i as u8, false).unwrap();
        }
        j.shutdown(false).unwrap();
        zero_range(&o.path, 8192 + 4 * 8192, 8192);

        let (j, r2, seen) = open(&o, uuid, r.generation, 0).unwrap();
        assert_eq!(r2.replayed, 4);
        assert_eq!(r2.next_seq, JournalSeq(5));
        assert_eq!(seen.len(), 4);
        // W: at old write 7's LBA, FUA, then FLUSH.
        append_wait(&j, 5, 7 * 8, 8, 0xEE, true).unwrap();
        flush_wait(&j, 5).unwrap();
        if clean {
            // As a clean close does: the backend holds 1..5, the chain's
            // start moves to the head.
            j.shared().release(JournalSeq(5));
            j.shutdown(true).unwrap();
        } else {
            j.shutdown(false).unwrap();
        }
        let backend = if clean { 5 } else { 0 };
        let (_j, r3, seen) = open(&o, uuid, r.generation, backend).unwrap();
        let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
        let want: Vec<u64> = if clean { vec![] } else { vec![1, 2, 3, 4, 5] };
        assert_eq!(
            seqs, want,
            "clean close {clean}: only the new chain replays"
        );
        assert_eq!(r3.next_seq, JournalSeq(6));
        if !clean {
            assert!(seen[4].3.iter().all(|&b| b == 0xEE), "W replays");
        }
    }
}

/// The same through a wrap record: the wrap record at the end of the
/// journal is lost, the next session's first record wraps too and lands
/// exactly where the old chain continued after its wrap; the old record
/// that follows must not replay.
#[test]
fn stale_record_after_a_lost_wrap_never_replays() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    // Ten 8 KiB records and 4 KiB to spare in the record area.
    let size = 8192 + 10 * 8192 + 4096;
    let o = opts(dir.path(), size);
    let uuid = ImageUuid([9; 16]);
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    for i in 1..=10u64 {
        append_wait(&j, i, i * 8, 8, i as u8, false).unwrap();
    }
    // The backend holds 1..6: their space may be reused.
    j.shared().release(JournalSeq(6));
    // 11 does not fit in the last 4 KiB: a wrap record there, then 11 and
    // 12 at the start of the record area.
    append_wait(&j, 11, 11 * 8, 8, 11, false).unwrap();
    append_wait(&j, 12, 12 * 8, 8, 12, false).unwrap();
    j.shutdown(false).unwrap();
    // The wrap record never reached the disk.
    zero_range(&o.path, size - 4096, 4096);

    let (j, r2, seen) = open(&o, uuid, r.generation, 6).unwrap();
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    assert_eq!(r2.next_seq, JournalSeq(11));
    // W takes sequence 11: a new wrap record at the end, W at the start,
    // exactly over old record 11; old record 12 follows it.
    append_wait(&j, 11, 12 * 8, 8, 0xEE, true).unwrap();
    j.shutdown(false).unwrap();
    let (_j, r3, seen) = open(&o, uuid, r.generation, 6).unwrap();
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, vec![7, 8, 9, 10, 11], "old record 12 must not replay");
    assert!(seen[4].3.iter().all(|&b| b == 0xEE));
    assert_eq!(r3.next_seq, JournalSeq(12));
}

/// A journal written by an earlier build (superblock and records of
/// version 1) replays, its entries are made durable in the backend, and it
/// is reformatted in the current layout.
#[test]
fn legacy_journal_replays_and_is_upgraded() {
    use crate::format::journal::legacy::{encode_record_v1, encode_super_v1};
    use crate::format::journal::{RecordKind, SB_VERSION_LEGACY};
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 1 << 20);
    let uuid = ImageUuid([10; 16]);
    let gen = Generation(77);
    let sb = JournalSuper {
        version: SB_VERSION_LEGACY,
        uuid,
        generation: gen,
        size: 1 << 20,
        start_offset: 4096,
        start_seq: JournalSeq(1),
        update_seq: 3,
        epoch: Epoch(0),
        start_epoch: Epoch(0),
    };
    let mut file = encode_super_v1(&sb);
    for i in 1..=3u64 {
        let mut rec = Vec::new();
        let data = vec![i as u8; 4096];
        encode_record_v1(
            &mut rec,
            gen,
            RecordKind::Entries,
            JournalSeq(i),
            &[write_entry(i * 8, 8)],
            &data,
        );
        file.extend_from_slice(&rec);
    }
    file.resize(1 << 20, 0);
    std::fs::write(&o.path, &file).unwrap();

    let mut durable_calls = 0;
    let mut seen = Vec::new();
    let (j, r) = Journal::open(
        &o,
        uuid,
        gen,
        JournalSeq(0),
        Arc::new(JournalShared::default()),
        &mut |e| {
            seen.push(e.seq.0);
            Ok(())
        },
        &mut || {
            durable_calls += 1;
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, vec![1, 2, 3]);
    assert_eq!(durable_calls, 1, "replayed entries made durable first");
    assert!(r.upgraded);
    assert_ne!(r.generation, gen, "reformatted");
    assert_eq!(r.next_seq, JournalSeq(4));
    append_wait(&j, 4, 0, 8, 4, true).unwrap();
    j.shutdown(false).unwrap();
    // Now a version 2 journal: the new write replays, the old chain not.
    let (_j, r2, seen) = open(&o, uuid, r.generation, 3).unwrap();
    assert!(!r2.upgraded);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![4]);
    let mut b0 = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&o.path).unwrap(), &mut b0, 0)
        .unwrap();
    assert_eq!(JournalSuper::decode(&b0).unwrap().version, 2);

    // A failure to destage keeps the old journal for the next open.
    std::fs::write(&o.path, &file).unwrap();
    let e = Journal::open(
        &o,
        uuid,
        gen,
        JournalSeq(0),
        Arc::new(JournalShared::default()),
        &mut |_| Ok(()),
        &mut || Err(Error::new(ErrorKind::Timeout, "backend down")),
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let (_j, r3, seen) = open(&o, uuid, gen, 0).unwrap();
    assert_eq!(seen.len(), 3);
    assert!(r3.upgraded);
}

/// Every superblock write of a recorded life (format, the epoch at each
/// open, `persist_start` as space is reused, a clean close) torn at every
/// byte of its significant part (a copy is 96 bytes, the rest of the block
/// is zeros in every copy, so a tear at any later point leaves the copy
/// whole): the journal always opens and replays exactly what it replayed
/// before that write began (the torn copy is never used; the other slot
/// is). Written whole, it opens too.
#[test]
fn torn_superblock_write_at_every_moment_leaves_an_openable_journal() {
    use crate::format::journal::JournalSuper;
    use crate::powercut::{read_events, Event, IoLog};
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let rec = dir.path().join("rec");
    let log = IoLog::create(&rec).unwrap();
    let mut o = opts(dir.path(), 128 << 10);
    o.io_log = Some(log.clone());
    let uuid = ImageUuid([11; 16]);
    // Session 1: 40 records of 8 KiB in a 120 KiB record area, releasing
    // as it goes (the start is persisted several times), then a clean close.
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    for i in 1..=40u64 {
        append_wait(&j, i, i * 8, 8, i as u8, false).unwrap();
        if i > 4 {
            j.shared().release(JournalSeq(i - 4));
        }
    }
    j.shared().release(JournalSeq(38));
    j.shutdown(true).unwrap();
    // Session 2: a new epoch, a few records, a crash.
    let (j, _, seen) = open(&o, uuid, r.generation, 38).unwrap();
    assert_eq!(seen.len(), 2);
    for i in 41..=44u64 {
        append_wait(&j, i, i * 8, 8, i as u8, false).unwrap();
    }
    j.shutdown(false).unwrap();
    drop(log);

    let evs = read_events(&rec).unwrap();
    let size = match evs
        .iter()
        .find(|e| matches!(e, Event::JournalCreated { .. }))
    {
        Some(Event::JournalCreated { size }) => *size as usize,
        _ => panic!("the journal's creation was recorded"),
    };
    let supers: Vec<usize> = evs
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::JournalWrite { off, .. } if *off < 2 * BLOCK))
        .map(|(i, _)| i)
        .collect();
    // Format (2), persist_start (several), clean close, session 2's epoch.
    assert!(supers.len() >= 6, "{} superblock writes", supers.len());
    // The file as it was just before event `upto` (every earlier write landed).
    let state = |upto: usize| {
        let mut f = vec![0u8; size];
        for e in &evs[..upto] {
            if let Event::JournalWrite { off, data, .. } = e {
                f[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
        }
        f
    };
    // The backend holds what the chosen copy's start says it no longer
    // needs (so the chain continues it and replays).
    let backend_of = |f: &[u8]| -> u64 {
        (0..2u32)
            .filter_map(|s| {
                JournalSuper::decode_slot(&f[s as usize * 4096..(s as usize + 1) * 4096], s).ok()
            })
            .max_by_key(|sb| sb.update_seq)
            .map_or(0, |sb| sb.start_seq.0 - 1)
    };
    let trial = dir.path().join("trial.wlog");
    let mut t = opts(dir.path(), 128 << 10);
    t.path = trial.clone();
    let replay_of = |bytes: &[u8], backend: u64| -> Vec<u64> {
        std::fs::write(&trial, bytes).unwrap();
        let (j, _, seen) =
            open(&t, uuid, Generation(0), backend).unwrap_or_else(|e| panic!("open failed: {e:?}"));
        drop(j);
        seen.iter().map(|s| s.0).collect()
    };
    let mut replayed_something = 0;
    for &k in &supers {
        let Event::JournalWrite { off, data, .. } = &evs[k] else {
            unreachable!()
        };
        let before = state(k);
        let backend = backend_of(&before);
        let want = replay_of(&before, backend);
        replayed_something += usize::from(!want.is_empty());
        let at = *off as usize;
        for cut in 1..96usize {
            let mut torn = before.clone();
            torn[at..at + cut].copy_from_slice(&data[..cut]);
            if torn == before {
                continue;
            }
            assert_eq!(
                replay_of(&torn, backend),
                want,
                "superblock write at event {k} (slot {}) torn after byte {cut}",
                off / BLOCK
            );
        }
        let after = state(k + 1);
        replay_of(&after, backend_of(&after));
    }
    assert!(replayed_something >= 3, "the states tried hold chains");
}

/// Every pooled record buffer fits any record (review of b470545: a
/// first-fit pool filled with small buffers turned big records away, and
/// refused their buffers back, so each big copied record allocated).
#[test]
fn the_record_buffer_pool_keeps_full_size_buffers_after_small_ones() {
    let max = 2 << 20;
    let s = staging::Staging::new(max);
    let full = BLOCK as usize + max;
    let small: Vec<AlignedBuf> = (0..16).map(|_| s.buffer(8192)).collect();
    for mut b in small {
        b[0] = 0xAB;
        s.recycle(b);
    }
    for _ in 0..16 {
        let b = s.buffer(full);
        assert_eq!(b[0], 0xAB, "a fresh buffer was allocated");
        assert_eq!(b.len(), full);
    }
}

/// A FUA write whose record goes out after everything before it was
/// synced is written with `RWF_DSYNC`: no fdatasync. One after an unsynced
/// record still gets its fdatasync, and a FLUSH of what a DSYNC record
/// covered costs nothing more.
#[test]
fn a_fua_write_after_synced_records_is_one_dsync_write() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let o = opts(dir.path(), 1 << 20);
    let uuid = ImageUuid([12; 16]);
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    let s = j.shared().clone();
    // Record 1 is not synced, so FUA record 2 needs an fdatasync.
    append_wait(&j, 1, 8, 8, 1, false).unwrap();
    append_wait(&j, 2, 16, 8, 2, true).unwrap();
    assert_eq!((s.syncs(), s.dsync_records()), (1, 0));
    // Everything is synced now: FUA records 3 and 4 are DSYNC writes.
    append_wait(&j, 3, 24, 8, 3, true).unwrap();
    append_wait(&j, 4, 32, 8, 4, true).unwrap();
    assert_eq!((s.syncs(), s.dsync_records()), (1, 2));
    flush_wait(&j, 4).unwrap();
    assert_eq!(s.syncs(), 1, "a FLUSH of DSYNC-covered records syncs again");
    // Record 5 is not synced: FUA record 6 goes the fdatasync way.
    append_wait(&j, 5, 40, 8, 5, false).unwrap();
    append_wait(&j, 6, 48, 8, 6, true).unwrap();
    assert_eq!((s.syncs(), s.dsync_records()), (2, 2));
    j.shutdown(false).unwrap();
    let (_j, r2, seen) = open(&o, uuid, r.generation, 0).unwrap();
    assert_eq!(r2.replayed, 6);
    for (i, e) in seen.iter().enumerate() {
        assert_eq!((e.0, e.2), (i as u64 + 1, (i as u64 + 1) * 8));
        assert!(e.3.iter().all(|&b| b == i as u8 + 1));
    }
}

/// A new 128 KiB journal in `dir` whose I/O is recorded in `dir/rec` for
/// the power-cut model ([`replay_every_cut`]).
fn open_recorded(
    dir: &Path,
    uuid: ImageUuid,
) -> (Journal, OpenReport, Arc<crate::powercut::IoLog>) {
    use crate::powercut::{cut, IoLog};
    let (rec, store) = (dir.join("rec"), dir.join("store"));
    std::fs::create_dir_all(&store).unwrap();
    let mut o = opts(dir, 128 << 10);
    cut::capture_baseline(&rec, &o.path, &store).unwrap();
    let log = IoLog::create(&rec).unwrap();
    o.io_log = Some(log.clone());
    let (j, r, _) = open(&o, uuid, Generation(0), 0).unwrap();
    (j, r, log)
}

/// For a session recorded in `dir/rec` (a 128 KiB journal, writes of 16
/// sectors at lba = 16 x seq filled with seq as a byte), apply a power cut
/// at every event, `tries` times each: the replay must open, reach the
/// highest sequence marked acknowledged-durable before the cut, have no
/// hole above the backend (what the durable superblock's start says the
/// journal no longer needs), and give every entry its own lba and data.
/// Returns the cuts where the journal held an acknowledged sequence.
fn replay_every_cut(dir: &Path, uuid: ImageUuid, gen: Generation, seed: u64, tries: u32) -> usize {
    use crate::format::journal::JournalSuper;
    use crate::powercut::{cut, read_events, Event};
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    let (rec, store) = (dir.join("rec"), dir.join("store"));
    let evs = read_events(&rec).unwrap();
    let trial = dir.join("trial.wlog");
    let mut t = opts(dir, 128 << 10);
    t.path = trial.clone();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut needed = 0;
    for upto in 0..=evs.len() {
        let floor = evs[..upto]
            .iter()
            .filter_map(|e| match e {
                Event::Mark { n } => Some(*n),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        for _ in 0..tries {
            let _ = std::fs::remove_file(&trial);
            cut::apply_at(&rec, &trial, &store, Some(upto), &mut rng).unwrap();
            let backend = std::fs::read(&trial).ok().map_or(0, |f| {
                (0..2u32)
                    .filter_map(|s| {
                        let b = f.get(s as usize * 4096..(s as usize + 1) * 4096)?;
                        JournalSuper::decode_slot(b, s).ok()
                    })
                    .max_by_key(|sb| sb.update_seq)
                    .map_or(0, |sb| sb.start_seq.0 - 1)
            });
            let (jt, _, seen) = open(&t, uuid, gen, backend)
                .unwrap_or_else(|e| panic!("cut at event {upto}: open failed: {e:?}"));
            drop(jt);
            let last = seen.last().map_or(backend, |e| e.0);
            assert!(
                last >= floor,
                "cut at event {upto}: sequence {floor} was acknowledged durable, replay ends \
                 at {last} (backend {backend})"
            );
            needed += usize::from(floor > backend);
            for (i, e) in seen.iter().enumerate() {
                assert_eq!(e.0, backend + 1 + i as u64, "cut at event {upto}: a hole");
                assert_eq!(e.2, e.0 * 16, "cut at event {upto}: entry {} lba", e.0);
                assert!(
                    e.3.iter().all(|&b| b == e.0 as u8),
                    "cut at event {upto}: entry {} data",
                    e.0
                );
            }
        }
    }
    needed
}

/// Power cuts (the `powercut` model: anything no completed fdatasync or
/// RWF_DSYNC write covers may be lost or torn, in any order) at every
/// moment of a session mixing plain and FUA writes, DSYNC and fdatasync
/// ones, through several wraps: the chain replayed always reaches the last
/// acknowledged FUA write, and every entry it replays holds its own data.
#[test]
fn acknowledged_fua_writes_survive_a_power_cut_at_every_moment() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let uuid = ImageUuid([13; 16]);
    let (j, r, log) = open_recorded(dir.path(), uuid);
    // 60 records of 8 KiB in a 120 KiB record area (several wraps); every
    // third is FUA, and 20..30 all are (DSYNC writes back to back).
    for i in 1..=60u64 {
        let fua = i % 3 == 0 || (20..30).contains(&i);
        append_wait(&j, i, i * 16, 16, i as u8, fua).unwrap();
        if fua {
            log.mark(i);
        }
        if i > 6 {
            j.shared().release(JournalSeq(i - 6));
        }
    }
    assert!(j.shared().dsync_records() >= 8, "the DSYNC path ran");
    assert!(j.shared().syncs() >= 3, "the fdatasync path ran");
    j.shutdown(false).unwrap();
    drop(log);
    let replayed_fua = replay_every_cut(dir.path(), uuid, r.generation, 20261204, 2);
    assert!(replayed_fua > 100, "{replayed_fua} cuts needed the journal");
}

/// Three threads drive the journal from their own rings (lanes), as ublk
/// queues do, while their appends interleave in one sequence: records go
/// out on all three rings and the journal thread's, FLUSHes are taken at
/// the lanes' pumps, and power cuts at every moment of that session (the
/// `powercut` model) always replay a chain that reaches the last
/// acknowledged FUA write or FLUSH, with every entry holding its own data.
#[test]
fn lanes_on_their_own_rings_keep_the_chain_through_power_cuts() {
    use std::sync::atomic::AtomicUsize;
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let uuid = ImageUuid([14; 16]);
    let (j, r, log) = open_recorded(dir.path(), uuid);
    let j = Arc::new(j);
    // The volume's state lock: sequences are assigned and appended in order.
    let next = Arc::new(Mutex::new(1u64));
    let on_lanes = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (j, next, log, on_lanes) = (j.clone(), next.clone(), log.clone(), on_lanes.clone());
            std::thread::spawn(move || {
                let mut lane = RingLane::new(&j.lane(), 16).unwrap();
                for k in 0..40u64 {
                    let (tx, rx) = mpsc::channel::<Result<()>>();
                    let seq = {
                        let mut n = next.lock().unwrap();
                        let seq = *n;
                        *n += 1;
                        let fua = (seq + t) % 4 == 0;
                        let (tx2, log2) = (tx.clone(), log.clone());
                        j.append(Append {
                            first_seq: JournalSeq(seq),
                            entries: &[write_entry(seq * 16, 16)],
                            data: &[Span::copy_of(&vec![seq as u8; 8192])],
                            fua,
                            done: Some(Box::new(move |r| {
                                if fua && r.is_ok() {
                                    log2.mark(seq);
                                }
                                let _ = tx2.send(r);
                            })),
                        });
                        if k % 7 == 3 {
                            let (tx3, log3) = (tx.clone(), log.clone());
                            j.flush(
                                JournalSeq(seq),
                                Box::new(move |r| {
                                    if r.is_ok() {
                                        log3.mark(seq);
                                    }
                                    let _ = tx3.send(r);
                                }),
                            );
                        }
                        seq
                    };
                    let want = if k % 7 == 3 { 2 } else { 1 };
                    let mut got = 0;
                    while got < want {
                        lane.run(true).unwrap();
                        if lane.inflight() > 0 {
                            on_lanes.fetch_add(1, Ordering::Relaxed);
                        }
                        while let Ok(r) = rx.try_recv() {
                            r.unwrap();
                            got += 1;
                        }
                        if got < want && lane.inflight() == 0 {
                            std::thread::yield_now();
                        }
                    }
                    // 120 KiB of record area holds about 9 records of
                    // 8 KiB: keep 4 below the newest (plus one per thread
                    // in flight).
                    if seq > 4 {
                        j.shared().release(JournalSeq(seq - 4));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(on_lanes.load(Ordering::Relaxed) > 0, "lanes carried I/O");
    assert!(
        j.shared().lane_deferrals.load(Ordering::Relaxed) > 0,
        "lanes left replay-start moves to the journal thread"
    );
    assert!(j.shared().syncs() + j.shared().dsync_records() >= 5);
    let j = Arc::try_unwrap(j).ok().unwrap();
    j.shutdown(false).unwrap();
    drop(log);
    let needed = replay_every_cut(dir.path(), uuid, r.generation, 20261205, 1);
    assert!(needed > 50, "{needed} cuts needed the journal");
}

/// Lanes of two journals entered on one thread and left out of order (a
/// review find): the second registers nothing, so journal 2's FLUSH from
/// this thread goes to journal 2's own thread and is acknowledged only
/// once its record is written and synced, never by journal 1.
#[test]
fn a_second_lane_on_a_thread_never_misroutes_a_flush() {
    let d1 = tempfile::tempdir_in("/tmp").unwrap();
    let d2 = tempfile::tempdir_in("/tmp").unwrap();
    let (j1, _, _) = open(
        &opts(d1.path(), 1 << 20),
        ImageUuid([21; 16]),
        Generation(0),
        0,
    )
    .unwrap();
    let (j2, _, _) = open(
        &opts(d2.path(), 1 << 20),
        ImageUuid([22; 16]),
        Generation(0),
        0,
    )
    .unwrap();
    // Journal 1: 1..=3 written and synced, so its frontier is ahead.
    for s in 1..=3u64 {
        append_spans(
            &j1,
            s,
            &[write_entry(s * 8, 8)],
            &[Span::copy_of(&[1u8; 4096])],
        )
        .unwrap();
    }
    flush_wait(&j1, 3).unwrap();
    let (l1, l2) = (j1.lane(), j2.lane());
    let g1 = l1.enter();
    let g2 = l2.enter();
    j2.append(Append {
        first_seq: JournalSeq(1),
        entries: &[write_entry(0, 8)],
        data: &[Span::copy_of(&[2u8; 4096])],
        fua: false,
        done: None,
    });
    let (tx, rx) = mpsc::channel();
    j2.flush(
        JournalSeq(1),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    drop(g1);
    let r = rx.recv_timeout(Duration::from_secs(5));
    drop(g2);
    assert!(matches!(r, Ok(Ok(()))), "journal 2's FLUSH: {r:?}");
    assert!(j2.shared().records() >= 1, "its record was written");
    assert!(
        j2.shared().syncs() >= 1,
        "and synced before the FLUSH completed"
    );
}

fn open_plain(o: &JournalOptions) -> crate::Result<Journal> {
    Journal::open(
        o,
        ImageUuid([3; 16]),
        Generation(0),
        JournalSeq(0),
        Arc::new(JournalShared::default()),
        &mut |_| Ok(()),
        &mut || Ok(()),
    )
    .map(|(j, _)| j)
}

/// A journal on tmpfs is refused, naming the file system, unless
/// `allow_tmpfs` (issue 17, bug 4: it was accepted silently).
#[test]
fn a_journal_on_tmpfs_is_refused_unless_allowed() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm here: nothing to check");
        return;
    };
    let mut o = opts(dir.path(), 1 << 20);
    let e = open_plain(&o).err().expect("a journal on tmpfs");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("is on tmpfs"), "{e}");
    assert!(!o.path.exists());
    o.allow_tmpfs = true;
    // Allowed: it opens (tmpfs has O_DIRECT since Linux 6.6; an older
    // kernel refuses it by that name instead).
    match open_plain(&o) {
        Ok(j) => drop(j),
        Err(e) => assert!(e.to_string().contains("direct I/O"), "{e}"),
    }
}

/// A journal larger than the free space is refused before anything is
/// written, and no temporary file stays (issue 17, bug 3: the zero fill
/// filled the file system and left `<path>.creating`).
#[test]
fn a_journal_larger_than_the_free_space_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let free = crate::io::free_bytes(dir.path()).unwrap();
    let o = opts(dir.path(), (free + (1 << 40)) / BLOCK * BLOCK);
    let e = open_plain(&o).err().expect("no room");
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("wlog_bytes"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
