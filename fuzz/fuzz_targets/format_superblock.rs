//! The image superblock (versions 1 and 2), the image's high-water mark
//! (`IMAGE.hwm`), which sits beside it, and the pool marker
//! (`lsvd:pool.flags`): every input as it is, then with
//! its crc rewritten so the checks behind the checksum are reached. A
//! decoded structure must encode to bytes that decode to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::format::hwm::HighWater;
use lsvd::format::pool::PoolMarker;
use lsvd::format::superblock::Superblock;

fn check(buf: &[u8]) {
    if let Ok(sb) = Superblock::decode(buf) {
        let again = Superblock::decode(&sb.encode()).expect("a decoded superblock re-encodes");
        assert_eq!(again, sb);
    }
    if let Ok(h) = HighWater::decode(buf) {
        assert!(h.hwm >= 1);
        assert_eq!(
            HighWater::decode(&h.encode()).expect("a mark re-encodes"),
            h
        );
    }
    if let Ok(p) = PoolMarker::decode(buf) {
        assert_eq!(
            PoolMarker::decode(&p.encode()).expect("a marker re-encodes"),
            p
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut b = data.to_vec();
    Superblock::reseal(&mut b);
    check(&b);
    // The mark's crc covers all but its last 4 bytes.
    let mut b = data.to_vec();
    lsvd::format::reseal_trailing(&mut b, lsvd::format::hwm::SIZE);
    check(&b);
    let mut b = data.to_vec();
    lsvd::format::reseal_trailing(&mut b, lsvd::format::pool::SIZE);
    check(&b);
});
