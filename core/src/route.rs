//! Routing by prefix: the first path segment names the service.
//!
//! `route` is a pure function of the path; whether the named service exists is the
//! registry's business.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// The prefix reserved for the management API; never a service name.
pub const RESERVED_PREFIX: &str = "services";

/// Longest service name.
pub const MAX_NAME_LEN: usize = 63;

/// A validated service name: `[a-z0-9][a-z0-9_-]*`, at most [`MAX_NAME_LEN`] bytes, not
/// [`RESERVED_PREFIX`]. The service answers `/NAME`, `/NAME/` and everything below.
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

/// Where a request path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// To the service named by the first segment; `path_info` is the rest of the path
    /// (`""` for `/shop`, `"/"` for `/shop/`, `"/a/b"` for `/shop/a/b`).
    Service {
        /// The first path segment, not yet checked against the registry.
        name: &'a str,
        /// The path below the prefix, raw (not percent-decoded).
        path_info: &'a str,
    },
    /// To the management API; `path_info` is the path below `/services`.
    Management {
        /// The path below `/services`.
        path_info: &'a str,
    },
    /// Nowhere: `/` itself, or a path that does not start with `/`.
    NotFound,
}

/// Routes a path (without the query string).
pub fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix('/') else {
        return Route::NotFound;
    };
    let (name, path_info) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if name.is_empty() {
        return Route::NotFound;
    }
    if name == RESERVED_PREFIX {
        return Route::Management { path_info };
    }
    Route::Service { name, path_info }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn svc<'a>(name: &'a str, path_info: &'a str) -> Route<'a> {
        Route::Service { name, path_info }
    }

    #[test]
    fn a_service_answers_its_prefix_and_below() {
        assert_eq!(route("/shop"), svc("shop", ""));
        assert_eq!(route("/shop/"), svc("shop", "/"));
        assert_eq!(route("/shop/cart/42"), svc("shop", "/cart/42"));
        assert_eq!(route("/shopping"), svc("shopping", ""));
    }

    #[test]
    fn root_and_odd_paths_route_nowhere() {
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route(""), Route::NotFound);
        assert_eq!(route("*"), Route::NotFound);
        assert_eq!(route("//shop"), Route::NotFound);
    }

    #[test]
    fn management_prefix_is_reserved() {
        assert_eq!(route("/services"), Route::Management { path_info: "" });
        assert_eq!(
            route("/services/shop"),
            Route::Management { path_info: "/shop" }
        );
        assert_eq!(route("/servicesx"), svc("servicesx", ""));
    }

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

    proptest! {
        /// A path reaches service `name` exactly when it is `/name` or below `/name/`.
        #[test]
        fn a_path_reaches_a_service_iff_it_is_the_prefix_or_below(
            name in "[a-z0-9][a-z0-9_-]{0,8}",
            path in "/[a-z0-9_/-]{0,16}",
        ) {
            let reaches = matches!(route(&path), Route::Service { name: n, .. } if n == name);
            let below = path == format!("/{name}") || path.starts_with(&format!("/{name}/"));
            prop_assert_eq!(reaches, below && name != RESERVED_PREFIX);
            if let Route::Service { name: n, path_info } = route(&path) {
                prop_assert_eq!(format!("/{n}{path_info}"), path.clone());
            }
        }
    }
}
