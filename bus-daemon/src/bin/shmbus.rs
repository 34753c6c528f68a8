//! `shmbus`: see [`bus_daemon::cli::main`].
fn main() -> std::process::ExitCode {
    bus_daemon::cli::main()
}
