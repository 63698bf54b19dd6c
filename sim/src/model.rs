//! The simulation: the real `frenezulo_core::Server`, one per modelled serving thread,
//! driven in virtual time by a model of what the core does not contain.
//!
//! - Clients open a connection per request (`Connection: close`), at the times the
//!   workload says. Each connection lands on a serving thread chosen at random (as
//!   `SO_REUSEPORT` spreads them) and waits in that thread's accept queue (the kernel's
//!   listen backlog, bounded). A SYN that finds the queue full is dropped, and the client
//!   sends it again after 1 s, 2 s, 4 s... (Linux's retransmission timer) until it gives up.
//! - A serving thread is one CPU. It works in turns, as `servers/src/serve` does: it
//!   accepts the connections waiting at the start of the turn, and after each one runs the
//!   slice its request asked for; then it runs slices until one yields or the turn's 2 ms
//!   are spent. Each step costs the thread modelled time ([`Profile`]): a connection (accept,
//!   parse, answer, close), an instance start, the guest's run up to one slice. A slice's
//!   modelled time (its instance start included) is what the model reports to the core
//!   as `ran`, as the server reports the time it measured: the core's policy, sharing a
//!   thread between services by time, runs here unchanged.
//! - A guest may wait first (a timer, an upstream): its first slice starts the instance
//!   and parks, reported as `Input::Waiting` at once, as the serving loop reports a parked
//!   task; when the wait is over it is `Input::Woken` and runs like any other.
//! - With admission control off (the seed's behaviour) a thread accepts a connection only
//!   when it has a free slot: everything else waits in the kernel's backlog.
//! - Compiles run on a shared pool of compile threads; a module compiled once loads from
//!   the artifact cache afterwards.
//!
//! The clock always jumps to the next event. No wall clock is read: the core is given
//! instants counted from an epoch the caller passes in, and only their differences matter.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use frenezulo_core::contract::Monitor;
use frenezulo_core::driver::{SliceOut, Slices};
use frenezulo_core::{
    ConnId, GuestFailure, Input, JobId, ModuleKey, Output, RegistryChange, Response, Server,
    ServerConfig, ServiceLimits, ServiceName,
};

use crate::profile::Profile;
use crate::rng::Rng;
use crate::stats::ServiceStats;

/// Virtual time, in microseconds since the run began.
pub type Time = u64;

/// How long one request's guest runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Exec {
    /// Always this long, in microseconds.
    Fixed(f64),
    /// Exponentially distributed with this mean, in microseconds.
    Exponential(f64),
}

impl Exec {
    fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            Exec::Fixed(us) => *us,
            Exec::Exponential(mean) => rng.exponential(*mean),
        }
    }
}

/// When a service's requests arrive.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrivals {
    /// A Poisson process at this rate, per second.
    Poisson(f64),
    /// Bursts: a Poisson process at `rate` for `on_s` seconds, then nothing for `off_s`,
    /// repeated, starting at a random phase.
    Bursty {
        /// Rate within a burst, per second.
        rate: f64,
        /// Length of a burst, in seconds.
        on_s: f64,
        /// Gap between bursts, in seconds.
        off_s: f64,
    },
    /// A rate that swings between zero and twice `mean` over `period_s`, from a random phase.
    Diurnal {
        /// Mean rate, per second.
        mean: f64,
        /// Length of one cycle, in seconds.
        period_s: f64,
    },
}

/// One service of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// Its name (a valid service name).
    pub name: String,
    /// Its guests' run time.
    pub exec: Exec,
    /// Share of its guests that trap after their run time.
    pub trap_share: f64,
    /// Share of its guests that never finish (cancelled at the deadline).
    pub hang_share: f64,
    /// How long each guest waits first (a timer, an upstream), parked off its thread:
    /// its first slice starts the instance and parks; woken, it runs its `exec`.
    pub sleep: Option<Exec>,
    /// Its limits, server-wide (divided between threads as the server does).
    pub limits: ServiceLimits,
    /// Its traffic.
    pub arrivals: Arrivals,
}

