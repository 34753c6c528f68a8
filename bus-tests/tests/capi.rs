//! The C API (`bus-capi`: libshmbus and shmbus.h) from real C programs,
//! compiled here with the system `cc` and run against a real daemon: one
//! that publishes, subscribes, loans in place and makes requests to a Rust
//! `Router` service, and trades messages with this (Rust) process; a C
//! subscriber killed with SIGKILL while it holds messages, which come back
//! flagged redelivered; the README's example, built through an install
//! with `pkg-config`, dynamically and statically.
//!
//! The C programs run under valgrind (`--leak-check=full`, definite leaks
//! and invalid accesses are errors) when it is installed, unless
//! `SHMBUS_TEST_VALGRIND=0`. CI installs it, and these tests fail without
//! it there (`$CI` set).

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The deadline for a C program to finish (valgrind slows them down much).
const RUN: Duration = Duration::from_secs(120);
const T: Duration = Duration::from_secs(10);

/// bus-capi's directory.
fn capi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bus-capi")
}

/// The directory holding libshmbus.so and libshmbus.a, built as this test's
/// dependency: beside the test executable (`target/<profile>/deps`), or
/// one up.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let deps = exe.parent().expect("a directory").to_owned();
    for dir in [deps.clone(), deps.parent().expect("target/<profile>").to_owned()] {
        if dir.join("libshmbus.so").exists() && dir.join("libshmbus.a").exists() {
            return dir;
        }
    }
    panic!("libshmbus.so and libshmbus.a not found in {} or its parent: is bus-capi a dependency?", deps.display());
}

/// Whether the C programs run under valgrind.
fn valgrind() -> bool {
    if std::env::var("SHMBUS_TEST_VALGRIND").is_ok_and(|v| v == "0") {
        return false;
    }
    let found = Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found || std::env::var_os("CI").is_none(), "CI runs the C programs under valgrind: install it");
    if !found {
        eprintln!("valgrind is not installed: the C programs run without it");
    }
    found
}

/// Compiles `source` into `out` with warnings as errors, with `flags` (the
/// include path and libraries) after the source.
fn cc(source: &Path, out: &Path, flags: &[String]) {
    let (st, stdout, stderr) = run_to_end(
        Command::new("cc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-g", "-o"])
            .arg(out)
            .arg(source)
            .args(flags),
    );
    assert!(st.success(), "cc {} failed:\n{stdout}{stderr}", source.display());
}

/// Compiles `source` against the header and libshmbus.so (found at run
/// time through an rpath).
fn cc_shared(source: &Path, out: &Path) {
    let lib = lib_dir();
    let include = capi_dir().join("include");
    cc(
        source,
        out,
        &[
            format!("-I{}", include.display()),
            format!("-L{}", lib.display()),
            "-lshmbus".into(),
            format!("-Wl,-rpath,{}", lib.display()),
        ],
    );
}

/// `program args…` on `bus`, under valgrind when it runs.
fn c_command(bus: &TestBus, program: &Path, args: &[&str], valgrind: bool) -> Command {
    let mut cmd = if valgrind {
        let mut c = bus.command("valgrind");
        c.args(["--quiet", "--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite"]);
        c.arg(program);
        c
    } else {
        bus.command(program.to_str().expect("a UTF-8 path"))
    };
    // The programs find libshmbus through their rpath: cargo's
    // LD_LIBRARY_PATH (which takes precedence) may name a stale copy.
    cmd.args(args).env_remove("LD_LIBRARY_PATH");
    cmd
}

/// Waits for a stdout line of `p` starting with `prefix`; if none comes,
/// fails with everything `p` printed.
fn expect_line(p: &mut Option<Proc>, prefix: &str) {
    if p.as_mut().expect("a process").saw_line(prefix, RUN) {
        return;
    }
    let p = p.take().expect("a process");
    p.signal(Signal::SIGKILL);
    let (st, out, err) = p.wait(T);
    panic!("no line {prefix:?} ({st}):\nstdout:\n{out}\nstderr:\n{err}");
}

/// Waits for `p` to exit, and requires success.
fn succeeds(p: Proc, what: &str) -> String {
    let (st, out, err) = p.wait(RUN);
    assert!(st.success(), "{what} failed ({st}):\nstdout:\n{out}\nstderr:\n{err}");
    out
}

#[test]
fn a_c_program_publishes_subscribes_loans_and_requests_across_processes() {
    let tmp = TempDir::new("capi");
    let exe = tmp.0.join("roundtrip");
    cc_shared(&capi_dir().join("tests/c/roundtrip.c"), &exe);
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "1024", "--queue-capacity", "16"]);
    let mut svc = bus.peer(&["serve", "subsystem=svc", "workers=2"]);
    svc.wait_line("serving", T);
    let rust = bus.connect();
    let fromc = rust.subscribe("fromc").unwrap();
    let mut publisher = rust.publisher().create().unwrap();

    let mut c = Some(Proc::new(c_command(&bus, &exe, &[], valgrind()).spawn().expect("start the C program")));
    expect_line(&mut c, "ready");
    publisher.send_bytes("toc://from-rust", b"rust says hi").unwrap();
    // What C sent, read from Rust as raw bytes: copied, then written in place.
    let m = fromc.recv_timeout(RUN).expect("C's first message");
    assert_eq!((m.path(), m.body_bytes().unwrap(), m.is_raw()), ("fromc://hello", &b"hi from C"[..], true));
    drop(m);
    let m = fromc.recv_timeout(RUN).expect("C's loaned message");
    assert_eq!(m.path(), "fromc://loaned");
    let text = String::from_utf8(m.body_bytes().unwrap().to_vec()).unwrap();
    assert!(text.starts_with("written in place, ") && text.ends_with(" bytes of room"), "{text}");
    drop(m);

    let out = succeeds(c.take().expect("the C program"), "the C program");
    assert!(out.contains("got toc://from-rust rust says hi\n"), "{out}");
    assert!(out.ends_with("ok\n"), "{out}");
    drop((fromc, publisher, rust));
    assert_slots_back(bus.socket());
}

