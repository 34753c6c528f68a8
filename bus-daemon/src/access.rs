//! Who may do what on a bus: the `[access]` section of the config.
//!
//! ```toml
//! [access]
//! allow = ["alice", "1001", "@shmbus"]   # who may connect; default: the daemon's uid and root
//! admin = ["alice"]                      # who may shut the daemon down; same default
//!
//! [access.subsystem.sensors]
//! publish = ["@sensors"]                 # who may send to it (requests included)
//! subscribe = ["alice", "@ops"]          # who may subscribe, in any group
//! ```
//!
//! A principal is a user name, a numeric uid, `@group` (a group name or a
//! numeric gid), or `*` (everyone). Names are resolved once, when the
//! config is loaded: an unknown name is a config error naming its field.
//! A peer is identified by `SO_PEERCRED` at connect (its uid and gid) and
//! the supplementary groups `/proc/PID/status` lists; every control request
//! is checked against what the connection was identified as.
//!
//! The boundary: every client of a bus maps the same read-write segment, so
//! the subsystem rules stop well-behaved clients and mistakes, not a hostile
//! process that writes the segment directly. The trust domain is the bus:
//! separate trust domains run separate buses (`--bus NAME`).

use serde::Deserialize;
use std::collections::BTreeMap;

/// A principal as written: a string (`"alice"`, `"1001"`, `"@ops"`,
/// `"*"`) or a bare number (a uid).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Written {
    /// A uid written as a number.
    Uid(u32),
    /// Anything else.
    Text(String),
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Written::Uid(u) => write!(f, "{u}"),
            Written::Text(t) => f.write_str(t),
        }
    }
}

/// The `[access]` section as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AccessFile {
    /// Who may connect.
    pub allow: Option<Vec<Written>>,
    /// Who may run admin commands.
    pub admin: Option<Vec<Written>>,
    /// Per-subsystem rules.
    #[serde(default)]
    pub subsystem: BTreeMap<String, SubsystemFile>,
}

/// One `[access.subsystem.NAME]` section as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SubsystemFile {
    /// Who may publish (absent: every allowed client).
    pub publish: Option<Vec<Written>>,
    /// Who may subscribe (absent: every allowed client).
    pub subscribe: Option<Vec<Written>>,
}

/// One resolved principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// `*`.
    Anyone,
    /// A user.
    Uid(u32),
    /// Members of a group (primary or supplementary).
    Gid(u32),
}

/// A resolved list: the field it came from (for messages), and each
/// principal with the text it was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `access.allow`, `access.subsystem.NAME.publish`, ...
    pub field: String,
    /// The principals.
    pub principals: Vec<(Principal, String)>,
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its uid (`SO_PEERCRED`).
    pub uid: u32,
    /// Its primary gid and supplementary groups.
    pub gids: Vec<u32>,
}

/// A resolved `[access]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Who may connect.
    pub allow: Rule,
    /// Who may run admin commands.
    pub admin: Rule,
    /// Per-subsystem rules.
    pub subsystems: BTreeMap<String, SubsystemRules>,
}

/// The rules of one subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemRules {
    /// Who may publish; `None`: every allowed client.
    pub publish: Option<Rule>,
    /// Who may subscribe; `None`: every allowed client.
    pub subscribe: Option<Rule>,
}

impl Rule {
    /// Resolves the principals written in `field`.
    pub fn resolve(field: &str, written: &[Written]) -> Result<Rule, String> {
        let mut principals = Vec::with_capacity(written.len());
        for w in written {
            let text = w.to_string();
            principals.push((principal(&text).map_err(|e| format!("{field}: {e}"))?, text));
        }
        Ok(Rule { field: field.to_owned(), principals })
    }

    /// The default of `allow` and `admin`: this process's uid and root.
    fn owner_and_root(field: &str) -> Rule {
        let me = nix::unistd::geteuid().as_raw();
        let mut principals = vec![(Principal::Uid(0), "root".to_owned())];
        if me != 0 {
            principals.push((Principal::Uid(me), user_name(me)));
        }
        Rule { field: field.to_owned(), principals }
    }

