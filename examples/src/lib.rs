//! Types shared by the shmbus example programs.

/// The demo's message: 64 bytes once archived.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize)]
pub struct Tick {
    /// 0, 1, 2, …
    pub seq: u64,
    /// Filler standing for a real payload.
    pub payload: [u8; 56],
}

/// A greeting, for the publish/subscribe pair.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize)]
pub struct Greeting {
    /// Who greets.
    pub from: String,
    /// Number of the greeting.
    pub n: u32,
}

/// What the service example's clients ask for.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize)]
pub struct UserQuery {
    /// Ask for details.
    pub verbose: bool,
}

/// What the service example replies.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize)]
pub struct User {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Whether details were asked for.
    pub verbose: bool,
}
