//! The committed header, `include/shmbus.h`, is what cbindgen makes of
//! `src/` with `cbindgen.toml`. `SHMBUS_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8");
    let path = dir.join("include/shmbus.h");
    if std::env::var_os("SHMBUS_BLESS").is_some_and(|v| v != "0") {
        std::fs::write(&path, &generated).expect("write include/shmbus.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| committed.lines().count().min(generated.lines().count()) + 1, |i| i + 1);
        panic!(
            "include/shmbus.h is not what cbindgen makes of src/ (first difference at line {line}): \
             regenerate it with `SHMBUS_BLESS=1 cargo test -p bus-capi --test header`, and commit it"
        );
    }
}

/// The names the C API promises (its issue), so that any C program can
/// rely on them.
const REQUIRED: &[&str] = &[
    "shmbus_connect",
    "shmbus_bus_free",
    "shmbus_publisher_new",
    "shmbus_publisher_free",
    "shmbus_send",
    "shmbus_loan",
    "shmbus_loan_send",
    "shmbus_loan_free",
    "shmbus_subscribe",
    "shmbus_subscriber_free",
    "shmbus_recv",
    "shmbus_message_body",
    "shmbus_message_path",
    "shmbus_message_trace_id",
    "shmbus_message_is_redelivered",
    "shmbus_message_free",
    "shmbus_request",
    "shmbus_last_error",
];

/// Every function the header declares is documented, with a comment right
/// above it (the threading and ownership rules live there).
#[test]
fn every_function_in_the_header_is_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/shmbus.h");
    let header = std::fs::read_to_string(path).expect("include/shmbus.h");
    let lines: Vec<&str> = header.lines().collect();
    let mut functions = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.contains("shmbus_") && line.contains('(') && !line.starts_with(' ') && !line.starts_with('#') {
            functions += 1;
            let above = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or("");
            assert!(above.trim_start().starts_with("*/"), "{line}: no documentation comment above it");
        }
    }
    assert!(functions >= REQUIRED.len(), "only {functions} functions found in the header");
    for name in REQUIRED {
        assert!(header.contains(&format!("{name}(")), "{name} is not declared");
    }
}
