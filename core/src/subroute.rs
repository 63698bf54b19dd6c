//! Routing inside a service, as WAGI does it: a module's `_routes` export names sub-routes
//! below the service's prefix, each run by an export of its own.
//!
//! `_routes` writes one line per route, `PATH EXPORT`: `/hello hello` matches exactly
//! `/NAME/hello`; `/files/... serve` matches `/NAME/files` and everything below
//! `/NAME/files/`. A path no sub-route matches runs the service's own entrypoint. Where
//! several match, the most specific wins (WAGI's documented rule): an exact route over any
//! wildcard, a longer wildcard over a shorter one, and between equals the one listed first.
//!
//! Pure: parsing the text and matching a path, no I/O.

use std::sync::Arc;

use thiserror::Error;

/// Most sub-routes one module may declare.
pub const MAX_SUB_ROUTES: usize = 256;

/// Longest route path or export name, in bytes.
pub const MAX_ROUTE_LEN: usize = 1024;

/// The export WAGI calls once when a module loads to learn its sub-routes.
pub const ROUTES_EXPORT: &str = "_routes";

/// A path pattern relative to the service's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    /// Exactly this path.
    Exact(String),
    /// This path and everything below it (written `PATH/...`; `/...` is everything).
    Wildcard(String),
}

impl RoutePattern {
    /// Parses `/a/b` or `/a/...`.
    pub fn parse(text: &str) -> Result<Self, RoutesError> {
        if !text.starts_with('/') {
            return Err(RoutesError::NotAbsolute(text.to_owned()));
        }
        Ok(match text.strip_suffix("/...") {
            Some(prefix) => RoutePattern::Wildcard(prefix.to_owned()),
            None => RoutePattern::Exact(text.to_owned()),
        })
    }

    /// The path the pattern is anchored at (without `/...`).
    pub fn path(&self) -> &str {
        match self {
            RoutePattern::Exact(p) | RoutePattern::Wildcard(p) => p,
        }
    }

    /// How `path_info` (the raw path below the service prefix) splits under this
    /// pattern: the part matched, and the rest (WAGI's `PATH_INFO`); `None` if it does not
    /// match.
    pub fn split<'a>(&self, path_info: &'a str) -> Option<(&'a str, &'a str)> {
        match self {
            RoutePattern::Exact(p) => (path_info == p).then_some((path_info, "")),
            RoutePattern::Wildcard(p) => {
                let rest = path_info.strip_prefix(p.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then(|| path_info.split_at(p.len()))
            }
        }
    }
}

impl std::fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePattern::Exact(p) => f.write_str(p),
            RoutePattern::Wildcard(p) => write!(f, "{p}/..."),
        }
    }
}

/// One sub-route: a pattern and the export that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRoute {
    /// The pattern, relative to the service prefix.
    pub pattern: RoutePattern,
    /// The exported function run for it.
    pub entrypoint: Arc<str>,
}

/// A service's sub-routes, in the order the module listed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubRoutes(Vec<SubRoute>);

/// What a path below a service's prefix resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMatch<'a> {
    /// The sub-route, or `None` for the service's own entrypoint.
    pub route: Option<&'a SubRoute>,
    /// The matched part of the path, appended to the prefix for `SCRIPT_NAME`.
    pub matched: &'a str,
    /// The rest, the guest's `PATH_INFO`.
    pub rest: &'a str,
}

/// Why a module's `_routes` output was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RoutesError {
    /// A line is not `PATH EXPORT`.
    #[error("route line `{0}` is not `PATH EXPORT`")]
    BadLine(String),
    /// A path does not start with `/`.
    #[error("route path `{0}` does not start with `/`")]
    NotAbsolute(String),
    /// A path or export name is longer than [`MAX_ROUTE_LEN`].
    #[error("a route path or export name is longer than {MAX_ROUTE_LEN} bytes")]
    TooLong,
    /// More than [`MAX_SUB_ROUTES`] routes.
    #[error("more than {MAX_SUB_ROUTES} routes")]
    TooMany,
    /// The text is not UTF-8.
    #[error("routes are not UTF-8 text")]
    NotText,
}

impl SubRoutes {
    /// Builds the table from routes in the order given.
    pub fn new(routes: Vec<SubRoute>) -> Result<Self, RoutesError> {
        if routes.len() > MAX_SUB_ROUTES {
            return Err(RoutesError::TooMany);
        }
        Ok(Self(routes))
    }

    /// Parses what a module's `_routes` export wrote: one `PATH EXPORT` per line, blank
    /// lines skipped.
    pub fn parse(output: &[u8]) -> Result<Self, RoutesError> {
        let text = std::str::from_utf8(output).map_err(|_| RoutesError::NotText)?;
        let mut routes = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut parts = line.split_whitespace();
            let (Some(path), Some(export), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(RoutesError::BadLine(line.chars().take(80).collect()));
            };
            if path.len() > MAX_ROUTE_LEN || export.len() > MAX_ROUTE_LEN {
                return Err(RoutesError::TooLong);
            }
            if routes.len() == MAX_SUB_ROUTES {
                return Err(RoutesError::TooMany);
            }
            routes.push(SubRoute {
                pattern: RoutePattern::parse(path)?,
                entrypoint: export.into(),
            });
        }
        Ok(Self(routes))
    }

    /// The routes, in the order listed.
    pub fn routes(&self) -> &[SubRoute] {
        &self.0
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Resolves a raw path below the service prefix (`""`, `"/"`, `"/a/b"`).
    pub fn resolve<'a>(&'a self, path_info: &'a str) -> SubMatch<'a> {
        let mut best: Option<(&SubRoute, &str, &str)> = None;
        for route in &self.0 {
            let Some((matched, rest)) = route.pattern.split(path_info) else {
                continue;
            };
            let better = match best {
                None => true,
                Some((b, _, _)) => specificity(&route.pattern) > specificity(&b.pattern),
            };
            if better {
                best = Some((route, matched, rest));
            }
        }
        match best {
            Some((route, matched, rest)) => SubMatch {
                route: Some(route),
                matched,
                rest,
            },
            None => SubMatch {
                route: None,
                matched: "",
                rest: path_info,
            },
        }
    }
}

