//! The command line, built into this package for the tests (same code as
//! `shmbus`).
fn main() -> std::process::ExitCode {
    bus_cli::cli::main()
}
