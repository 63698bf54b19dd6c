//! Who may change which service, and which paths each serves: the registry's rules about
//! names and routes, once, with no storage behind them.
//!
//! Services come from four places ([`Origin`]). The command line and the config file
//! (a node's own files) define services the management API may read but not change; they
//! must not share a route with one another. The built-in example gives way to an API
//! service of its name. An API service is stored (locally, and in a cluster's shared
//! store) and served unless this node's own files give its name, or its route, to another
//! service: then it is kept but hidden ([`Placement`]), as another node may have written it.
//!
//! The registry keeps a [`Catalog`] beside what it stores and asks it before every change:
//! [`Catalog::may_change`] and [`Catalog::may_remove`] for a caller's change,
//! [`Catalog::may_take`] for a route a caller asks for, [`Catalog::place`] for any stored
//! entry (a caller's, another node's, one loaded at start), and records the outcome with
//! [`Catalog::stored`] and [`Catalog::removed`].

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::{ServiceName, ServiceRoute};

/// Who defined a service, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
#[non_exhaustive]
pub enum Origin {
    /// The management API; it may replace, reconfigure and remove it.
    Api,
    /// The config file; changed by editing the file and restarting.
    Config,
    /// A `--service` flag; changed by restarting with other flags.
    Cli,
    /// The built-in `hello`, served when nothing else is configured; the API may add a
    /// service of the same name, which then takes its place.
    BuiltIn,
}

impl Origin {
    /// Whether the management API may replace, reconfigure or remove such a service.
    pub fn api_may_change(self) -> bool {
        matches!(self, Origin::Api | Origin::BuiltIn)
    }

    /// Whether it is one of the node's own files' (which hide the API's services).
    fn is_own_file(self) -> bool {
        matches!(self, Origin::Config | Origin::Cli)
    }

    /// The name shown in listings and stored.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Config => "config",
            Origin::Cli => "cli",
            Origin::BuiltIn => "built-in",
        }
    }

    /// Where it is defined, for people: "the config file".
    pub fn place(self) -> &'static str {
        match self {
            Origin::Config => "config file",
            Origin::Cli => "command line (--service)",
            Origin::BuiltIn => "built-in example",
            Origin::Api => "management API",
        }
    }
}

/// Why a caller's change was refused by the rules here.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The service is defined by the config file or the command line.
    #[error(
        "service `{name}` is defined by the {place}; change it there and restart frenezulo",
        place = origin.place()
    )]
    NotApiDefined {
        /// The service.
        name: ServiceName,
        /// Who defined it.
        origin: Origin,
    },
    /// The API stored no service of this name.
    #[error("no service named `{0}`")]
    NotFound(ServiceName),
    /// Another service served here has a route with the same base.
    #[error(
        "route `{route}` is taken: service `{by}` owns `{theirs}`; give each service a path of its own"
    )]
    RouteTaken {
        /// The route asked for.
        route: ServiceRoute,
        /// The service that has it.
        by: ServiceName,
        /// Its route.
        theirs: ServiceRoute,
    },
}

/// Two of a node's own services share a route (refused at start).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "services `{first}` ({first_origin} `{first_route}`) and `{second}` ({second_origin} `{second_route}`) share a route; give each a path of its own",
    first_origin = first_origin.name(),
    second_origin = second_origin.name()
)]
pub struct SharedRoute {
    /// The service that came first.
    pub first: ServiceName,
    /// Who defined it.
    pub first_origin: Origin,
    /// Its route.
    pub first_route: ServiceRoute,
    /// The one that came second.
    pub second: ServiceName,
    /// Who defined it.
    pub second_origin: Origin,
    /// Its route.
    pub second_route: ServiceRoute,
}

