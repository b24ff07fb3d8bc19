//! Checkpoint pieces (and tombstones), as given and resealed; a decoded
//! piece re-encodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::format::checkpoint::CheckpointPiece;

fn check(buf: &[u8]) {
    if let Ok(p) = CheckpointPiece::decode(buf) {
        let again = CheckpointPiece::decode(&p.encode()).expect("a decoded piece re-encodes");
        assert_eq!(again, p);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut b = data.to_vec();
    CheckpointPiece::reseal(&mut b);
    check(&b);
});
