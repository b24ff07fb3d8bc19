//! The NBD wire decoders: option headers, NBD_OPT_INFO / NBD_OPT_GO and
//! NBD_OPT_LIST/SET_META_CONTEXT payloads and transmission request headers. What decodes re-encodes to
//! the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::nbd::proto::{InfoRequest, MetaContextRequest, OptionHeader, Request, REQUEST_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.get(..16) {
        let b: &[u8; 16] = b.try_into().unwrap();
        if let Some(h) = OptionHeader::decode(b) {
            assert_eq!(&h.encode(), b);
        }
    }
    if let Some(b) = data.get(..REQUEST_BYTES) {
        let b: &[u8; REQUEST_BYTES] = b.try_into().unwrap();
        if let Some(r) = Request::decode(b) {
            assert_eq!(&r.encode(), b);
        }
    }
    if let Some(i) = InfoRequest::decode(data) {
        assert_eq!(i.encode(), data);
    }
    if let Some(m) = MetaContextRequest::decode(data) {
        assert_eq!(m.encode(), data);
    }
});
