//! `shmbus-bridge`: see [`bus_bridge`] and `--help`.
fn main() -> std::process::ExitCode {
    bus_bridge::cli::main()
}
