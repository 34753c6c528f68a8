//! What crosses the host boundary besides the body: the key expression a
//! path maps to, and the attachment that carries a message's envelope.
//!
//! | bytes  | field                                                      |
//! |--------|------------------------------------------------------------|
//! | 0      | format version, [`VERSION`]                                |
//! | 1      | bits: 1 raw body, 2 redelivered, 4 error reply             |
//! | 2..4   | error kind (u16 LE; error replies only: a bus error-reply kind, `ReplyError::to_reply_parts`) |
//! | 4..8   | zero                                                       |
//! | 8..16  | body type fingerprint (u64 LE)                             |
//! | 16..24 | trace id (u64 LE)                                          |
//! | 24..32 | message id on the sending bus (u64 LE)                     |
//!
//! A sample or query without a valid attachment (a plain Zenoh program
//! putting to `shmbus/...`) is taken as a raw body that starts a trace;
//! one whose 32-byte attachment starts with [`BATCH_VERSION`] is read as a
//! batch (below), or dropped whole if it is not a valid one.
//!
//! A sample may carry several one-way messages to one key (see
//! `coalesce` in the bridge's settings): its attachment is then 32 bytes
//! of which byte 0 is [`BATCH_VERSION`], byte 1 the `batch` bit (8), bytes
//! 4..8 the number of messages (u32 LE, 1 to 1024) and every other byte
//! zero; its payload is that many frames, each a message's own 32-byte
//! attachment as above, its body length (u32 LE) and its body, and
//! nothing after the last. A sample of one message is never a batch, so a
//! plain Zenoh subscriber reads single messages as they are; only a burst
//! coalesced by a bridge needs this format. A reader that knows only
//! version 1 takes a batch for a foreign raw body, never for a typed
//! message.

use bus_client::{Envelope, ReplyError, SendError};
use zenoh::key_expr::keyexpr;

/// Attachment format version.
pub const VERSION: u8 = 1;
/// Version byte of a batch's attachment.
pub const BATCH_VERSION: u8 = 2;
/// Most messages in a batch that a reader accepts.
pub const MAX_BATCH: u32 = 1024;
/// Attachment length.
pub const LEN: usize = 32;

const RAW: u8 = 1;
const REDELIVERED: u8 = 2;
const ERROR: u8 = 4;
const BATCH: u8 = 8;

/// Bytes of a frame in a batch besides the body: attachment and length.
pub const FRAME_OVERHEAD: usize = LEN + 4;

/// A message's envelope as it travels, with its id on the sending bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Fingerprint, raw marker, trace id, redelivered flag.
    pub envelope: Envelope,
    /// The message's id on the bus it was sent on (for logs; the copy gets
    /// an id of its own).
    pub id: u64,
    /// An error reply of this kind (the body is its text): the kind of a
    /// bus's error reply ([`ReplyError::to_reply_parts`]).
    pub error: Option<u16>,
}

/// Encodes `meta`.
pub fn encode(meta: &Meta) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = VERSION;
    let e = &meta.envelope;
    b[1] = if e.raw { RAW } else { 0 } | if e.redelivered { REDELIVERED } else { 0 };
    if let Some(k) = meta.error {
        b[1] |= ERROR;
        b[2..4].copy_from_slice(&k.to_le_bytes());
    }
    b[8..16].copy_from_slice(&e.fingerprint.to_le_bytes());
    b[16..24].copy_from_slice(&e.trace_id.to_le_bytes());
    b[24..32].copy_from_slice(&meta.id.to_le_bytes());
    b
}

/// The attachment of a batch of `count` messages.
pub fn encode_batch(count: u32) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = BATCH_VERSION;
    b[1] = BATCH;
    b[4..8].copy_from_slice(&count.to_le_bytes());
    b
}

/// What a sample's attachment says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One message (or a sample from a program that is not a bridge).
    Single,
    /// A batch of this many messages (1 to [`MAX_BATCH`]).
    Batch(u32),
    /// A batch attachment that cannot be right.
    BadBatch,
}

/// Tells a batch from a single message (see the module's text).
pub fn kind(att: Option<&[u8]>) -> Kind {
    let Some(b) = att else { return Kind::Single };
    if b.len() != LEN || b[0] != BATCH_VERSION {
        return Kind::Single;
    }
    let count = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    let zero = b[2..4].iter().chain(&b[8..]).all(|&x| x == 0);
    if b[1] == BATCH && zero && (1..=MAX_BATCH).contains(&count) {
        Kind::Batch(count)
    } else {
        Kind::BadBatch
    }
}

/// Appends one message's frame to a batch's payload.
pub fn push_frame(payload: &mut Vec<u8>, meta: &Meta, body: &[u8]) {
    payload.extend_from_slice(&encode(meta));
    payload.extend_from_slice(&(body.len() as u32).to_le_bytes());
    payload.extend_from_slice(body);
}

/// The messages of a batch's payload, in order: each its envelope and
/// body, or, once the payload stops making sense (a frame cut short, or
/// frames fewer or more than `count`), one error saying what is wrong,
/// and nothing after it.
pub fn frames(payload: &[u8], count: u32) -> impl Iterator<Item = Result<(Meta, &[u8]), &'static str>> + '_ {
    let mut rest = payload;
    let mut left = count;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        if left == 0 {
            if rest.is_empty() {
                return None;
            }
            failed = true;
            return Some(Err("bytes after the last frame of a batch"));
        }
        let frame = (|| {
            let att = rest.get(..LEN)?;
            let len = u32::from_le_bytes(rest.get(LEN..FRAME_OVERHEAD)?.try_into().ok()?) as usize;
            let body = rest.get(FRAME_OVERHEAD..FRAME_OVERHEAD.checked_add(len)?)?;
            Some((att, body))
        })();
        match frame {
            Some((att, body)) => {
                rest = &rest[FRAME_OVERHEAD + body.len()..];
                left -= 1;
                Some(Ok((decode(Some(att)), body)))
            }
            None => {
                failed = true;
                Some(Err("a batch's frame is cut short"))
            }
        }
    })
}

