//! What the state machine hands to an engine, and what comes back.
//!
//! These types are shared by `core` and the engines so that a response never depends on
//! which engine ran the guest.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::http::Request;
use crate::response::Response;
use crate::route::{ServiceName, ServiceRoute};
use crate::subroute::SubRoutes;

/// One compiled version of a service's module. A replaced service gets a new key, so
/// in-flight requests finish on the module they started on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleKey {
    /// The service.
    pub service: ServiceName,
    /// Version, unique across the life of one [`crate::Server`].
    pub version: u64,
}

/// A request as the guest sees it, with the routing facts WAGI exposes.
#[derive(Debug, Clone)]
pub struct GuestRequest {
    /// The HTTP request, body included.
    pub request: Request,
    /// The matched path (CGI `SCRIPT_NAME`): the service's route, or the sub-route's.
    pub script_name: String,
    /// The rest of the path, raw (WAGI `X_RAW_PATH_INFO`).
    pub path_info: String,
    /// The client's address.
    pub remote: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// The exported function to run: the service's entrypoint, or a sub-route's.
    pub entrypoint: Arc<str>,
    /// Whether the route matched is a wildcard (`X_MATCHED_ROUTE` ends in `/...`).
    pub wildcard: bool,
    /// How the operator set the service's guests up.
    pub setup: Arc<GuestSetup>,
    /// The body is not all in `request.body`: the rest comes as [`BodyPiece`]s
    /// ([`crate::Output::RequestBody`]), for a service whose body streams.
    pub body_follows: bool,
}

/// More of a request body that streams to its guest ([`GuestRequest::body_follows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyPiece {
    /// The next bytes.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The body broke off: over its size limit, or badly framed. The guest's next read
    /// fails; the connection closes after its answer.
    Broken,
}

impl GuestRequest {
    /// `request` for the service at `script_name` (its target must start with it), run
    /// with the default entrypoint under a wildcard route and nothing granted: what
    /// `_routes` discovery, tests, benchmarks and fuzz targets run. The serving path builds
    /// its requests from the route matched instead.
    pub fn new(request: Request, script_name: &str, remote: SocketAddr, local: SocketAddr) -> Self {
        let path_info = request
            .path()
            .strip_prefix(script_name)
            .unwrap_or_default()
            .to_owned();
        Self {
            request,
            script_name: script_name.to_owned(),
            path_info,
            remote,
            local,
            entrypoint: crate::DEFAULT_ENTRYPOINT.into(),
            wildcard: true,
            setup: Default::default(),
            body_follows: false,
        }
    }
}

/// How a service's guests run, as the operator configured it; shared by all its requests
/// on one serving thread (each thread gets its own copy, so requests touch no reference
/// count another core writes).
#[derive(Debug, Clone)]
pub struct GuestSetup {
    /// The service's name, for the log.
    pub name: String,
    /// Environment values, set before the CGI variables (which the publisher keeps them
    /// from naming).
    pub env: Vec<(String, String)>,
    /// The paths the service owns; `/NAME/...` when `None`.
    pub route: Option<ServiceRoute>,
    /// `SERVER_NAME` (and its port, `SERVER_PORT`) for a request without a `Host` header,
    /// as WAGI's `default_host`; the local address when `None`.
    pub default_host: Option<Arc<str>>,
    /// The exported function run for the service's own route.
    pub entrypoint: Arc<str>,
    /// The argv template: `${SCRIPT_NAME}` and `${ARGS}` (the query's `&`-separated
    /// items) are replaced, then the result is split at spaces.
    pub argv: String,
    /// Sub-routes below the prefix, from the module's `_routes` export.
    pub routes: SubRoutes,
    /// What the operator grants beyond the request (directories, outbound calls), for
    /// the engine: host resources the core passes along and never looks at.
    pub host: Option<HostGrants>,
    /// Its guests read the request body as it arrives (components do): a request whose
    /// body is still on its way starts at its head ([`GuestRequest::body_follows`]).
    /// Otherwise (WAGI, which takes the body whole on stdin) it starts once the body is in.
    pub body_streams: bool,
}

