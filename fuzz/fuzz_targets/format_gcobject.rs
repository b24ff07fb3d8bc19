//! GC object headers (versions 1 and 2), as given and resealed. A decoded
//! header's moves must lie inside its data area.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::format::gcobject::GcHeader;

fn check(buf: &[u8]) {
    let _ = GcHeader::needed_bytes(buf);
    if let Ok(h) = GcHeader::decode(buf) {
        for m in &h.moves {
            assert!(m.sectors > 0);
            assert!(u64::from(m.data_offset) + u64::from(m.sectors) <= u64::from(h.data_sectors));
        }
        let _ = h.verify_data(buf);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut b = data.to_vec();
    GcHeader::reseal(&mut b);
    check(&b);
});
