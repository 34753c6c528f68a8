//! The daemon, built into this package so tests can start it through
//! `CARGO_BIN_EXE_daemon` (the same code as `shmbusd`).
fn main() -> std::process::ExitCode {
    bus_daemon::cli::daemon_main()
}