    /// Whether `peer` is one of the principals.
    pub fn admits(&self, peer: &Peer) -> bool {
        self.principals.iter().any(|(p, _)| match *p {
            Principal::Anyone => true,
            Principal::Uid(u) => peer.uid == u,
            Principal::Gid(g) => peer.gids.contains(&g),
        })
    }

    /// Whether the rule names nobody (it then admits no one).
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
    }

    /// `[a, b, @c]`, as written.
    pub fn listed(&self) -> String {
        let names: Vec<&str> = self.principals.iter().map(|(_, w)| w.as_str()).collect();
        format!("[{}]", names.join(", "))
    }
}

fn principal(w: &str) -> Result<Principal, String> {
    if w == "*" {
        return Ok(Principal::Anyone);
    }
    if let Some(g) = w.strip_prefix('@') {
        if let Ok(gid) = g.parse::<u32>() {
            return Ok(Principal::Gid(gid));
        }
        return match nix::unistd::Group::from_name(g) {
            Ok(Some(grp)) => Ok(Principal::Gid(grp.gid.as_raw())),
            Ok(None) => Err(format!("no group named {g:?} on this host (write @GID for a numeric group)")),
            Err(e) => Err(format!("looking up group {g:?}: {e}")),
        };
    }
    if let Ok(uid) = w.parse::<u32>() {
        return Ok(Principal::Uid(uid));
    }
    match nix::unistd::User::from_name(w) {
        Ok(Some(u)) => Ok(Principal::Uid(u.uid.as_raw())),
        Ok(None) => Err(format!("no user named {w:?} on this host (write a numeric uid, @group, or *)")),
        Err(e) => Err(format!("looking up user {w:?}: {e}")),
    }
}

/// `name (uid N)`, or `uid N` for a uid without a name.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow: Rule::owner_and_root("access.allow"),
            admin: Rule::owner_and_root("access.admin"),
            subsystems: BTreeMap::new(),
        }
    }
}

impl AccessFile {
    /// Resolves every name, checking subsystem names.
    pub fn resolve(&self) -> Result<Policy, String> {
        let mut policy = Policy::default();
        if let Some(a) = &self.allow {
            policy.allow = Rule::resolve("access.allow", a)?;
        }
        if let Some(a) = &self.admin {
            policy.admin = Rule::resolve("access.admin", a)?;
        }
        for (name, s) in &self.subsystem {
            bus_core::path::validate_subsystem(name).map_err(|e| format!("access.subsystem.{name}: {e}"))?;
            let field = |what: &str| format!("access.subsystem.{name}.{what}");
            let publish = s.publish.as_ref().map(|l| Rule::resolve(&field("publish"), l)).transpose()?;
            let subscribe = s.subscribe.as_ref().map(|l| Rule::resolve(&field("subscribe"), l)).transpose()?;
            policy.subsystems.insert(name.clone(), SubsystemRules { publish, subscribe });
        }
        Ok(policy)
    }
}

