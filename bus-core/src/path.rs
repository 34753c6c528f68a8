//! Message addresses: `subsystem://route`.
//!
//! - `subsystem`: `[a-z0-9][a-z0-9_.-]{0,31}`; it selects the queue.
//! - `route`: the rest, UTF-8 without control characters, matched inside the
//!   subscriber. The whole path is at most [`PATH_CAPACITY`] bytes.
//!
//! Parsing allocates nothing: a [`Path`] borrows the caller's string.

use crate::layout::{PATH_CAPACITY, SUBSYSTEM_NAME_MAX};
use core::fmt;

/// A parsed, valid path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path<'a> {
    full: &'a str,
    split: usize,
}

impl<'a> Path<'a> {
    /// Parses and validates `full`.
    pub fn parse(full: &'a str) -> Result<Self, PathError> {
        if full.is_empty() {
            return Err(PathError::Empty);
        }
        if full.len() > PATH_CAPACITY {
            return Err(PathError::TooLong { len: full.len(), max: PATH_CAPACITY });
        }
        let split = separator(full).ok_or(PathError::MissingSeparator)?;
        validate_subsystem(&full[..split])?;
        // Control characters are C0 (< 0x20), DEL (0x7f) and C1 (U+0080 to
        // U+009F, encoded 0xC2 0x80..=0x9F): found on bytes, no decoding.
        let bytes = full.as_bytes();
        for pos in split + 3..bytes.len() {
            let b = bytes[pos];
            if b < 0x20 || b == 0x7f || (b == 0xc2 && matches!(bytes.get(pos + 1), Some(0x80..=0x9f))) {
                let ch = full[pos..].chars().next().unwrap_or('\0');
                return Err(PathError::ControlCharacter { pos, ch });
            }
        }
        Ok(Path { full, split })
    }

    /// The subsystem (before `://`).
    pub fn subsystem(&self) -> &'a str {
        &self.full[..self.split]
    }

    /// The route (after `://`).
    pub fn route(&self) -> &'a str {
        &self.full[self.split + 3..]
    }

    /// The whole path.
    pub fn as_str(&self) -> &'a str {
        self.full
    }
}

/// Byte offset of the `://` after the subsystem. A subsystem cannot contain
/// ':', so the first ':' is the separator's if any is.
pub fn separator(full: &str) -> Option<usize> {
    let b = full.as_bytes();
    let i = b.iter().position(|&c| c == b':')?;
    (b.get(i + 1) == Some(&b'/') && b.get(i + 2) == Some(&b'/')).then_some(i)
}

/// Checks a subsystem name: `[a-z0-9][a-z0-9_.-]{0,31}`.
pub fn validate_subsystem(name: &str) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::EmptySubsystem);
    }
    if name.len() > SUBSYSTEM_NAME_MAX {
        return Err(PathError::SubsystemTooLong { len: name.len(), max: SUBSYSTEM_NAME_MAX });
    }
    for (pos, &b) in name.as_bytes().iter().enumerate() {
        let ok = b.is_ascii_lowercase() || b.is_ascii_digit() || (pos > 0 && matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            let ch = name[pos..].chars().next().unwrap_or('\0');
            return Err(PathError::InvalidSubsystemChar { pos, ch });
        }
    }
    Ok(())
}

/// FNV-1a, 64 bit: the subsystem hash stored in routing entries and the
/// basis of body type fingerprints.
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// Why a path is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The path is the empty string.
    Empty,
    /// There is no `://` between subsystem and route.
    MissingSeparator,
    /// Nothing before `://`.
    EmptySubsystem,
    /// The subsystem is longer than allowed.
    SubsystemTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The subsystem has a character outside `[a-z0-9_.-]` (or starts with
    /// one of `_.-`).
    InvalidSubsystemChar {
        /// Byte offset.
        pos: usize,
        /// The character.
        ch: char,
    },
    /// The route contains a control character.
    ControlCharacter {
        /// Byte offset in the path.
        pos: usize,
        /// The character.
        ch: char,
    },
    /// The whole path is longer than a slot header can carry.
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The path is valid but longer than the slots of this bus can hold
    /// (it shares the slot with the header and the body).
    TooLongForSlot {
        /// Its length.
        len: usize,
        /// The most a slot of this bus holds.
        max: usize,
    },
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PathError::Empty => write!(f, "empty path: write it as subsystem://route, e.g. api://users/123"),
            PathError::MissingSeparator => {
                write!(f, "no \"://\" in the path: write it as subsystem://route, e.g. api://users/123")
            }
            PathError::EmptySubsystem => {
                write!(f, "no subsystem before \"://\": name the subsystem, e.g. api://users/123")
            }
            PathError::SubsystemTooLong { len, max } => {
                write!(f, "subsystem name is {len} bytes, longer than the {max} allowed: use a shorter name")
            }
            PathError::InvalidSubsystemChar { pos, ch } => write!(
                f,
                "subsystem name has {ch:?} at byte {pos}: use lowercase letters, digits, and (not first) '_', '.', '-'"
            ),
            PathError::ControlCharacter { pos, ch } => {
                write!(f, "route has control character {ch:?} at byte {pos}: remove it or percent-encode it")
            }
            PathError::TooLong { len, max } => {
                write!(f, "path is {len} bytes, longer than the {max} a message can carry")
            }
            PathError::TooLongForSlot { len, max } => write!(
                f,
                "path is {len} bytes, longer than the {max} a slot of this bus holds: use a shorter path, or start the daemon with a larger --slot-size"
            ),
        }
    }
}

