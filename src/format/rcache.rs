//! Read-cache file: superblock, index blocks and the per-block checksum.
//!
//! The file is `[superblock block][index blocks][padding][chunk slots]`.
//! A slot holds one 64 KiB chunk of one backend object, keyed by
//! (image UUID, object sequence, object-relative byte offset / 64 KiB).
//! Slot `i` is described by entry `i % ENTRIES_PER_BLOCK` of index block
//! `i / ENTRIES_PER_BLOCK`.
//!
//! Superblock (block 0, little endian), version 2:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDRC01` |
//! | 8   | 4    | version = 2 |
//! | 12  | 4    | length in bytes, crc included (= 148; zero padding to 4096 follows) |
//! | 16  | 16   | cache UUID (random per format) |
//! | 32  | 16   | owner image UUID |
//! | 48  | 8    | generation (random, new on every format: the first 8 bytes of the cache UUID) |
//! | 56  | 8    | file size in bytes |
//! | 64  | 4    | chunk bytes = 65536 |
//! | 68  | 4    | number of chunk slots, N |
//! | 72  | 8    | byte offset of index block 0 (= 4096) |
//! | 80  | 4    | index blocks = ceil(N / 51) |
//! | 84  | 4    | reserved, 0 |
//! | 88  | 8    | byte offset of slot 0 (multiple of 65536) |
//! | 96  | 8    | hits (persisted counter; counters are written at format and clean close only) |
//! | 104 | 8    | misses |
//! | 112 | 8    | evictions |
//! | 120 | 8    | inserts |
//! | 128 | 8    | corrupt blocks and index blocks found |
//! | 136 | 8    | journal generation: the image's `journal_gen` of the attach that last used the file |
//! | 144 | 4    | crc32c of every preceding byte |
//!
//! Version 1 (without the journal generation) is not read: such a file is
//! reformatted, like any superblock that does not decode.
//!
//! Index block (4096 bytes):
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | generation (must equal the superblock's) |
//! | 8   | 4    | block number |
//! | 12  | 4    | crc32c of cache UUID ‖ the block with this field zeroed |
//! | 16  | 80*51 | entries |
//!
//! Entry (80 bytes): object sequence (8), chunk number (4), valid bytes
//! (4; 0 = empty slot, else a multiple of 512 up to 65536), then 16 crcs
//! (4 each), one per 4 KiB block of the chunk, see [`block_crc`].

use super::{check_magic_version, Dec, Enc, FormatError};
use crate::units::{ImageUuid, ObjSeq};

const MAGIC: &[u8; 8] = b"LSVDRC01";
/// Format version this build writes and reads.
pub const VERSION: u32 = 2;
const WHAT: &str = "read-cache superblock";
const WHAT_INDEX: &str = "read-cache index block";
/// Bytes of one cached chunk.
pub const CHUNK_BYTES: u64 = 64 * 1024;
/// Bytes of one checksummed block within a chunk, and of an index block.
pub const BLOCK_BYTES: usize = 4096;
/// 4 KiB blocks in a chunk.
pub const BLOCKS_PER_CHUNK: usize = CHUNK_BYTES as usize / BLOCK_BYTES;
/// Index entries in one index block.
pub const ENTRIES_PER_BLOCK: usize = 51;
const ENTRY_BYTES: usize = 80;
const SUPER_LEN: usize = 148;

/// Where things are in a cache file of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// File size in bytes.
    pub file_bytes: u64,
    /// Chunk slots.
    pub nchunks: u32,
    /// Byte offset of index block 0.
    pub index_off: u64,
    /// Index blocks.
    pub index_blocks: u32,
    /// Byte offset of slot 0.
    pub data_off: u64,
}

