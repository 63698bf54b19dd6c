//! The route table: which service, and which of its exports, answers a request path, with
//! the CGI path variables WAGI derives from the match.
//!
//! Pure: a table of [`ServiceRoute`]s and their sub-routes, and a lookup. The management
//! API's `/services` comes first and cannot be shadowed; then the service whose route base
//! is the longest prefix of the path (at a segment boundary) and matches it wins. A
//! wildcard route (`/x/...`) matches everything below its base, resolving its sub-routes
//! inside; an exact route (`/x`) matches its own path, and below it only what one of its
//! sub-routes matches, so a lookup that finds an exact route without a matching sub-route
//! goes on to shorter bases (a root service, `/...`, answers what nothing else claims).
//!
//! A lookup costs one hash per distinct base length no longer than the path, whatever the
//! path's depth.

use std::collections::{BTreeMap, HashMap};

use crate::route::{RESERVED_PREFIX, ServiceName, ServiceRoute};
use crate::subroute::{RoutePattern, SubRoute, SubRoutes};

/// Where a request path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// To a service.
    Service(Routed<'a>),
    /// To the management API; `path_info` is the path below `/services`.
    Management {
        /// The path below `/services`, raw.
        path_info: &'a str,
    },
    /// Nowhere.
    NotFound,
}

/// A path matched to a service, with WAGI's view of the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed<'a> {
    /// The service.
    pub service: &'a ServiceName,
    /// The sub-route matched, or `None` for the service's own entrypoint.
    pub sub_route: Option<&'a SubRoute>,
    /// CGI `SCRIPT_NAME`: the matched path (`/` for a wildcard at the root).
    pub script_name: &'a str,
    /// CGI `PATH_INFO` before decoding (WAGI's `X_RAW_PATH_INFO`): the rest of the path.
    pub path_info: &'a str,
    /// Whether the route matched is a wildcard (WAGI's `X_MATCHED_ROUTE` ends in `/...`).
    pub wildcard: bool,
}

/// One service's claim on the paths at its route's base.
#[derive(Debug, Clone)]
struct Claim {
    service: ServiceName,
    route: ServiceRoute,
    sub_routes: SubRoutes,
}

/// The services' routes, by base.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Claims by base; more than one only if two services were given the same base (the
    /// registry refuses that, but a cluster race can briefly publish both): the first by
    /// name that matches wins, on every node alike.
    by_base: HashMap<String, Vec<Claim>>,
    /// Each service's base, to find its claim.
    bases: HashMap<ServiceName, String>,
    /// How many bases have each length: the only prefix lengths worth looking up.
    lengths: BTreeMap<usize, usize>,
}

impl Router {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `service`'s route and sub-routes, replacing what it had.
    pub fn insert(&mut self, service: &ServiceName, route: ServiceRoute, sub_routes: SubRoutes) {
        self.remove(service);
        let base = route.base().to_owned();
        *self.lengths.entry(base.len()).or_default() += 1;
        let claims = self.by_base.entry(base.clone()).or_default();
        let at = claims.partition_point(|c| c.service < *service);
        claims.insert(
            at,
            Claim {
                service: service.clone(),
                route,
                sub_routes,
            },
        );
        self.bases.insert(service.clone(), base);
    }

    /// Forgets `service`'s route.
    pub fn remove(&mut self, service: &ServiceName) {
        let Some(base) = self.bases.remove(service) else {
            return;
        };
        if let Some(claims) = self.by_base.get_mut(&base) {
            claims.retain(|c| c.service != *service);
            if claims.is_empty() {
                self.by_base.remove(&base);
            }
        }
        if let Some(n) = self.lengths.get_mut(&base.len()) {
            *n = n
                .checked_sub(1)
                .expect("the router's count of bases of a length went below zero");
            if *n == 0 {
                self.lengths.remove(&base.len());
            }
        }
    }

    /// Whether `service` has a route.
    pub(crate) fn has(&self, service: &ServiceName) -> bool {
        self.bases.contains_key(service)
    }

    /// How many services have a route.
    pub(crate) fn service_count(&self) -> usize {
        self.bases.len()
    }

