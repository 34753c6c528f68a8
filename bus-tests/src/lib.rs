//! Shared pieces of the multi-process tests: the sequenced message body the
//! `peer` binary sends and checks.

/// A sequenced message: who sent it and its number in that sender's stream.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
pub struct Seq {
    /// Publisher number.
    pub publisher: u32,
    /// 0, 1, 2, … per publisher.
    pub seq: u64,
}

/// Parses `key=value` arguments.
pub fn kv(args: &[String], key: &str) -> Option<String> {
    args.iter().find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(str::to_owned))
}
