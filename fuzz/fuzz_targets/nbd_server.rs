//! The NBD server over a socket pair: the fuzzed bytes are what a client
//! sends, from the first byte of the handshake through transmission; the
//! server serves an in-memory export through the same connection code as
//! `serve-nbd` (`lsvd::nbd::server::fuzz_serve_stream`), and its replies are
//! drained until it closes.
//!
//! The first input byte selects a preamble the target sends before the
//! rest, so that mutations reach transmission: bits 0-1: 0 none (the bytes
//! are the whole conversation), 1 a GO that asks for block sizes (a strict
//! client), 2 a GO that does not, 3 `NBD_OPT_EXPORT_NAME` (both served at
//! any alignment by read-modify-write); bit 2: the export is read-only.
//!
//! Properties: no panic, no hang (the server ends when the client's bytes
//! end), no allocation over the fuzzer's limit, and the export is never
//! called with a range past its end or not aligned to its 512-byte blocks
//! (the server's checks and its read-modify-write must keep it so).
#![no_main]
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use lsvd::nbd::mem::{MemExport, Misuse};
use lsvd::nbd::server::{fuzz_serve_stream, Limits, ServeOptions};

const SIZE: usize = 1 << 20;

fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut b = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn go(block_sizes: bool) -> Vec<u8> {
    let mut d = 3u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"img");
    if block_sizes {
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
    } else {
        d.extend_from_slice(&0u16.to_be_bytes());
    }
    option(7, &d)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut client = Vec::new();
    if mode & 3 != 0 {
        // FIXED_NEWSTYLE | NO_ZEROES.
        client.extend_from_slice(&3u32.to_be_bytes());
        match mode & 3 {
            1 => client.extend(go(true)),
            2 => client.extend(go(false)),
            _ => client.extend(option(1, b"img")),
        }
    }
    client.extend_from_slice(rest);
    // Panics on any request the server should have refused.
    let export = Arc::new(MemExport::new(SIZE, mode & 4 != 0, Misuse::Panic));
    let (ours, theirs) = UnixStream::pair().unwrap();
    let opts = ServeOptions {
        name: "img".into(),
        aliases: vec![String::new()],
        read_only: false,
        limits: Limits::default(),
        metrics: None,
    };
    let server = std::thread::spawn(move || fuzz_serve_stream(export, theirs, opts));
    let mut tx = ours.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The server may close first (a violation): then the rest is moot.
        let _ = tx.write_all(&client);
        let _ = tx.shutdown(Shutdown::Write);
    });
    // Drain the replies until the server closes. (libFuzzer's timeout
    // alarm interrupts reads: EINTR must not end the drain, or the server
    // blocks on a full socket and the join below never returns.)
    let mut rx = ours;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match rx.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sender.join().unwrap();
    server.join().unwrap();
});