    /// Panics if the table disagrees with itself: each service's base holds its claim and
    /// no other claim, claims are sorted by service, and `lengths` counts the claims by base length.
    pub(crate) fn check_invariants(&self) {
        let mut claims_total = 0;
        let mut lengths = BTreeMap::new();
        for (base, claims) in &self.by_base {
            assert!(!claims.is_empty(), "router: empty claim list at {base:?}");
            assert!(
                claims.windows(2).all(|w| w[0].service < w[1].service),
                "router: claims at {base:?} not sorted by service"
            );
            for c in claims {
                assert_eq!(
                    self.bases.get(&c.service),
                    Some(base),
                    "router: claim of {} at {base:?} is not its base",
                    c.service
                );
                assert_eq!(
                    c.route.base(),
                    base,
                    "router: claim filed under another base"
                );
            }
            claims_total += claims.len();
            *lengths.entry(base.len()).or_insert(0usize) += claims.len();
        }
        assert_eq!(
            claims_total,
            self.bases.len(),
            "router: claims and services' bases disagree"
        );
        assert_eq!(lengths, self.lengths, "router: base length counts are off");
    }

    /// Where `path` (without the query) goes.
    pub fn route<'a>(&'a self, path: &'a str) -> Destination<'a> {
        if !path.starts_with('/') {
            return Destination::NotFound;
        }
        if let Some(rest) = path[1..].strip_prefix(RESERVED_PREFIX)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return Destination::Management { path_info: rest };
        }
        let bytes = path.as_bytes();
        for &len in self.lengths.range(..=path.len()).rev().map(|(len, _)| len) {
            // A base ends at a segment boundary: the path's end or before a `/`.
            if len < path.len() && bytes[len] != b'/' {
                continue;
            }
            let Some(claims) = self.by_base.get(&path[..len]) else {
                continue;
            };
            if let Some(routed) = claims.iter().find_map(|c| c.routed(path, len)) {
                return Destination::Service(routed);
            }
        }
        Destination::NotFound
    }
}

impl Claim {
    /// How `path`, whose first `base` bytes are this claim's base, matches it, if it does.
    fn routed<'a>(&'a self, path: &'a str, base: usize) -> Option<Routed<'a>> {
        let exact = match self.route.pattern() {
            RoutePattern::Exact(p) if p == path => {
                return Some(self.own(false, path, ""));
            }
            RoutePattern::Exact(_) => true,
            RoutePattern::Wildcard(_) => false,
        };
        let below = &path[base..];
        let sub = self.sub_routes.resolve(below);
        let Some(route) = sub.route else {
            // Below an exact route, only its sub-routes answer.
            return (!exact).then(|| self.own(true, root_or(&path[..base]), below));
        };
        Some(Routed {
            service: &self.service,
            sub_route: Some(route),
            script_name: root_or(&path[..base + sub.matched.len()]),
            path_info: sub.rest,
            wildcard: matches!(route.pattern, RoutePattern::Wildcard(_)),
        })
    }

    /// A match of the service's own route, run by its own entrypoint.
    fn own<'a>(&'a self, wildcard: bool, script_name: &'a str, path_info: &'a str) -> Routed<'a> {
        Routed {
            service: &self.service,
            sub_route: None,
            script_name,
            path_info,
            wildcard,
        }
    }
}