/// Decodes an attachment; `None` (absent, another length or version) reads
/// as a raw body from a program that is not a bridge.
pub fn decode(att: Option<&[u8]>) -> Meta {
    let foreign = Meta { envelope: Envelope { raw: true, ..Envelope::default() }, id: 0, error: None };
    let Some(b) = att else { return foreign };
    if b.len() != LEN || b[0] != VERSION || b[1] & BATCH != 0 {
        return foreign;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let error = (b[1] & ERROR != 0).then(|| u16::from_le_bytes([b[2], b[3]]));
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

/// The wire kind and text of a requester-side error: a bus error reply's
/// ([`ReplyError::to_reply_parts`]), its text saying where it happened
/// when the variant does not travel.
pub fn error_of(e: &ReplyError) -> (u16, String) {
    let (kind, text) = e.to_reply_parts();
    let travels = matches!(
        e,
        ReplyError::NoRoute { .. }
            | ReplyError::Handler(_)
            | ReplyError::Panicked(_)
            | ReplyError::Unreachable(_)
            | ReplyError::Timeout(_)
            | ReplyError::Send(SendError::NoSubscriber { .. })
    );
    // Kinds are small numbers; anything else is read back as a handler's.
    let kind = u16::try_from(kind).unwrap_or(u16::MAX);
    (kind, if travels { text } else { format!("on the far host: {text}") })
}

/// The requester-side error of a wire kind and text, for request `path`.
pub fn reply_error(kind: u16, text: String, path: &str) -> ReplyError {
    ReplyError::from_reply_parts(kind.into(), text, path)
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
        let e = Meta { error: Some(3), ..m };
        assert_eq!(decode(Some(&encode(&e))).error, Some(3));
    }

    #[test]
    fn a_far_error_arrives_as_the_same_variant() {
        let no_one = ReplyError::Send(SendError::NoSubscriber { subsystem: "users".into() });
        for e in [
            ReplyError::Timeout(std::time::Duration::from_millis(1500)),
            no_one,
            ReplyError::Handler("bad id".into()),
            ReplyError::Panicked("boom".into()),
            ReplyError::NoRoute { path: "users://x".into(), message: "no route".into() },
        ] {
            let (kind, text) = error_of(&e);
            let sent = Meta { error: Some(kind), ..Meta::default() };
            let kind = decode(Some(&encode(&sent))).error.expect("an error reply");
            assert_eq!(reply_error(kind, text, "users://x"), e);
        }
        // What has no variant of its own on the wire says where it happened.
        let (kind, text) = error_of(&ReplyError::BusGone);
        assert!(
            matches!(reply_error(kind, text, "users://x"), ReplyError::Unreachable(t) if t.starts_with("on the far host: "))
        );
    }

    #[test]
    fn a_batch_reads_back_frame_by_frame_and_a_bad_one_ends_in_one_error() {
        let meta = |i: u64| Meta {
            envelope: Envelope { fingerprint: i, raw: i % 2 == 0, trace_id: 100 + i, redelivered: false, remote: true },
            id: i,
            error: None,
        };
        let bodies: [&[u8]; 3] = [b"first", b"", b"third body"];
        let mut payload = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            push_frame(&mut payload, &meta(i as u64), b);
        }
        assert_eq!(kind(Some(&encode_batch(3))), Kind::Batch(3));
        assert_eq!(kind(Some(&encode(&meta(1)))), Kind::Single, "a single message is not a batch");
        assert_eq!(kind(None), Kind::Single);
        assert_eq!(kind(Some(b"short")), Kind::Single);
        for bad in [0, MAX_BATCH + 1] {
            assert_eq!(kind(Some(&encode_batch(bad))), Kind::BadBatch, "count {bad}");
        }
        let mut stray = encode_batch(3);
        stray[20] = 1;
        assert_eq!(kind(Some(&stray)), Kind::BadBatch, "a byte that must be zero");
        // A reader of version 1 only takes a batch for a foreign raw body,
        // and so does this one a version-1 attachment with the batch bit.
        assert!(decode(Some(&encode_batch(3))).envelope.raw);
        let mut v1 = encode(&meta(1));
        v1[1] |= BATCH;
        assert!(decode(Some(&v1)).envelope.raw && decode(Some(&v1)).envelope.trace_id == 0);
        let got: Vec<_> = frames(&payload, 3).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3);
        for (i, (m, b)) in got.iter().enumerate() {
            assert_eq!((*m, *b), (meta(i as u64), bodies[i]));
        }
        // Cut anywhere: the whole frames before the cut, then one error.
        for cut in 0..payload.len() {
            let r: Vec<_> = frames(&payload[..cut], 3).collect();
            let (last, whole) = r.split_last().unwrap();
            assert!(whole.iter().all(Result::is_ok) && last.is_err(), "cut at {cut}");
        }
        // A count that disagrees with the frames.
        assert!(frames(&payload, 2).last().unwrap().is_err());
        assert!(frames(&payload, 4).last().unwrap().is_err());
        // A length that points past the end (or overflows) is not followed.
        let mut bad = payload.clone();
        bad[LEN..FRAME_OVERHEAD].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(frames(&bad, 3).next().unwrap().is_err());
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
