//! frenezulo-core: the sans-io state machine of the frenezulo server.
//!
//! It owns HTTP/1.1 request framing ([`http`]), routing by prefix ([`route`]), the service
//! registry with versions, admission control, per-request deadlines and each service's
//! lifecycle (`Cold` -> `Loading` -> `Warm` -> idle -> `Cold`). It does no I/O: no sockets,
//! no threads, no clock, no randomness. Time is passed in as `now`; iteration order is
//! deterministic, so the same inputs always give the same outputs. It does not run
//! WebAssembly: it asks its driver to, through [`Output::Compile`] and [`Output::Execute`].
//!
//! # The polling contract
//!
//! A driver (the `frenezulo` binary, or the simulator) owns a [`Server`] and loops:
//!
//! 1. When something happens, call [`Server::handle`] with the current time and an
//!    [`Input`]: a connection accepted, bytes received, a compile or guest run finished.
//! 2. After every `handle`, drain [`Server::poll_output`] until it returns `None`, and
//!    carry out each [`Output`] in order: transmit bytes, close a connection, compile a
//!    module, run a guest, evict a module. Outputs for one connection must be written in
//!    the order they were polled.
//! 3. Ask [`Server::poll_timeout`] for the next deadline and call
//!    `handle(now, Input::Timeout)` once it has passed (timers due at `now` fire on any
//!    `handle` call, so an early or spurious wake-up is harmless).
//! 4. Before reading from a connection, check [`Server::wants_read`]; when it is false
//!    the connection's pipeline is full and the driver waits for output instead, which
//!    bounds what one client can make the server buffer.
//!
//! Every request that is parsed gets exactly one response, in order per connection, unless
//! its connection goes away first. Every [`Output::Execute`] and [`Output::Compile`] must be
//! answered with [`Input::Executed`] or [`Input::Compiled`], even if the client has left:
//! the core counts running guests to enforce its limits.
//!
//! # Not here
//!
//! Engines and the WAGI guest ABI live in `frenezulo-engines`; sockets, worker threads and
//! the CLI in the `frenezulo` binary; virtual-time workloads in `frenezulo-sim`.

pub mod guest;
pub mod http;
pub mod response;
pub mod route;
mod server;

pub use guest::{GuestFailure, GuestRequest, ModuleKey, RunLimits};
pub use http::{FramingError, FramingLimits, Request, Version};
pub use response::Response;
pub use route::{NameError, ServiceName};
pub use server::{
    ConnId, Execution, Input, JobId, Lifecycle, Output, RegistryError, Server, ServerConfig,
    ServiceInfo, ServiceLimits, Stats,
};
