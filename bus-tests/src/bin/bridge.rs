//! The bridge, built into this package so tests can start it through
//! `CARGO_BIN_EXE_bridge` (the same code as `shmbus-bridge`).
fn main() -> std::process::ExitCode {
    bus_bridge::cli::main()
}
