//! What a service is called and which paths it owns: [`ServiceName`] and [`ServiceRoute`].
//! The table that maps a request path to a service is [`crate::router`].

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::subroute::{MAX_ROUTE_LEN, RoutePattern};

/// The prefix reserved for the management API; never a service name.
pub const RESERVED_PREFIX: &str = "services";

/// Longest service name.
pub const MAX_NAME_LEN: usize = 63;

/// A validated service name: `[a-z0-9][a-z0-9_-]*`, at most [`MAX_NAME_LEN`] bytes, not
/// [`RESERVED_PREFIX`]. Unless its route is set otherwise, the service answers `/NAME`,
/// `/NAME/` and everything below.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(Arc<str>);

/// Why a string is not a valid service name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("service name is empty")]
    Empty,
    /// The name is longer than the limit.
    #[error("service name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// The name has a character outside `[a-z0-9_-]` or does not start with `[a-z0-9]`.
    #[error("service name must match [a-z0-9][a-z0-9_-]*")]
    InvalidCharacter,
    /// The name is the reserved management prefix.
    #[error("`{RESERVED_PREFIX}` is reserved for the management API")]
    Reserved,
}

impl ServiceName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let bytes = name.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(NameError::Empty);
        };
        if bytes.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let ok_first = first.is_ascii_lowercase() || first.is_ascii_digit();
        let ok_rest = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if !ok_first || !ok_rest {
            return Err(NameError::InvalidCharacter);
        }
        if name == RESERVED_PREFIX {
            return Err(NameError::Reserved);
        }
        Ok(Self(name.into()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The path a service owns, in WAGI's notation: `/a/b` is exactly that path, `/a/b/...` is
/// `/a/b` and everything below it, `/...` is every path. A service answers its route and,
/// where its module declares sub-routes (`_routes`), those joined below it: an exact route
/// `/x` with a sub-route `/y/...` also answers `/x/y` and below.
///
/// A service's route is `/NAME/...` unless one is set. Routes are compared by their
/// [base](ServiceRoute::base), the path without a trailing `/...` or `/`: no two services
/// may share one, so `/a` and `/a/...` and `/a/` cannot belong to different services, while
/// `/a` and `/a/b/...` can (the longer wins where both match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute(RoutePattern);

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The route does not start with `/`.
    #[error("route `{0}` must start with `/`")]
    NotAbsolute(String),
    /// The route is longer than [`MAX_ROUTE_LEN`].
    #[error("a route is at most {MAX_ROUTE_LEN} bytes")]
    TooLong,
    /// The route has a character a path cannot carry unescaped, or an empty, `.` or `..`
    /// segment.
    #[error(
        "route `{0}` must be a plain path: visible ASCII without `?`, `#` or `%`, no empty, `.` or `..` segment"
    )]
    NotPlain(String),
    /// The route is, or is below, the management API's `/services`.
    #[error("route `{0}` is reserved for the management API (`/{RESERVED_PREFIX}`)")]
    Reserved(String),
}

impl ServiceRoute {
    /// The default route of service `name`: `/NAME` and everything below.
    pub fn of_name(name: &ServiceName) -> Self {
        Self(RoutePattern::Wildcard(format!("/{name}")))
    }

    /// Parses WAGI's notation: `/x` exactly, `/x/...` (or `/...`) and below.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let pattern = RoutePattern::parse(text)
            .map_err(|_| RouteError::NotAbsolute(text.chars().take(80).collect()))?;
        Self::checked(pattern, text)
    }

    /// Parses frenezulo's notation, where a route is a prefix: `/x` is `/x` and everything
    /// below, as `/x/...` is; `/` is every path.
    pub fn prefix(text: &str) -> Result<Self, RouteError> {
        if text.ends_with("/...") {
            return Self::parse(text);
        }
        let path = text.strip_suffix('/').unwrap_or(text);
        if !text.starts_with('/') {
            return Err(RouteError::NotAbsolute(text.chars().take(80).collect()));
        }
        Self::checked(RoutePattern::Wildcard(path.to_owned()), text)
    }

    fn checked(pattern: RoutePattern, text: &str) -> Result<Self, RouteError> {
        if text.len() > MAX_ROUTE_LEN {
            return Err(RouteError::TooLong);
        }
        let shown = || text.chars().take(80).collect::<String>();
        let path = pattern.path();
        let plain = path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'));
        // An exact route may end in `/` (WAGI's `/x/`); no other segment may be empty.
        let inner = match &pattern {
            RoutePattern::Exact(p) => p.strip_suffix('/').unwrap_or(p),
            RoutePattern::Wildcard(p) => p,
        };
        let segments_ok = inner
            .split('/')
            .skip(1)
            .all(|s| !s.is_empty() && s != "." && s != "..");
        if !plain || !segments_ok {
            return Err(RouteError::NotPlain(shown()));
        }
        let reserved = format!("/{RESERVED_PREFIX}");
        let base = base_of(&pattern);
        if base == reserved || base.starts_with(&format!("{reserved}/")) {
            return Err(RouteError::Reserved(shown()));
        }
        Ok(Self(pattern))
    }

    /// The pattern.
    pub fn pattern(&self) -> &RoutePattern {
        &self.0
    }

    /// Whether the route is one path only (and its sub-routes), not everything below it.
    pub fn is_exact(&self) -> bool {
        matches!(self.0, RoutePattern::Exact(_))
    }

    /// A sub-route as the full route it answers: `/x` with `/y/...` is `/x/y/...`.
    pub fn join(&self, sub: &RoutePattern) -> RoutePattern {
        let base = self.base();
        match sub {
            RoutePattern::Exact(p) => RoutePattern::Exact(format!("{base}{p}")),
            RoutePattern::Wildcard(p) => RoutePattern::Wildcard(format!("{base}{p}")),
        }
    }

    /// The path the route and its sub-routes are anchored at, without a trailing `/...`
    /// or `/`: `""` for `/` and `/...`, `/x` for `/x`, `/x/` and `/x/...`.
    pub fn base(&self) -> &str {
        base_of(&self.0)
    }
}

