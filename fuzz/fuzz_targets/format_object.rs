//! Data object headers (versions 1 and 2), as given and resealed. A decoded
//! header's writes must lie inside its data area, and checking the data
//! (whole or per chunk) must not panic whatever the object's length.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::format::object::{ObjectHeader, OpKind};

fn check(buf: &[u8]) {
    let _ = ObjectHeader::needed_bytes(buf);
    if let Ok(h) = ObjectHeader::decode(buf) {
        for op in &h.ops {
            assert!(op.sectors > 0);
            if op.kind == OpKind::Write {
                assert!(
                    u64::from(op.data_offset) + u64::from(op.sectors) <= u64::from(h.data_sectors)
                );
            }
        }
        assert_eq!(h.header_bytes % 4096, 0);
        let _ = h.verify_data(buf);
        let _ = h.last_jseq();
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut b = data.to_vec();
    ObjectHeader::reseal(&mut b);
    check(&b);
});