/// One run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// Seconds of arrivals; the run then drains what was accepted.
    pub duration_s: f64,
    /// Serving threads.
    pub threads: usize,
    /// Each thread's accept queue (listen backlog).
    pub backlog: usize,
    /// frenezulo's admission control: accept everything, queue in the core, shed with 503.
    /// Off: accept only into a free slot, as the seed did; the rest waits in the backlog.
    pub admission: bool,
    /// The core's settings, server-wide.
    pub server: ServerConfig,
    /// The services.
    pub services: Vec<ServiceSpec>,
    /// Compile threads.
    pub compile_threads: usize,
    /// Modelled costs.
    pub profile: Profile,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Per service, in the order of the config.
    pub services: Vec<ServiceStats>,
    /// Compiles and artifact loads the serving threads waited for.
    pub cold_starts: u64,
    /// Modules evicted after idling.
    pub evictions: u64,
    /// Integral of warm modules' memory over the run, in MiB-seconds.
    pub memory_mib_s: f64,
    /// Events processed.
    pub events: u64,
    /// Core inputs handled.
    pub inputs: u64,
}

/// An invariant that did not hold; the message says which and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(Violation(format!($($msg)*)));
        }
    };
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client's connection attempt (`attempt` 0 is the first SYN).
    Arrival {
        service: usize,
        first: Time,
        attempt: u32,
    },
    /// A thread's step ends.
    Wake { thread: usize },
    /// A thread's core timer may be due.
    Timer { thread: usize },
    /// A compile finished.
    Compiled { module: ModuleKey },
    /// A parked task's wait is over (nothing, if it was cancelled meanwhile).
    TaskWoken { thread: usize, job: JobId },
}

struct Waiting {
    service: usize,
    first: Time,
    /// When the SYN that got into the queue arrived.
    queued: Time,
}

struct Conn {
    service: usize,
    first: Time,
    responses: u32,
}

struct Task {
    remaining: Option<f64>,
    trap: bool,
    /// The wait it parks for at its first slice, in microseconds.
    sleep: Option<Time>,
}

/// The step a thread is busy with until its `Wake`.
enum Step {
    Accept(Waiting),
    Slice {
        job: JobId,
        /// What it cost the thread, an instance start included: reported to the core.
        ran: Duration,
        finished: Option<Result<(), GuestFailure>>,
        /// It parked to wait this long, in microseconds.
        parked: Option<Time>,
    },
}

struct Thread {
    core: Server,
    /// Checks this thread and its core keep the polling contract.
    monitor: Monitor,
    backlog: VecDeque<Waiting>,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    tasks: HashMap<JobId, Task>,
    /// The slice the core handed out and the turn's budget.
    slices: Slices,
    step: Option<Step>,
    /// Compiles that finished while the thread was busy.
    inbox: Vec<ModuleKey>,
    in_turn: bool,
    turn_accepts: usize,
    last_input: Time,
    /// The earliest `Timer` event scheduled for it.
    timer_event: Option<Time>,
}

/// The run in progress.
struct Sim<'a> {
    cfg: &'a SimConfig,
    epoch: Instant,
    now: Time,
    end: Time,
    seq: u64,
    events: BinaryHeap<Reverse<(Time, u64, Event)>>,
    threads: Vec<Thread>,
    per_thread: ServerConfig,
    arrivals: Vec<Rng>,
    phases: Vec<f64>,
    exec: Vec<Rng>,
    faults: Vec<Rng>,
    sleeps: Vec<Rng>,
    spread: Rng,
    /// Connection attempts scheduled and not yet made.
    attempts_pending: usize,
    compile_free: Vec<Time>,
    compiling: BTreeMap<ModuleKey, Vec<usize>>,
    holders: BTreeMap<ModuleKey, usize>,
    compiled_before: BTreeSet<ModuleKey>,
    ended: BTreeSet<(usize, JobId)>,
    /// The task whose finished slice is being reported: the core may cancel it instead, if
    /// its deadline passed during that slice (timers fire before an input is taken).
    reporting: Option<(usize, JobId)>,
    memory_since: Time,
    out: Outcome,
}