impl Layout {
    /// The layout of a file of `bytes`, or `None` if not even one chunk fits.
    pub fn for_size(bytes: u64) -> Option<Layout> {
        let index_off = BLOCK_BYTES as u64;
        let fits = |n: u64| -> Option<(u64, u64)> {
            let blocks = n.div_ceil(ENTRIES_PER_BLOCK as u64);
            let data_off = super::round_up(index_off + blocks * BLOCK_BYTES as u64, CHUNK_BYTES);
            (data_off + n * CHUNK_BYTES <= bytes).then_some((blocks, data_off))
        };
        let mut n = (bytes / CHUNK_BYTES).min(u32::MAX as u64);
        while n > 0 && fits(n).is_none() {
            n -= 1;
        }
        let (blocks, data_off) = fits(n).filter(|_| n > 0)?;
        Some(Layout {
            file_bytes: bytes,
            nchunks: n as u32,
            index_off,
            index_blocks: blocks as u32,
            data_off,
        })
    }

    /// Byte offset of slot `slot`.
    pub fn slot_off(&self, slot: u32) -> u64 {
        self.data_off + slot as u64 * CHUNK_BYTES
    }

    /// Byte offset of index block `block`.
    pub fn index_block_off(&self, block: u32) -> u64 {
        self.index_off + block as u64 * BLOCK_BYTES as u64
    }
}

/// Persisted counters (cumulative over the life of one format; written
/// at format and at a clean close only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheCounters {
    /// Reads served from the cache.
    pub hits: u64,
    /// Chunks fetched from the backend.
    pub misses: u64,
    /// Chunks evicted to make room.
    pub evictions: u64,
    /// Chunks written into the cache.
    pub inserts: u64,
    /// Corrupt chunk blocks or index blocks found (and dropped).
    pub corrupt: u64,
}

/// The read-cache superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSuper {
    /// Identity of this format of the file (mixed into every crc).
    pub cache_uuid: [u8; 16],
    /// Image that owns the cached data.
    pub owner: ImageUuid,
    /// New (random) on every format; index blocks of another generation
    /// are stale.
    pub generation: u64,
    /// Geometry.
    pub layout: Layout,
    /// Counters.
    pub counters: CacheCounters,
    /// The image superblock's `journal_gen` of the attach that last used
    /// this file. Object sequences are reused only by a recovery, and an
    /// attach with another journal (another host, a wiped journal) changes
    /// the image's generation: a file whose generation differs from the
    /// image's at open may hold chunks of reused sequences, so all its
    /// entries are dropped.
    pub journal_gen: u64,
}

impl CacheSuper {
    /// Encode to a full 4096-byte block.
    pub fn encode(&self) -> Vec<u8> {
        let l = &self.layout;
        let c = &self.counters;
        let mut e = Enc::with_capacity(BLOCK_BYTES);
        e.bytes(MAGIC)
            .u32(VERSION)
            .u32(SUPER_LEN as u32)
            .bytes(&self.cache_uuid)
            .bytes(&self.owner.0)
            .u64(self.generation)
            .u64(l.file_bytes)
            .u32(CHUNK_BYTES as u32)
            .u32(l.nchunks)
            .u64(l.index_off)
            .u32(l.index_blocks)
            .u32(0)
            .u64(l.data_off)
            .u64(c.hits)
            .u64(c.misses)
            .u64(c.evictions)
            .u64(c.inserts)
            .u64(c.corrupt)
            .u64(self.journal_gen);
        let crc = super::crc(0, &e.buf);
        e.u32(crc);
        e.pad_to(BLOCK_BYTES);
        e.buf
    }

    /// For fuzzing: rewrite the crc after the superblock's bytes were
    /// changed.
    #[doc(hidden)]
    pub fn reseal(buf: &mut [u8]) {
        super::reseal_trailing(buf, SUPER_LEN);
    }

