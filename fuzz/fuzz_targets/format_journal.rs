//! The journal superblock (both slots, both versions) and journal records
//! (header decode, then the record crc as given and resealed under a
//! generation taken from the input).
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::format::journal::{JournalSuper, RecordHeader};
use lsvd::units::Generation;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        let slot = u32::from(sel >> 1 & 1);
        let _ = JournalSuper::decode_slot(rest, slot);
        let mut b = rest.to_vec();
        JournalSuper::reseal(&mut b);
        if let Ok(sb) = JournalSuper::decode_slot(&b, slot) {
            assert!(sb.start_offset >= sb.data_start() && sb.start_offset <= sb.size);
            // Only the current version is ever written.
            if sb.version == lsvd::format::journal::SB_VERSION {
                let again = JournalSuper::decode_slot(&sb.encode(slot), slot);
                assert_eq!(again.expect("a decoded superblock re-encodes"), sb);
            }
        }
    } else {
        let generation = Generation(u64::from(sel));
        if let Ok(h) = RecordHeader::decode(rest) {
            let sum: u64 = h.entries.iter().map(|e| e.data_bytes()).sum();
            assert_eq!(sum, u64::from(h.data_bytes));
            let _ = h.total_bytes();
            let _ = h.verify(rest, generation);
            let mut b = rest.to_vec();
            RecordHeader::reseal(&mut b, generation);
            if let Ok(h2) = RecordHeader::decode(&b) {
                if b.len() >= h2.header_bytes as usize + h2.data_bytes as usize {
                    h2.verify(&b, generation)
                        .expect("a resealed record verifies");
                }
            }
        }
    }
});