/// The request line a client sends for `service`.
fn request(name: &str) -> Vec<u8> {
    format!("GET /{name} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Runs `cfg` to the end, checking invariants as it goes. `epoch` is the instant virtual
/// time zero maps to; any instant will do.
pub fn run(cfg: &SimConfig, epoch: Instant) -> Result<Outcome, Violation> {
    let root = Rng::new(cfg.seed);
    let per_thread = cfg.server.per_thread(cfg.threads);
    let threads = (0..cfg.threads)
        .map(|_| {
            let mut core = Server::new(per_thread.clone());
            for (i, s) in cfg.services.iter().enumerate() {
                // The version is the service's index + 1, which `start_slice` relies on.
                let module = ModuleKey {
                    service: ServiceName::new(&s.name).expect("scenario names are valid"),
                    version: 1 + i as u64,
                };
                core.handle(
                    epoch,
                    Input::Registry(RegistryChange::Put {
                        module,
                        wasm: Bytes::new(),
                        limits: s.limits.per_thread(cfg.threads),
                        setup: Default::default(),
                    }),
                );
            }
            Thread {
                core,
                monitor: Monitor::new(),
                backlog: VecDeque::new(),
                conns: HashMap::new(),
                next_conn: 0,
                tasks: HashMap::new(),
                slices: Slices::new(Duration::from_micros(cfg.profile.slice_us as u64)),
                step: None,
                inbox: Vec::new(),
                in_turn: false,
                turn_accepts: 0,
                last_input: 0,
                timer_event: None,
            }
        })
        .collect();
    let mut phases_rng = root.fork("phases");
    let mut sim = Sim {
        cfg,
        epoch,
        now: 0,
        end: (cfg.duration_s * 1e6) as Time,
        seq: 0,
        events: BinaryHeap::new(),
        threads,
        per_thread,
        arrivals: cfg
            .services
            .iter()
            .map(|s| root.fork(&format!("arrivals/{}", s.name)))
            .collect(),
        phases: cfg.services.iter().map(|_| phases_rng.unit()).collect(),
        exec: cfg
            .services
            .iter()
            .map(|s| root.fork(&format!("exec/{}", s.name)))
            .collect(),
        faults: cfg
            .services
            .iter()
            .map(|s| root.fork(&format!("faults/{}", s.name)))
            .collect(),
        sleeps: cfg
            .services
            .iter()
            .map(|s| root.fork(&format!("sleeps/{}", s.name)))
            .collect(),
        spread: root.fork("spread"),
        attempts_pending: 0,
        compile_free: vec![0; cfg.compile_threads.max(1)],
        compiling: BTreeMap::new(),
        holders: BTreeMap::new(),
        compiled_before: BTreeSet::new(),
        ended: BTreeSet::new(),
        reporting: None,
        memory_since: 0,
        out: Outcome {
            services: vec![ServiceStats::default(); cfg.services.len()],
            ..Outcome::default()
        },
    };
    for service in 0..cfg.services.len() {
        sim.schedule_arrival(service, 0);
    }
    sim.run()?;
    Ok(sim.out)
}

impl Sim<'_> {
    fn push(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    fn instant(&self, t: Time) -> Instant {
        self.epoch + Duration::from_micros(t)
    }

    fn time_of(&self, at: Instant) -> Time {
        at.saturating_duration_since(self.epoch).as_micros() as Time
    }

    /// Schedules the first arrival of `service` after `after`, if within the run.
    fn schedule_arrival(&mut self, service: usize, after: Time) {
        let spec = &self.cfg.services[service];
        let rng = &mut self.arrivals[service];
        let phase = self.phases[service];
        let mut t = after as f64 / 1e6;
        let next = loop {
            match spec.arrivals {
                Arrivals::Poisson(rate) => {
                    if rate <= 0.0 {
                        return;
                    }
                    break t + rng.exponential(1.0 / rate);
                }
                Arrivals::Bursty { rate, on_s, off_s } => {
                    if rate <= 0.0 {
                        return;
                    }
                    let cycle = on_s + off_s;
                    let candidate = t + rng.exponential(1.0 / rate);
                    let at = (candidate + phase * cycle) % cycle;
                    if at < on_s {
                        break candidate;
                    }
                    // In a gap: the process is memoryless, so go on from the next burst.
                    t = candidate + (cycle - at);
                }
                Arrivals::Diurnal { mean, period_s } => {
                    if mean <= 0.0 {
                        return;
                    }
                    let peak = 2.0 * mean;
                    t += rng.exponential(1.0 / peak);
                    let angle = std::f64::consts::TAU * (t / period_s + phase);
                    if rng.unit() < (1.0 + angle.sin()) / 2.0 {
                        break t;
                    }
                }
            }
            if t * 1e6 > self.end as f64 {
                return;
            }
        };
        let at = (next * 1e6) as Time;
        if at < self.end {
            self.attempts_pending += 1;
            self.push(
                at,
                Event::Arrival {
                    service,
                    first: at,
                    attempt: 0,
                },
            );
        }
    }

    fn run(&mut self) -> Result<(), Violation> {
        while let Some(Reverse((t, _, event))) = self.events.pop() {
            check!(
                t >= self.now,
                "time went backwards: {} after {}",
                t,
                self.now
            );
            self.now = t;
            self.out.events += 1;
            match event {
                Event::Arrival {
                    service,
                    first,
                    attempt,
                } => self.arrival(service, first, attempt)?,
                Event::Wake { thread } => {
                    self.finish_step(thread)?;
                    self.step(thread)?;
                }
                Event::Timer { thread } => {
                    if self.threads[thread].timer_event == Some(t) {
                        self.threads[thread].timer_event = None;
                    }
                    if self.threads[thread].step.is_none() {
                        self.step(thread)?;
                    }
                }
                Event::TaskWoken { thread, job } => {
                    // Cancelled meanwhile (its deadline, its client): nothing to wake.
                    if self.threads[thread].tasks.contains_key(&job) {
                        self.input(thread, Input::Woken { job })?;
                        if self.threads[thread].step.is_none() {
                            self.step(thread)?;
                        }
                    }
                }
                Event::Compiled { module } => {
                    self.compiled_before.insert(module.clone());
                    for thread in self.compiling.remove(&module).unwrap_or_default() {
                        self.threads[thread].inbox.push(module.clone());
                        if self.threads[thread].step.is_none() {
                            self.step(thread)?;
                        }
                    }
                }
            }
            if self.now >= self.end && self.quiescent() {
                break;
            }
        }
        self.count_memory(self.end);
        for (i, th) in self.threads.iter().enumerate() {
            check!(
                th.conns.is_empty(),
                "thread {i}: {} connections never closed",
                th.conns.len()
            );
            check!(
                th.tasks.is_empty(),
                "thread {i}: {} tasks never ended",
                th.tasks.len()
            );
        }
        Ok(())
    }

    /// Nothing left that matters: arrivals over, every thread idle and empty.
    fn quiescent(&self) -> bool {
        self.attempts_pending == 0
            && self.compiling.is_empty()
            && self.threads.iter().all(|t| {
                t.step.is_none()
                    && t.backlog.is_empty()
                    && t.conns.is_empty()
                    && t.tasks.is_empty()
                    && !t.slices.is_out()
            })
    }

    fn arrival(&mut self, service: usize, first: Time, attempt: u32) -> Result<(), Violation> {
        self.attempts_pending -= 1;
        if attempt == 0 {
            self.out.services[service].offered += 1;
            self.schedule_arrival(service, first);
        }
        let thread = self.spread.below(self.cfg.threads);
        let th = &mut self.threads[thread];
        if th.backlog.len() < self.cfg.backlog {
            th.backlog.push_back(Waiting {
                service,
                first,
                queued: self.now,
            });
            if th.step.is_none() {
                self.step(thread)?;
            }
        } else if attempt < self.cfg.profile.syn_retries {
            // The SYN is dropped; the client's retransmission timer doubles each time.
            let rto = self.cfg.profile.syn_rto_ms * 1e3 * f64::from(1u32 << attempt.min(16));
            self.attempts_pending += 1;
            self.push(
                self.now + rto as Time,
                Event::Arrival {
                    service,
                    first,
                    attempt: attempt + 1,
                },
            );
        } else {
            self.out.services[service].connect_failed += 1;
        }
        Ok(())
    }

    /// Whether thread `i` may accept now: always with admission control, otherwise only
    /// into a free slot.
    fn can_accept(&self, i: usize) -> bool {
        let th = &self.threads[i];
        self.cfg.admission
            || (!th.slices.is_out()
                && th.core.running() + th.core.queued() < self.per_thread.max_running)
    }

    /// Thread `i` is free at `now`: takes its inbox and due timers, then starts its next
    /// step, or goes idle until something happens.
    fn step(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        for module in std::mem::take(&mut self.threads[i].inbox) {
            self.loaded(i, module)?;
        }
        if self.threads[i]
            .core
            .poll_timeout()
            .is_some_and(|at| self.time_of(at) <= now)
        {
            self.input(i, Input::Timeout)?;
        }
        for _ in 0..2 {
            let th = &self.threads[i];
            if !th.in_turn {
                let can_accept = !th.backlog.is_empty() && self.can_accept(i);
                if !th.slices.is_out() && !can_accept {
                    break;
                }
                let at = self.instant(now);
                let th = &mut self.threads[i];
                th.in_turn = true;
                th.turn_accepts = th.backlog.len();
                th.slices.begin_turn(at);
            }
            let at = self.instant(now);
            if let Some(slice) = self.threads[i].slices.next(at) {
                return self.start_slice(i, slice);
            }
            let th = &self.threads[i];
            if th.turn_accepts > 0 && !th.backlog.is_empty() && self.can_accept(i) {
                let th = &mut self.threads[i];
                th.turn_accepts -= 1;
                let waiting = th.backlog.pop_front().expect("checked");
                th.step = Some(Step::Accept(waiting));
                let done = now + self.cfg.profile.connection_us as Time;
                self.push(done, Event::Wake { thread: i });
                return Ok(());
            }
            self.threads[i].in_turn = false;
        }
        self.schedule_timer(i);
        Ok(())
    }

    fn start_slice(&mut self, i: usize, slice: SliceOut) -> Result<(), Violation> {
        let profile = &self.cfg.profile;
        let th = &mut self.threads[i];
        let (job, overhead) = match slice {
            SliceOut::Start(e) => {
                // `run` registers service `i` as version `i + 1`: no lookup by name per task.
                let service = (e.module.version - 1) as usize;
                let spec = &self.cfg.services[service];
                debug_assert_eq!(spec.name, e.module.service.as_str());
                let faults = &mut self.faults[service];
                let hang = faults.chance(spec.hang_share);
                let trap = !hang && faults.chance(spec.trap_share);
                let run = spec.exec.sample(&mut self.exec[service]);
                let sleep = spec.sleep.as_ref().map(|s| {
                    let us = s.sample(&mut self.sleeps[service]);
                    (us.max(1.0)) as Time
                });
                th.tasks.insert(
                    e.job,
                    Task {
                        remaining: (!hang).then_some(run),
                        trap,
                        sleep,
                    },
                );
                (e.job, profile.instance_us)
            }
            SliceOut::Resume(job) => (job, 0.0),
        };
        let task = th.tasks.get_mut(&job);
        check!(task.is_some(), "thread {i}: slice of unknown task {job:?}");
        let task = task.expect("checked");
        if let Some(sleep) = task.sleep.take() {
            // Parks as soon as its instance started: the slice costs only that.
            let cost = overhead.max(1.0) as Time;
            th.step = Some(Step::Slice {
                job,
                ran: Duration::from_micros(cost),
                finished: None,
                parked: Some(sleep),
            });
            self.push(self.now + cost, Event::Wake { thread: i });
            return Ok(());
        }
        let (ran, finished) = match task.remaining {
            Some(left) if left <= profile.slice_us => {
                let result = if task.trap {
                    Err(GuestFailure::Trap("modelled trap".to_owned()))
                } else {
                    Ok(())
                };
                (left, Some(result))
            }
            Some(left) => {
                task.remaining = Some(left - profile.slice_us);
                (profile.slice_us, None)
            }
            None => (profile.slice_us, None),
        };
        let cost = (ran + overhead).max(1.0) as Time;
        th.step = Some(Step::Slice {
            job,
            ran: Duration::from_micros(cost),
            finished,
            parked: None,
        });
        let done = self.now + cost;
        self.push(done, Event::Wake { thread: i });
        Ok(())
    }

    fn finish_step(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        let step = self.threads[i].step.take();
        match step {
            Some(Step::Accept(waiting)) => {
                let th = &mut self.threads[i];
                let conn = ConnId(th.next_conn);
                th.next_conn += 1;
                th.conns.insert(
                    conn,
                    Conn {
                        service: waiting.service,
                        first: waiting.first,
                        responses: 0,
                    },
                );
                let accepted = now.saturating_sub(self.cfg.profile.connection_us as Time);
                let stats = &mut self.out.services[waiting.service];
                stats
                    .accept_wait
                    .record(accepted.saturating_sub(waiting.first) as f64);
                stats
                    .backlog_wait
                    .record(accepted.saturating_sub(waiting.queued) as f64);
                let addr = "127.0.0.1:1".parse().expect("valid");
                self.input(
                    i,
                    Input::Connected {
                        conn,
                        remote: addr,
                        local: addr,
                    },
                )?;
                let bytes = request(&self.cfg.services[waiting.service].name);
                self.input(i, Input::Received { conn, data: &bytes })?;
            }
            Some(Step::Slice {
                job,
                ran,
                finished,
                parked,
            }) => match finished {
                // Reported at once, as the serving loop does: nothing else to poll for.
                None if parked.is_some() => {
                    self.input(i, Input::Waiting { job, ran })?;
                    let wait = parked.expect("checked");
                    self.push(now + wait, Event::TaskWoken { thread: i, job });
                }
                None => {
                    self.threads[i].slices.yielded();
                    self.input(i, Input::Yielded { job, ran })?;
                }
                Some(result) => {
                    let th = &mut self.threads[i];
                    check!(
                        th.tasks.remove(&job).is_some(),
                        "thread {i}: {job:?} ended twice"
                    );
                    let result = result.map(|()| Response {
                        status: 200,
                        headers: Vec::new(),
                        body: Bytes::from_static(b"ok"),
                    });
                    self.reporting = Some((i, job));
                    let reported = self.input(i, Input::Executed { job, result, ran });
                    self.reporting = None;
                    reported?;
                    // Ended here, unless the core cancelled it while taking the report.
                    if !self.ended.contains(&(i, job)) {
                        self.ended.insert((i, job));
                    }
                }
            },
            None => {}
        }
        Ok(())
    }

    /// Feeds thread `i`'s core one input at `now`, carries out its outputs, and checks the
    /// bounds.
    fn input(&mut self, i: usize, input: Input<'_>) -> Result<(), Violation> {
        let now = self.now;
        let at = self.instant(now);
        let th = &mut self.threads[i];
        check!(now >= th.last_input, "thread {i}: core time went backwards");
        th.last_input = now;
        self.out.inputs += 1;
        th.monitor.input(&input);
        th.core.handle(at, input);
        let mut compiled_now = Vec::new();
        while let Some(output) = self.threads[i].core.poll_output() {
            let th = &mut self.threads[i];
            th.monitor.output(&output);
            match &output {
                Output::Execute(e) => check!(
                    !th.tasks.contains_key(&e.job) && !self.ended.contains(&(i, e.job)),
                    "thread {i}: {:?} started twice",
                    e.job
                ),
                Output::Resume { job } => check!(
                    th.tasks.contains_key(job),
                    "thread {i}: resume of no task {job:?}"
                ),
                _ => {}
            }
            let was_out = th.slices.out_job();
            let Some(output) = th.slices.take(output) else {
                continue;
            };
            match output {
                Output::Transmit { .. } => {}
                Output::Close { conn } => {
                    let c = th.conns.remove(&conn);
                    check!(c.is_some(), "thread {i}: close of unknown {conn:?}");
                    let responses = c.map_or(0, |c| c.responses);
                    check!(
                        responses == 1,
                        "thread {i}: {conn:?} closed after {responses} responses"
                    );
                }
                Output::Responded(r) => {
                    let c = th.conns.get_mut(&r.conn);
                    check!(c.is_some(), "thread {i}: response on unknown {:?}", r.conn);
                    let c = c.expect("checked");
                    c.responses += 1;
                    let stats = &mut self.out.services[c.service];
                    let latency = now.saturating_sub(c.first) as f64;
                    stats.latency.record(latency);
                    if r.status / 100 == 2 {
                        stats.ok_latency.record(latency);
                        if now <= self.end {
                            stats.ok_in_window += 1;
                        }
                    }
                    *stats.by_status.entry(r.status).or_default() += 1;
                }
                Output::Compile { module, .. } => {
                    self.out.cold_starts += 1;
                    if self.holders.get(&module).is_some_and(|n| *n > 0) {
                        compiled_now.push(module);
                    } else {
                        self.request_compile(i, module);
                    }
                }
                Output::Cancel { job } => {
                    let pending_job = was_out;
                    let was_started = th.tasks.remove(&job).is_some();
                    let reported = self.reporting == Some((i, job));
                    // A task cancelled before its first slice ran was never started here.
                    check!(
                        was_started || pending_job == Some(job) || reported,
                        "thread {i}: cancel of no task {job:?} (ended before: {}, step: {})",
                        self.ended.contains(&(i, job)),
                        match &th.step {
                            Some(Step::Slice { job, .. }) => format!("slice of {job:?}"),
                            Some(Step::Accept(_)) => "accept".to_owned(),
                            None => "none".to_owned(),
                        }
                    );
                    check!(
                        self.ended.insert((i, job)),
                        "thread {i}: {job:?} ended twice"
                    );
                }
                Output::Evict { module } => {
                    self.out.evictions += 1;
                    self.release(&module);
                }
                other => return Err(Violation(format!("thread {i}: unexpected {other:?}"))),
            }
        }
        for module in compiled_now {
            self.loaded(i, module)?;
        }
        let th = &self.threads[i];
        let cfg = &self.per_thread;
        check!(
            th.backlog.len() <= self.cfg.backlog,
            "thread {i}: backlog over its bound"
        );
        check!(
            th.core.running() <= cfg.max_running,
            "thread {i}: running over max_running"
        );
        check!(
            th.core.queued() <= cfg.max_queued,
            "thread {i}: queued over max_queued"
        );
        for s in th.core.services() {
            check!(
                s.running <= s.limits.max_concurrency && s.queued <= s.limits.max_queued,
                "thread {i}: service {} over its limits",
                s.module.service
            );
        }
        Ok(())
    }

    fn request_compile(&mut self, thread: usize, module: ModuleKey) {
        if let Some(waiting) = self.compiling.get_mut(&module) {
            waiting.push(thread);
            return;
        }
        let (worker, free) = self
            .compile_free
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, t)| *t)
            .expect("at least one compile thread");
        let ms = if self.compiled_before.contains(&module) {
            self.cfg.profile.artifact_ms
        } else {
            self.cfg.profile.compile_ms
        };
        let done = free.max(self.now) + (ms * 1e3) as Time;
        self.compile_free[worker] = done;
        self.compiling.insert(module.clone(), vec![thread]);
        self.push(done, Event::Compiled { module });
    }

    /// Thread `i` holds the compiled `module` from now: its core is told.
    fn loaded(&mut self, i: usize, module: ModuleKey) -> Result<(), Violation> {
        self.count_memory(self.now);
        *self.holders.entry(module.clone()).or_default() += 1;
        self.input(
            i,
            Input::Compiled {
                module,
                result: Ok(()),
            },
        )
    }

    /// A thread dropped `module`.
    fn release(&mut self, module: &ModuleKey) {
        self.count_memory(self.now);
        if let Some(n) = self.holders.get_mut(module) {
            *n = n.saturating_sub(1);
        }
    }

    /// Adds the memory of the modules warm since the last count, up to `t` (within the run).
    fn count_memory(&mut self, t: Time) {
        let t = t.min(self.end);
        if t > self.memory_since {
            let warm = self.holders.values().filter(|n| **n > 0).count();
            self.out.memory_mib_s +=
                warm as f64 * self.cfg.profile.module_mib * (t - self.memory_since) as f64 / 1e6;
            self.memory_since = t;
        }
    }

    /// Makes sure an idle thread wakes for its core's next timer.
    fn schedule_timer(&mut self, i: usize) {
        let Some(at) = self.threads[i].core.poll_timeout() else {
            return;
        };
        let at = self.time_of(at).max(self.now);
        let th = &mut self.threads[i];
        if th.timer_event.is_none_or(|t| at < t) {
            th.timer_event = Some(at);
            self.push(at, Event::Timer { thread: i });
        }
    }
}