    /// Decode and validate (the geometry must be the one [`Layout::for_size`]
    /// gives for the recorded file size).
    pub fn decode(buf: &[u8]) -> Result<CacheSuper, FormatError> {
        let mut d = Dec::new(WHAT, buf);
        check_magic_version(&mut d, WHAT, MAGIC, VERSION)?;
        let len = d.u32()? as usize;
        if len != SUPER_LEN {
            return Err(d.invalid(format!("length {len}, expected {SUPER_LEN}")));
        }
        super::check_trailing_crc(WHAT, buf.get(..len).unwrap_or(buf))?;
        let cache_uuid = d.array()?;
        let owner = ImageUuid(d.array()?);
        let generation = d.u64()?;
        let file_bytes = d.u64()?;
        let chunk = d.u32()?;
        let nchunks = d.u32()?;
        let index_off = d.u64()?;
        let index_blocks = d.u32()?;
        d.skip(4)?;
        let data_off = d.u64()?;
        let counters = CacheCounters {
            hits: d.u64()?,
            misses: d.u64()?,
            evictions: d.u64()?,
            inserts: d.u64()?,
            corrupt: d.u64()?,
        };
        let journal_gen = d.u64()?;
        if chunk as u64 != CHUNK_BYTES {
            return Err(d.invalid(format!("chunk size {chunk}, expected {CHUNK_BYTES}")));
        }
        let layout = Layout {
            file_bytes,
            nchunks,
            index_off,
            index_blocks,
            data_off,
        };
        if Layout::for_size(file_bytes) != Some(layout) {
            return Err(d.invalid(format!(
                "geometry {layout:?} is not the one of a {file_bytes}-byte file"
            )));
        }
        Ok(CacheSuper {
            cache_uuid,
            owner,
            generation,
            layout,
            counters,
            journal_gen,
        })
    }
}

/// One index entry: which chunk a slot holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexEntry {
    /// Object sequence.
    pub obj: ObjSeq,
    /// Chunk number (object-relative byte offset / 64 KiB).
    pub chunk: u32,
    /// Valid bytes from the chunk start (0: the slot is empty).
    pub len: u32,
    /// crc of each 4 KiB block ([`block_crc`]); unused ones are 0.
    pub crcs: [u32; BLOCKS_PER_CHUNK],
}

