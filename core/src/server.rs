//! The state machine: connections, routing, the registry, admission and lifecycle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use crate::guest::{GuestFailure, GuestRequest, ModuleKey, RunLimits};
use crate::http::{FramingLimits, ParseEvent, Request, RequestParser};
use crate::response::{self, Response};
use crate::route::{self, NameError, Route, ServiceName};

/// A connection, named by the driver. Ids must not be reused while the core knows the
/// connection (that is, until it emitted [`Output::Close`] or got [`Input::Disconnected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// One guest run, named by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// Settings for the whole server.
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
    /// Guest runs at once across all services (the driver's worker count).
    pub max_running: usize,
    /// Requests waiting for a worker across all services; past it, 503.
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
            max_running: 4,
            max_queued: 1024,
            max_queued_bytes: 256 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
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
    /// Instances of this service running at once.
    pub max_concurrency: usize,
    /// Requests of this service waiting for an instance (then 503).
    pub max_queued: usize,
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
        }
    }
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
    /// A [`Output::Compile`] finished.
    Compiled {
        /// The module that was compiled.
        module: ModuleKey,
        /// `Err` with a reason for the log if compilation failed.
        result: Result<(), String>,
    },
    /// An [`Output::Execute`] finished.
    Executed {
        /// The job.
        job: JobId,
        /// The guest's response, or why there is none.
        result: Result<Response, GuestFailure>,
    },
    /// Stop taking requests, answer those in flight, close connections as they go idle.
    Shutdown,
}

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
    /// Run a request on a compiled module; answer with [`Input::Executed`].
    Execute(Box<Execution>),
    /// Drop the compiled module; no job will use it again.
    Evict {
        /// The module to drop.
        module: ModuleKey,
    },
}

/// A guest run to carry out.
#[derive(Debug)]
pub struct Execution {
    /// Id to report the result under.
    pub job: JobId,
    /// The compiled module to run (announced by an earlier [`Output::Compile`]).
    pub module: ModuleKey,
    /// The request as the guest sees it.
    pub request: GuestRequest,
    /// Limits for this run.
    pub limits: RunLimits,
}

/// Why a registry change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The name is not a valid service name.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// `add` of a name that is already registered.
    #[error("service `{0}` already exists")]
    AlreadyExists(String),
    /// `replace` or `remove` of a name that is not registered.
    #[error("no service named `{0}`")]
    NotFound(String),
}

/// A service as listed by [`Server::services`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Current module version.
    pub module: ModuleKey,
    /// Lifecycle state.
    pub state: Lifecycle,
    /// Instances running now.
    pub running: usize,
    /// Requests waiting for an instance.
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
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn(ConnId),
    Job(JobId),
    Idle(ServiceName),
}

struct Slot {
    seq: u64,
    job: Option<JobId>,
    head_only: bool,
    close: bool,
    ready: Option<(Bytes, Bytes)>,
}

struct Conn {
    parser: RequestParser,
    remote: SocketAddr,
    local: SocketAddr,
    pipeline: VecDeque<Slot>,
    next_seq: u64,
    /// No more requests are parsed: a request asked to close, framing failed, or the peer
    /// stopped sending.
    stop_parsing: bool,
    /// When the current idle period or partial request began.
    since: Instant,
    was_mid_request: bool,
    deadline: Option<Instant>,
}

struct Service {
    key: ModuleKey,
    wasm: Bytes,
    limits: ServiceLimits,
    state: Lifecycle,
    running: usize,
    queue: VecDeque<JobId>,
    in_ready: bool,
    idle_deadline: Option<Instant>,
}

struct Job {
    conn: ConnId,
    seq: u64,
    service: ServiceName,
    deadline: Instant,
    /// The request while queued; `None` once dispatched.
    request: Option<GuestRequest>,
    /// The module it runs on, once dispatched.
    module: Option<ModuleKey>,
    /// The client no longer waits (timed out or gone); the result is dropped.
    abandoned: bool,
}

/// The frenezulo state machine. See the crate docs for the polling contract.
pub struct Server {
    config: ServerConfig,
    date: Bytes,
    conns: BTreeMap<ConnId, Conn>,
    services: BTreeMap<ServiceName, Service>,
    /// Replaced or removed module versions with jobs still running on them.
    retiring: BTreeMap<ModuleKey, usize>,
    jobs: BTreeMap<JobId, Job>,
    next_job: u64,
    next_version: u64,
    running: usize,
    queued: usize,
    queued_bytes: usize,
    /// Services with queued work that may be able to run, in round-robin order.
    ready: VecDeque<ServiceName>,
    timers: BTreeSet<(Instant, Timer)>,
    outputs: VecDeque<Output>,
    shutting_down: bool,
    stats: Stats,
}

impl Server {
    /// A server with no services and no connections.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            date: Bytes::new(),
            conns: BTreeMap::new(),
            services: BTreeMap::new(),
            retiring: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job: 0,
            next_version: 1,
            running: 0,
            queued: 0,
            queued_bytes: 0,
            ready: VecDeque::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            shutting_down: false,
            stats: Stats::default(),
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

    /// Registers a new service, cold until its first request.
    pub fn add_service(
        &mut self,
        name: &str,
        wasm: Bytes,
        limits: ServiceLimits,
    ) -> Result<ModuleKey, RegistryError> {
        let name = ServiceName::new(name)?;
        if self.services.contains_key(&name) {
            return Err(RegistryError::AlreadyExists(name.to_string()));
        }
        let key = self.new_key(&name);
        self.services.insert(
            name,
            Service {
                key: key.clone(),
                wasm,
                limits: self.clamp(limits),
                state: Lifecycle::Cold,
                running: 0,
                queue: VecDeque::new(),
                in_ready: false,
                idle_deadline: None,
            },
        );
        Ok(key)
    }

