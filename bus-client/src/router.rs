//! [`Router`]: handlers for the routes of one subsystem, matched with
//! `matchit` (a radix tree compiled at registration; matching a route
//! allocates nothing for up to a few parameters).
//!
//! Routes are the part of a path after `://`: static (`users/list`), with
//! parameters (`users/{id}`), or catch-all (`files/{*rest}`). A static route
//! wins over a parameter or catch-all one that also matches; routes of the
//! same shape (`users/{id}` and `users/{name}`) and malformed routes are
//! refused when registered.

use crate::handler::{Context, HandlerError};
use std::fmt;

/// A handler: gets the message, its route parameters and a way to reply.
pub type Handler = Box<dyn Fn(&mut Context<'_, '_>) -> Result<(), HandlerError> + Send + Sync + 'static>;

/// The routes of one subsystem.
pub struct Router {
    subsystem: String,
    tree: matchit::Router<usize>,
    handlers: Vec<(String, Handler)>,
}

/// Why a route could not be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// The subsystem name is not valid.
    InvalidSubsystem(bus_core::PathError),
    /// The pattern is malformed.
    Invalid {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// The pattern overlaps one registered before.
    Overlap {
        /// The pattern.
        pattern: String,
        /// The route it overlaps.
        with: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::InvalidSubsystem(e) => write!(f, "invalid subsystem for a router: {e}"),
            RouteError::Invalid { pattern, reason } => write!(
                f,
                "route {pattern:?} is not valid ({reason}): use segments like users/list, users/{{id}} or files/{{*rest}}"
            ),
            RouteError::Overlap { pattern, with } => {
                write!(f, "route {pattern:?} overlaps {with:?}, registered before: make them distinct")
            }
        }
    }
}

impl std::error::Error for RouteError {}

impl Router {
    /// An empty router for `subsystem`.
    pub fn new(subsystem: &str) -> Result<Router, RouteError> {
        bus_core::path::validate_subsystem(subsystem).map_err(RouteError::InvalidSubsystem)?;
        Ok(Router { subsystem: subsystem.to_owned(), tree: matchit::Router::new(), handlers: Vec::new() })
    }

    /// Registers `handler` for `pattern`.
    pub fn route(
        mut self,
        pattern: &str,
        handler: impl Fn(&mut Context<'_, '_>) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Result<Router, RouteError> {
        insert(&mut self.tree, pattern, self.handlers.len())?;
        self.handlers.push((pattern.to_owned(), Box::new(handler)));
        Ok(self)
    }

    /// The subsystem.
    pub fn subsystem(&self) -> &str {
        &self.subsystem
    }

    /// The registered patterns, in order.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.handlers.iter().map(|(p, _)| p.as_str())
    }

    /// Matches `route`: the handler and its parameters, or `None`.
    pub fn at<'r, 'p>(&'r self, route: &'p str) -> Option<(&'r Handler, matchit::Params<'r, 'p>)> {
        let m = self.tree.at(route).ok()?;
        Some((&self.handlers[*m.value].1, m.params))
    }
}

/// The first parameter name `pattern` gives twice (`a/{id}/{id}`), if any.
/// Parameters are `{name}` and `{*name}`; `{{` and `}}` are literal braces.
fn repeated_parameter(pattern: &str) -> Option<&str> {
    let mut names: Vec<&str> = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        if rest[open..].starts_with("{{") {
            rest = &rest[open + 2..];
            continue;
        }
        let Some(close) = rest[open..].find('}') else { break };
        let name = rest[open + 1..open + close].trim_start_matches('*');
        if !name.is_empty() && names.contains(&name) {
            return Some(name);
        }
        names.push(name);
        rest = &rest[open + close + 1..];
    }
    None
}

/// Adds `pattern` to `tree` as handler `index`, or says why it cannot be
/// (the rules of [`Router::route`], shared by the asynchronous router).
pub(crate) fn insert(tree: &mut matchit::Router<usize>, pattern: &str, index: usize) -> Result<(), RouteError> {
    if pattern.chars().any(char::is_control) || pattern.len() > bus_core::PATH_CAPACITY {
        return Err(RouteError::Invalid {
            pattern: pattern.to_owned(),
            reason: "control character or too long".into(),
        });
    }
    tree.insert(pattern, index).map_err(|e| match e {
        matchit::InsertError::Conflict { with } => RouteError::Overlap { pattern: pattern.to_owned(), with },
        other => RouteError::Invalid { pattern: pattern.to_owned(), reason: other.to_string() },
    })?;
    // After matchit's own checks, so that its reasons come first. On this
    // error the router (and its tree, which took the route) is dropped.
    match repeated_parameter(pattern) {
        Some(name) => Err(RouteError::Invalid {
            pattern: pattern.to_owned(),
            reason: format!(
                "parameter {name:?} is named twice (only the first would be reachable by name): rename one"
            ),
        }),
        None => Ok(()),
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("subsystem", &self.subsystem)
            .field("routes", &self.patterns().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &mut Context<'_, '_>) -> Result<(), HandlerError> {
        Ok(())
    }

    #[test]
    fn static_parameter_and_catch_all_routes_match_with_their_parameters() {
        let r = Router::new("api")
            .unwrap()
            .route("users/list", ok)
            .unwrap()
            .route("users/{id}", ok)
            .unwrap()
            .route("files/{*rest}", ok)
            .unwrap();
        assert!(r.at("users/list").is_some_and(|(_, p)| p.is_empty()));
        assert_eq!(r.at("users/123").unwrap().1.get("id"), Some("123"));
        assert_eq!(r.at("files/a/b/c.txt").unwrap().1.get("rest"), Some("a/b/c.txt"));
        assert!(r.at("users").is_none());
        assert!(r.at("orders/1").is_none());
        assert_eq!(r.patterns().collect::<Vec<_>>(), ["users/list", "users/{id}", "files/{*rest}"]);
    }

    #[test]
    fn overlapping_and_malformed_routes_are_refused_at_registration() {
        let r = Router::new("api").unwrap().route("users/{id}", ok).unwrap();
        let e = r.route("users/{name}", ok).err().unwrap();
        assert!(matches!(&e, RouteError::Overlap { pattern, .. } if pattern == "users/{name}"), "{e}");
        let r = Router::new("api").unwrap();
        assert!(matches!(r.route("users/{", ok), Err(RouteError::Invalid { .. })));
        let r = Router::new("api").unwrap();
        assert!(matches!(r.route("files/{*rest}/more", ok), Err(RouteError::Invalid { .. })));
        assert!(matches!(Router::new("Bad Name"), Err(RouteError::InvalidSubsystem(_))));
        // A parameter named twice could be read by name only once.
        for twice in ["a/{id}/{id}", "a/{id}/b/{*id}"] {
            let e = Router::new("api").unwrap().route(twice, ok).err().unwrap();
            assert!(e.to_string().contains("parameter \"id\" is named twice"), "{twice}: {e}");
        }
        // Different names, and literal braces, are fine.
        let r = Router::new("api").unwrap().route("a/{id}/{sub}", ok).unwrap().route("b/{{id}}/{id}", ok).unwrap();
        assert_eq!(r.at("a/1/2").unwrap().1.get("sub"), Some("2"));
    }
}