/// What a peer asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Connect at all.
    Connect,
    /// An admin command (`what` names it).
    Admin(&'a str),
    /// Send to a subsystem.
    Publish(&'a str),
    /// Subscribe to a subsystem.
    Subscribe(&'a str),
}

impl Policy {
    /// `Ok` if `peer` may do `action`; else why not, naming the rule and
    /// what to change.
    pub fn check(&self, peer: &Peer, action: Action<'_>) -> Result<(), String> {
        let (rule, what) = match action {
            Action::Connect => (Some(&self.allow), "connect to this bus".to_owned()),
            Action::Admin(cmd) => (Some(&self.admin), format!("run the admin command {cmd:?}")),
            Action::Publish(s) => {
                (self.subsystems.get(s).and_then(|r| r.publish.as_ref()), format!("publish to subsystem {s:?}"))
            }
            Action::Subscribe(s) => {
                (self.subsystems.get(s).and_then(|r| r.subscribe.as_ref()), format!("subscribe to subsystem {s:?}"))
            }
        };
        match rule {
            None => Ok(()),
            Some(r) if r.admits(peer) => Ok(()),
            Some(r) => Err(format!(
                "permission denied: user {} (uid {}) may not {what}: the daemon's {} rule lists {}; ask the bus's \
                 operator to add this user or one of its groups there",
                user_name(peer.uid),
                peer.uid,
                r.field,
                r.listed()
            )),
        }
    }

    /// Whether subsystem `s` has a publish rule (its routing entry is then
    /// marked, and publishers ask the daemon before sending to it).
    pub fn restricts_publish(&self, s: &str) -> bool {
        self.subsystems.get(s).is_some_and(|r| r.publish.is_some())
    }
}

/// The peer behind a connection: `uid` and `gid` from `SO_PEERCRED`, and
/// the supplementary groups of process `pid` (none if its status cannot be
/// read: it may have exited already).
pub fn peer(pid: i32, uid: u32, gid: u32) -> Peer {
    let mut gids = vec![gid];
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
            gids.extend(line.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    gids.sort_unstable();
    gids.dedup();
    Peer { uid, gids }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> AccessFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn principals_resolve_and_admit_by_uid_group_or_anyone() {
        let p = file("allow = [\"root\", 1001, \"@5\"]\n[subsystem.s]\npublish = [\"*\"]\nsubscribe = [\"@0\"]")
            .resolve()
            .unwrap();
        let root = Peer { uid: 0, gids: vec![0] };
        let u1001 = Peer { uid: 1001, gids: vec![1001] };
        let in5 = Peer { uid: 7, gids: vec![7, 5] };
        let other = Peer { uid: 8, gids: vec![8] };
        for ok in [&root, &u1001, &in5] {
            assert!(p.check(ok, Action::Connect).is_ok());
        }
        let e = p.check(&other, Action::Connect).unwrap_err();
        assert!(e.contains("access.allow") && e.contains("root, 1001, @5"), "{e}");
        assert!(p.check(&other, Action::Publish("s")).is_ok());
        assert!(p.check(&other, Action::Subscribe("s")).unwrap_err().contains("access.subsystem.s.subscribe"));
        assert!(p.check(&other, Action::Subscribe("open")).is_ok());
        assert!(p.restricts_publish("s") && !p.restricts_publish("open"));
    }

    #[test]
    fn defaults_admit_root_and_the_daemons_user_only() {
        let p = Policy::default();
        assert!(p.check(&Peer { uid: 0, gids: vec![] }, Action::Admin("shutdown")).is_ok());
        let me = nix::unistd::geteuid().as_raw();
        assert!(p.check(&Peer { uid: me, gids: vec![] }, Action::Connect).is_ok());
        let e = p.check(&Peer { uid: 65534, gids: vec![65534] }, Action::Admin("shutdown")).unwrap_err();
        assert!(e.contains("access.admin"), "{e}");
    }

    #[test]
    fn unknown_names_are_errors_naming_the_field() {
        let e = file("allow = [\"no-such-user-xyz\"]").resolve().unwrap_err();
        assert!(e.starts_with("access.allow:"), "{e}");
        let e = file("[subsystem.s]\nsubscribe = [\"@no-such-group-xyz\"]").resolve().unwrap_err();
        assert!(e.starts_with("access.subsystem.s.subscribe:"), "{e}");
        let e = file("[subsystem.\"Bad Name\"]\npublish = []").resolve().unwrap_err();
        assert!(e.starts_with("access.subsystem.Bad Name"), "{e}");
        assert!(toml::from_str::<AccessFile>("alow = []").is_err());
    }

    #[test]
    fn a_peers_supplementary_groups_come_from_proc() {
        let me = peer(std::process::id() as i32, 0, 4242);
        assert!(me.gids.contains(&4242));
        let gone = peer(i32::MAX, 5, 6);
        assert_eq!(gone.gids, vec![6]);
    }
}
