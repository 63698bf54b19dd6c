//! The state machine: connections ([`conn`]), the registry and each service's lifecycle
//! ([`registry`]), admission and the guest task run queue ([`sched`]), and the timers that
//! tie them to time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::guest::{BodyPiece, GuestFailure, GuestRequest, GuestSetup, ModuleKey, RunLimits};
use crate::http::{FramingLimits, Request};
use crate::response::Response;
use crate::response::stream::Piece;
use crate::route::ServiceName;
use crate::router::Router;

mod conn;
mod invariants;
mod registry;
mod sched;
#[cfg(test)]
mod tests;

use conn::Conn;
use registry::Service;
use sched::{Job, Lane, SliceOut};

/// A connection, named by the driver. Ids must not be reused while the core knows the
/// connection (that is, until it emitted [`Output::Close`] or got [`Input::Disconnected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// One guest task, named by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// Settings for one core (one serving thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Limits applied while framing requests.
    pub framing: FramingLimits,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive_timeout: Duration,
    /// How long a client may take to send a whole request once it started (then 408).
    pub request_timeout: Duration,
    /// Requests parsed ahead on one connection while earlier ones are answered.
    pub max_pipelined: usize,
    /// Guest tasks started and not yet finished (running or yielded) across all services.
    pub max_running: usize,
    /// Requests waiting for a task slot across all services; past it, 503.
    pub max_queued: usize,
    /// Body bytes of all waiting requests together; past it, 503.
    pub max_queued_bytes: usize,
    /// How long a warm service stays in memory with no requests.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            framing: FramingLimits::default(),
            keep_alive_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(10),
            max_pipelined: 16,
            max_running: 64,
            max_queued: 1024,
            max_queued_bytes: 256 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl ServerConfig {
    /// One of `threads` serving threads' settings, when these are server-wide: each count
    /// and byte budget divided between the threads, each share rounded up.
    pub fn per_thread(&self, threads: usize) -> ServerConfig {
        ServerConfig {
            max_running: share(self.max_running, threads),
            max_queued: share(self.max_queued, threads),
            max_queued_bytes: share(self.max_queued_bytes, threads),
            ..self.clone()
        }
    }
}

/// `at + wait`, saturating: a limit far beyond any real one (the driver bounds them, but a
/// timer must never panic the thread on overflow) becomes "about a century from now".
fn later(at: Instant, wait: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(wait.min(CENTURY))
        .or_else(|| at.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(at)
}

/// `*counter -= by`, or a panic naming the counter: a count that would go below zero
/// means the bookkeeping is wrong, and admission must stop rather than run on a wrapped
/// count (release builds of this crate keep overflow checks too, for `+=`).
#[track_caller]
pub(crate) fn decrement(counter: &mut usize, by: usize, name: &str) {
    *counter = counter
        .checked_sub(by)
        .unwrap_or_else(|| panic!("{name} would go below zero: {counter} - {by}"));
}

/// One thread's share of a server-wide limit: rounded up, and at least one.
pub fn share(total: usize, threads: usize) -> usize {
    total.div_ceil(threads.max(1)).max(1)
}

/// Limits for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Largest linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time from a request's arrival to its response (then 504).
    pub deadline: Duration,
    /// Most bytes one run may write to stdout (then 502).
    pub stdout_bytes: usize,
    /// Largest request body (then 413); never above the server's framing limit.
    pub body_bytes: usize,
    /// Tasks of this service started and not finished at once.
    pub max_concurrency: usize,
    /// Requests of this service waiting for a task slot (then 503).
    pub max_queued: usize,
    /// Its share of a serving thread's guest time against other services with work, as
    /// a weight: 2 gets twice the time of 1. Clamped to `1..=`[`MAX_CPU_WEIGHT`].
    pub cpu_weight: u32,
}

/// The largest [`ServiceLimits::cpu_weight`]: one service may outweigh another at most
/// this many times over.
pub const MAX_CPU_WEIGHT: u32 = 100;

impl ServiceLimits {
    /// The limits one guest run gets.
    pub fn run_limits(&self) -> RunLimits {
        RunLimits {
            memory_bytes: self.memory_bytes,
            stdout_bytes: self.stdout_bytes,
        }
    }
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            deadline: Duration::from_secs(10),
            stdout_bytes: 4 * 1024 * 1024,
            body_bytes: 4 * 1024 * 1024,
            max_concurrency: 64,
            max_queued: 128,
            cpu_weight: 1,
        }
    }
}

