//! The serving loops: one thread per core, each with its own poller (epoll), its own
//! listener (`SO_REUSEPORT`), its own `frenezulo_core::Server` and its own guest tasks. A
//! request is read, parsed, routed, run and answered on the thread that accepted its
//! connection; nothing on that path takes a lock or touches another thread's memory.
//!
//! Guests run inline, one time slice at a time, in the order the core hands them out.
//! Each slice is timed and the time reported to the core, which shares the thread between
//! services by it. Between slices that yielded, the loop polls its sockets, so a looping
//! guest slows its thread's other work by a share and never stops it, and a client that
//! closed its connection meanwhile has its guest cancelled before the next slice.
//!
//! A guest waiting on an outbound HTTP call is set aside while a worker makes the call
//! ([`crate::outbound`]); the thread serves others meanwhile.
//!
//! Other threads reach a serving thread only through its [`Inbox`]: registry changes,
//! finished compiles and outbound calls, shutdown.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant, SystemTime};

use frenezulo_core::driver::{SliceOut, Slices};
use frenezulo_core::{
    ConnId, Execution, GuestFailure, Input, JobId, MAX_UNSENT, ManagementCall, ModuleKey, Output,
    RegistryChange, Responded, Response, Server, ServerConfig,
};
use frenezulo_engines::outbound::OutboundResult;
use frenezulo_engines::{CompiledModule, GuestTask, RunOutput, Slice};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, error, info, warn};

use crate::compile::{CompileDone, CompilePool, Compiled};
use crate::mailbox::Mailbox;
use crate::metrics::{ThreadMetrics, ThreadSnapshot};
use crate::outbound::{OutboundDone, OutboundPool};
use crate::registry::Publication;
use access::AccessLog;
use wake::TaskWake;

mod access;
mod net;
mod wake;

pub use net::bind;
use net::{Connection, Flushed, Phase};

/// A message for a serving thread.
pub enum Message {
    /// The registry changed; `compiled` is the module if it was compiled already.
    Registry(Publication),
    /// A compile this thread asked for finished.
    Compiled {
        /// The module version.
        module: ModuleKey,
        /// The compiled module, or why not.
        result: Compiled,
    },
    /// The answer to a management call this thread handed over.
    Managed {
        /// The call.
        call: JobId,
        /// What to send the client.
        response: Response,
    },
    /// An outbound call a task of this thread waits on finished.
    Outbound {
        /// The task.
        job: JobId,
        /// What the call came to.
        result: OutboundResult,
    },
    /// A parked task of this thread was woken: it may run again.
    Wake {
        /// The task.
        job: JobId,
    },
    /// Send a snapshot of this thread's state and counters.
    Snapshot(Sender<ThreadSnapshot>),
    /// Stop accepting, finish what is in flight, then exit.
    Shutdown,
    /// Exit now.
    Stop,
}

/// Where other threads send a serving thread messages; sending wakes its poller.
#[derive(Clone)]
pub struct Inbox {
    tx: Sender<Message>,
    waker: Arc<Waker>,
}

impl Inbox {
    /// Delivers `message`; a thread that has exited drops it.
    pub fn send(&self, message: Message) {
        if self.tx.send(message).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// A mailbox that delivers each item here as the message `wrap` makes of it.
    pub fn mailbox<T: 'static>(&self, wrap: fn(T) -> Message) -> Mailbox<T> {
        let inbox = self.clone();
        Mailbox::new(move |item| {
            inbox.send(wrap(item));
            true
        })
    }

    /// An inbox no thread reads: the test reads what was sent (keep the poller alive).
    #[cfg(test)]
    pub fn unattended() -> io::Result<(Self, std::sync::mpsc::Receiver<Message>, Poll)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = std::sync::mpsc::channel();
        Ok((Self { tx, waker }, rx, poll))
    }
}

/// A management call a serving thread hands over, with the thread to answer through.
pub struct ManagementRequest {
    /// The serving thread.
    pub thread: usize,
    /// The call.
    pub call: Box<ManagementCall>,
}

