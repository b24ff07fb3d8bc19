//! Configuration JSON, as `--config '{...}'` gives it, over the defaults:
//! either a configuration that validates or a configuration error, never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::config::{Config, ConfigLayer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::load_from(&[ConfigLayer::Inline(text.to_owned())]) {
        Ok(c) => {
            c.validate().expect("a loaded configuration validates");
            let again = Config::load_from(&[ConfigLayer::Inline(c.to_json_pretty())])
                .expect("a configuration's own JSON loads");
            assert_eq!(again.to_json_pretty(), c.to_json_pretty());
        }
        Err(e) => assert_eq!(e.kind(), lsvd::ErrorKind::Config, "{e}"),
    }
});
