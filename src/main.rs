//! The `lsvd-ublk` binary: everything lives in [`lsvd::cli`].

fn main() -> std::process::ExitCode {
    lsvd::cli::main()
}
