//! Who may do what: the daemon's `[access]` policy, checked with the
//! peer's credentials; the runtime directory and the daemon's uid checked
//! before anyone trusts them; `shmbusd --check-config`. The tests that run
//! a client or the daemon as another user (`setpriv`) need root, as in CI;
//! run as anyone else, they say so and check nothing.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const NOBODY: &str = "65534";

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: switching users needs root (CI runs the tests as root)");
    false
}

/// A bus whose socket another uid can reach, run with `config`.
fn bus_with(config: &str) -> TestBus {
    let dir = TempDir::new("acl-cfg");
    let path = dir.0.join("shmbusd.toml");
    std::fs::write(&path, config).unwrap();
    let bus = TestBus::start(&["--config", path.to_str().unwrap(), "--socket-mode", "0666"]);
    std::fs::set_permissions(&bus.dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    bus
}

/// `shmbus ARGS` as `uid`, to completion (deadline 30 s).
fn cli_as(bus: &TestBus, uid: &str, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", uid, "--regid", uid, "--clear-groups", CLI])
        .args(args)
        .env("SHMBUS_SOCKET", bus.socket())
        .env_remove("SHMBUS_BUS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Proc::new(c.spawn().expect("setpriv")).wait(Duration::from_secs(30))
}

const POLICY: &str = r#"
durable = ["secret"]
[access]
allow = ["root", "65534"]
admin = ["root"]
[access.subsystem.secret]
publish = ["root"]
subscribe = ["@0"]
[access.subsystem.private]
publish = ["root"]
"#;

#[test]
fn the_policy_refuses_connect_subscribe_publish_and_shutdown_to_those_it_does_not_list() {
    if !root() {
        return;
    }
    let bus = bus_with(POLICY);

    // A user not in `allow`: refused at connect, exit status 1, told why.
    let (st, _, err) = cli_as(&bus, "65533", &["status"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("access.allow") && err.contains("65533"), "{err}");

    // An allowed user, on a subsystem whose rules do not list it.
    let (st, _, err) = cli_as(&bus, NOBODY, &["listen", "secret", "--count", "1", "--timeout", "5s"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("access.subsystem.secret.subscribe"), "{err}");
    let (st, _, err) = cli_as(&bus, NOBODY, &["send", "secret://x", "hi"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("access.subsystem.secret.publish"), "{err}");
    let (st, _, err) = cli_as(&bus, NOBODY, &["shutdown"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("access.admin"), "{err}");
    // Refused whether or not anyone subscribes (nobody does to `private`):
    // a refused publisher does not learn that from the error.
    let (st, _, err) = cli_as(&bus, NOBODY, &["send", "private://x", "hi"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("access.subsystem.private.publish"), "{err}");
    let (st, _, err) = cli_as(&bus, NOBODY, &["request", "secret://x", "hi"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("access.subsystem.secret.publish"), "{err}");
    // Nothing of that reached the durable queue.
    let root_bus = bus.connect();
    let secret = root_bus.subscribe("secret").expect("root may subscribe");
    assert!(secret.try_recv().unwrap().is_none(), "a refused publish was queued");

    // The allowed cases: an open subsystem both ways, and root on the
    // restricted one.
    let open = root_bus.subscribe("open").unwrap();
    let (st, _, err) = cli_as(&bus, NOBODY, &["send", "open://x", "from nobody"]);
    assert!(st.success(), "{err}");
    let m = open.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(m.body_bytes().unwrap(), b"from nobody");
    drop(m);
    let mut p = root_bus.publisher().create().unwrap();
    p.send_bytes("secret://y", b"from root").unwrap();
    let m = secret.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(m.body_bytes().unwrap(), b"from root");
    drop(m);
    let (st, out, err) = std::thread::scope(|s| {
        let l = s.spawn(|| cli_as(&bus, NOBODY, &["listen", "open", "--count", "1", "--timeout", "20s"]));
        assert!(
            eventually(Duration::from_secs(10), || bus.status()["subsystems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "open" && s["subscribers"] == 2))
            .is_some(),
            "nobody's listener never subscribed"
        );
        p.send_bytes("open://z", b"to nobody").unwrap();
        l.join().unwrap()
    });
    assert!(st.success(), "{err}");
    assert!(out.contains("to nobody"), "{out}");

    // Root may shut the daemon down.
    drop((open, secret, p, root_bus));
    let (st, _, err) = bus.cli(&["shutdown"]);
    assert!(st.success(), "{err}");
}

#[test]
fn the_daemon_refuses_a_runtime_directory_others_could_tamper_with() {
    let dir = TempDir::new("rundir");
    let run = |sub: &str| run_to_end(Command::new(DAEMON).arg("--socket").arg(dir.0.join(sub).join("bus.sock")));
    let open = dir.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (st, _, err) = run("open");
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("refusing the runtime directory") && err.contains("others can write"), "{err}");
    assert!(!open.join("bus.sock").exists());

    if root() {
        let theirs = dir.0.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(65534.into()), Some(65534.into())).unwrap();
        let (st, _, err) = run("theirs");
        assert_eq!(st.code(), Some(1), "{err}");
        assert!(err.contains("belongs to") && err.contains("65534"), "{err}");
    }
}

#[test]
fn a_client_refuses_a_daemon_run_by_another_user_unless_told_to_trust_it() {
    if !root() {
        return;
    }
    let dir = TempDir::new("their-daemon");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sockdir = dir.0.join("run");
    std::fs::create_dir(&sockdir).unwrap();
    nix::unistd::chown(&sockdir, Some(65534.into()), Some(65534.into())).unwrap();
    let socket = sockdir.join("bus.sock");
    let mut c = Command::new("setpriv");
    c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", DAEMON, "--socket-mode", "0666", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut daemon = Proc::new(c.spawn().unwrap());
    daemon.wait_line("shmbusd: ready", Duration::from_secs(10));

    let e = bus_client::Bus::builder().socket(&socket).connect().err().expect("an untrusted daemon");
    assert!(matches!(e, bus_client::ConnectError::UntrustedDaemon { uid: 65534, .. }), "{e}");
    assert!(e.to_string().contains("SHMBUS_DAEMON_UID=65534"), "{e}");
    let run = |env: Option<&str>| {
        let mut c = Command::new(CLI);
        c.args(["status"]).env("SHMBUS_SOCKET", &socket).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(v) = env {
            c.env("SHMBUS_DAEMON_UID", v);
        }
        Proc::new(c.spawn().unwrap()).wait(Duration::from_secs(30))
    };
    let (st, _, err) = run(None);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("uid 65534"), "{err}");
    // Trusted explicitly, it serves us (root is in its default allow list).
    let bus = bus_client::Bus::builder().socket(&socket).trust_daemon_uid(65534).connect().expect("trusted");
    assert!(bus.status().is_ok());
    drop(bus);
    let (st, out, err) = run(Some("65534"));
    assert!(st.success(), "{err}");
    assert!(out.contains("slots"), "{out}");
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_field_of_a_bad_one() {
    let dir = TempDir::new("check-config");
    let check = |text: &str| {
        let path = dir.0.join("c.toml");
        std::fs::write(&path, text).unwrap();
        run_to_end(Command::new(DAEMON).arg("--check-config").arg(&path))
    };
    let (st, out, err) = check(POLICY);
    assert!(st.success(), "{err}");
    assert!(out.contains("valid") && out.contains("subsystem secret: publish [root]"), "{out}");
    for (text, field) in [
        ("slot-size = 100", "slot-size"),
        ("slotz = 1", "slotz"),
        ("socket-mode = \"9\"", "socket-mode"),
        ("[access]\nallow = [\"no-such-user-here\"]", "access.allow"),
        ("[access.subsystem.s]\npublish = [\"@no-such-group-here\"]", "access.subsystem.s.publish"),
        ("[access]\nadmn = []", "admn"),
        ("[[group]]\nsubsystem = \"s\"\nname = \"default\"", "reserved"),
    ] {
        let (st, out, err) = check(text);
        assert_eq!(st.code(), Some(1), "{text}: {out}");
        assert!(err.contains(field), "{text}: {err}");
    }
    // The same group twice is one group, and the check says so.
    let (st, out, err) =
        check("[[group]]\nsubsystem = \"s\"\nname = \"g\"\n[[group]]\nsubsystem = \"s\"\nname = \"g\"\n");
    assert!(st.success(), "{err}");
    assert_eq!(out.matches("durable group g of s").count(), 1, "{out}");
    assert!(out.contains("warning: group g of s is declared more than once"), "{out}");
    let (st, _, err) = run_to_end(Command::new(DAEMON).args(["--check-config", "/nonexistent/shmbusd.toml"]));
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn check_config_into_a_closed_pipe_exits_quietly() {
    // As `shmbusd --check-config FILE | head -1` once head has gone.
    let dir = TempDir::new("check-config-pipe");
    let path = dir.0.join("c.toml");
    std::fs::write(&path, POLICY).unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--check-config").arg(&path).stdout(Stdio::from(w)).stderr(Stdio::piped());
    let (st, _, err) = Proc::new(cmd.spawn().unwrap()).wait(Duration::from_secs(30));
    assert!(st.success(), "{st:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn connections_the_policy_refuses_cannot_keep_a_resuming_client_out() {
    if !root() {
        return;
    }
    let dir = TempDir::new("acl-resume");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.0.join("bus.sock");
    let config = dir.0.join("shmbusd.toml");
    std::fs::write(&config, "resume-grace = \"10s\"\nmax-clients = 4\n[access]\nallow = [\"root\"]\n").unwrap();
    let start = || {
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--config").arg(&config).arg("--socket").arg(&socket).args(["--socket-mode", "0666"]);
        Proc::new(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
    };
    let mut first = start();
    first.wait_line("shmbusd: ready", Duration::from_secs(20));
    // The client that will bring the segment back, in a process of its own.
    let listener = listening(&socket, "kept", None);
    listener.signal(nix::sys::signal::Signal::SIGSTOP);
    first.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let mut second = start();
    // A user the policy refuses holds more hellos than the daemon keeps
    // while it waits (max-clients + 16).
    let mut flood = Proc::new(
        Command::new("setpriv")
            .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", PEER, "hellos", "n=40", "hold_ms=15000"])
            .env("SHMBUS_SOCKET", &socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let holding = flood.wait_line("holding", Duration::from_secs(20));
    assert!(holding.trim_end().ends_with("40"), "{holding}");
    // Refused with the policy's reason, as a serving daemon refuses.
    let refused = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", CLI, "status"])
        .env("SHMBUS_SOCKET", &socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (st, _, err) = Proc::new(refused).wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("refused the connection") && err.contains("allow"), "{err}");
    listener.signal(nix::sys::signal::Signal::SIGCONT);
    let ready = second.wait_line("shmbusd: ready", Duration::from_secs(20));
    assert!(ready.contains("resuming=1"), "the client was kept out: {ready}");
    drop(flood);
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let mut p = bus.publisher().create().unwrap();
    assert!(eventually(Duration::from_secs(10), || p.send_bytes("kept://x", b"in").is_ok()).is_some());
    let (st, out, err) = listener.wait(Duration::from_secs(20));
    assert!(st.success() && out.contains("in"), "{out} {err}");
}

#[test]
fn a_subscriber_whose_subscription_was_revoked_does_not_resume_into_it() {
    if !root() {
        return;
    }
    let dir = TempDir::new("acl-revoke");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.0.join("bus.sock");
    let config = dir.0.join("shmbusd.toml");
    let head = "resume-grace = \"10s\"\n[access]\nallow = [\"root\", \"65534\"]\n";
    std::fs::write(&config, head).unwrap();
    let start = || {
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--config").arg(&config).arg("--socket").arg(&socket).args(["--socket-mode", "0666"]);
        let mut d = Proc::new(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
        d.wait_line("shmbusd: ready", Duration::from_secs(20));
        d
    };
    let first = start();
    let listener = listening(&socket, "watch", Some(NOBODY));
    // The operator revokes it and restarts the daemon.
    std::fs::write(&config, format!("{head}[access.subsystem.watch]\nsubscribe = [\"root\"]\n")).unwrap();
    first.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let _second = start();
    // Until it tries to resume, the client goes on using the segment, as
    // every client does while no daemon runs; it tries within a second.
    std::thread::sleep(Duration::from_secs(2));
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let mut p = bus.publisher().create().unwrap();
    for _ in 0..20 {
        let _ = p.send_bytes("watch://x", b"after the revocation");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, out, err) = listener.wait(Duration::from_secs(30));
    assert!(!out.contains("after the revocation"), "a revoked subscriber still received: {out}");
    assert!(!st.success(), "{out} {err}");
    assert!(err.contains("no longer allowed") || err.contains("gone"), "{err}");
}

#[test]
fn a_client_asking_for_what_the_policy_refuses_in_a_loop_cannot_flood_the_log() {
    // No other user needed: the rule admits only uid 65534.
    if nix::unistd::getuid().as_raw() == 65534 {
        return;
    }
    let mut bus = bus_with("[access.subsystem.closed]\nsubscribe = [\"65534\"]\n");
    let client = bus.connect();
    for _ in 0..300 {
        let Err(e) = client.subscribe("closed") else { panic!("subscribed against the policy") };
        assert!(e.to_string().contains("access.subsystem.closed.subscribe"), "{e}");
    }
    // Ten lines in the first second; the rest are counted, and the count is
    // logged within about a second (by the next refusal or the audit).
    let mut logged = 0;
    let summary = bus.daemon.saw_err_line(Duration::from_secs(10), |l| {
        logged += l.contains("subscribe refused by the access policy") as usize;
        l.contains("more requests refused by the access policy and protocol errors")
    });
    assert!(summary, "the count of held-back lines was not logged");
    assert!(logged <= 20, "{logged} refusals logged one by one");
    // The client's connection still works.
    assert!(client.subscribe("open").is_ok());
}
