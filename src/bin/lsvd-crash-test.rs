//! `lsvd-crash-test`: kill a writer at random moments and verify the
//! volume's crash guarantees. All logic is in [`lsvd::crashtest`].

fn main() {
    std::process::exit(lsvd::crashtest::main());
}
