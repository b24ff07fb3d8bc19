//! `lsvd-crash-test`: kill a writer at random moments and verify the
//! volume's crash guarantees. All logic is in [`lsvd::crashtest`].

fn main() {
    // As the main binary does: no librados destructors under a helper
    // thread still inside librados.
    lsvd::exit_now(lsvd::crashtest::main());
}