impl std::error::Error for PathError {}

/// What is wrong with a name (of a subsystem or a group) that
/// [`validate_subsystem`] refused, worded for any name rather than for a
/// path's subsystem ("it is empty", "it has ' ' at byte 1").
pub fn name_problem(e: &PathError) -> String {
    const RULE: &str = "use lowercase letters, digits, and (not first) '_', '.', '-'";
    match *e {
        PathError::Empty | PathError::MissingSeparator | PathError::EmptySubsystem => format!("it is empty: {RULE}"),
        PathError::SubsystemTooLong { len, max } => {
            format!("it is {len} bytes, longer than the {max} allowed: use a shorter one")
        }
        PathError::InvalidSubsystemChar { pos, ch } => format!("it has {ch:?} at byte {pos}: {RULE}"),
        ref other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_splits_into_subsystem_and_route() {
        let p = Path::parse("api://users/123").unwrap();
        assert_eq!(p.subsystem(), "api");
        assert_eq!(p.route(), "users/123");
        let p = Path::parse("a.b-c_1://").unwrap();
        assert_eq!(p.subsystem(), "a.b-c_1");
        assert_eq!(p.route(), "");
        assert_eq!(Path::parse("x://a://b").unwrap().route(), "a://b");
    }

    #[test]
    fn malformed_paths_get_typed_errors() {
        assert_eq!(Path::parse(""), Err(PathError::Empty));
        assert_eq!(Path::parse("api/users"), Err(PathError::MissingSeparator));
        assert_eq!(Path::parse("://x"), Err(PathError::EmptySubsystem));
        assert_eq!(Path::parse("Api://x"), Err(PathError::InvalidSubsystemChar { pos: 0, ch: 'A' }));
        assert_eq!(Path::parse("-api://x"), Err(PathError::InvalidSubsystemChar { pos: 0, ch: '-' }));
        assert_eq!(Path::parse("a pi://x"), Err(PathError::InvalidSubsystemChar { pos: 1, ch: ' ' }));
        assert!(matches!(
            Path::parse(&format!("{}://x", "a".repeat(33))),
            Err(PathError::SubsystemTooLong { len: 33, .. })
        ));
        assert!(matches!(Path::parse(&format!("a://{}", "r".repeat(300))), Err(PathError::TooLong { .. })));
        assert_eq!(Path::parse("a://x\ny"), Err(PathError::ControlCharacter { pos: 5, ch: '\n' }));
        assert_eq!(Path::parse("a://x\u{85}"), Err(PathError::ControlCharacter { pos: 5, ch: '\u{85}' }));
        assert_eq!(Path::parse("a://x\u{7f}"), Err(PathError::ControlCharacter { pos: 5, ch: '\u{7f}' }));
        assert!(Path::parse("a://ünïcødé/€").is_ok());
        assert_eq!(Path::parse("aé://x"), Err(PathError::InvalidSubsystemChar { pos: 1, ch: 'é' }));
    }

    #[test]
    fn the_longest_valid_subsystem_and_path_are_accepted() {
        let s = "a".repeat(32);
        assert!(validate_subsystem(&s).is_ok());
        let full = format!("{s}://{}", "r".repeat(PATH_CAPACITY - 35));
        assert_eq!(full.len(), PATH_CAPACITY);
        assert!(Path::parse(&full).is_ok());
    }

    #[test]
    fn error_messages_say_what_to_do() {
        assert!(PathError::MissingSeparator.to_string().contains("subsystem://route"));
    }
}