impl ServiceLimits {
    /// One of `threads` serving threads' share, when these are server-wide: concurrency
    /// and queue divided like [`ServerConfig::per_thread`]; per-request limits stay.
    pub fn per_thread(&self, threads: usize) -> ServiceLimits {
        ServiceLimits {
            max_concurrency: share(self.max_concurrency, threads),
            max_queued: share(self.max_queued, threads),
            ..*self
        }
    }
}

/// A change to the set of services, published once by whoever owns the registry and fed
/// to every core as [`Input::Registry`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RegistryChange {
    /// Adds the service `module.service`, or replaces its module and limits. Versions only
    /// move forward: a `Put` whose version is not above the one registered is ignored.
    /// Requests already started finish on the old module; queued and new ones run on this.
    Put {
        /// The service and its new version.
        module: ModuleKey,
        /// The module bytes, compiled on the first request (or announced as compiled with
        /// [`Input::Compiled`]).
        wasm: Bytes,
        /// The service's limits.
        limits: ServiceLimits,
        /// How its guests run: environment, entrypoint, argv, route and sub-routes, and the
        /// host grants it carries for the engine.
        setup: Arc<GuestSetup>,
    },
    /// Removes a service: queued requests get 503, started ones finish, then 404.
    Remove {
        /// The service.
        service: ServiceName,
    },
}

/// Something that happened, for [`Server::handle`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    /// The time given by [`Server::poll_timeout`] has come.
    Timeout,
    /// A connection was accepted.
    Connected {
        /// Id chosen by the driver.
        conn: ConnId,
        /// The client's address.
        remote: SocketAddr,
        /// The local address it was accepted on.
        local: SocketAddr,
    },
    /// Bytes arrived on a connection.
    Received {
        /// The connection.
        conn: ConnId,
        /// The bytes, in order.
        data: &'a [u8],
    },
    /// The client closed its sending side; responses owed may still be written.
    ReadClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is gone (reset, write error); nothing more can be sent on it.
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// The registry changed.
    Registry(RegistryChange),
    /// The driver holds the compiled module for `module` (after an [`Output::Compile`], or
    /// because it compiled it beforehand), or failed to compile it.
    Compiled {
        /// The module that was compiled.
        module: ModuleKey,
        /// `Err` with a reason for the log if compilation failed.
        result: Result<(), String>,
    },
    /// The slice asked for by [`Output::Execute`] or [`Output::Resume`] ended with the guest
    /// still running: its time slice ran out.
    Yielded {
        /// The task.
        job: JobId,
        /// How long the slice took on the serving thread (an instance start included),
        /// as the driver measured it: charged to the task's service.
        ran: Duration,
    },
    /// The slice asked for by [`Output::Execute`] or [`Output::Resume`] ended with the
    /// guest waiting on something outside it (an outbound HTTP call). The task is not run
    /// again until [`Input::Woken`]; its deadline still applies.
    Waiting {
        /// The task.
        job: JobId,
        /// How long the slice took on the serving thread (an instance start included),
        /// as the driver measured it: charged to the task's service.
        ran: Duration,
    },
    /// What a waiting task waited for arrived: it may run again.
    Woken {
        /// The task.
        job: JobId,
    },
    /// The slice asked for by [`Output::Execute`] or [`Output::Resume`] ended with the
    /// guest finished.
    Executed {
        /// The task.
        job: JobId,
        /// How long the slice took on the serving thread (an instance start included),
        /// as the driver measured it: charged to the task's service.
        ran: Duration,
        /// The guest's response, or why there is none.
        result: Result<Response, GuestFailure>,
    },
    /// The slice asked for by [`Output::Execute`] or [`Output::Resume`] ended with a piece
    /// of the guest's answer, sent before it finished (chunked, or by the length the
    /// guest declared); the guest still runs. The first piece of a task is a
    /// [`Piece::Start`], then [`Piece::More`]; [`Input::Executed`] then carries the last
    /// body bytes (its status and headers are not looked at) or the failure that cuts the
    /// answer short. The task runs again once its connection has written what it owes
    /// down to [`MAX_UNSENT`] bytes.
    Streamed {
        /// The task.
        job: JobId,
        /// How long the slice took on the serving thread (an instance start included),
        /// as the driver measured it: charged to the task's service.
        ran: Duration,
        /// The piece.
        piece: Piece,
    },
    /// The answer to an [`Output::Manage`] call.
    Managed {
        /// The call.
        call: JobId,
        /// What to send the client.
        response: Response,
    },
    /// The driver's count of bytes transmitted on `conn` and not yet written to its
    /// socket. While it is over [`MAX_UNSENT`] no further request of the connection is
    /// parsed (so no more answers pile up for a client that does not read) and
    /// [`Server::wants_read`] is false; once a report puts it back under, parsing goes on.
    /// A driver need only report when the count crosses [`MAX_UNSENT`]; one that never
    /// reports is never held back.
    Unsent {
        /// The connection.
        conn: ConnId,
        /// Bytes waiting to be written.
        bytes: usize,
    },
    /// Stop taking requests, answer those in flight, close connections as they go idle.
    Shutdown,
}

