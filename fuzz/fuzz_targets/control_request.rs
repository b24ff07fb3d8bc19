//! Control-socket lines: a request as the server parses it (any bytes, any
//! JSON), and a reply as the client parses it. A parsed request reaches the
//! handler once and re-serializes to an equal request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lsvd::ublk::control::{handle_line, Control, Reply};
use std::cell::Cell;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let calls = Cell::new(0);
    let reply = handle_line(line, &|req: Control| {
        calls.set(calls.get() + 1);
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<Control>(&text).unwrap(), req);
        Reply::Done {
            message: String::new(),
        }
    });
    match reply {
        Reply::Done { .. } => assert_eq!(calls.get(), 1),
        Reply::Error { error } => {
            assert_eq!(calls.get(), 0);
            assert!(error.starts_with("bad request"), "{error}");
        }
        Reply::Resized { .. } => unreachable!(),
    }
    let _ = serde_json::from_str::<Reply>(line);
});