/// WAGI names the root `/`, where the matched part of the path is empty.
fn root_or(script_name: &str) -> &str {
    if script_name.is_empty() {
        "/"
    } else {
        script_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(n: &str) -> ServiceName {
        ServiceName::new(n).unwrap()
    }

    /// A table from `(name, WAGI route, _routes text)`.
    fn table(services: &[(&str, &str, &str)]) -> Router {
        let mut r = Router::new();
        for (n, route, subs) in services {
            r.insert(
                &name(n),
                ServiceRoute::parse(route).unwrap(),
                SubRoutes::parse(subs.as_bytes()).unwrap(),
            );
        }
        r
    }

    /// `(service, export or "", SCRIPT_NAME, PATH_INFO, X_MATCHED_ROUTE)`, WAGI's way.
    fn seen(r: &Router, path: &str) -> Option<(String, String, String, String, String)> {
        match r.route(path) {
            Destination::Service(m) => {
                let matched = match (m.wildcard, m.script_name) {
                    (true, "/") => "/...".to_owned(),
                    (true, s) => format!("{s}/..."),
                    (false, s) => s.to_owned(),
                };
                Some((
                    m.service.to_string(),
                    m.sub_route.map_or("", |s| &s.entrypoint).to_owned(),
                    m.script_name.to_owned(),
                    m.path_info.to_owned(),
                    matched,
                ))
            }
            _ => None,
        }
    }

    fn s(
        service: &str,
        export: &str,
        script: &str,
        info: &str,
        matched: &str,
    ) -> Option<(String, String, String, String, String)> {
        Some((
            service.to_owned(),
            export.to_owned(),
            script.to_owned(),
            info.to_owned(),
            matched.to_owned(),
        ))
    }

    #[test]
    fn a_default_route_answers_its_prefix_and_below() {
        let mut r = Router::new();
        r.insert(
            &name("shop"),
            ServiceRoute::of_name(&name("shop")),
            SubRoutes::default(),
        );
        assert_eq!(seen(&r, "/shop"), s("shop", "", "/shop", "", "/shop/..."));
        assert_eq!(seen(&r, "/shop/"), s("shop", "", "/shop", "/", "/shop/..."));
        assert_eq!(
            seen(&r, "/shop/a/b"),
            s("shop", "", "/shop", "/a/b", "/shop/...")
        );
        assert_eq!(seen(&r, "/shopping"), None);
        assert_eq!(seen(&r, "/"), None);
        assert_eq!(seen(&r, "//shop"), None);
        assert_eq!(r.route("*"), Destination::NotFound);
        assert_eq!(r.route(""), Destination::NotFound);
    }

    #[test]
    fn the_management_api_cannot_be_shadowed() {
        let r = table(&[("root", "/...", ""), ("x", "/servicesx/...", "")]);
        assert_eq!(
            r.route("/services"),
            Destination::Management { path_info: "" }
        );
        assert_eq!(
            r.route("/services/shop"),
            Destination::Management { path_info: "/shop" }
        );
        assert_eq!(
            seen(&r, "/servicesx"),
            s("x", "", "/servicesx", "", "/servicesx/...")
        );
        assert_eq!(
            seen(&r, "/servicesy"),
            s("root", "", "/", "/servicesy", "/...")
        );
    }

    #[test]
    fn the_longest_base_wins_and_the_root_takes_the_rest() {
        let r = table(&[
            ("root", "/...", ""),
            ("api", "/api/...", ""),
            ("users", "/api/users/...", ""),
        ]);
        assert_eq!(
            seen(&r, "/api/users/7"),
            s("users", "", "/api/users", "/7", "/api/users/...")
        );
        assert_eq!(
            seen(&r, "/api/usersx"),
            s("api", "", "/api", "/usersx", "/api/...")
        );
        assert_eq!(seen(&r, "/api"), s("api", "", "/api", "", "/api/..."));
        assert_eq!(seen(&r, "/"), s("root", "", "/", "/", "/..."));
        assert_eq!(seen(&r, "/other/x"), s("root", "", "/", "/other/x", "/..."));
    }

    #[test]
    fn an_exact_route_answers_its_path_only() {
        let r = table(&[("x", "/x", ""), ("slash", "/y/", "")]);
        assert_eq!(seen(&r, "/x"), s("x", "", "/x", "", "/x"));
        assert_eq!(seen(&r, "/x/"), None);
        assert_eq!(seen(&r, "/x/a"), None);
        assert_eq!(seen(&r, "/y/"), s("slash", "", "/y/", "", "/y/"));
        assert_eq!(seen(&r, "/y"), None);
    }

    /// WAGI's own `dynamic_routes_set_path_env_vars_correctly_module_map` cases: four
    /// modules with the sub-routes of its `dynamic-routes` test module.
    #[test]
    fn wagi_dynamic_routes() {
        let subs = "/exact on_exact\n/wildcard/... on_wildcard\n/main _start";
        let r = table(&[
            ("root", "/", subs),
            ("exactparent", "/exactparent", subs),
            ("exactparentslash", "/exactparentslash/", subs),
            ("wildcardparent", "/wildcardparent/...", subs),
        ]);
        let cases = [
            ("/", s("root", "", "/", "", "/")),
            ("/exact", s("root", "on_exact", "/exact", "", "/exact")),
            (
                "/exactparent",
                s("exactparent", "", "/exactparent", "", "/exactparent"),
            ),
            (
                "/exactparent/exact",
                s(
                    "exactparent",
                    "on_exact",
                    "/exactparent/exact",
                    "",
                    "/exactparent/exact",
                ),
            ),
            (
                "/exactparent/wildcard/fizz/buzz",
                s(
                    "exactparent",
                    "on_wildcard",
                    "/exactparent/wildcard",
                    "/fizz/buzz",
                    "/exactparent/wildcard/...",
                ),
            ),
            (
                "/exactparentslash/exact",
                s(
                    "exactparentslash",
                    "on_exact",
                    "/exactparentslash/exact",
                    "",
                    "/exactparentslash/exact",
                ),
            ),
            (
                "/exactparentslash/wildcard/fizz/buzz",
                s(
                    "exactparentslash",
                    "on_wildcard",
                    "/exactparentslash/wildcard",
                    "/fizz/buzz",
                    "/exactparentslash/wildcard/...",
                ),
            ),
            (
                "/wildcardparent",
                s(
                    "wildcardparent",
                    "",
                    "/wildcardparent",
                    "",
                    "/wildcardparent/...",
                ),
            ),
            (
                "/wildcardparent/fizz/buzz",
                s(
                    "wildcardparent",
                    "",
                    "/wildcardparent",
                    "/fizz/buzz",
                    "/wildcardparent/...",
                ),
            ),
            (
                "/wildcardparent/exact",
                s(
                    "wildcardparent",
                    "on_exact",
                    "/wildcardparent/exact",
                    "",
                    "/wildcardparent/exact",
                ),
            ),
            (
                "/wildcardparent/wildcard/fizz/buzz",
                s(
                    "wildcardparent",
                    "on_wildcard",
                    "/wildcardparent/wildcard",
                    "/fizz/buzz",
                    "/wildcardparent/wildcard/...",
                ),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(seen(&r, path), want, "{path}");
        }
        // What no route claims is not found, as in WAGI.
        for path in [
            "/nothing",
            "/exactparent/",
            "/exactparent/other",
            "/exactparentslash",
        ] {
            assert_eq!(seen(&r, path), None, "{path}");
        }
    }

    #[test]
    fn sub_routes_of_a_shorter_route_do_not_take_a_longer_one() {
        // A root service declaring `/shop/...` cannot take paths the service at /shop owns.
        let r = table(&[("root", "/", "/shop/... steal"), ("shop", "/shop/...", "")]);
        assert_eq!(
            seen(&r, "/shop/cart"),
            s("shop", "", "/shop", "/cart", "/shop/...")
        );
        let r = table(&[("root", "/", "/shop/... steal")]);
        assert_eq!(
            seen(&r, "/shop/cart"),
            s("root", "steal", "/shop", "/cart", "/shop/...")
        );
    }

    #[test]
    fn routes_are_replaced_and_removed() {
        let shop = name("shop");
        let mut r = Router::new();
        r.insert(
            &shop,
            ServiceRoute::prefix("/a").unwrap(),
            SubRoutes::default(),
        );
        r.insert(
            &shop,
            ServiceRoute::prefix("/b/c").unwrap(),
            SubRoutes::default(),
        );
        assert_eq!(seen(&r, "/a"), None);
        assert_eq!(seen(&r, "/b/c/d"), s("shop", "", "/b/c", "/d", "/b/c/..."));
        r.remove(&shop);
        assert_eq!(seen(&r, "/b/c/d"), None);
        assert!(r.by_base.is_empty() && r.bases.is_empty() && r.lengths.is_empty());
    }

    #[test]
    fn two_services_on_one_base_resolve_alike_on_every_node() {
        let r = table(&[("b", "/x/...", ""), ("a", "/x/...", "")]);
        assert_eq!(seen(&r, "/x/1").unwrap().0, "a");
        let r = table(&[("a", "/x/...", ""), ("b", "/x/...", "")]);
        assert_eq!(seen(&r, "/x/1").unwrap().0, "a");
    }

    proptest! {
        /// Whatever matches, SCRIPT_NAME and PATH_INFO put back together are the path (WAGI
        /// writes the root as `/`), the service's base is a segment prefix of the path, and
        /// an exact match of the service's own route leaves nothing over.
        #[test]
        fn a_match_splits_the_path(
            routes in proptest::collection::vec("(/[ab]{1,2}){0,2}(/|/\\.\\.\\.)?", 1..5),
            subs in proptest::collection::vec("(/[ab]{1,2}){1,2}(/\\.\\.\\.)? e", 0..3),
            path in "(/[ab]{0,2}){1,4}",
        ) {
            let mut r = Router::new();
            for (i, route) in routes.iter().enumerate() {
                let Ok(route) = ServiceRoute::parse(if route.is_empty() { "/" } else { route }) else {
                    continue;
                };
                let subs = SubRoutes::parse(subs.join("\n").as_bytes()).unwrap();
                r.insert(&name(&format!("s{i}")), route, subs);
            }
            if let Destination::Service(m) = r.route(&path) {
                let script = if m.script_name == "/" && !m.path_info.is_empty() { "" } else { m.script_name };
                prop_assert_eq!(format!("{script}{}", m.path_info), path.clone());
                let base = &r.bases[m.service];
                prop_assert!(path.starts_with(base.as_str()));
                prop_assert!(path.len() == base.len() || path.as_bytes()[base.len()] == b'/');
            }
        }
    }
}