impl IndexEntry {
    /// Whether the slot holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Encode index block `block_no` of `generation` from its (up to 51) entries.
pub fn encode_index_block(
    cache_uuid: &[u8; 16],
    generation: u64,
    block_no: u32,
    entries: &[IndexEntry],
) -> Vec<u8> {
    let mut e = Enc::with_capacity(BLOCK_BYTES);
    e.u64(generation).u32(block_no).u32(0);
    for x in entries.iter().take(ENTRIES_PER_BLOCK) {
        if x.is_empty() {
            e.zeros(ENTRY_BYTES);
            continue;
        }
        e.u64(x.obj.0).u32(x.chunk).u32(x.len);
        for c in x.crcs {
            e.u32(c);
        }
    }
    e.pad_to(BLOCK_BYTES);
    seal_index_block(&mut e.buf, cache_uuid);
    e.buf
}

/// Store in `block` (4096 bytes) the crc of `cache_uuid` ‖ the block with
/// its crc field zeroed.
fn seal_index_block(block: &mut [u8], cache_uuid: &[u8; 16]) {
    block[12..16].fill(0);
    let crc = super::crc(super::crc(0, cache_uuid), block);
    block[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// For fuzzing: rewrite the crc of an index block (seeded with
/// `cache_uuid`) after its bytes were changed.
#[doc(hidden)]
pub fn reseal_index_block(buf: &mut [u8], cache_uuid: &[u8; 16]) {
    if buf.len() >= BLOCK_BYTES {
        seal_index_block(&mut buf[..BLOCK_BYTES], cache_uuid);
    }
}

/// Decode index block `block_no`; it must be of `generation` and carry a
/// crc seeded with `cache_uuid`. Returns its 51 entries.
pub fn decode_index_block(
    buf: &[u8],
    cache_uuid: &[u8; 16],
    generation: u64,
    block_no: u32,
) -> Result<Vec<IndexEntry>, FormatError> {
    if buf.len() < BLOCK_BYTES {
        return Err(FormatError::Truncated {
            what: WHAT_INDEX,
            need: BLOCK_BYTES,
            have: buf.len(),
        });
    }
    let buf = &buf[..BLOCK_BYTES];
    let mut d = Dec::new(WHAT_INDEX, buf);
    let gen = d.u64()?;
    let no = d.u32()?;
    let stored = d.u32()?;
    let mut z = buf.to_vec();
    z[12..16].fill(0);
    let computed = super::crc(super::crc(0, cache_uuid), &z);
    if stored != computed {
        return Err(FormatError::BadChecksum {
            what: WHAT_INDEX,
            stored,
            computed,
        });
    }
    if gen != generation || no != block_no {
        return Err(d.invalid(format!(
            "block {no} of generation {gen} found where block {block_no} of generation {generation} belongs"
        )));
    }
    let mut out = Vec::with_capacity(ENTRIES_PER_BLOCK);
    for _ in 0..ENTRIES_PER_BLOCK {
        let obj = ObjSeq(d.u64()?);
        let chunk = d.u32()?;
        let len = d.u32()?;
        let mut crcs = [0u32; BLOCKS_PER_CHUNK];
        for c in crcs.iter_mut() {
            *c = d.u32()?;
        }
        if len as u64 > CHUNK_BYTES || !len.is_multiple_of(512) {
            return Err(d.invalid(format!("entry of {len} bytes")));
        }
        if len > 0 && obj.0 == 0 {
            return Err(d.invalid("entry for object 0"));
        }
        out.push(IndexEntry {
            obj,
            chunk,
            len,
            crcs,
        });
    }
    Ok(out)
}

/// The crc of 4 KiB block `blk` of chunk `chunk` of object `obj` of image
/// `image` in the cache `cache_uuid`: the key is mixed in, so a block that
/// is stale, misplaced or from another cache never validates.
pub fn block_crc(
    cache_uuid: &[u8; 16],
    image: ImageUuid,
    obj: ObjSeq,
    chunk: u32,
    blk: u32,
    data: &[u8],
) -> u32 {
    super::crc(key_crc(cache_uuid, image, obj, chunk, blk), data)
}

/// [`block_crc`] of a block of `len` bytes whose plain crc32c is `plain`,
/// without reading the block (the destager computed `plain`).
pub fn block_crc_from_plain(
    cache_uuid: &[u8; 16],
    image: ImageUuid,
    obj: ObjSeq,
    chunk: u32,
    blk: u32,
    plain: u32,
    len: usize,
) -> u32 {
    super::crc_concat(key_crc(cache_uuid, image, obj, chunk, blk), plain, len)
}

/// The crc32c of a block's key, which its [`block_crc`] continues from.
fn key_crc(cache_uuid: &[u8; 16], image: ImageUuid, obj: ObjSeq, chunk: u32, blk: u32) -> u32 {
    let mut key = [0u8; 48];
    key[..16].copy_from_slice(cache_uuid);
    key[16..32].copy_from_slice(&image.0);
    key[32..40].copy_from_slice(&obj.0.to_le_bytes());
    key[40..44].copy_from_slice(&chunk.to_le_bytes());
    key[44..48].copy_from_slice(&blk.to_le_bytes());
    super::crc(0, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn sample() -> CacheSuper {
        CacheSuper {
            cache_uuid: [0xc5; 16],
            owner: ImageUuid([7; 16]),
            generation: 3,
            layout: Layout::for_size(4 << 20).unwrap(),
            counters: CacheCounters {
                hits: 10,
                misses: 4,
                evictions: 1,
                inserts: 5,
                corrupt: 0,
            },
            journal_gen: 0x0123_4567_89ab_cdef,
        }
    }

    fn entries() -> Vec<IndexEntry> {
        let mut v = vec![IndexEntry::default(); ENTRIES_PER_BLOCK];
        v[0] = IndexEntry {
            obj: ObjSeq(5),
            chunk: 2,
            len: 65536,
            crcs: [0x1234_5678; BLOCKS_PER_CHUNK],
        };
        v[50] = IndexEntry {
            obj: ObjSeq(9),
            chunk: 0,
            len: 4608,
            crcs: [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        v
    }

    #[test]
    fn layouts() {
        assert_eq!(Layout::for_size(64 << 10), None);
        let l = Layout::for_size(128 << 10).unwrap();
        assert_eq!((l.nchunks, l.index_blocks, l.data_off), (1, 1, 65536));
        let l = Layout::for_size(1 << 30).unwrap();
        assert!(l.data_off + l.nchunks as u64 * CHUNK_BYTES <= 1 << 30);
        assert!(l.index_blocks as u64 * ENTRIES_PER_BLOCK as u64 >= l.nchunks as u64);
        assert_eq!(l.nchunks, 16384 - 21);
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let b = s.encode();
        assert_eq!(b.len(), BLOCK_BYTES);
        assert_eq!(CacheSuper::decode(&b).unwrap(), s);
        let e = entries();
        let b = encode_index_block(&s.cache_uuid, 3, 7, &e);
        assert_eq!(b.len(), BLOCK_BYTES);
        assert_eq!(decode_index_block(&b, &s.cache_uuid, 3, 7).unwrap(), e);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        let s = sample().encode();
        assert_rejects_corruption(&s[..SUPER_LEN], CacheSuper::decode, &[]);
        let u = sample().cache_uuid;
        let b = encode_index_block(&u, 3, 7, &entries());
        assert_rejects_corruption(&b, |x| decode_index_block(x, &u, 3, 7), &[]);
        // Another generation, block number or cache never validates.
        assert!(decode_index_block(&b, &u, 4, 7).is_err());
        assert!(decode_index_block(&b, &u, 3, 8).is_err());
        assert!(decode_index_block(&b, &[0; 16], 3, 7).is_err());
        // A blank block (a fresh sparse file) is not an index block.
        assert!(decode_index_block(&[0; BLOCK_BYTES], &u, 3, 7).is_err());
    }

    #[test]
    fn unknown_version_is_named() {
        let mut b = sample().encode();
        b[8] = 9;
        let e = CacheSuper::decode(&b).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 9"),
            "{e}"
        );
    }

    #[test]
    fn version_1_is_refused() {
        // Version 1 had no journal generation: its files are reformatted.
        let mut b = sample().encode();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let e = CacheSuper::decode(&b).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 1"),
            "{e}"
        );
    }

    #[test]
    fn block_crc_covers_the_key() {
        let u = [1; 16];
        let img = ImageUuid([2; 16]);
        let d = [9u8; 4096];
        let c = block_crc(&u, img, ObjSeq(3), 4, 5, &d);
        assert_eq!(
            block_crc_from_plain(&u, img, ObjSeq(3), 4, 5, crate::format::crc(0, &d), d.len()),
            c,
            "from the plain crc, without the bytes"
        );
        for len in (512..4096).step_by(512) {
            assert_eq!(
                block_crc_from_plain(
                    &u,
                    img,
                    ObjSeq(3),
                    4,
                    5,
                    crate::format::crc(0, &d[..len]),
                    len
                ),
                block_crc(&u, img, ObjSeq(3), 4, 5, &d[..len]),
                "a short last block of {len} bytes"
            );
        }
        assert_ne!(c, block_crc(&[0; 16], img, ObjSeq(3), 4, 5, &d));
        assert_ne!(c, block_crc(&u, ImageUuid([3; 16]), ObjSeq(3), 4, 5, &d));
        assert_ne!(c, block_crc(&u, img, ObjSeq(4), 4, 5, &d));
        assert_ne!(c, block_crc(&u, img, ObjSeq(3), 5, 5, &d));
        assert_ne!(c, block_crc(&u, img, ObjSeq(3), 4, 6, &d));
        assert_ne!(c, block_crc(&u, img, ObjSeq(3), 4, 5, &[8u8; 4096]));
    }

    #[test]
    fn golden_vectors() {
        let g = golden("rcache-super-v2.bin", &sample().encode());
        assert_eq!(CacheSuper::decode(&g).unwrap(), sample());
        let u = sample().cache_uuid;
        let g = golden(
            "rcache-index-v1.bin",
            &encode_index_block(&u, 3, 7, &entries()),
        );
        assert_eq!(decode_index_block(&g, &u, 3, 7).unwrap(), entries());
        let img = ImageUuid([7; 16]);
        assert_eq!(
            block_crc(&u, img, ObjSeq(5), 2, 1, &[0xab; 4096]),
            block_crc(&u, img, ObjSeq(5), 2, 1, &[0xab; 4096])
        );
    }
}
