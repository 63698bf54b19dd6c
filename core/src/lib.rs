//! frenezulo-core: the sans-io state machine of the frenezulo server.
//!
//! It owns HTTP/1.1 request framing ([`http`]), routing to services by path ([`router`]), the service
//! registry's in-memory view with versions, admission control, per-request deadlines, the
//! run queue of guest tasks, and each service's lifecycle (`Cold` -> `Loading` -> `Warm` ->
//! idle -> `Cold`). It does no I/O: no sockets, no threads, no clock, no randomness. Time
//! is passed in as `now`; iteration order is deterministic, so the same inputs always give
//! the same outputs. It does not run WebAssembly: it asks its driver to, one time slice at
//! a time, through [`Output::Execute`] and [`Output::Resume`].
//!
//! Beside it, [`control::Control`] is the control plane's state machine: the order in which
//! changes to the registry are prepared, written to a shared store and applied, with the
//! same contract style (its module docs).
//!
//! One [`Server`] serves one thread's share of the connections. A process runs one per
//! serving thread; they share nothing but the registry changes each is fed.
//!
//! # The polling contract
//!
//! A driver (the `frenezulo` binary, or the simulator) owns a [`Server`] and loops:
//!
//! 1. When something happens, call [`Server::handle`] with the current time and an
//!    [`Input`]: a connection accepted, bytes received, a registry change, a compile
//!    finished, a time slice ended.
//! 2. After every `handle`, drain [`Server::poll_output`] until it returns `None`, and
//!    carry out each [`Output`] in order: transmit bytes, close a connection, compile a
//!    module, start, resume or cancel a guest task, evict a module. Outputs for one
//!    connection must be written in the order they were polled.
//! 3. Ask [`Server::poll_timeout`] for the next deadline and call
//!    `handle(now, Input::Timeout)` once it has passed (timers due at `now` fire on any
//!    `handle` call, so an early or spurious wake-up is harmless).
//! 4. Before reading from a connection, check [`Server::wants_read`]; when it is false
//!    the connection's pipeline is full and the driver waits for output instead, which
//!    bounds what one client can make the server buffer. A driver that queues output
//!    reports with [`Input::Unsent`] when a connection's unwritten bytes cross
//!    [`MAX_UNSENT`]: above it the core takes none of that connection's requests, so a
//!    client that sends and never reads cannot pile answers up either.
//!
//! ## Guest tasks and time slices
//!
//! The core is the scheduler. At most one slice is out with the driver at a time: after an
//! [`Output::Execute`] (start a task and run its first slice) or an [`Output::Resume`] (run
//! one more slice of a task that yielded), the core asks for nothing else to run until the
//! driver answers [`Input::Yielded`] (the slice ran out with the guest still running),
//! [`Input::Waiting`] (the guest waits on an outbound call the driver makes for it),
//! [`Input::Streamed`] (the guest, still running, handed over a piece of its answer to
//! send now) or [`Input::Executed`] (the guest finished). Each of these carries `ran`, how long the
//! slice took on the thread as the driver measured it; the core has no clock, and shares
//! the thread by these times. A waiting task keeps its slot and is not run again until
//! the driver reports [`Input::Woken`]; a task whose pieces wait to be written (more than
//! [`MAX_UNSENT`] bytes on its connection) keeps its slot and runs again once the driver
//! reports, with [`Input::Unsent`], that they are. The next slice is then already queued as an
//! output: services with work share the thread's time by start-time fair queueing on the
//! time they were charged (optionally weighted by `cpu_weight`), so a looping guest gets
//! its service's share and delays a service of short requests by at most one slice per
//! round; within a service, starting new requests and resuming its long ones share its
//! time the same way. A driver should poll its sockets between slices that yielded, so
//! that new requests join in and a client that left is noticed; [`driver::Slices`] keeps
//! the slice out and that turn budget for it.
//!
//! [`Output::Cancel`] drops a task, whether it is parked or its slice is still queued as
//! an output; the driver reports nothing more for it, and the core ignores a report for a
//! task it no longer knows. Every task that starts ends exactly once: with `Executed`, or
//! with `Cancel` (deadline passed, client gone). A client is gone when its connection is
//! [`Input::Disconnected`], or [`Input::ReadClosed`] while a guest still owes it a
//! response (as nginx takes it, 499): its tasks are cancelled and it is closed unanswered.
//!
//! [`contract::Monitor`] checks this contract from outside, both sides of it; the core's
//! tests, the fuzz target, the simulator and debug builds of the server run one.
//!
//! Every request that is parsed gets exactly one response, in order per connection, unless
//! its connection goes away first. Every [`Output::Compile`] must be answered with
//! [`Input::Compiled`].
//!
//! # Not here
//!
//! Engines and the WAGI guest ABI live in `frenezulo-engines`; sockets, serving threads
//! and the CLI in the `frenezulo` binary; virtual-time workloads in `frenezulo-sim`.

pub mod ceiling;
pub mod contract;
pub mod control;
pub mod driver;
pub mod guest;
pub mod http;
pub mod response;
pub mod route;
pub mod router;
mod server;
pub mod subroute;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use guest::{
    BodyPiece, DEFAULT_ARGV, DEFAULT_ENTRYPOINT, GuestFailure, GuestRequest, GuestSetup,
    HostGrants, ModuleKey, RunLimits,
};
pub use http::{FramingError, FramingLimits, Request, Version};
pub use response::Response;
pub use route::{NameError, RouteError, ServiceName, ServiceRoute};
pub use server::{
    ConnId, Execution, Input, JobId, Lifecycle, MAX_CPU_WEIGHT, MAX_MANAGEMENT_CALLS, MAX_UNSENT,
    ManagementCall, Output, RegistryChange, Responded, Server, ServerConfig, ServiceInfo,
    ServiceLimits, Stats, share,
};