/// What one serving thread runs with.
pub struct Setup {
    /// Index of the thread, for logs.
    pub id: usize,
    /// Its share of the listening socket.
    pub listener: TcpListener,
    /// Its core's settings (server-wide limits already divided between threads).
    pub core: ServerConfig,
    /// Connections this thread holds at most; past it, it stops accepting.
    pub max_connections: usize,
    /// How long a response may wait on a full socket before the connection is dropped.
    pub write_timeout: Duration,
    /// The compile pool.
    pub compile: CompilePool,
    /// Where guests' outbound calls are made.
    pub outbound: OutboundPool,
    /// Messages to take before the first connection: the registry as it is at start.
    pub initial: Vec<Publication>,
    /// Where management calls go; a call it refuses (the management thread is busy) is
    /// answered 503.
    pub admin: Mailbox<ManagementRequest>,
    /// Whether to log a line per request.
    pub access_log: bool,
    /// Called as the thread ends, with false if it panicked.
    pub on_exit: Box<dyn FnOnce(bool) + Send>,
}

/// Runs the exit callback however the thread ends, unwinding included.
struct ExitGuard(Option<Box<dyn FnOnce(bool) + Send>>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        crate::logbuf::flush();
        if let Some(on_exit) = self.0.take() {
            on_exit(!std::thread::panicking());
        }
    }
}

/// Bytes read from a socket at once.
const READ_BUF: usize = 16 * 1024;
/// Reads from one connection per wake-up before the others get their turn.
const READS_PER_TURN: usize = 4;
/// Guest time one turn of the loop runs inline, between polls of the sockets.
const TURN_BUDGET: Duration = Duration::from_millis(2);
/// Log bytes a busy serving thread holds before it writes them.
const LOG_BATCH: usize = 16 * 1024;
/// How long a busy serving thread holds a log line at most (an idle one holds none).
const LOG_HOLD: Duration = Duration::from_millis(100);
/// How long accepting waits after it failed for want of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Stack of a serving thread: guests' host calls and wasmi's interpreter run on it.
const STACK: usize = 8 << 20;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Creates the thread's poller and inbox, then starts it.
pub fn spawn(mut setup: Setup) -> io::Result<Inbox> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = std::sync::mpsc::channel();
    let inbox = Inbox { tx, waker };
    let own = inbox.clone();
    let on_exit = std::mem::replace(&mut setup.on_exit, Box::new(|_| {}));
    std::thread::Builder::new()
        .name(format!("serve-{}", setup.id))
        .stack_size(STACK)
        .spawn(move || {
            let _exit = ExitGuard(Some(on_exit));
            crate::logbuf::batch_this_thread();
            let id = setup.id;
            match Loop::new(setup, poll, rx, own) {
                Ok(mut l) => l.run(),
                Err(e) => error!(thread = id, error = %e, "serving thread could not start"),
            }
        })?;
    Ok(inbox)
}

/// A guest task in progress on this thread.
struct Task {
    task: Box<dyn GuestTask>,
    module: ModuleKey,
    started: Instant,
    /// Time spent running its slices.
    busy: Duration,
    /// Its outbound call while one is out: dropped with the task, the call is skipped if
    /// no worker has started it.
    call: Option<crate::outbound::Pending>,
    /// Whether it is parked (what its waker fires on).
    wake: Arc<TaskWake>,
    /// The waker its slices run with, made once.
    waker: std::task::Waker,
}

