//! `lsvd-crash-test`: kill a writer at random moments and verify the
//! volume's crash guarantees. All logic is in [`lsvd::crashtest`].

fn main() {
    let code = lsvd::crashtest::main();
    // As the main binary does: no librados destructors under a helper
    // thread still inside librados.
    #[cfg(feature = "rados")]
    lsvd::backend::rados::client::exit_process(u8::try_from(code).unwrap_or(1));
    std::process::exit(code);
}