/// Orders matching patterns: any exact one over every wildcard, then longer over shorter.
fn specificity(pattern: &RoutePattern) -> (bool, usize) {
    match pattern {
        RoutePattern::Exact(p) => (true, p.len()),
        RoutePattern::Wildcard(p) => (false, p.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn routes(text: &str) -> SubRoutes {
        SubRoutes::parse(text.as_bytes()).unwrap()
    }

    fn export<'a>(r: &'a SubRoutes, path: &'a str) -> (Option<&'a str>, &'a str, &'a str) {
        let m = r.resolve(path);
        (m.route.map(|r| &*r.entrypoint), m.matched, m.rest)
    }

    #[test]
    fn parses_wagi_lines() {
        let r = routes("/hello hello\n\n  /files/... serve  \r\n");
        assert_eq!(
            r.routes()[0].pattern,
            RoutePattern::Exact("/hello".to_owned())
        );
        assert_eq!(
            r.routes()[1].pattern,
            RoutePattern::Wildcard("/files".to_owned())
        );
        assert_eq!(&*r.routes()[1].entrypoint, "serve");
        assert!(SubRoutes::parse(b"").unwrap().is_empty());
    }

    #[test]
    fn refuses_bad_lines() {
        let err = |t: &str| SubRoutes::parse(t.as_bytes()).unwrap_err();
        assert_eq!(err("/hello"), RoutesError::BadLine("/hello".to_owned()));
        assert!(matches!(err("/a b c"), RoutesError::BadLine(_)));
        assert_eq!(err("hello x"), RoutesError::NotAbsolute("hello".to_owned()));
        assert_eq!(
            SubRoutes::parse(b"/\xff x").unwrap_err(),
            RoutesError::NotText
        );
        let many: String = (0..=MAX_SUB_ROUTES).map(|i| format!("/r{i} e\n")).collect();
        assert_eq!(err(&many), RoutesError::TooMany);
        assert_eq!(
            err(&format!("/{} e", "a".repeat(MAX_ROUTE_LEN))),
            RoutesError::TooLong
        );
    }

    #[test]
    fn exact_routes_match_only_themselves() {
        let r = routes("/hello hello");
        assert_eq!(export(&r, "/hello"), (Some("hello"), "/hello", ""));
        assert_eq!(export(&r, "/hello/"), (None, "", "/hello/"));
        assert_eq!(export(&r, "/hellox"), (None, "", "/hellox"));
        assert_eq!(export(&r, ""), (None, "", ""));
    }

    #[test]
    fn wildcards_match_their_path_and_below_but_not_longer_names() {
        let r = routes("/files/... serve");
        assert_eq!(export(&r, "/files"), (Some("serve"), "/files", ""));
        assert_eq!(export(&r, "/files/"), (Some("serve"), "/files", "/"));
        assert_eq!(export(&r, "/files/a/b"), (Some("serve"), "/files", "/a/b"));
        assert_eq!(export(&r, "/filesx"), (None, "", "/filesx"));
    }

    #[test]
    fn the_most_specific_route_wins() {
        let r = routes("/... all\n/a/... a\n/a/b/... ab\n/a/b exact\n/a/... second");
        assert_eq!(export(&r, "/a/b"), (Some("exact"), "/a/b", ""));
        assert_eq!(export(&r, "/a/b/c"), (Some("ab"), "/a/b", "/c"));
        assert_eq!(export(&r, "/a/x"), (Some("a"), "/a", "/x"));
        assert_eq!(export(&r, "/z"), (Some("all"), "", "/z"));
        assert_eq!(export(&r, ""), (Some("all"), "", ""));
    }

    #[test]
    fn patterns_print_as_written() {
        for text in ["/a", "/a/...", "/..."] {
            assert_eq!(RoutePattern::parse(text).unwrap().to_string(), text);
        }
    }

    proptest! {
        /// Whatever resolves, the matched part and the rest put back together are the path,
        /// and a matched wildcard's rest is empty or starts a new segment.
        #[test]
        fn a_match_splits_the_path(
            table in proptest::collection::vec(("/[ab]{0,3}(/\\.\\.\\.)?", "[a-z]{1,3}"), 0..6),
            path in "(/[ab]{0,2}){0,3}",
        ) {
            let text: String = table.iter().map(|(p, e)| format!("{p} {e}\n")).collect();
            let Ok(r) = SubRoutes::parse(text.as_bytes()) else { return Ok(()); };
            let m = r.resolve(&path);
            prop_assert_eq!(format!("{}{}", m.matched, m.rest), path.clone());
            if let Some(route) = m.route {
                match &route.pattern {
                    RoutePattern::Exact(_) => prop_assert!(m.rest.is_empty()),
                    RoutePattern::Wildcard(_) => {
                        prop_assert!(m.rest.is_empty() || m.rest.starts_with('/'))
                    }
                }
            }
        }
    }
}