/// Bytes queued for a connection's socket (reported by [`Input::Unsent`]) past which the
/// core takes no more of its requests.
pub const MAX_UNSENT: usize = 1 << 20;

/// Something the driver must do, from [`Server::poll_output`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Write `head` then `body` (often empty) to the connection.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// Bytes to write first.
        head: Bytes,
        /// Bytes to write after `head`.
        body: Bytes,
    },
    /// Close the connection once everything transmitted before is written. The core has
    /// forgotten it; do not report it back.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Compile `wasm` and keep it under `module`; answer with [`Input::Compiled`].
    Compile {
        /// Key to keep the compiled module under.
        module: ModuleKey,
        /// The module bytes.
        wasm: Bytes,
    },
    /// Start a guest task and run its first time slice; answer with [`Input::Yielded`],
    /// [`Input::Waiting`], [`Input::Streamed`] or [`Input::Executed`].
    Execute(Box<Execution>),
    /// Run one more time slice of a task that yielded or was woken; answer as for
    /// [`Output::Execute`].
    Resume {
        /// The task.
        job: JobId,
    },
    /// Drop a task that has not finished (its deadline passed or its client left), and any
    /// slice of it not yet run. Report nothing more for it.
    Cancel {
        /// The task.
        job: JobId,
    },
    /// Give a task more of its request body ([`GuestRequest::body_follows`]). Comes only
    /// for a task that reported a slice since it was started, so the driver holds it;
    /// none after [`BodyPiece::End`] or [`BodyPiece::Broken`].
    RequestBody {
        /// The task.
        job: JobId,
        /// The bytes, or the body's end.
        piece: BodyPiece,
    },
    /// Drop the compiled module; no task will use it again.
    Evict {
        /// The module to drop.
        module: ModuleKey,
    },
    /// A request for the management API (`/services...`): the driver's registry owner
    /// answers it with [`Input::Managed`]. At most [`MAX_MANAGEMENT_CALLS`] are out at
    /// once; past that the core answers 503 itself.
    Manage(Box<ManagementCall>),
    /// A response was queued for sending: one per request, for the access log and metrics.
    Responded(Responded),
}

/// Management calls out with the driver at once, per core.
pub const MAX_MANAGEMENT_CALLS: usize = 16;

/// A management API request, from [`Output::Manage`].
#[derive(Debug)]
pub struct ManagementCall {
    /// Id to answer under.
    pub call: JobId,
    /// The path below `/services` (`""`, `"/"`, `"/shop"`, ...), raw.
    pub path_info: String,
    /// The request, body included.
    pub request: Request,
    /// The client's address.
    pub remote: SocketAddr,
}

/// What was answered to one request, from [`Output::Responded`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responded {
    /// The connection.
    pub conn: ConnId,
    /// The service the request was routed to, if any.
    pub service: Option<ServiceName>,
    /// The guest task (or management call) the request became, if any.
    pub job: Option<JobId>,
    /// The status code.
    pub status: u16,
    /// Bytes of the response, head and body.
    pub bytes: usize,
    /// From the request being parsed to its response being queued.
    pub elapsed: Duration,
    /// The response was sent in pieces and ended before its end (the guest failed or ran
    /// out of time after its head went out, or wrote other than the length it declared):
    /// the connection closes after it, unanswered requests behind it with it.
    pub cut_short: bool,
}

/// A guest task to start.
#[derive(Debug)]
pub struct Execution {
    /// Id to report slices under.
    pub job: JobId,
    /// The compiled module to run (announced by an earlier [`Input::Compiled`]).
    pub module: ModuleKey,
    /// The request as the guest sees it.
    pub request: GuestRequest,
    /// Limits for this run.
    pub limits: RunLimits,
}

/// A service as listed by [`Server::services`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Current module version.
    pub module: ModuleKey,
    /// Lifecycle state.
    pub state: Lifecycle,
    /// Tasks started on the current version and not finished.
    pub running: usize,
    /// Requests waiting for a task slot.
    pub queued: usize,
    /// The service's limits.
    pub limits: ServiceLimits,
}