    /// Tells the core the driver already holds the compiled module for `module` (it compiled
    /// it to validate it, say): a cold service becomes warm without an [`Output::Compile`],
    /// and idles out like any other.
    pub fn module_loaded(&mut self, now: Instant, module: &ModuleKey) {
        let Some(service) = self.services.get_mut(&module.service) else {
            return;
        };
        if service.key == *module && service.state == Lifecycle::Cold {
            service.state = Lifecycle::Warm;
            self.mark_ready(&module.service);
            self.pump();
            self.arm_idle(now, &module.service);
        }
    }

    /// Replaces a service's module and limits. Requests already running finish on the old
    /// module; queued ones and new ones run on the new one.
    pub fn replace_service(
        &mut self,
        name: &str,
        wasm: Bytes,
        limits: ServiceLimits,
    ) -> Result<ModuleKey, RegistryError> {
        let key = {
            let name = ServiceName::new(name)?;
            if !self.services.contains_key(&name) {
                return Err(RegistryError::NotFound(name.to_string()));
            }
            self.new_key(&name)
        };
        let limits = self.clamp(limits);
        let service = self.services.get_mut(name).expect("checked above");
        let old = std::mem::replace(&mut service.key, key.clone());
        let old_state = std::mem::replace(&mut service.state, Lifecycle::Cold);
        let old_running = std::mem::take(&mut service.running);
        service.wasm = wasm;
        service.limits = limits;
        service.idle_deadline = None;
        let has_queue = !service.queue.is_empty();
        self.retire(old, old_state, old_running);
        if has_queue {
            self.start_loading(name);
        }
        self.pump();
        Ok(key)
    }

    /// Removes a service. Queued requests get 503; running ones finish.
    pub fn remove_service(&mut self, now: Instant, name: &str) -> Result<(), RegistryError> {
        let Some((_, service)) = self.services.remove_entry(name) else {
            return Err(RegistryError::NotFound(name.to_owned()));
        };
        self.ready.retain(|n| n.as_str() != name);
        for job in service.queue {
            self.left_queue(job);
            self.fail_job(now, job, Response::text(503, "service was removed"));
        }
        self.retire(service.key, service.state, service.running);
        Ok(())
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

    /// Guest runs handed out and not yet reported back.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Whether the driver should read more from `conn`. False while the pipeline is full
    /// or the connection will take no more requests; the driver then waits for output.
    pub fn wants_read(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| !c.stop_parsing && c.pipeline.len() < self.config.max_pipelined)
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
        self.fire_timers(now);
        match input {
            Input::Timeout => {}
            Input::Connected {
                conn,
                remote,
                local,
            } => self.on_connected(now, conn, remote, local),
            Input::Received { conn, data } => self.on_received(now, conn, data),
            Input::ReadClosed { conn } => self.on_read_closed(conn),
            Input::Disconnected { conn } => self.drop_conn(conn),
            Input::Compiled { module, result } => self.on_compiled(now, module, result),
            Input::Executed { job, result } => self.on_executed(now, job, result),
            Input::Shutdown => self.on_shutdown(),
        }
    }

    fn new_key(&mut self, name: &ServiceName) -> ModuleKey {
        let version = self.next_version;
        self.next_version += 1;
        ModuleKey {
            service: name.clone(),
            version,
        }
    }

    fn clamp(&self, mut limits: ServiceLimits) -> ServiceLimits {
        limits.body_bytes = limits.body_bytes.min(self.config.framing.max_body_bytes);
        limits.max_concurrency = limits.max_concurrency.max(1);
        limits
    }

    /// Drops a module version now, or once its running jobs finish.
    fn retire(&mut self, key: ModuleKey, state: Lifecycle, running: usize) {
        if running > 0 {
            self.retiring.insert(key, running);
        } else if state == Lifecycle::Warm {
            self.outputs.push_back(Output::Evict { module: key });
        }
        // A module still loading is evicted when its `Compiled` arrives, as stale.
    }