/// Host resources granted to a service's guests, opaque to the core: the engines define
/// what is in it (`frenezulo_engines::host::Grants`) and the driver fills it in.
pub type HostGrants = Arc<dyn std::any::Any + Send + Sync>;

/// The entrypoint a WASI command starts at.
pub const DEFAULT_ENTRYPOINT: &str = "_start";

/// WAGI's argv template.
pub const DEFAULT_ARGV: &str = "${SCRIPT_NAME} ${ARGS}";

impl Default for GuestSetup {
    fn default() -> Self {
        Self {
            name: String::new(),
            route: None,
            default_host: None,
            env: Vec::new(),
            entrypoint: DEFAULT_ENTRYPOINT.into(),
            argv: DEFAULT_ARGV.to_owned(),
            routes: SubRoutes::default(),
            host: None,
            body_streams: false,
        }
    }
}

/// Limits on one guest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Largest linear memory, in bytes.
    pub memory_bytes: usize,
    /// Most bytes the guest may write to stdout.
    pub stdout_bytes: usize,
}

/// Why a guest run produced no response. Each engine maps its own errors onto these.
///
/// Deadlines are the core's: it cancels a task whose time is up and answers
/// [`GuestFailure::Timeout`] itself; an engine reports it only from a run-to-completion
/// helper that has a deadline of its own.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GuestFailure {
    /// The guest trapped (unreachable, out-of-bounds access, stack overflow, ...).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The guest ran past its deadline and was stopped.
    #[error("guest ran past its deadline")]
    Timeout,
    /// The guest asked for more memory than its limit and then failed.
    #[error("guest exceeded its memory limit")]
    OutOfMemory,
    /// The guest wrote more to stdout than its limit allows.
    #[error("guest output exceeded its limit")]
    OutputTooLarge,
    /// The guest called `proc_exit` with a non-zero status.
    #[error("guest exited with status {0}")]
    Exit(i32),
    /// The guest's stdout is not a valid CGI response.
    #[error("guest output is not a valid CGI response: {0}")]
    BadOutput(String),
    /// The guest's wasi:http response is unusable: none was set, its body was not
    /// finished, or the guest set an error.
    #[error("guest response unusable: {0}")]
    BadResponse(String),
    /// The module could not be instantiated.
    #[error("guest could not be instantiated: {0}")]
    Instantiate(String),
}

impl GuestFailure {
    /// The status a client gets for this failure.
    pub fn status(&self) -> u16 {
        match self {
            GuestFailure::Timeout => 504,
            GuestFailure::OutputTooLarge
            | GuestFailure::BadOutput(_)
            | GuestFailure::BadResponse(_) => 502,
            GuestFailure::Trap(_)
            | GuestFailure::OutOfMemory
            | GuestFailure::Exit(_)
            | GuestFailure::Instantiate(_) => 500,
        }
    }

    /// A short message for the client: says what happened without engine internals or
    /// host paths (those go to the log).
    pub fn public_message(&self) -> String {
        match self {
            GuestFailure::Trap(_) => "service failed: guest trapped".to_owned(),
            GuestFailure::Instantiate(_) => "service failed: could not start guest".to_owned(),
            GuestFailure::BadOutput(why) => format!("service failed: invalid CGI output: {why}"),
            other => format!("service failed: {other}"),
        }
    }

    /// The response a client gets for this failure.
    pub fn to_response(&self) -> Response {
        Response::text(self.status(), &self.public_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        assert_eq!(GuestFailure::Timeout.status(), 504);
        assert_eq!(GuestFailure::OutputTooLarge.status(), 502);
        assert_eq!(GuestFailure::BadOutput("x".into()).status(), 502);
        assert_eq!(GuestFailure::Exit(3).status(), 500);
        let trap = GuestFailure::Trap("wasm backtrace: /home/secret/x.rs".into());
        assert!(!trap.public_message().contains("secret"));
        assert_eq!(
            GuestFailure::Exit(3).public_message(),
            "service failed: guest exited with status 3"
        );
    }
}