/// Where a service's current module is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lifecycle {
    /// Nothing in memory; the next request compiles it.
    Cold,
    /// Compiling; requests wait.
    Loading,
    /// Compiled and serving.
    Warm,
}

/// Counters since start, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests parsed.
    pub requests: u64,
    /// Responses queued for sending, by class: index 0 for 1xx .. 4 for 5xx.
    pub responses_by_class: [u64; 5],
    /// Requests refused with 503 by admission control.
    pub shed: u64,
    /// Compilations started (cold starts).
    pub compiles: u64,
    /// Modules evicted after idling.
    pub evictions: u64,
    /// Time slices that ended with the guest still running.
    pub yields: u64,
    /// Tasks dropped before they finished (deadline passed, client gone).
    pub cancelled: u64,
    /// Connections closed unanswered because the client stopped sending while a guest
    /// still owed it a response (nginx's 499); their tasks count in `cancelled`.
    pub abandoned: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn(ConnId),
    Job(JobId),
    Idle(ServiceName),
}

/// A timer that moves lazily. Requests push a connection's or a service's deadline later
/// all the time; rather than take the timer out and put it back each time, the armed
/// timer stays where it is, and when it fires early it is armed again for the deadline
/// as it stands then. A busy period (no deadline) costs nothing either.
#[derive(Debug, Default)]
struct LazyTimer {
    /// When the armed timer fires, if one is armed.
    armed: Option<Instant>,
}

impl LazyTimer {
    /// Makes sure a timer fires no later than `deadline`.
    fn arm(&mut self, timers: &mut BTreeSet<(Instant, Timer)>, deadline: Instant, key: Timer) {
        if self.armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        if let Some(armed) = self.armed.replace(deadline) {
            timers.remove(&(armed, key.clone()));
        }
        timers.insert((deadline, key));
    }

    /// Takes the armed timer out, for an owner that goes away.
    fn cancel(&mut self, timers: &mut BTreeSet<(Instant, Timer)>, key: Timer) {
        if let Some(armed) = self.armed.take() {
            timers.remove(&(armed, key));
        }
    }

    /// The timer armed for `at` fired at `now`: true if `deadline` has come. A stale
    /// firing, or one while there is no deadline, is false; one before the deadline arms
    /// the timer again for it.
    fn fired(
        &mut self,
        timers: &mut BTreeSet<(Instant, Timer)>,
        at: Instant,
        now: Instant,
        deadline: Option<Instant>,
        key: Timer,
    ) -> bool {
        if self.armed != Some(at) {
            return false;
        }
        self.armed = None;
        match deadline {
            None => false,
            Some(deadline) if deadline > now => {
                self.arm(timers, deadline, key);
                false
            }
            Some(_) => true,
        }
    }
}

/// The frenezulo state machine. See the crate docs for the polling contract.
pub struct Server {
    config: ServerConfig,
    date: Bytes,
    conns: BTreeMap<ConnId, Conn>,
    services: BTreeMap<ServiceName, Service>,
    /// The services' routes, kept with `services`.
    router: Router,
    /// Replaced or removed module versions with tasks still running on them.
    retiring: BTreeMap<ModuleKey, usize>,
    jobs: BTreeMap<JobId, Job>,
    /// Management calls out with the driver: where to answer them.
    calls: BTreeMap<JobId, (ConnId, u64)>,
    next_job: u64,
    /// Tasks started and not finished, all services.
    running: usize,
    queued: usize,
    queued_bytes: usize,
    /// Per service name: its yielded tasks and the guest time it used.
    lanes: BTreeMap<ServiceName, Lane>,
    /// Services with work that may be able to run, by (virtual start time, arrival).
    ready: BTreeMap<(u64, u64), ServiceName>,
    /// Virtual time: the start tag of the last slice handed out. Never goes back.
    vclock: u64,
    /// Arrival number of the next lane to join `ready`: ties go to the earlier one.
    next_turn: u64,
    /// The slice out with the driver, if any: at most one at a time.
    slice_out: Option<SliceOut>,
    /// Tasks waiting on an outbound call; each still holds its slot (bounded by
    /// `max_running`).
    waiting: BTreeSet<JobId>,
    /// Tasks that sent part of their answer and wait for their connection to write it;
    /// each still holds its slot.
    held: BTreeSet<JobId>,
    timers: BTreeSet<(Instant, Timer)>,
    outputs: VecDeque<Output>,
    shutting_down: bool,
    /// Set while due timers fire: the next slice is chosen once all of them have, so a
    /// request whose deadline passed at the same instant is not started first.
    firing_timers: bool,
    stats: Stats,
    /// Inputs handled since the last [`Server::check_invariants`] (debug builds only).
    #[cfg(debug_assertions)]
    unchecked_inputs: usize,
}

