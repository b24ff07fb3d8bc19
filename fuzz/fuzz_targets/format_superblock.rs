//! The image superblock (versions 1 and 2): every input as it is, then with
//! its crc rewritten so the checks behind the checksum are reached. A
//! decoded superblock must encode to bytes that decode to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::format::superblock::Superblock;

fn check(buf: &[u8]) {
    if let Ok(sb) = Superblock::decode(buf) {
        let again = Superblock::decode(&sb.encode()).expect("a decoded superblock re-encodes");
        assert_eq!(again, sb);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut b = data.to_vec();
    Superblock::reseal(&mut b);
    check(&b);
});