    fn on_connected(&mut self, now: Instant, conn: ConnId, remote: SocketAddr, local: SocketAddr) {
        if self.shutting_down {
            self.outputs.push_back(Output::Close { conn });
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                parser: RequestParser::new(self.config.framing),
                remote,
                local,
                pipeline: VecDeque::new(),
                next_seq: 0,
                stop_parsing: false,
                since: now,
                was_mid_request: false,
                deadline: None,
            },
        );
        self.arm_conn_timer(conn);
    }

    fn on_received(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.stop_parsing {
            return;
        }
        c.parser.push(data);
        self.parse(now, conn);
        self.arm_conn_timer(conn);
    }

    /// Parses as many requests as the pipeline has room for.
    fn parse(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.stop_parsing || c.pipeline.len() >= self.config.max_pipelined {
                break;
            }
            match c.parser.next_event() {
                Ok(None) => break,
                Ok(Some(ParseEvent::ContinueExpected)) => {
                    // Only when nothing is owed earlier, or the 100 would jump the queue.
                    if c.pipeline.is_empty() {
                        self.outputs.push_back(Output::Transmit {
                            conn,
                            head: Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
                            body: Bytes::new(),
                        });
                    }
                }
                Ok(Some(ParseEvent::Request(request))) => {
                    self.stats.requests += 1;
                    self.on_request(now, conn, request);
                }
                Err(e) => {
                    c.stop_parsing = true;
                    let seq = push_slot(c, false, true);
                    self.respond(now, conn, seq, Response::text(e.status(), &e.to_string()));
                    break;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            let mid = c.parser.is_mid_request();
            if mid && !c.was_mid_request {
                c.since = now;
            }
            c.was_mid_request = mid;
        }
    }

    fn on_request(&mut self, now: Instant, conn: ConnId, request: Request) {
        let shutting_down = self.shutting_down;
        let c = self
            .conns
            .get_mut(&conn)
            .expect("caller holds the connection");
        let close = !request.keep_alive || shutting_down;
        if close {
            c.stop_parsing = true;
        }
        let seq = push_slot(c, request.is_head(), close);
        let (remote, local) = (c.remote, c.local);
        let (name, path_info) = match route::route(request.path()) {
            Route::Service { name, path_info } => (name.to_owned(), path_info.to_owned()),
            Route::Management { .. } => {
                let r = Response::text(501, "the management API is not available in this version");
                return self.respond(now, conn, seq, r);
            }
            Route::NotFound => {
                return self.respond(
                    now,
                    conn,
                    seq,
                    Response::text(404, "no service at this path"),
                );
            }
        };
        let Some(service) = self.services.get(name.as_str()) else {
            return self.respond(
                now,
                conn,
                seq,
                Response::text(404, "no service at this path"),
            );
        };
        let limits = service.limits;
        if request.body.len() > limits.body_bytes {
            return self.respond(
                now,
                conn,
                seq,
                Response::text(413, "request body too large"),
            );
        }
        let runnable_now = service.state == Lifecycle::Warm
            && service.running < limits.max_concurrency
            && self.running < self.config.max_running
            && service.queue.is_empty();
        let queue_full = service.queue.len() >= limits.max_queued
            || self.queued >= self.config.max_queued
            || self.queued_bytes + request.body.len() > self.config.max_queued_bytes;
        if !runnable_now && queue_full {
            self.stats.shed += 1;
            let r = Response::text(503, "service is at capacity, retry shortly")
                .with_header("Retry-After", "1");
            return self.respond(now, conn, seq, r);
        }
        let job = JobId(self.next_job);
        self.next_job += 1;
        let service_name = service.key.service.clone();
        let script_name = format!("/{name}");
        let guest = GuestRequest {
            script_name,
            path_info,
            request,
            remote,
            local,
        };
        let deadline = now + limits.deadline;
        if let Some(slot) = self.conns.get_mut(&conn).and_then(|c| c.slot_mut(seq)) {
            slot.job = Some(job);
        }
        self.jobs.insert(
            job,
            Job {
                conn,
                seq,
                service: service_name.clone(),
                deadline,
                request: Some(guest),
                module: None,
                abandoned: false,
            },
        );
        self.timers.insert((deadline, Timer::Job(job)));
        if runnable_now {
            self.dispatch(job);
            return;
        }
        self.queued += 1;
        self.queued_bytes += self.queued_body(job);
        let service = self
            .services
            .get_mut(&service_name)
            .expect("looked up above");
        service.queue.push_back(job);
        service.idle_deadline = None;
        match service.state {
            Lifecycle::Cold => self.start_loading(service_name.as_str()),
            Lifecycle::Loading => {}
            Lifecycle::Warm => {
                self.mark_ready(&service_name);
                self.pump();
            }
        }
    }

    fn start_loading(&mut self, name: &str) {
        let service = self.services.get_mut(name).expect("caller checked");
        service.state = Lifecycle::Loading;
        self.stats.compiles += 1;
        self.outputs.push_back(Output::Compile {
            module: service.key.clone(),
            wasm: service.wasm.clone(),
        });
    }

    fn mark_ready(&mut self, name: &ServiceName) {
        if let Some(s) = self.services.get_mut(name)
            && !s.in_ready
            && !s.queue.is_empty()
            && s.state == Lifecycle::Warm
        {
            s.in_ready = true;
            self.ready.push_back(name.clone());
        }
    }

    /// Starts queued jobs while workers are free, one service at a time in turn, so a
    /// flooded service cannot starve a quiet one.
    fn pump(&mut self) {
        while self.running < self.config.max_running {
            let Some(name) = self.ready.pop_front() else {
                break;
            };
            let Some(service) = self.services.get_mut(&name) else {
                continue;
            };
            service.in_ready = false;
            if service.state != Lifecycle::Warm || service.running >= service.limits.max_concurrency
            {
                continue;
            }
            let Some(job) = service.queue.pop_front() else {
                continue;
            };
            self.left_queue(job);
            self.dispatch(job);
            self.mark_ready(&name);
        }
    }

    fn dispatch(&mut self, job_id: JobId) {
        let job = self.jobs.get_mut(&job_id).expect("dispatching a known job");
        let service = self
            .services
            .get_mut(&job.service)
            .expect("job of a live service");
        let request = job.request.take().expect("job dispatched once");
        job.module = Some(service.key.clone());
        service.running += 1;
        service.idle_deadline = None;
        self.running += 1;
        self.outputs.push_back(Output::Execute(Box::new(Execution {
            job: job_id,
            module: service.key.clone(),
            request,
            limits: RunLimits {
                memory_bytes: service.limits.memory_bytes,
                stdout_bytes: service.limits.stdout_bytes,
                deadline: job.deadline,
            },
        })));
    }

    fn on_compiled(&mut self, now: Instant, module: ModuleKey, result: Result<(), String>) {
        let current = self
            .services
            .get(&module.service)
            .is_some_and(|s| s.key == module && s.state == Lifecycle::Loading);
        if !current {
            if result.is_ok() {
                self.outputs.push_back(Output::Evict { module });
            }
            return;
        }
        let service = self
            .services
            .get_mut(&module.service)
            .expect("checked above");
        match result {
            Ok(()) => {
                service.state = Lifecycle::Warm;
                self.mark_ready(&module.service);
                self.pump();
                self.arm_idle(now, &module.service);
            }
            Err(_) => {
                service.state = Lifecycle::Cold;
                let queue = std::mem::take(&mut service.queue);
                for job in queue {
                    self.left_queue(job);
                    self.fail_job(now, job, Response::text(500, "service failed to load"));
                }
            }
        }
    }

    fn on_executed(&mut self, now: Instant, job_id: JobId, result: Result<Response, GuestFailure>) {
        // A report for an unknown or never-dispatched job is a driver bug: ignore it, so the
        // counts stay right.
        if self.jobs.get(&job_id).is_none_or(|j| j.module.is_none()) {
            return;
        }
        let job = self.forget_job(job_id).expect("checked above");
        let module = job.module.expect("checked above");
        self.running -= 1;
        match self.services.get_mut(&module.service) {
            Some(s) if s.key == module => s.running -= 1,
            _ => {
                if let Some(n) = self.retiring.get_mut(&module) {
                    *n -= 1;
                    if *n == 0 {
                        self.retiring.remove(&module);
                        self.outputs.push_back(Output::Evict {
                            module: module.clone(),
                        });
                    }
                }
            }
        }
        if !job.abandoned {
            let response = result.unwrap_or_else(|failure| failure.to_response());
            self.answer(now, job.conn, job.seq, response);
        }
        self.mark_ready(&module.service);
        self.pump();
        self.arm_idle(now, &module.service);
    }

    fn on_read_closed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.stop_parsing = true;
        if c.pipeline.is_empty() {
            self.close(conn);
        } else if let Some(last) = c.pipeline.back_mut() {
            last.close = true;
        }
    }

    fn on_shutdown(&mut self) {
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            let c = self.conns.get_mut(&conn).expect("listed above");
            if c.pipeline.is_empty() && !c.parser.is_mid_request() {
                self.close(conn);
            } else if let Some(last) = c.pipeline.back_mut() {
                c.stop_parsing = true;
                last.close = true;
            }
            // A connection mid-request gets its answer with `Connection: close`.
        }
    }

    /// Answers a job that never ran.
    fn fail_job(&mut self, now: Instant, job: JobId, response: Response) {
        if let Some(job) = self.forget_job(job)
            && !job.abandoned
        {
            self.answer(now, job.conn, job.seq, response);
        }
    }

    /// Fills the response slot `seq` of `conn` and queues what is ready, in order. Does
    /// not parse further requests: see [`Self::answer`].
    fn respond(&mut self, now: Instant, conn: ConnId, seq: u64, response: Response) {
        let class = usize::from(response.status / 100).clamp(1, 5) - 1;
        self.stats.responses_by_class[class] += 1;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(slot) = c.slot_mut(seq) else {
            return;
        };
        slot.ready = Some(response::serialize(
            &response,
            slot.head_only,
            slot.close,
            &self.date,
        ));
        let mut close = false;
        while c.pipeline.front().is_some_and(|s| s.ready.is_some()) {
            let slot = c.pipeline.pop_front().expect("checked front");
            let (head, body) = slot.ready.expect("checked ready");
            self.outputs
                .push_back(Output::Transmit { conn, head, body });
            if slot.close {
                close = true;
                break;
            }
        }
        if !close && c.pipeline.is_empty() {
            // Once the peer stopped sending and everything owed is out, close.
            close = c.stop_parsing && !c.parser.is_mid_request();
            c.since = now;
        }
        if close {
            self.close(conn);
        }
    }

    /// Responds from outside the parse loop, then parses requests that were waiting for
    /// room in the pipeline.
    fn answer(&mut self, now: Instant, conn: ConnId, seq: u64, response: Response) {
        self.respond(now, conn, seq, response);
        self.parse(now, conn);
        self.arm_conn_timer(conn);
    }

    fn close(&mut self, conn: ConnId) {
        self.drop_conn(conn);
        self.outputs.push_back(Output::Close { conn });
    }

    /// Forgets a connection and abandons its jobs.
    fn drop_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for slot in c.pipeline {
            let Some(job_id) = slot.job else { continue };
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            if job.module.is_some() {
                job.abandoned = true;
            } else {
                // Still queued: take it out of its service's queue.
                let service = job.service.clone();
                self.unqueue(&service, job_id);
                self.forget_job(job_id);
            }
        }
    }

    /// Removes a job and its deadline timer, so finished jobs leave no timers behind.
    fn forget_job(&mut self, id: JobId) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        self.timers.remove(&(job.deadline, Timer::Job(id)));
        Some(job)
    }

    /// Takes a job that never started out of its service's queue.
    fn unqueue(&mut self, service: &ServiceName, job: JobId) {
        if let Some(s) = self.services.get_mut(service)
            && let Some(pos) = s.queue.iter().position(|j| *j == job)
        {
            s.queue.remove(pos);
            self.left_queue(job);
        }
    }

    /// Body bytes a queued job holds.
    fn queued_body(&self, job: JobId) -> usize {
        self.jobs
            .get(&job)
            .and_then(|j| j.request.as_ref())
            .map_or(0, |r| r.request.body.len())
    }

    /// Counts a job out of the queues; call before the job is dispatched or forgotten.
    fn left_queue(&mut self, job: JobId) {
        self.queued -= 1;
        self.queued_bytes -= self.queued_body(job);
    }

    fn arm_conn_timer(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let deadline = if !c.pipeline.is_empty() {
            None
        } else if c.parser.is_mid_request() {
            Some(c.since + self.config.request_timeout)
        } else {
            Some(c.since + self.config.keep_alive_timeout)
        };
        if deadline != c.deadline {
            if let Some(old) = c.deadline {
                self.timers.remove(&(old, Timer::Conn(conn)));
            }
            if let Some(new) = deadline {
                self.timers.insert((new, Timer::Conn(conn)));
            }
            c.deadline = deadline;
        }
    }

    fn arm_idle(&mut self, now: Instant, name: &ServiceName) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        if s.state == Lifecycle::Warm
            && s.running == 0
            && s.queue.is_empty()
            && s.idle_deadline.is_none()
        {
            let at = now + self.config.idle_timeout;
            s.idle_deadline = Some(at);
            self.timers.insert((at, Timer::Idle(name.clone())));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let (at, timer) = self.timers.pop_first().expect("checked first");
            match timer {
                Timer::Conn(conn) => self.conn_timer(now, conn, at),
                Timer::Job(job) => self.job_timer(now, job),
                Timer::Idle(name) => self.idle_timer(name, at),
            }
        }
    }

    fn conn_timer(&mut self, now: Instant, conn: ConnId, at: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.deadline != Some(at) {
            return;
        }
        c.deadline = None;
        if c.parser.is_mid_request() {
            c.stop_parsing = true;
            let seq = push_slot(c, false, true);
            self.respond(
                now,
                conn,
                seq,
                Response::text(408, "request not received in time"),
            );
        } else {
            self.close(conn);
        }
    }

    fn job_timer(&mut self, now: Instant, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.abandoned {
            return;
        }
        let (conn, seq) = (job.conn, job.seq);
        if job.module.is_some() {
            // Running: answer now; the engine stops the guest at the same deadline and
            // its late result is dropped.
            job.abandoned = true;
            self.answer(now, conn, seq, GuestFailure::Timeout.to_response());
            return;
        }
        let service = job.service.clone();
        self.unqueue(&service, job_id);
        self.fail_job(
            now,
            job_id,
            Response::text(504, "service did not start in time"),
        );
    }

    fn idle_timer(&mut self, name: ServiceName, at: Instant) {
        let Some(s) = self.services.get_mut(&name) else {
            return;
        };
        if s.idle_deadline != Some(at) {
            return;
        }
        s.idle_deadline = None;
        if s.state == Lifecycle::Warm && s.running == 0 && s.queue.is_empty() {
            s.state = Lifecycle::Cold;
            self.stats.evictions += 1;
            self.outputs.push_back(Output::Evict {
                module: s.key.clone(),
            });
        }
    }
}