#[test]
fn a_c_program_frees_its_bus_after_the_daemon_stopped_without_dying_of_sigpipe() {
    let tmp = TempDir::new("capi-outlive");
    let exe = tmp.0.join("outlive");
    cc_shared(&capi_dir().join("tests/c/outlive.c"), &exe);
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let mut c = Some(Proc::new(c_command(&bus, &exe, &[], valgrind()).spawn().expect("start the C program")));
    expect_line(&mut c, "subscribed");
    bus.daemon.signal(Signal::SIGTERM);
    let out = succeeds(c.take().expect("the C program"), "the C program");
    assert!(out.ends_with("gone\nfreed\n"), "{out}");
}

#[test]
fn a_c_subscriber_killed_holding_messages_has_them_redelivered() {
    let tmp = TempDir::new("capi-crash");
    let exe = tmp.0.join("holder");
    cc_shared(&capi_dir().join("tests/c/holder.c"), &exe);
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    // The holder runs without valgrind: it is killed, so its leaks say
    // nothing, and valgrind would only slow it.
    let holder = Proc::new(c_command(&bus, &exe, &["hold", "work", "2"], false).spawn().expect("start the holder"));
    let mut holder = Some(holder);
    expect_line(&mut holder, "subscribed");
    {
        let client = bus.connect();
        let mut p = client.publisher().create().unwrap();
        for i in 0..3 {
            p.send_bytes("work://job", format!("job-{i}").as_bytes()).unwrap();
        }
    }
    expect_line(&mut holder, "holding 2");
    holder.as_ref().expect("the holder").signal(Signal::SIGKILL);
    drop(holder);
    let redelivered = || {
        let s = bus.status();
        s["subsystems"].as_array().unwrap().iter().any(|x| x["name"] == "work" && x["redelivered"] == 2)
    };
    eventually(T, redelivered).unwrap_or_else(|| panic!("not redelivered: {}", bus.status()));

    // The next receiver of the group gets all three: the two the killed one
    // held flagged redelivered, in C too.
    let taker = Proc::new(c_command(&bus, &exe, &["take", "work", "3"], valgrind()).spawn().expect("start the taker"));
    let out = succeeds(taker, "the C taker");
    let mut got: Vec<(String, bool)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("msg work://job "))
        .map(|l| {
            let (body, flag) = l.split_once(' ').expect("BODY FLAG");
            (body.to_owned(), flag == "1")
        })
        .collect();
    got.sort();
    let flagged = got.iter().filter(|(_, r)| *r).count();
    let bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, ["job-0", "job-1", "job-2"], "{out}");
    assert_eq!(flagged, 2, "{out}");
    assert!(out.ends_with("done\n"), "{out}");
    assert_slots_back(bus.socket());
}

/// The fenced block after the line containing `marker` in the README.
fn readme_block(readme: &str, marker: &str) -> String {
    let after = &readme[readme.find(marker).unwrap_or_else(|| panic!("README: no {marker:?}"))..];
    let start = after.find("```").expect("a fenced block") + 3;
    let body = &after[start..];
    let body = &body[body.find('\n').expect("a fence line") + 1..];
    body[..body.find("```").expect("the fence's end")].to_owned()
}

#[test]
fn the_readme_example_builds_with_pkg_config_dynamically_and_statically_and_runs_as_shown() {
    let readme = std::fs::read_to_string(capi_dir().join("README.md")).expect("bus-capi/README.md");
    let source = capi_dir().join("examples/hello.c");
    let code = std::fs::read_to_string(&source).unwrap();
    assert_eq!(readme_block(&readme, "`examples/hello.c`:"), code, "the README shows another hello.c");
    let expected = readme_block(&readme, "It prints");

    // Installed as the README says, from this build.
    let tmp = TempDir::new("capi-install");
    let prefix = tmp.0.join("prefix");
    let (st, out, err) = run_to_end(Command::new("sh").arg(capi_dir().join("install.sh")).arg(&prefix).arg(lib_dir()));
    assert!(st.success(), "install.sh failed:\n{out}{err}");
    let pkg_config = |args: &[&str]| {
        let o = Command::new("pkg-config")
            .args(args)
            .arg("shmbus")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
            .output()
            .expect("pkg-config (install it: apt-get install pkgconf)");
        assert!(o.status.success(), "pkg-config {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    let mut flags = pkg_config(&["--cflags", "--libs"]);
    flags.push(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    let shared = tmp.0.join("hello");
    cc(&source, &shared, &flags);
    // Static: the archive itself, and what it needs (Libs.private).
    let mut flags = pkg_config(&["--cflags"]);
    flags.push(prefix.join("lib/libshmbus.a").display().to_string());
    flags.extend(pkg_config(&["--static", "--libs-only-l"]).into_iter().filter(|l| l != "-lshmbus"));
    let statik = tmp.0.join("hello-static");
    cc(&source, &statik, &flags);
    let (st, out, _) = run_to_end(Command::new("ldd").arg(&statik));
    assert!(st.success() && !out.contains("libshmbus"), "hello-static links libshmbus dynamically:\n{out}");

    let bus = TestBus::start(&[]);
    for (exe, valgrind) in [(&shared, valgrind()), (&statik, false)] {
        let out = succeeds(Proc::new(c_command(&bus, exe, &[], valgrind).spawn().unwrap()), "hello");
        assert_eq!(out, expected, "{} prints another text than the README shows", exe.display());
    }
}
