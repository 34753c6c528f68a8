//! `shmbus`: see [`bus_cli::cli::main`].
fn main() -> std::process::ExitCode {
    bus_cli::cli::main()
}