struct Loop {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    /// Accepting stopped at `max_connections`; retried when a connection goes.
    accept_paused: bool,
    /// Accepting failed (out of file descriptors, say); retried at this instant.
    accept_retry: Option<Instant>,
    max_connections: usize,
    write_timeout: Duration,
    core: Server,
    inbox: Receiver<Message>,
    /// Where the compile pool answers this thread.
    compiled_to: Mailbox<CompileDone>,
    /// Where the outbound pool answers this thread.
    outbound_to: Mailbox<OutboundDone>,
    /// Where parked tasks' wakers send their wakes.
    wake_to: Mailbox<JobId>,
    compile: CompilePool,
    outbound: OutboundPool,
    /// Connections by slot; a slot's generation makes reused slots new `ConnId`s.
    conns: Vec<Option<Connection>>,
    generations: Vec<u32>,
    free: Vec<usize>,
    open: usize,
    /// Connections that may have more to read than their last turn took.
    read_again: Vec<usize>,
    /// Connections with output queued this turn, or closed: flushed before the next poll.
    unflushed: Vec<usize>,
    /// Write timeouts and linger ends, by slot.
    io_timers: BTreeSet<(Instant, usize)>,
    /// Few entries, looked up per request: ordered by key, no hashing of the name.
    modules: BTreeMap<ModuleKey, Arc<dyn CompiledModule>>,
    tasks: HashMap<JobId, Task>,
    /// The slice the core handed out and this turn's budget for running slices.
    slices: Slices,
    /// A slice that yielded, not yet reported: the core is told only after the sockets
    /// were polled and read, so it picks the next slice knowing the requests that arrived
    /// while the guest ran (a short request then goes before the long guest's next slice).
    yielded: Option<(JobId, Duration)>,
    /// The task that ended last and the guest time it used, for its response's log line.
    last_ended: Option<(JobId, Duration)>,
    admin: Mailbox<ManagementRequest>,
    access_log: AccessLog,
    /// When the oldest log line this thread holds was written, if it holds any.
    log_held_since: Option<Instant>,
    /// Debug builds check that this loop and its core keep the polling contract.
    #[cfg(debug_assertions)]
    monitor: frenezulo_core::contract::Monitor,
    metrics: ThreadMetrics,
    shutting_down: bool,
    date_second: u64,
    buf: Box<[u8]>,
}

