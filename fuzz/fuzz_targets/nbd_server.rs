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
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use lsvd::nbd::server::{fuzz_serve_stream, Limits, ServeOptions};
use lsvd::nbd::Export;
use lsvd::{Error, ErrorKind, Result};

const SIZE: usize = 1 << 20;

struct MemExport {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemExport {
    fn check(&self, offset: u64, len: u64) -> Result<()> {
        assert!(
            offset % 512 == 0 && len % 512 == 0,
            "the server passed a misaligned request: {offset} + {len}"
        );
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= SIZE as u64),
            "the server passed a request past the end: {offset} + {len}"
        );
        if len == 0 {
            // As `Volume` may: an empty request is refused.
            return Err(Error::new(ErrorKind::InvalidInput, "empty".to_string()));
        }
        Ok(())
    }

    fn write_check(&self, offset: u64, len: u64) -> Result<()> {
        assert!(!self.read_only, "the server wrote to a read-only export");
        self.check(offset, len)
    }
}

impl Export for MemExport {
    fn size_bytes(&self) -> u64 {
        SIZE as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn min_block(&self) -> u32 {
        512
    }
    fn flush_covers_all_connections(&self) -> bool {
        true
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.lock().unwrap()[offset as usize..][..buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_check(offset, data.len() as u64)?;
        self.data.lock().unwrap()[offset as usize..][..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write(offset, data)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
        self.write_zeroes(offset, len, false)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
        self.write_check(offset, len)?;
        self.data.lock().unwrap()[offset as usize..][..len as usize].fill(0);
        Ok(())
    }
}

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
    let export = Arc::new(MemExport {
        data: Mutex::new(vec![0u8; SIZE]),
        read_only: mode & 4 != 0,
    });
    let (ours, theirs) = UnixStream::pair().unwrap();
    let opts = ServeOptions {
        name: "img".into(),
        aliases: vec![String::new()],
        read_only: false,
        limits: Limits::default(),
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