/// Whether a stored API service is served on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// Served. `beside` names a served API service whose route has the same base (two
    /// nodes added them at once): every node serves the same one where their paths meet
    /// (the router's order) until one is changed.
    Served {
        /// The API service with a route of the same base, if any.
        beside: Option<ServiceName>,
    },
    /// Kept, not served: this node's own files define a service of its name.
    HiddenByName {
        /// Which file.
        origin: Origin,
    },
    /// Kept, not served: this node's own files give its route's base to another service.
    HiddenByRoute {
        /// That service.
        owner: ServiceName,
        /// Which file.
        origin: Origin,
    },
}

/// The names and routes of one node's services; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The node's own files' services and the built-in, by name.
    own: BTreeMap<ServiceName, (Origin, ServiceRoute)>,
    /// API services stored, served or not.
    stored: BTreeSet<ServiceName>,
    /// API services served, with their routes.
    served: BTreeMap<ServiceName, ServiceRoute>,
}

impl Catalog {
    /// A catalog of the node's own services (command line, config file, built-in); refused
    /// if two of the files' services share a route's base (the built-in gives way).
    pub fn new(
        own: impl IntoIterator<Item = (ServiceName, Origin, ServiceRoute)>,
    ) -> Result<Self, SharedRoute> {
        let mut catalog = Catalog::default();
        for (name, origin, route) in own {
            if origin.is_own_file()
                && let Some((first, (first_origin, first_route))) =
                    catalog.own.iter().find(|(other, (o, r))| {
                        o.is_own_file() && **other != name && r.base() == route.base()
                    })
            {
                return Err(SharedRoute {
                    first: first.clone(),
                    first_origin: *first_origin,
                    first_route: first_route.clone(),
                    second: name,
                    second_origin: origin,
                    second_route: route,
                });
            }
            catalog.own.insert(name, (origin, route));
        }
        Ok(catalog)
    }

