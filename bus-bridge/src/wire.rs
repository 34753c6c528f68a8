//! What crosses the host boundary besides the body: the key expression a
//! path maps to, and the attachment that carries a message's envelope.
//!
//! | bytes  | field                                                      |
//! |--------|------------------------------------------------------------|
//! | 0      | format version, [`VERSION`]                                |
//! | 1      | bits: 1 raw body, 2 redelivered, 4 error reply             |
//! | 2..4   | error kind (u16 LE; error replies only, see [`ErrorKind`]) |
//! | 4..8   | zero                                                       |
//! | 8..16  | body type fingerprint (u64 LE)                             |
//! | 16..24 | trace id (u64 LE)                                          |
//! | 24..32 | message id on the sending bus (u64 LE)                     |
//!
//! A sample or query without a valid attachment (a plain Zenoh program
//! putting to `shmbus/...`) is taken as a raw body that starts a trace.

use bus_client::{Envelope, ReplyError};
use zenoh::key_expr::keyexpr;

/// Attachment format version.
pub const VERSION: u8 = 1;
/// Attachment length.
pub const LEN: usize = 32;

const RAW: u8 = 1;
const REDELIVERED: u8 = 2;
const ERROR: u8 = 4;

/// Kinds of error reply, as the requester's [`ReplyError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorKind {
    /// `ReplyError::NoRoute`.
    NoRoute = 1,
    /// `ReplyError::Handler`.
    Handler = 2,
    /// `ReplyError::Panicked`.
    Panicked = 3,
    /// `ReplyError::Unreachable` (and anything else, with its text).
    Unreachable = 4,
}

/// A message's envelope as it travels, with its id on the sending bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Fingerprint, raw marker, trace id, redelivered flag.
    pub envelope: Envelope,
    /// The message's id on the bus it was sent on (for logs; the copy gets
    /// an id of its own).
    pub id: u64,
    /// An error reply of this kind (the body is its text).
    pub error: Option<ErrorKind>,
}

/// Encodes `meta`.
pub fn encode(meta: &Meta) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = VERSION;
    let e = &meta.envelope;
    b[1] = if e.raw { RAW } else { 0 } | if e.redelivered { REDELIVERED } else { 0 };
    if let Some(k) = meta.error {
        b[1] |= ERROR;
        b[2..4].copy_from_slice(&(k as u16).to_le_bytes());
    }
    b[8..16].copy_from_slice(&e.fingerprint.to_le_bytes());
    b[16..24].copy_from_slice(&e.trace_id.to_le_bytes());
    b[24..32].copy_from_slice(&meta.id.to_le_bytes());
    b
}

/// Decodes an attachment; `None` (absent, another length or version) reads
/// as a raw body from a program that is not a bridge.
pub fn decode(att: Option<&[u8]>) -> Meta {
    let foreign = Meta { envelope: Envelope { raw: true, ..Envelope::default() }, id: 0, error: None };
    let Some(b) = att else { return foreign };
    if b.len() != LEN || b[0] != VERSION {
        return foreign;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let error = (b[1] & ERROR != 0).then(|| match u16::from_le_bytes([b[2], b[3]]) {
        1 => ErrorKind::NoRoute,
        2 => ErrorKind::Handler,
        3 => ErrorKind::Panicked,
        _ => ErrorKind::Unreachable,
    });
    Meta {
        envelope: Envelope {
            fingerprint: u64_at(8),
            raw: b[1] & RAW != 0,
            trace_id: u64_at(16),
            redelivered: b[1] & REDELIVERED != 0,
            remote: true,
        },
        id: u64_at(24),
        error,
    }
}

/// The wire kind and text of a requester-side error.
pub fn error_of(e: &ReplyError) -> (ErrorKind, String) {
    match e {
        ReplyError::NoRoute { message, .. } => (ErrorKind::NoRoute, message.clone()),
        ReplyError::Handler(t) => (ErrorKind::Handler, t.clone()),
        ReplyError::Panicked(t) => (ErrorKind::Panicked, t.clone()),
        ReplyError::Unreachable(t) => (ErrorKind::Unreachable, t.clone()),
        other => (ErrorKind::Unreachable, format!("on the far host: {other}")),
    }
}

/// The requester-side error of a wire kind and text, for request `path`.
pub fn reply_error(kind: ErrorKind, text: String, path: &str) -> ReplyError {
    match kind {
        ErrorKind::NoRoute => ReplyError::NoRoute { path: path.to_owned(), message: text },
        ErrorKind::Handler => ReplyError::Handler(text),
        ErrorKind::Panicked => ReplyError::Panicked(text),
        ErrorKind::Unreachable => ReplyError::Unreachable(text),
    }
}

/// Checks a key prefix: one or more non-empty chunks, no wildcard or
/// reserved character.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    check_chunks(prefix).map_err(|m| format!("{prefix:?}: {m}"))
}