impl Loop {
    fn new(setup: Setup, poll: Poll, inbox: Receiver<Message>, own: Inbox) -> io::Result<Self> {
        let mut listener = setup.listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let initial = setup.initial;
        let mut this = Self {
            id: setup.id,
            poll,
            listener: Some(listener),
            accept_paused: false,
            accept_retry: None,
            max_connections: setup.max_connections.max(1),
            write_timeout: setup.write_timeout,
            core: Server::new(setup.core),
            inbox,
            compiled_to: own.mailbox(|d: CompileDone| Message::Compiled {
                module: d.module,
                result: d.result,
            }),
            outbound_to: own.mailbox(|d: OutboundDone| Message::Outbound {
                job: d.job,
                result: d.result,
            }),
            wake_to: own.mailbox(|job| Message::Wake { job }),
            compile: setup.compile,
            outbound: setup.outbound,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            open: 0,
            read_again: Vec::new(),
            unflushed: Vec::new(),
            io_timers: BTreeSet::new(),
            modules: BTreeMap::new(),
            tasks: HashMap::new(),
            slices: Slices::new(TURN_BUDGET),
            yielded: None,
            last_ended: None,
            admin: setup.admin,
            access_log: AccessLog::new(setup.access_log),
            log_held_since: None,
            #[cfg(debug_assertions)]
            monitor: Default::default(),
            metrics: ThreadMetrics::default(),
            shutting_down: false,
            date_second: 0,
            buf: vec![0; READ_BUF].into_boxed_slice(),
        };
        for publication in initial {
            this.take(Message::Registry(publication));
        }
        Ok(this)
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.poll_timeout();
            // Look first; only a loop with nothing ready may sleep, and it writes the log
            // lines it holds before it does, so an idle server has none held.
            let mut polled = self.poll.poll(&mut events, Some(Duration::ZERO));
            if polled.is_ok() && events.is_empty() && timeout != Some(Duration::ZERO) {
                crate::logbuf::flush();
                self.log_held_since = None;
                polled = self.poll.poll(&mut events, timeout);
            }
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                error!(thread = self.id, error = %e, "poll failed; serving thread stops");
                return;
            }
            self.refresh_date();
            self.slices.begin_turn(Instant::now());
            // The inbox first, whatever woke the poll: a registry change published before a
            // client's connection arrived is in force for that connection's request.
            if !self.read_inbox() {
                return;
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => {
                        let slot = t - FIRST_CONN;
                        if event.is_writable() {
                            self.on_writable(slot);
                        }
                        let closed = event.is_read_closed() || event.is_error();
                        if event.is_readable() || closed {
                            self.on_readable(slot, closed);
                        }
                        // What this connection asked for runs before the next is read.
                        self.run_slices();
                    }
                }
            }
            for slot in std::mem::take(&mut self.read_again) {
                self.on_readable(slot, false);
            }
            let retry_due = self.accept_retry.is_some_and(|at| at <= Instant::now());
            if (self.accept_paused && self.open < self.max_connections) || retry_due {
                self.accept_paused = false;
                self.accept_retry = None;
                self.accept();
            }
            self.fire_io_timers();
            let now = Instant::now();
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.handle(Input::Timeout);
            }
            // Everything this turn read is with the core now: it may pick the next slice.
            if let Some((job, ran)) = self.yielded.take() {
                self.slices.reported();
                self.handle(Input::Yielded { job, ran });
            }
            self.run_slices();
            self.flush_unflushed();
            self.flush_log();
            if self.shutting_down && self.core.is_drained() && self.open == 0 {
                info!(thread = self.id, "all connections closed");
                return;
            }
        }
    }

    /// How long the next poll may block: not at all while a slice waits.
    fn poll_timeout(&self) -> Option<Duration> {
        if self.slices.is_out() || self.yielded.is_some() || !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        // No wake-up just for the `Date` header: it is refreshed whenever the poll returns.
        let next = [
            self.core.poll_timeout(),
            self.io_timers.first().map(|(at, _)| *at),
            self.accept_retry,
        ]
        .into_iter()
        .flatten()
        .min();
        next.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Writes the log lines held when they fill a batch or the oldest has waited long
    /// enough: a busy loop writes its log in a few large writes, not one per turn.
    fn flush_log(&mut self) {
        let held = crate::logbuf::buffered();
        if held == 0 {
            return;
        }
        let now = Instant::now();
        let since = *self.log_held_since.get_or_insert(now);
        if held >= LOG_BATCH || now.saturating_duration_since(since) >= LOG_HOLD {
            crate::logbuf::flush();
            self.log_held_since = None;
        }
    }

    fn refresh_date(&mut self) {
        let wall = SystemTime::now();
        let since_epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.access_log.turn(since_epoch.as_micros() as u64);
        let second = since_epoch.as_secs();
        if second != self.date_second {
            self.date_second = second;
            self.core.set_http_date(&httpdate::fmt_http_date(wall));
        }
    }

    /// Feeds the core one input and carries out what it asks.
    fn handle(&mut self, input: Input<'_>) {
        self.handle_at(Instant::now(), input);
    }

    /// [`Loop::handle`] with the time the input happened, when the caller just read it.
    fn handle_at(&mut self, now: Instant, input: Input<'_>) {
        #[cfg(debug_assertions)]
        self.monitor.input(&input);
        self.core.handle(now, input);
        self.carry_out();
    }

    fn carry_out(&mut self) {
        while let Some(output) = self.core.poll_output() {
            #[cfg(debug_assertions)]
            self.monitor.output(&output);
            let Some(output) = self.slices.take(output) else {
                continue;
            };
            match output {
                Output::Transmit { conn, head, body } => {
                    let Some(slot) = self.slot_of(conn) else {
                        continue;
                    };
                    let c = self.conns[slot].as_mut().expect("slot_of checked");
                    if c.queue(head, body) && !c.wants_writable {
                        self.unflushed.push(slot);
                    }
                    if !c.held && c.unsent() > MAX_UNSENT {
                        // A client that does not read: take no more of its requests until
                        // this is written, so its answers cannot pile up in memory.
                        c.held = true;
                        let bytes = c.unsent();
                        debug!(
                            slot,
                            bytes, "connection held: its answers wait to be written"
                        );
                        self.handle(Input::Unsent { conn, bytes });
                        continue;
                    }
                    // A full pipeline may have left bytes unread; there may be room now.
                    if c.readable && self.core.wants_read(conn) {
                        self.read_again.push(slot);
                    }
                }
                Output::Close { conn } => {
                    if let Some(slot) = self.slot_of(conn) {
                        self.conns[slot].as_mut().expect("slot_of checked").phase = Phase::Closing;
                        self.unflushed.push(slot);
                    }
                }
                Output::Compile { module, wasm } => {
                    info!(service = %module.service, version = module.version, thread = self.id, "cold start");
                    self.metrics.cold_start(&module.service);
                    if let Some(result) =
                        self.compile
                            .request(module.clone(), wasm, &self.compiled_to)
                    {
                        self.on_compiled(module, result);
                    }
                }
                Output::Cancel { job } => {
                    if let Some(task) = self.tasks.remove(&job) {
                        debug!(service = %task.module.service, job = job.0, ms = task.started.elapsed().as_secs_f64() * 1e3, "task cancelled");
                        self.last_ended = Some((job, task.busy));
                    }
                }
                Output::Evict { module } => {
                    if self.modules.remove(&module).is_some() {
                        info!(service = %module.service, version = module.version, thread = self.id, "evicted");
                        if self.modules.is_empty() {
                            crate::memory::give_back();
                        }
                    }
                }
                Output::Manage(call) => {
                    let id = call.call;
                    let request = ManagementRequest {
                        thread: self.id,
                        call,
                    };
                    // A full queue is answered at once rather than waited on.
                    if !self.admin.send(request) {
                        let response =
                            Response::text(503, "the management API is busy, retry shortly")
                                .with_header("Retry-After", "1");
                        self.handle(Input::Managed { call: id, response });
                    }
                }
                Output::Responded(r) => self.responded(&r),
                Output::RequestBody { job, piece } => {
                    if let Some(task) = self.tasks.get_mut(&job) {
                        task.task.push_body(piece);
                    }
                }
                other => warn!(?other, "output not understood by this driver"),
            }
        }
    }

    /// Counts a response and writes its access log line.
    fn responded(&mut self, r: &Responded) {
        let guest = match self.last_ended {
            Some((job, busy)) if Some(job) == r.job => busy,
            _ => Duration::ZERO,
        };
        self.metrics.record(r, guest);
        self.access_log.write(r, guest, self.id);
    }

    fn snapshot(&self) -> ThreadSnapshot {
        ThreadSnapshot {
            thread: self.id,
            stats: self.core.stats(),
            running: self.core.running(),
            queued: self.core.queued(),
            connections: self.core.connection_count(),
            services: self.core.services().collect(),
            metrics: self.metrics.clone(),
        }
    }

    /// Runs the slices the core hands out, until none is left, or this turn had a slice
    /// that yielded or spent its budget; then the loop polls its sockets.
    fn run_slices(&mut self) {
        loop {
            let now = Instant::now();
            let Some(slice) = self.slices.next(now) else {
                return;
            };
            if self.run_slice(now, slice) {
                self.slices.yielded();
            }
        }
    }

    /// Runs one slice handed out at `slice_began` and reports it with the time it took
    /// from then (what the core charges the service: the instance start is its cost too);
    /// returns whether the guest yielded. The clock is read as few times as it can be:
    /// this runs once per request.
    fn run_slice(&mut self, slice_began: Instant, slice: SliceOut) -> bool {
        // A task is kept in `tasks` only between slices: nearly all finish in their first.
        let (job, mut task) = match slice {
            SliceOut::Start(execution) => {
                let Execution {
                    job,
                    module,
                    request,
                    limits,
                } = *execution;
                let Some(compiled) = self.modules.get(&module) else {
                    error!(service = %module.service, version = module.version, "no compiled module to run");
                    let result = Err(GuestFailure::Instantiate("module not loaded".to_owned()));
                    let ran = slice_began.elapsed();
                    self.handle(Input::Executed { job, result, ran });
                    return false;
                };
                let (wake, waker) = TaskWake::new(job, self.wake_to.clone());
                let task = Task {
                    task: compiled.start(&request, &limits),
                    module,
                    started: slice_began,
                    busy: Duration::ZERO,
                    call: None,
                    wake,
                    waker,
                };
                (job, task)
            }
            SliceOut::Resume(job) => match self.tasks.remove(&job) {
                Some(task) => {
                    // A guest that yielded before is likely to run its whole slice: what
                    // is already answered goes out first, so clients need not wait for it.
                    self.flush_unflushed();
                    (job, task)
                }
                None => return false,
            },
        };
        let began = Instant::now();
        task.wake.running();
        // An engine bug on one guest must not take the serving thread down with it.
        let slice = std::panic::catch_unwind(AssertUnwindSafe(|| task.task.run_slice(&task.waker)))
            .unwrap_or_else(|_| {
                Slice::Finished(RunOutput {
                    result: Err(GuestFailure::Trap("the engine panicked".to_owned())),
                    stderr: Vec::new(),
                })
            });
        let ended = Instant::now();
        task.busy += ended.saturating_duration_since(began);
        let ran = ended.saturating_duration_since(slice_began);
        match slice {
            Slice::Parked if task.wake.park() => {
                // Its waker sends `Message::Wake` when it may go on.
                self.tasks.insert(job, task);
                self.handle_at(ended, Input::Waiting { job, ran });
                false
            }
            // Parked but woken already: as good as yielded.
            Slice::Yielded | Slice::Parked => {
                self.tasks.insert(job, task);
                self.yielded = Some((job, ran));
                true
            }
            Slice::Waiting(call) => {
                // The thread goes on with other work while the call is made elsewhere.
                match self.outbound.submit(job, call, self.outbound_to.clone()) {
                    Ok(pending) => {
                        task.call = Some(pending);
                        self.metrics.outbound_call(&task.module.service);
                        self.tasks.insert(job, task);
                        self.handle(Input::Waiting { job, ran });
                    }
                    Err(failed) => {
                        task.task.deliver(failed);
                        self.tasks.insert(job, task);
                        self.handle(Input::Yielded { job, ran });
                    }
                }
                false
            }
            Slice::Streamed(piece) => {
                // Its bytes go out before it runs again (see `SliceOut::Resume` above).
                self.tasks.insert(job, task);
                self.handle_at(ended, Input::Streamed { job, ran, piece });
                false
            }
            Slice::Finished(output) => {
                log_run(self.id, job, &task, &output, ended);
                self.last_ended = Some((job, task.busy));
                drop(task);
                let input = Input::Executed {
                    job,
                    result: output.result,
                    ran,
                };
                self.handle_at(ended, input);
                false
            }
        }
    }

    /// Takes messages from other threads; false when the thread must exit now.
    fn read_inbox(&mut self) -> bool {
        while let Ok(message) = self.inbox.try_recv() {
            if !self.take(message) {
                return false;
            }
        }
        true
    }

    /// Acts on one message; false when the thread must exit now.
    fn take(&mut self, message: Message) -> bool {
        match message {
            Message::Registry(Publication { change, compiled }) => {
                let module = match &change {
                    RegistryChange::Put { module, .. } => Some(module.clone()),
                    _ => None,
                };
                self.handle(Input::Registry(change));
                if let (Some(module), Some(compiled)) = (module, compiled) {
                    self.on_compiled(module, Ok(compiled));
                }
            }
            Message::Compiled { module, result } => self.on_compiled(module, result),
            Message::Managed { call, response } => self.handle(Input::Managed { call, response }),
            Message::Outbound { job, result } => {
                // A task cancelled while its call was out is gone; the result is dropped.
                if let Some(task) = self.tasks.get_mut(&job) {
                    task.call = None;
                    task.task.deliver(result);
                    self.handle(Input::Woken { job });
                }
            }
            Message::Wake { job } => {
                // A task cancelled while it was parked is gone; its wake is dropped.
                if self.tasks.contains_key(&job) {
                    self.handle(Input::Woken { job });
                }
            }
            Message::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Message::Shutdown => {
                self.shutting_down = true;
                if let Some(mut listener) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut listener);
                }
                self.handle(Input::Shutdown);
            }
            Message::Stop => return false,
        }
        true
    }

    fn on_compiled(&mut self, module: ModuleKey, result: Compiled) {
        let result = match result {
            Ok(compiled) => {
                self.modules.insert(module.clone(), compiled);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        self.handle(Input::Compiled { module, result });
    }

    fn accept(&mut self) {
        loop {
            if self.open >= self.max_connections {
                // The kernel's backlog holds the rest until a connection goes.
                self.accept_paused = true;
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut stream, remote) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off, then try again.
                    warn!(thread = self.id, error = %e, "accept failed");
                    self.accept_retry = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(remote);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            });
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot + FIRST_CONN),
                Interest::READABLE,
            ) {
                warn!(error = %e, "could not register a connection");
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Connection::new(stream));
            self.open += 1;
            let conn = self.conn_id(slot);
            self.handle(Input::Connected {
                conn,
                remote,
                local,
            });
            // Edge-triggered: whatever arrived with the connection is read now.
            self.read_again.push(slot);
        }
    }

    fn conn_id(&self, slot: usize) -> ConnId {
        ConnId(u64::from(self.generations[slot]) << 32 | slot as u64)
    }

    /// The slot of a connection the core knows, if it is still open.
    fn slot_of(&self, conn: ConnId) -> Option<usize> {
        let slot = (conn.0 & 0xffff_ffff) as usize;
        let generation = (conn.0 >> 32) as u32;
        (self.generations.get(slot) == Some(&generation)
            && self.conns[slot]
                .as_ref()
                .is_some_and(|c| c.phase == Phase::Open))
        .then_some(slot)
    }

    /// Reads what the core wants of a connection. `peer_closed`: the poller saw the client
    /// close or reset it (EPOLLRDHUP, EPOLLHUP, EPOLLERR).
    fn on_readable(&mut self, slot: usize, peer_closed: bool) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        c.readable = true;
        match c.phase {
            Phase::Open => {}
            Phase::Closing => return,
            Phase::Lingering { .. } => {
                if c.drain_linger(&mut self.buf) {
                    self.release(slot);
                }
                return;
            }
        }
        let conn = self.conn_id(slot);
        if peer_closed && !self.core.wants_read(conn) {
            // Not read now (a full pipeline, or no more requests taken), the end of the
            // stream would go unseen until the guest ends: tell the core at once. A client
            // gone while its guest runs has the task cancelled at this slice boundary.
            self.handle(Input::ReadClosed { conn });
            return;
        }
        for _ in 0..READS_PER_TURN {
            if !self.core.wants_read(conn) {
                return;
            }
            let Some(c) = self.conns[slot].as_mut().filter(|c| c.phase == Phase::Open) else {
                return;
            };
            match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    c.readable = false;
                    self.handle(Input::ReadClosed { conn });
                    return;
                }
                Ok(n) => {
                    // A short read emptied the socket: the next bytes bring a new edge, so
                    // the read that would only say EAGAIN is skipped.
                    let drained = n < self.buf.len();
                    if drained {
                        c.readable = false;
                    }
                    let now = Instant::now();
                    self.core.handle(
                        now,
                        Input::Received {
                            conn,
                            data: &self.buf[..n],
                        },
                    );
                    self.carry_out();
                    if drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(conn = conn.0, error = %e, "read failed");
                    self.disconnect(slot);
                    return;
                }
            }
        }
        // More may be waiting: read again after the others had their turn.
        self.read_again.push(slot);
    }

    fn on_writable(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let flushed = c.flush(Instant::now());
        self.after_flush(slot, flushed);
    }

    /// Follows up a write: waits for writability, finishes a close, or drops a broken
    /// connection; a connection held for its unsent bytes is released once they are under
    /// the bound.
    fn after_flush(&mut self, slot: usize, flushed: Flushed) {
        let now = Instant::now();
        let c = self.conns[slot].as_mut().expect("caller checked");
        if c.held && c.unsent() <= MAX_UNSENT && !matches!(flushed, Flushed::Failed(_)) {
            c.held = false;
            let bytes = c.unsent();
            debug!(slot, bytes, "connection let go: its answers are written");
            if c.phase == Phase::Open {
                let conn = self.conn_id(slot);
                self.handle(Input::Unsent { conn, bytes });
                if self.conns[slot].as_ref().is_some_and(|c| c.readable)
                    && self.core.wants_read(conn)
                {
                    self.read_again.push(slot);
                }
            }
        }
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        match flushed {
            Flushed::Failed(e) => {
                debug!(slot, error = %e, "write failed");
                self.disconnect(slot);
            }
            Flushed::Blocked => {
                if !c.wants_writable {
                    c.wants_writable = true;
                    let _ = self.poll.registry().reregister(
                        &mut c.stream,
                        Token(slot + FIRST_CONN),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    let since = c.blocked_since.unwrap_or(now);
                    self.io_timers.insert((since + self.write_timeout, slot));
                }
            }
            Flushed::All => {
                if c.wants_writable {
                    c.wants_writable = false;
                    let _ = self.poll.registry().reregister(
                        &mut c.stream,
                        Token(slot + FIRST_CONN),
                        Interest::READABLE,
                    );
                }
                if c.phase == Phase::Closing {
                    self.linger(slot, now);
                }
            }
        }
    }

    /// Writes what this turn queued, every connection's responses in one go: the client
    /// side is woken once per batch, not once per response.
    fn flush_unflushed(&mut self) {
        let now = Instant::now();
        for slot in std::mem::take(&mut self.unflushed) {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.wants_writable {
                continue; // waiting for the socket: `on_writable` goes on
            }
            let flushed = c.flush(now);
            self.after_flush(slot, flushed);
        }
    }

    fn linger(&mut self, slot: usize, now: Instant) {
        let c = self.conns[slot].as_mut().expect("caller checked");
        if c.start_linger(now).is_err() {
            self.release(slot);
            return;
        }
        let Phase::Lingering { until } = c.phase else {
            unreachable!("start_linger sets it");
        };
        self.io_timers.insert((until, slot));
        if c.drain_linger(&mut self.buf) {
            self.release(slot);
        }
    }

    /// The connection broke: tell the core (if it still knows it) and let it go.
    fn disconnect(&mut self, slot: usize) {
        let open = self.conns[slot]
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Open);
        let conn = self.conn_id(slot);
        self.release(slot);
        if open {
            self.handle(Input::Disconnected { conn });
        }
    }

    /// Closes the socket and frees its slot.
    fn release(&mut self, slot: usize) {
        let Some(mut c) = self.conns[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.free.push(slot);
        self.open -= 1;
    }

    fn fire_io_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, slot)) = self.io_timers.first() {
            if at > now {
                break;
            }
            self.io_timers.pop_first();
            let Some(c) = self.conns[slot].as_ref() else {
                continue;
            };
            match c.phase {
                Phase::Lingering { until } if until <= now => self.release(slot),
                _ => match c.blocked_since {
                    Some(since) if since + self.write_timeout <= now => {
                        debug!(slot, "write timed out");
                        self.disconnect(slot);
                    }
                    // Blocked again since this timer was set: wait for the new deadline.
                    Some(since) => {
                        self.io_timers.insert((since + self.write_timeout, slot));
                    }
                    None => {}
                },
            }
        }
    }
}

fn log_run(thread: usize, job: JobId, task: &Task, output: &RunOutput, ended: Instant) {
    let service = &task.module.service;
    if !output.stderr.is_empty() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            info!(target: "guest", service = %service, "{line}");
        }
    }
    let us = ended.saturating_duration_since(task.started).as_micros() as u64;
    let busy_us = task.busy.as_micros() as u64;
    match &output.result {
        Ok(r) => {
            debug!(service = %service, thread, job = job.0, status = r.status, us, busy_us, "ran")
        }
        Err(failure) => {
            warn!(service = %service, thread, job = job.0, error = %failure, status = failure.status(), us, busy_us, "guest failed")
        }
    }
}