impl Conn {
    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        self.pipeline.iter_mut().find(|s| s.seq == seq)
    }
}

fn push_slot(c: &mut Conn, head_only: bool, close: bool) -> u64 {
    let seq = c.next_seq;
    c.next_seq += 1;
    c.pipeline.push_back(Slot {
        seq,
        job: None,
        head_only,
        close,
        ready: None,
    });
    seq
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REMOTE: &str = "127.0.0.1:50000";
    const LOCAL: &str = "127.0.0.1:8080";

    /// A fake driver: feeds inputs, collects outputs, keeps what each connection received.
    struct Harness {
        server: Server,
        now: Instant,
        sent: BTreeMap<ConnId, Vec<u8>>,
        closed: BTreeSet<ConnId>,
        compiles: Vec<ModuleKey>,
        executions: Vec<Execution>,
        evicted: Vec<ModuleKey>,
    }

    impl Harness {
        fn new(config: ServerConfig) -> Self {
            Self {
                server: Server::new(config),
                now: Instant::now(),
                sent: BTreeMap::new(),
                closed: BTreeSet::new(),
                compiles: Vec::new(),
                executions: Vec::new(),
                evicted: Vec::new(),
            }
        }

        fn with_service(mut self, name: &str, limits: ServiceLimits) -> Self {
            self.server
                .add_service(name, Bytes::from_static(b"wasm"), limits)
                .unwrap();
            self
        }

        fn input(&mut self, input: Input<'_>) {
            self.server.handle(self.now, input);
            while let Some(out) = self.server.poll_output() {
                match out {
                    Output::Transmit { conn, head, body } => {
                        let buf = self.sent.entry(conn).or_default();
                        buf.extend_from_slice(&head);
                        buf.extend_from_slice(&body);
                    }
                    Output::Close { conn } => {
                        assert!(self.closed.insert(conn), "closed twice");
                    }
                    Output::Compile { module, .. } => self.compiles.push(module),
                    Output::Execute(e) => self.executions.push(*e),
                    Output::Evict { module } => self.evicted.push(module),
                }
            }
        }

        fn connect(&mut self, id: u64) -> ConnId {
            let conn = ConnId(id);
            self.input(Input::Connected {
                conn,
                remote: REMOTE.parse().unwrap(),
                local: LOCAL.parse().unwrap(),
            });
            conn
        }

        fn send(&mut self, conn: ConnId, data: &str) {
            self.input(Input::Received {
                conn,
                data: data.as_bytes(),
            });
        }

        fn compile_all(&mut self) {
            for module in std::mem::take(&mut self.compiles) {
                self.input(Input::Compiled {
                    module,
                    result: Ok(()),
                });
            }
        }

        /// Finishes the oldest execution with a 200 whose body names its path.
        fn finish_oldest(&mut self) -> Execution {
            let e = self.executions.remove(0);
            let body = Bytes::from(e.request.request.target.clone());
            let response = Response {
                status: 200,
                headers: vec![],
                body,
            };
            self.input(Input::Executed {
                job: e.job,
                result: Ok(response),
            });
            e
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.input(Input::Timeout);
        }

        /// Status codes of the responses a connection got, in order.
        fn statuses(&self, conn: ConnId) -> Vec<u16> {
            let text = String::from_utf8_lossy(self.sent.get(&conn).map_or(&[][..], |v| v));
            text.match_indices("HTTP/1.1 ")
                .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
                .filter(|s| *s != 100)
                .collect()
        }

        fn text(&self, conn: ConnId) -> String {
            String::from_utf8_lossy(self.sent.get(&conn).map_or(&[][..], |v| v)).into_owned()
        }
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
    }

    fn config() -> ServerConfig {
        ServerConfig {
            max_running: 2,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn unknown_prefix_is_404_and_management_is_reserved() {
        let mut h = Harness::new(config()).with_service("shop", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &get("/"));
        h.send(c, &get("/shopping"));
        h.send(c, &get("/services"));
        assert_eq!(h.statuses(c), vec![404, 404, 501]);
        assert!(h.compiles.is_empty());
    }

    #[test]
    fn cold_start_compiles_once_then_runs_queued_requests() {
        let mut h = Harness::new(config()).with_service("shop", ServiceLimits::default());
        let c1 = h.connect(1);
        let c2 = h.connect(2);
        h.send(c1, &get("/shop/a?x=1"));
        h.send(c2, &get("/shop"));
        assert_eq!(h.compiles.len(), 1, "one compile for both requests");
        assert!(h.executions.is_empty());
        h.compile_all();
        assert_eq!(h.executions.len(), 2);
        let e = &h.executions[0];
        assert_eq!(e.request.script_name, "/shop");
        assert_eq!(e.request.path_info, "/a");
        assert_eq!(e.request.request.query(), "x=1");
        h.finish_oldest();
        h.finish_oldest();
        assert_eq!(h.statuses(c1), vec![200]);
        assert_eq!(h.statuses(c2), vec![200]);
        assert_eq!(h.server.stats().compiles, 1);
    }

    #[test]
    fn pipelined_responses_keep_request_order() {
        let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(
            c,
            &format!("{}{}{}", get("/s/1"), get("/nope"), get("/s/2")),
        );
        h.compile_all();
        assert_eq!(h.executions.len(), 2);
        // Finish the second run first: nothing may be sent until the first is done.
        let second = h.executions.remove(1);
        h.input(Input::Executed {
            job: second.job,
            result: Ok(Response::text(201, "second")),
        });
        assert!(h.statuses(c).is_empty());
        h.finish_oldest();
        assert_eq!(h.statuses(c), vec![200, 404, 201]);
        let text = h.text(c);
        assert!(text.find("/s/1").unwrap() < text.find("second").unwrap());
    }

    #[test]
    fn connection_close_and_http10_close_after_the_response() {
        let mut h = Harness::new(config());
        let c = h.connect(1);
        h.send(c, "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            h.statuses(c),
            vec![404],
            "nothing after a close request is parsed"
        );
        assert!(h.text(c).contains("Connection: close"));
        assert!(h.closed.contains(&c));
        let c = h.connect(2);
        h.send(c, "GET /x HTTP/1.0\r\n\r\n");
        assert!(h.closed.contains(&c));
    }

    #[test]
    fn head_gets_no_body_and_continue_comes_first() {
        let mut h = Harness::new(config());
        let c = h.connect(1);
        h.send(c, "HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n");
        let text = h.text(c);
        assert!(text.contains("Content-Length: 24"));
        assert!(text.ends_with("\r\n\r\n"));
        let c = h.connect(2);
        h.send(
            c,
            "POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(h.text(c), "HTTP/1.1 100 Continue\r\n\r\n");
        h.send(c, "ok");
        assert_eq!(h.statuses(c), vec![404]);
    }

    #[test]
    fn framing_errors_answer_then_close() {
        for (input, status) in [
            ("BROKEN\r\n\r\n", 400),
            (
                "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
                501,
            ),
            (
                "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n",
                413,
            ),
        ] {
            let mut h = Harness::new(config());
            let c = h.connect(1);
            h.send(c, input);
            assert_eq!(h.statuses(c), vec![status], "{input:?}");
            assert!(h.closed.contains(&c));
        }
        let mut h = Harness::new(config());
        let c = h.connect(1);
        let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
        h.send(c, &huge);
        assert_eq!(h.statuses(c), vec![431]);
    }

    #[test]
    fn per_service_body_limit_is_413() {
        let limits = ServiceLimits {
            body_bytes: 4,
            ..ServiceLimits::default()
        };
        let mut h = Harness::new(config()).with_service("s", limits);
        let c = h.connect(1);
        h.send(
            c,
            "POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(h.statuses(c), vec![413]);
    }

    #[test]
    fn full_queue_sheds_with_503_and_retry_after() {
        let limits = ServiceLimits {
            max_concurrency: 1,
            max_queued: 1,
            ..ServiceLimits::default()
        };
        let mut h = Harness::new(config()).with_service("s", limits);
        h.input(Input::Timeout);
        let conns: Vec<_> = (0..3).map(|i| h.connect(i)).collect();
        h.server.module_loaded(
            h.now,
            &ModuleKey {
                service: ServiceName::new("s").unwrap(),
                version: 1,
            },
        );
        for c in &conns {
            h.send(*c, &get("/s"));
        }
        assert_eq!(h.executions.len(), 1);
        assert_eq!(h.statuses(conns[2]), vec![503]);
        assert!(h.text(conns[2]).contains("Retry-After: 1"));
        assert_eq!(h.server.stats().shed, 1);
        h.finish_oldest();
        assert_eq!(h.executions.len(), 1, "the queued one starts");
        h.finish_oldest();
        assert_eq!(h.statuses(conns[0]), vec![200]);
        assert_eq!(h.statuses(conns[1]), vec![200]);
    }

    #[test]
    fn queued_bodies_are_bounded_in_bytes() {
        let mut config = config();
        config.max_queued_bytes = 10;
        let limits = ServiceLimits {
            max_concurrency: 1,
            ..ServiceLimits::default()
        };
        let mut h = Harness::new(config).with_service("s", limits);
        let post = |body: &str| {
            format!(
                "POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let conns: Vec<_> = (0..4).map(|i| h.connect(i)).collect();
        h.send(conns[0], &post("12345678"));
        h.compile_all();
        h.send(conns[1], &post("12345678"));
        h.send(conns[2], &post("12345678"));
        assert_eq!(
            h.statuses(conns[2]),
            vec![503],
            "8 + 8 queued bytes is over 10"
        );
        h.finish_oldest();
        h.send(conns[3], &post("12345678"));
        assert!(
            h.statuses(conns[3]).is_empty(),
            "queued again once the first left the queue"
        );
        h.finish_oldest();
        h.finish_oldest();
        assert_eq!(h.server.queued_bytes, 0);
    }

    #[test]
    fn a_flooded_service_does_not_starve_a_quiet_one() {
        let mut config = config();
        config.max_running = 1;
        let mut h = Harness::new(config)
            .with_service("noisy", ServiceLimits::default())
            .with_service("quiet", ServiceLimits::default());
        let n = h.connect(1);
        h.send(n, &get("/noisy"));
        h.compile_all();
        for i in 0..5 {
            let c = h.connect(10 + i);
            h.send(c, &get("/noisy"));
        }
        let q = h.connect(2);
        h.send(q, &get("/quiet"));
        h.compile_all();
        assert_eq!(h.executions.len(), 1);
        let mut order = Vec::new();
        while !h.executions.is_empty() {
            order.push(h.finish_oldest().module.service.as_str().to_owned());
        }
        // Services take turns: the quiet request runs within one slot of being queued,
        // ahead of the noisy backlog, not after all five.
        assert_eq!(order[..3], ["noisy", "noisy", "quiet"]);
        assert_eq!(order.len(), 7);
    }

    #[test]
    fn deadlines_answer_504_for_running_and_queued_requests() {
        let limits = ServiceLimits {
            deadline: Duration::from_millis(100),
            max_concurrency: 1,
            ..ServiceLimits::default()
        };
        let mut h = Harness::new(config()).with_service("s", limits);
        let a = h.connect(1);
        let b = h.connect(2);
        h.send(a, &get("/s"));
        h.compile_all();
        h.send(b, &get("/s"));
        assert_eq!(h.executions.len(), 1);
        h.advance(Duration::from_millis(100));
        assert_eq!(h.statuses(a), vec![504]);
        assert_eq!(h.statuses(b), vec![504]);
        assert_eq!(
            h.server.running(),
            1,
            "the guest still runs until the engine stops it"
        );
        h.finish_oldest();
        assert_eq!(h.statuses(a), vec![504], "a late result is dropped");
        assert_eq!(h.server.running(), 0);
    }

    #[test]
    fn idle_services_are_evicted_and_cold_started_again() {
        let mut config = config();
        config.idle_timeout = Duration::from_secs(5);
        let mut h = Harness::new(config).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &get("/s"));
        h.compile_all();
        h.finish_oldest();
        h.advance(Duration::from_secs(4));
        h.send(c, &get("/s"));
        h.finish_oldest();
        h.advance(Duration::from_secs(4));
        assert!(h.evicted.is_empty(), "a request resets the idle clock");
        h.advance(Duration::from_secs(2));
        assert_eq!(h.evicted.len(), 1);
        assert_eq!(h.server.services().next().unwrap().state, Lifecycle::Cold);
        let c = h.connect(2);
        h.send(c, &get("/s"));
        assert_eq!(h.compiles.len(), 1);
        assert_eq!(h.server.stats().evictions, 1);
    }

    #[test]
    fn replace_lets_running_requests_finish_on_the_old_version() {
        let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &get("/s"));
        h.compile_all();
        let old = h.executions[0].module.clone();
        let new = h
            .server
            .replace_service("s", Bytes::from_static(b"v2"), ServiceLimits::default())
            .unwrap();
        assert_ne!(old, new);
        assert!(h.evicted.is_empty(), "old version still running");
        h.finish_oldest();
        assert_eq!(h.evicted, vec![old]);
        assert_eq!(h.statuses(c), vec![200]);
        h.send(c, &get("/s"));
        assert_eq!(h.compiles, vec![new]);
        assert!(matches!(
            h.server
                .replace_service("nope", Bytes::new(), ServiceLimits::default()),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            h.server
                .add_service("s", Bytes::new(), ServiceLimits::default()),
            Err(RegistryError::AlreadyExists(_))
        ));
    }

    #[test]
    fn remove_answers_queued_requests_and_routes_404_after() {
        let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &get("/s"));
        h.input(Input::Timeout);
        let now = h.now;
        h.server.remove_service(now, "s").unwrap();
        h.input(Input::Timeout);
        assert_eq!(h.statuses(c), vec![503]);
        h.send(c, &get("/s"));
        assert_eq!(h.statuses(c), vec![503, 404]);
    }

    #[test]
    fn disconnect_drops_the_result_but_frees_the_worker() {
        let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &get("/s"));
        h.compile_all();
        h.input(Input::Disconnected { conn: c });
        assert_eq!(h.server.connection_count(), 0);
        h.finish_oldest();
        assert_eq!(h.server.running(), 0);
        assert!(h.statuses(c).is_empty());
    }

    #[test]
    fn idle_and_slow_connections_time_out() {
        let mut h = Harness::new(config());
        let idle = h.connect(1);
        let slow = h.connect(2);
        h.send(slow, "GET / HTTP/1.1\r\nHo");
        h.advance(Duration::from_secs(10));
        assert_eq!(h.statuses(slow), vec![408]);
        assert!(h.closed.contains(&slow));
        assert!(!h.closed.contains(&idle));
        h.advance(Duration::from_secs(5));
        assert!(h.closed.contains(&idle));
        assert!(h.statuses(idle).is_empty());
    }

    #[test]
    fn read_closed_still_answers_what_was_asked() {
        let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &get("/s"));
        h.input(Input::ReadClosed { conn: c });
        assert!(!h.closed.contains(&c));
        h.compile_all();
        h.finish_oldest();
        assert_eq!(h.statuses(c), vec![200]);
        assert!(h.closed.contains(&c));
    }

    #[test]
    fn shutdown_closes_idle_connections_and_drains_busy_ones() {
        let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
        let idle = h.connect(1);
        let busy = h.connect(2);
        h.send(busy, &get("/s"));
        h.compile_all();
        h.input(Input::Shutdown);
        assert!(h.closed.contains(&idle));
        assert!(!h.server.is_drained());
        h.finish_oldest();
        assert!(h.text(busy).contains("Connection: close"));
        assert!(h.closed.contains(&busy));
        assert!(h.server.is_drained());
        let late = h.connect(3);
        assert!(h.closed.contains(&late));
    }

    #[test]
    fn finished_requests_leave_no_timers_behind() {
        let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &get("/s"));
        h.compile_all();
        h.finish_oldest();
        let baseline = h.server.timers.len();
        for _ in 0..100 {
            h.send(c, &get("/s"));
            h.finish_oldest();
        }
        assert_eq!(
            h.server.timers.len(),
            baseline,
            "one timer per connection and idle service"
        );
    }

    #[test]
    fn a_full_pipeline_stops_reading() {
        let mut config = config();
        config.max_pipelined = 2;
        let mut h = Harness::new(config).with_service("s", ServiceLimits::default());
        let c = h.connect(1);
        h.send(c, &format!("{}{}{}", get("/s/1"), get("/s/2"), get("/s/3")));
        h.compile_all();
        assert!(!h.server.wants_read(c));
        assert_eq!(h.executions.len(), 2);
        h.finish_oldest();
        assert_eq!(
            h.executions.len(),
            2,
            "the buffered third request is parsed once there is room"
        );
        h.finish_oldest();
        h.finish_oldest();
        assert_eq!(h.statuses(c), vec![200, 200, 200]);
        assert!(h.server.wants_read(c));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request { conn: u8, service: u8 },
        Finish { index: u8, fail: bool },
        Compile,
        Advance { millis: u16 },
        Disconnect { conn: u8 },
        Replace { service: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 0u8..3).prop_map(|(conn, service)| Op::Request { conn, service }),
            3 => (any::<u8>(), any::<bool>()).prop_map(|(index, fail)| Op::Finish { index, fail }),
            1 => Just(Op::Compile),
            2 => (0u16..3000).prop_map(|millis| Op::Advance { millis }),
            1 => (0u8..4).prop_map(|conn| Op::Disconnect { conn }),
            1 => (0u8..3).prop_map(|service| Op::Replace { service }),
        ]
    }

    proptest! {
        /// Whatever happens, each request on a connection that stays open gets exactly one
        /// response, and no limit is exceeded.
        #[test]
        fn every_request_gets_one_response_and_limits_hold(ops in proptest::collection::vec(op(), 1..120)) {
            let limits = ServiceLimits {
                max_concurrency: 2,
                max_queued: 3,
                deadline: Duration::from_secs(2),
                ..ServiceLimits::default()
            };
            let mut config = config();
            config.max_running = 3;
            config.max_queued = 5;
            config.idle_timeout = Duration::from_secs(4);
            let mut h = Harness::new(config);
            for name in ["a", "b"] {
                h.server.add_service(name, Bytes::new(), limits).unwrap();
            }
            let names = ["a", "b", "zz"];
            let mut next_conn = 100u64;
            let mut conns: Vec<ConnId> = (0..4).map(|i| h.connect(i)).collect();
            let mut asked: BTreeMap<ConnId, usize> = BTreeMap::new();
            let mut dropped: BTreeSet<ConnId> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Request { conn, service } => {
                        let c = conns[conn as usize];
                        if h.server.wants_read(c) {
                            *asked.entry(c).or_default() += 1;
                            h.send(c, &get(&format!("/{}", names[service as usize])));
                        }
                    }
                    Op::Finish { index, fail } => {
                        if !h.executions.is_empty() {
                            let e = h.executions.remove(index as usize % h.executions.len());
                            let result = if fail { Err(GuestFailure::Timeout) } else { Ok(Response::text(200, "ok")) };
                            h.input(Input::Executed { job: e.job, result });
                        }
                    }
                    Op::Compile => h.compile_all(),
                    Op::Advance { millis } => h.advance(Duration::from_millis(u64::from(millis))),
                    Op::Disconnect { conn } => {
                        let c = conns[conn as usize];
                        h.input(Input::Disconnected { conn: c });
                        dropped.insert(c);
                        conns[conn as usize] = h.connect(next_conn);
                        next_conn += 1;
                    }
                    Op::Replace { service } => {
                        if service < 2 {
                            let _ = h.server.replace_service(names[service as usize], Bytes::new(), limits);
                            h.input(Input::Timeout);
                        }
                    }
                }
                prop_assert!(h.server.running() <= 3);
                prop_assert!(h.server.queued <= 5);
                for s in h.server.services() {
                    prop_assert!(s.running <= 2 && s.queued <= 3);
                }
            }
            // Let everything finish.
            for _ in 0..50 {
                h.compile_all();
                while !h.executions.is_empty() {
                    h.finish_oldest();
                }
                h.advance(Duration::from_secs(1));
            }
            prop_assert_eq!(h.server.running(), 0);
            prop_assert_eq!((h.server.queued, h.server.queued_bytes), (0, 0));
            for (c, n) in asked {
                if dropped.contains(&c) {
                    prop_assert!(h.statuses(c).len() <= n);
                } else {
                    prop_assert_eq!(h.statuses(c).len(), n, "conn {:?}", c);
                }
            }
        }
    }
}