impl Server {
    /// A server with no services and no connections.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            date: Bytes::new(),
            conns: BTreeMap::new(),
            services: BTreeMap::new(),
            router: Router::new(),
            retiring: BTreeMap::new(),
            jobs: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_job: 0,
            running: 0,
            queued: 0,
            queued_bytes: 0,
            lanes: BTreeMap::new(),
            ready: BTreeMap::new(),
            vclock: 0,
            next_turn: 0,
            slice_out: None,
            waiting: BTreeSet::new(),
            held: BTreeSet::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            shutting_down: false,
            firing_timers: false,
            stats: Stats::default(),
            #[cfg(debug_assertions)]
            unchecked_inputs: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Sets the `Date` header value for responses from now on (an IMF-fixdate). The core
    /// has no calendar clock, so the driver refreshes this about once a second.
    pub fn set_http_date(&mut self, date: &str) {
        if self.date[..] != *date.as_bytes() {
            self.date = Bytes::copy_from_slice(date.as_bytes());
        }
    }

    /// The registered services, by name.
    pub fn services(&self) -> impl Iterator<Item = ServiceInfo> + '_ {
        self.services.values().map(|s| ServiceInfo {
            module: s.key.clone(),
            state: s.state,
            running: s.running,
            queued: s.queue.len(),
            limits: s.limits,
        })
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Guest tasks started and not finished (running or yielded).
    pub fn running(&self) -> usize {
        self.running
    }

    /// Requests admitted and waiting for a task slot, all services.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the driver should read more from `conn`. False while the pipeline is full,
    /// while more than [`MAX_UNSENT`] bytes wait to be written ([`Input::Unsent`]), or
    /// when the connection will take no more requests (the driver then waits for output),
    /// unless a request body that streams to its task is still on its way.
    pub fn wants_read(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.takes_more(self.config.max_pipelined))
    }

    /// Whether shutdown was asked for and every connection is closed.
    pub fn is_drained(&self) -> bool {
        self.shutting_down && self.conns.is_empty()
    }

    /// The next thing the driver must do, if any. Drain this after every `handle`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the driver must next call `handle(now, Input::Timeout)`, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Feeds one input. Timers due at `now` fire first, whatever the input.
    pub fn handle(&mut self, now: Instant, input: Input<'_>) {
        // The slice ran whatever the timers due now do to its task: charge it first.
        if let Input::Yielded { job, ran }
        | Input::Waiting { job, ran }
        | Input::Streamed { job, ran, .. }
        | Input::Executed { job, ran, .. } = &input
        {
            self.charge(*job, *ran);
        }
        self.fire_timers(now);
        match input {
            Input::Timeout => {}
            Input::Connected {
                conn,
                remote,
                local,
            } => self.on_connected(now, conn, remote, local),
            Input::Received { conn, data } => self.on_received(now, conn, data),
            Input::ReadClosed { conn } => self.on_read_closed(now, conn),
            Input::Disconnected { conn } => self.drop_conn(now, conn),
            Input::Registry(change) => self.on_registry(now, change),
            Input::Compiled { module, result } => self.on_compiled(now, module, result),
            Input::Yielded { job, .. } => self.on_yielded(job),
            Input::Waiting { job, .. } => self.on_waiting(job),
            Input::Woken { job } => self.on_woken(job),
            Input::Streamed { job, piece, .. } => self.on_streamed(now, job, piece),
            Input::Executed { job, result, .. } => self.on_executed(now, job, result),
            Input::Managed { call, response } => self.on_managed(now, call, response),
            Input::Unsent { conn, bytes } => self.on_unsent(now, conn, bytes),
            Input::Shutdown => self.on_shutdown(now),
        }
        // `poll_output` only pops outputs, which no invariant covers: after `handle` is
        // the one place the state changes.
        #[cfg(debug_assertions)]
        self.check_after_handle();
    }

    fn fire_timers(&mut self, now: Instant) {
        self.firing_timers = true;
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let (at, timer) = self.timers.pop_first().expect("checked first");
            match timer {
                Timer::Conn(conn) => self.conn_timer(now, conn, at),
                Timer::Job(job) => self.job_timer(now, job),
                Timer::Idle(name) => self.idle_timer(now, name, at),
            }
        }
        self.firing_timers = false;
        self.pump();
    }
}
