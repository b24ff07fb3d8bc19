//! The read cache's superblock, index blocks and per-chunk block crcs, as
//! given and resealed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::format::rcache::{self, CacheSuper};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            let _ = CacheSuper::decode(rest);
            let mut b = rest.to_vec();
            CacheSuper::reseal(&mut b);
            if let Ok(sb) = CacheSuper::decode(&b) {
                assert_eq!(CacheSuper::decode(&sb.encode()).expect("re-encodes"), sb);
                let l = sb.layout;
                assert!(l.data_off <= l.file_bytes);
                if l.nchunks > 0 {
                    let _ = l.slot_off(l.nchunks - 1);
                    let _ = l.index_block_off(l.index_blocks.saturating_sub(1));
                }
            }
        }
        1 => {
            // The cache UUID, generation and block number the caller
            // expects, then the block.
            if rest.len() < 28 {
                return;
            }
            let uuid: [u8; 16] = rest[..16].try_into().unwrap();
            let gen = u64::from_le_bytes(rest[16..24].try_into().unwrap());
            let no = u32::from_le_bytes(rest[24..28].try_into().unwrap());
            let block = &rest[28..];
            let _ = rcache::decode_index_block(block, &uuid, gen, no);
            let mut b = block.to_vec();
            rcache::reseal_index_block(&mut b, &uuid);
            if let Ok(entries) = rcache::decode_index_block(&b, &uuid, gen, no) {
                assert_eq!(entries.len(), rcache::ENTRIES_PER_BLOCK);
                for e in entries.iter().filter(|e| !e.is_empty()) {
                    assert!(u64::from(e.len) <= rcache::CHUNK_BYTES);
                }
            }
        }
        _ => {
            // A chunk crc table over the input's data, checked against a
            // range taken from the input.
            if rest.len() < 16 {
                return;
            }
            let hb = u32::from_le_bytes(rest[0..4].try_into().unwrap()) % (1 << 20);
            let start = u64::from(u32::from_le_bytes(rest[4..8].try_into().unwrap()));
            let n = (u32::from_le_bytes(rest[8..12].try_into().unwrap()) % 64) as usize;
            let body = &rest[12..];
            let crcs = body.chunks(4).take(n).map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            });
            if let Some(t) = lsvd::format::chunks::ChunkCrcs::from_parts(
                hb & !4095,
                body.len() as u64,
                crcs.collect(),
            ) {
                let _ = t.covering(start, body.len() as u64);
                let _ = t.verify(start, body);
            }
        }
    }
});