    /// Whether the API may change `name`: not if the node's own files define it.
    pub fn may_change(&self, name: &ServiceName) -> Result<(), Refusal> {
        match self.own.get(name) {
            Some((origin, _)) if !origin.api_may_change() => Err(Refusal::NotApiDefined {
                name: name.clone(),
                origin: *origin,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the API may remove `name`: it may change it, and stored it.
    pub fn may_remove(&self, name: &ServiceName) -> Result<(), Refusal> {
        self.may_change(name)?;
        if !self.stored.contains(name) {
            return Err(Refusal::NotFound(name.clone()));
        }
        Ok(())
    }

    /// Whether `name` may serve `route`: no other service served here has its base.
    pub fn may_take(&self, name: &ServiceName, route: &ServiceRoute) -> Result<(), Refusal> {
        match self.owner(name, route) {
            Some((by, theirs)) => Err(Refusal::RouteTaken {
                route: route.clone(),
                by: by.clone(),
                theirs: theirs.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The service other than `name` served here whose route has `route`'s base, and its
    /// route: the node's own files' first, then the API's.
    pub fn owner(
        &self,
        name: &ServiceName,
        route: &ServiceRoute,
    ) -> Option<(&ServiceName, &ServiceRoute)> {
        let own = self.own.iter().filter(|(other, (origin, _))| {
            // The built-in is served only while no API service took its name.
            *origin != Origin::BuiltIn || !self.served.contains_key(*other)
        });
        own.map(|(other, (_, r))| (other, r))
            .chain(self.served.iter())
            .find(|(other, r)| *other != name && r.base() == route.base())
    }

    /// Where a stored API service of `name` serving `route` stands on this node.
    pub fn place(&self, name: &ServiceName, route: &ServiceRoute) -> Placement {
        if let Some((origin, _)) = self.own.get(name).filter(|(o, _)| o.is_own_file()) {
            return Placement::HiddenByName { origin: *origin };
        }
        let by_file = self.own.iter().find(|(other, (origin, r))| {
            origin.is_own_file() && *other != name && r.base() == route.base()
        });
        if let Some((owner, (origin, _))) = by_file {
            return Placement::HiddenByRoute {
                owner: owner.clone(),
                origin: *origin,
            };
        }
        let beside = self
            .served
            .iter()
            .find(|(other, r)| *other != name && r.base() == route.base())
            .map(|(other, _)| other.clone());
        Placement::Served { beside }
    }

    /// The API stored `name` serving `route`; returns where it stands (as [`Catalog::place`]).
    pub fn stored(&mut self, name: &ServiceName, route: &ServiceRoute) -> Placement {
        let placement = self.place(name, route);
        self.stored.insert(name.clone());
        if matches!(placement, Placement::Served { .. }) {
            self.served.insert(name.clone(), route.clone());
        } else {
            self.served.remove(name);
        }
        placement
    }

    /// The API stored `name` but it is not served here (its module could not be loaded):
    /// it may still be replaced or removed.
    pub fn kept(&mut self, name: &ServiceName) {
        self.stored.insert(name.clone());
        self.served.remove(name);
    }

    /// The API's `name` is stored no more; returns whether it was served.
    pub fn removed(&mut self, name: &ServiceName) -> bool {
        self.stored.remove(name);
        self.served.remove(name).is_some()
    }

    /// Whether the API's `name` is served here.
    pub fn is_served(&self, name: &ServiceName) -> bool {
        self.served.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn name(s: &str) -> ServiceName {
        ServiceName::new(s).unwrap()
    }

    fn route(s: &str) -> ServiceRoute {
        ServiceRoute::prefix(s).unwrap()
    }

    fn catalog() -> Catalog {
        Catalog::new([
            (name("shop"), Origin::Config, route("/shop")),
            (name("tool"), Origin::Cli, route("/tools/x")),
            (name("hello"), Origin::BuiltIn, route("/hello")),
        ])
        .unwrap()
    }

    #[test]
    fn the_files_services_are_read_only_and_the_built_in_gives_way() {
        let mut c = catalog();
        assert_eq!(
            c.may_change(&name("shop")),
            Err(Refusal::NotApiDefined {
                name: name("shop"),
                origin: Origin::Config
            })
        );
        assert!(c.may_change(&name("tool")).is_err());
        assert_eq!(c.may_change(&name("hello")), Ok(()));
        assert_eq!(c.may_change(&name("new")), Ok(()));
        assert_eq!(
            c.may_remove(&name("hello")),
            Err(Refusal::NotFound(name("hello"))),
            "the built-in is not the API's to remove"
        );
        // An API service takes the built-in's name, and its route.
        assert_eq!(
            c.stored(&name("hello"), &route("/hello")),
            Placement::Served { beside: None }
        );
        assert_eq!(c.may_remove(&name("hello")), Ok(()));
        assert!(c.removed(&name("hello")));
        assert_eq!(
            c.may_remove(&name("hello")),
            Err(Refusal::NotFound(name("hello")))
        );
    }

    #[test]
    fn a_route_has_one_owner() {
        let mut c = catalog();
        let taken = c.may_take(&name("other"), &route("/shop/..."));
        assert!(
            matches!(&taken, Err(Refusal::RouteTaken { by, .. }) if by.as_str() == "shop"),
            "{taken:?}"
        );
        assert!(
            c.may_take(&name("other"), &route("/hello")).is_err(),
            "the built-in serves it"
        );
        assert_eq!(c.may_take(&name("other"), &route("/shop2")), Ok(()));
        c.stored(&name("api"), &route("/api"));
        assert!(
            c.may_take(&name("other"), &route("/api/v1")).is_ok(),
            "another base"
        );
        assert!(c.may_take(&name("other"), &route("/api")).is_err());
        assert_eq!(c.may_take(&name("api"), &route("/api")), Ok(()), "its own");
        // Once an API service takes the built-in's name, the built-in's route is free.
        c.stored(&name("hello"), &route("/greet"));
        assert_eq!(c.may_take(&name("other"), &route("/hello")), Ok(()));
    }

    #[test]
    fn the_files_hide_an_api_service_of_their_name_or_route() {
        let mut c = catalog();
        assert_eq!(
            c.stored(&name("shop"), &route("/elsewhere")),
            Placement::HiddenByName {
                origin: Origin::Config
            }
        );
        assert_eq!(
            c.stored(&name("x"), &route("/tools/x/...")),
            Placement::HiddenByRoute {
                owner: name("tool"),
                origin: Origin::Cli
            }
        );
        assert!(!c.is_served(&name("x")));
        assert_eq!(c.may_remove(&name("x")), Ok(()), "stored, so removable");
        assert!(!c.removed(&name("x")), "it was not served");
        // Two API services with one base (two nodes at once): both served, the second
        // knows the first.
        c.stored(&name("a"), &route("/same"));
        assert_eq!(
            c.stored(&name("b"), &route("/same/...")),
            Placement::Served {
                beside: Some(name("a"))
            }
        );
    }

    #[test]
    fn the_files_services_may_not_share_a_route() {
        let shared = Catalog::new([
            (name("a"), Origin::Config, route("/x")),
            (name("b"), Origin::Cli, route("/x/...")),
        ])
        .unwrap_err();
        assert_eq!((shared.first.as_str(), shared.second.as_str()), ("a", "b"));
        assert!(shared.to_string().contains("share a route"), "{shared}");
        // The built-in gives way rather than conflicting.
        assert!(
            Catalog::new([
                (name("hello"), Origin::BuiltIn, route("/x")),
                (name("b"), Origin::Config, route("/x")),
            ])
            .is_ok()
        );
    }

    proptest::proptest! {
        /// Whatever the API stores and removes, in any order: a stored service is served
        /// exactly when the node's own files give neither its name nor its route's base to
        /// a service of theirs (a model computed from scratch says so after every step);
        /// the files' services are never the API's to change; and a route is refused to a
        /// caller exactly when another served service has its base.
        #[test]
        fn served_is_what_the_files_leave_free(
            ops in proptest::collection::vec((0usize..5, 0usize..5, proptest::bool::ANY), 1..40)
        ) {
            let names = ["shop", "tool", "hello", "a", "b"].map(name);
            let routes = ["/shop", "/tools/x", "/hello", "/a", "/shop/..."].map(route);
            let own = [
                (names[0].clone(), Origin::Config, routes[0].clone()),
                (names[1].clone(), Origin::Cli, routes[1].clone()),
                (names[2].clone(), Origin::BuiltIn, routes[2].clone()),
            ];
            let mut c = Catalog::new(own.clone()).unwrap();
            let mut stored: BTreeMap<ServiceName, ServiceRoute> = BTreeMap::new();
            for (n, r, remove) in ops {
                let n = &names[n];
                if remove {
                    if c.may_remove(n).is_ok() {
                        c.removed(n);
                        stored.remove(n);
                    }
                } else if c.may_change(n).is_ok() {
                    c.stored(n, &routes[r]);
                    stored.insert(n.clone(), routes[r].clone());
                } else {
                    proptest::prop_assert!(own.iter().any(|(o, origin, _)| o == n && *origin != Origin::BuiltIn));
                }
                let files = || own.iter().filter(|(_, o, _)| *o != Origin::BuiltIn);
                let served: BTreeMap<&ServiceName, &ServiceRoute> = stored
                    .iter()
                    .filter(|(s, r)| !files().any(|(o, _, or)| o == *s || or.base() == r.base()))
                    .collect();
                for n in &names {
                    proptest::prop_assert_eq!(c.is_served(n), served.contains_key(n), "{}", n);
                    for r in &routes {
                        let builtin_free = served.contains_key(&names[2]);
                        let taken = files()
                            .map(|(o, _, or)| (o, or))
                            .chain((!builtin_free).then(|| (&own[2].0, &own[2].2)))
                            .chain(served.iter().map(|(s, r)| (*s, *r)))
                            .any(|(o, or)| o != n && or.base() == r.base());
                        proptest::prop_assert_eq!(c.may_take(n, r).is_err(), taken, "{} {}", n, r);
                    }
                }
            }
        }
    }
}
