use super::*;
use crate::format::object::OpKind;
use std::sync::mpsc;

fn opts(dir: &Path, size: u64) -> JournalOptions {
    JournalOptions {
        path: dir.join("j.wlog"),
        size,
        depth: 4,
        max_record_data: 64 << 10,
        io_timeout: Duration::from_secs(5),
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
    )?;
    Ok((j, r, seen))
}

/// Append one write of `sectors` at `lba` filled with `fill`, wait for it.
fn append_wait(j: &Journal, seq: u64, lba: u64, sectors: u32, fill: u8, fua: bool) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    j.append(Append {
        first_seq: JournalSeq(seq),
        entries: &[write_entry(lba, sectors)],
        data: &vec![fill; sectors as usize * 512],
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
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55], 4096 + 2 * 8192 + 4096 + 100).unwrap();
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
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff], 20).unwrap();
    drop(f);
    let e = open(&o, uuid, Generation(0), 0).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
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