fn base_of(pattern: &RoutePattern) -> &str {
    match pattern {
        RoutePattern::Exact(p) => p.strip_suffix('/').unwrap_or(p),
        RoutePattern::Wildcard(p) => p,
    }
}

impl fmt::Display for ServiceRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(ServiceName::new("shop").is_ok());
        assert!(ServiceName::new("a0_b-c").is_ok());
        assert!(ServiceName::new("9lives").is_ok());
        assert_eq!(ServiceName::new(""), Err(NameError::Empty));
        assert_eq!(ServiceName::new("Shop"), Err(NameError::InvalidCharacter));
        assert_eq!(ServiceName::new("-x"), Err(NameError::InvalidCharacter));
        assert_eq!(ServiceName::new("a/b"), Err(NameError::InvalidCharacter));
        assert_eq!(ServiceName::new("services"), Err(NameError::Reserved));
        assert_eq!(ServiceName::new(&"a".repeat(64)), Err(NameError::TooLong));
        assert!(ServiceName::new(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn wagi_routes_are_exact_or_wildcard() {
        let r = |t: &str| ServiceRoute::parse(t).unwrap();
        assert!(r("/x").is_exact());
        assert!(r("/").is_exact());
        assert!(r("/x/").is_exact());
        assert!(!r("/x/...").is_exact());
        assert!(!r("/...").is_exact());
        for (text, base) in [
            ("/", ""),
            ("/...", ""),
            ("/x", "/x"),
            ("/x/", "/x"),
            ("/x/...", "/x"),
            ("/api/users/...", "/api/users"),
        ] {
            assert_eq!(r(text).base(), base, "{text}");
            assert_eq!(r(text).to_string(), text, "{text}");
        }
    }

    #[test]
    fn frenezulo_routes_are_prefixes() {
        let p = |t: &str| ServiceRoute::prefix(t).unwrap().to_string();
        assert_eq!(p("/shop"), "/shop/...");
        assert_eq!(p("/shop/"), "/shop/...");
        assert_eq!(p("/shop/..."), "/shop/...");
        assert_eq!(p("/api/users"), "/api/users/...");
        assert_eq!(p("/"), "/...");
        let name = ServiceName::new("shop").unwrap();
        assert_eq!(
            ServiceRoute::of_name(&name),
            ServiceRoute::prefix("/shop").unwrap()
        );
    }

    #[test]
    fn sub_routes_join_below_the_base() {
        let join = |route: &str, sub: &str| {
            let sub = RoutePattern::parse(sub).unwrap();
            ServiceRoute::parse(route).unwrap().join(&sub).to_string()
        };
        assert_eq!(join("/", "/exact"), "/exact");
        assert_eq!(join("/x/", "/exact"), "/x/exact");
        assert_eq!(join("/x", "/w/..."), "/x/w/...");
        assert_eq!(join("/x/...", "/..."), "/x/...");
        assert_eq!(join("/...", "/..."), "/...");
    }

    #[test]
    fn bad_routes_are_refused() {
        for text in ["", "shop", "x/..."] {
            assert!(
                matches!(ServiceRoute::parse(text), Err(RouteError::NotAbsolute(_))),
                "{text}"
            );
            assert!(
                matches!(ServiceRoute::prefix(text), Err(RouteError::NotAbsolute(_))),
                "{text}"
            );
        }
        for text in [
            "/a//b", "//", "/a/../b", "/./a", "/a b", "/a?b", "/a#b", "/a%2f", "/a//...", "/é",
        ] {
            assert!(
                matches!(ServiceRoute::parse(text), Err(RouteError::NotPlain(_))),
                "{text}"
            );
        }
        for text in [
            "/services",
            "/services/",
            "/services/...",
            "/services/x",
            "/services/x/...",
        ] {
            assert!(
                matches!(ServiceRoute::parse(text), Err(RouteError::Reserved(_))),
                "{text}"
            );
            assert!(
                matches!(ServiceRoute::prefix(text), Err(RouteError::Reserved(_))),
                "{text}"
            );
        }
        assert!(ServiceRoute::parse("/servicesx").is_ok());
        assert!(ServiceRoute::parse("/x/services").is_ok());
        assert_eq!(
            ServiceRoute::parse(&format!("/{}", "a".repeat(MAX_ROUTE_LEN))),
            Err(RouteError::TooLong)
        );
    }
}