fn check_chunks(s: &str) -> Result<(), String> {
    if s.is_empty() || s.split('/').any(str::is_empty) {
        return Err("empty chunk (a leading, trailing or doubled '/')".into());
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '*' | '$' | '?' | '#')) {
        return Err(format!("{c:?} cannot be part of a Zenoh key expression"));
    }
    keyexpr::new(s).map(|_| ()).map_err(|e| e.to_string())
}

/// The key expression of `path` (`subsystem://route`):
/// `prefix/subsystem/route`, or `prefix/subsystem` for an empty route.
/// Routes that Zenoh cannot carry (an empty chunk as in `a//b` or `a/`, a
/// `*`, `$`, `?` or `#`) are an error saying why.
pub fn key_of(prefix: &str, subsystem: &str, route: &str) -> Result<String, String> {
    if route.is_empty() {
        return Ok(format!("{prefix}/{subsystem}"));
    }
    check_chunks(route).map_err(|m| format!("the route {route:?} cannot cross to another host: {m}"))?;
    Ok(format!("{prefix}/{subsystem}/{route}"))
}

/// The key expression matching every route of `subsystem`.
pub fn subsystem_keys(prefix: &str, subsystem: &str) -> String {
    format!("{prefix}/{subsystem}/**")
}

/// The path a key expression under `prefix` stands for, if it is one.
pub fn path_of(prefix: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (subsystem, route) = rest.split_once('/').unwrap_or((rest, ""));
    bus_core::path::validate_subsystem(subsystem).ok()?;
    Some(format!("{subsystem}://{route}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_crosses_unchanged() {
        let m = Meta {
            envelope: Envelope { fingerprint: 0xfeed, raw: false, trace_id: 77, redelivered: true, remote: true },
            id: 1 << 40 | 5,
            error: None,
        };
        assert_eq!(decode(Some(&encode(&m))), m);
        let e = Meta { error: Some(ErrorKind::Panicked), ..m };
        assert_eq!(decode(Some(&encode(&e))).error, Some(ErrorKind::Panicked));
    }

    #[test]
    fn a_foreign_sample_is_a_raw_body() {
        for att in [None, Some(&b"hello"[..]), Some(&[9u8; LEN][..])] {
            let m = decode(att);
            assert!(m.envelope.raw && m.envelope.trace_id == 0 && m.error.is_none());
        }
    }

    #[test]
    fn paths_and_keys_map_both_ways() {
        assert_eq!(key_of("shmbus", "users", "by-id/42").unwrap(), "shmbus/users/by-id/42");
        assert_eq!(key_of("a/b", "s", "").unwrap(), "a/b/s");
        assert_eq!(path_of("shmbus", "shmbus/users/by-id/42").unwrap(), "users://by-id/42");
        assert_eq!(path_of("a/b", "a/b/s").unwrap(), "s://");
        assert_eq!(path_of("shmbus", "shmbusx/s/r"), None);
        assert_eq!(path_of("shmbus", "shmbus/Bad/r"), None);
        for bad in ["a//b", "a/", "/a", "x*", "$a", "a?b", "a#"] {
            assert!(key_of("shmbus", "s", bad).is_err(), "{bad}");
        }
        assert!(check_prefix("site-1/shmbus").is_ok());
        assert!(check_prefix("").is_err() && check_prefix("a/**").is_err());
    }
}
