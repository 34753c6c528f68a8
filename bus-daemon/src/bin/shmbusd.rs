//! `shmbusd`: see [`bus_daemon::cli::daemon_main`].
fn main() -> std::process::ExitCode {
    bus_daemon::cli::daemon_main()
}
