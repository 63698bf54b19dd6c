//! Admission and the guest task run queue.
//!
//! A request is routed, admitted into its service's queue (or refused with 503 when the
//! queues are full), and started as a task once its service has a free slot. Tasks run one
//! time slice at a time, and only one slice is out with the driver at once, so the core
//! decides what runs next. A task waiting on an outbound call is set aside, holding its
//! slot, until it is woken. A task's deadline and its client leaving cancel it wherever
//! it is.
//!
//! # Sharing a thread's time
//!
//! Services with work share the thread's guest time by time used, not by turns:
//! start-time fair queueing (Goyal et al., 1996) over the time the driver reports for
//! each slice. Each service's lane carries a virtual time, the guest time it has been
//! charged divided by its `cpu_weight`; the lane with the lowest start tag runs next
//! (ties: the one that has waited longest), and a lane that comes back from idle starts
//! at the current virtual time, so it banks no credit while idle but does not queue
//! behind lanes that used more. A service of 12 us requests beside a looping guest so
//! runs about 167 requests per 2 ms slice of the loop, and waits behind at most one
//! slice of it per round. Within a lane the same rule shares its time between starting
//! waiting requests and resuming its own tasks that yielded, so a service's short
//! requests are not starved by its own long ones.
//!
//! Deficit round robin was the other candidate; it needs each slice's cost before it
//! runs (a slice's length is known only afterwards), sends a lane that wakes up to the
//! back of the round behind one that just used a whole quantum, and needs a quantum to
//! tune. Fair queueing on start tags needs neither and gives the same bound: between two
//! slices of a lane with work, another lane of equal weight runs at most the first
//! lane's last slice plus one slice of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{ConnId, Execution, JobId, Lifecycle, Output, Server, Timer};
use crate::guest::{BodyPiece, GuestFailure, GuestRequest, ModuleKey};
use crate::http::Request;
use crate::response::Response;
use crate::response::stream::Piece;
use crate::route::ServiceName;
use crate::router::Destination;

pub(super) struct Job {
    pub(super) conn: ConnId,
    pub(super) seq: u64,
    pub(super) service: ServiceName,
    pub(super) deadline: Instant,
    pub(super) state: JobState,
    /// Where the rest of a body that streams to the task goes; `None` for a request that
    /// came whole, or whose body was all in by the time it started.
    pub(super) body: Option<Box<BodyRelay>>,
}

/// Where the rest of a streaming request body goes: into the request while the job is
/// queued, then held until the task reported a slice (so the driver holds the task),
/// then out as [`Output::RequestBody`] as it arrives.
#[derive(Default)]
pub(super) struct BodyRelay {
    /// What the body may grow to (its declared length, else the service's limit): counted
    /// in `queued_bytes` while the job is queued, in place of bytes not yet arrived.
    reserved: usize,
    /// Bytes that arrived while the job was queued, for its request when it starts.
    early: BytesMut,
    /// Pieces that arrived after the start, before the task's first report.
    held: VecDeque<BodyPiece>,
    /// The task reported a slice: pieces go straight out.
    flowing: bool,
}

// Boxing the request would cost an allocation per request; jobs are few (bounded by the
// queues), so the unused bytes of a started one cost little.
#[allow(clippy::large_enum_variant)]
pub(super) enum JobState {
    /// Admitted, waiting for a task slot.
    Queued(GuestRequest),
    /// Started on this module version: its slice is out, or it is parked in its lane.
    Started(ModuleKey),
}

/// Most one slice is charged, whatever the driver reports: a clock jump or a suspended
/// machine must not push a service minutes behind every other.
const MAX_CHARGE: Duration = Duration::from_secs(1);

/// Which of its lane's two queues a slice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The first slice of a waiting request.
    Start,
    /// One more slice of a task that yielded or was woken.
    Resume,
}

impl Class {
    fn index(self) -> usize {
        match self {
            Class::Start => 0,
            Class::Resume => 1,
        }
    }
}

/// The slice out with the driver, and whom to charge for it.
pub(super) struct SliceOut {
    pub(super) job: JobId,
    pub(super) lane: ServiceName,
    class: Class,
    weight: u32,
}

/// One service's share of the thread: the tasks of that name that yielded, oldest first,
/// and the virtual time it used. Kept apart from the registry entry, so tasks of a
/// removed service still get turns.
pub(super) struct Lane {
    pub(super) parked: VecDeque<JobId>,
    /// Its key in `ready` while it waits for a turn.
    pub(super) queued_as: Option<(u64, u64)>,
    /// Virtual time at the end of its last slice: its next start tag while it has work.
    finish: u64,
    /// The lane's own clock, in nanoseconds: per [`Class`], where its time used has come
    /// to, and the tag of the class that ran last.
    used: [u64; 2],
    clock: u64,
    /// The class that ran last; the other goes first on a tie.
    last: Class,
}

impl Default for Lane {
    fn default() -> Self {
        Self {
            parked: VecDeque::new(),
            queued_as: None,
            finish: 0,
            used: [0; 2],
            clock: 0,
            // So a new lane's first tie goes to starting a request.
            last: Class::Resume,
        }
    }
}

impl Lane {
    /// Which queue the lane's next slice comes from: fair queueing on start tags again,
    /// between starting requests and resuming tasks. A queue that had no work starts at
    /// the lane's clock, so it banks no credit while empty.
    fn choose(&self, can_start: bool) -> Option<Class> {
        match (can_start, !self.parked.is_empty()) {
            (false, false) => None,
            (true, false) => Some(Class::Start),
            (false, true) => Some(Class::Resume),
            (true, true) => {
                let start = self.tag(Class::Start);
                let resume = self.tag(Class::Resume);
                let start_first = start < resume || (start == resume && self.last == Class::Resume);
                Some(if start_first {
                    Class::Start
                } else {
                    Class::Resume
                })
            }
        }
    }

    fn tag(&self, class: Class) -> u64 {
        self.used[class.index()].max(self.clock)
    }

    /// A slice of `class` goes out.
    fn begin(&mut self, class: Class) {
        let tag = self.tag(class);
        self.clock = tag;
        self.used[class.index()] = tag;
        self.last = class;
    }
}

impl Server {
    /// Routes a parsed request, then answers it at once or admits it as a job.
    /// `body_follows`: only the head is in (see [`Self::streams_body`]); the rest comes
    /// through [`Self::relay_body`]. Returns the job admitted, if it was.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        conn: ConnId,
        seq: u64,
        request: Request,
        body_follows: bool,
    ) -> Option<JobId> {
        let routed = match self.router.route(request.path()) {
            Destination::Service(routed) => routed,
            Destination::Management { path_info } => {
                let path_info = path_info.to_owned();
                self.manage(now, conn, seq, path_info, request);
                return None;
            }
            Destination::NotFound => {
                self.respond(now, conn, seq, not_found());
                return None;
            }
        };
        let Some(service) = self.services.get(routed.service) else {
            self.respond(now, conn, seq, not_found());
            return None;
        };
        // Counted under its service whatever the answer, a refusal (413, 503) included.
        if let Some(slot) = self.conns.get_mut(&conn).and_then(|c| c.slot_mut(seq)) {
            slot.service = Some(service.key.service.clone());
        }
        let limits = service.limits;
        // A body still on its way is counted at what it may grow to.
        let reserved = if body_follows {
            declared_length(&request).unwrap_or(limits.body_bytes)
        } else {
            0
        };
        if request.body.len() > limits.body_bytes {
            let r = Response::text(413, "request body too large");
            self.respond(now, conn, seq, r);
            return None;
        }
        let has_slot = service.state == Lifecycle::Warm
            && service.running < limits.max_concurrency
            && self.running < self.config.max_running
            && service.queue.is_empty();
        let queue_full = service.queue.len() >= limits.max_queued
            || self.queued >= self.config.max_queued
            || self.queued_bytes + request.body.len() + reserved > self.config.max_queued_bytes;
        if !has_slot && queue_full {
            self.stats.shed += 1;
            let r = Response::text(503, "service is at capacity, retry shortly")
                .with_header("Retry-After", "1");
            self.respond(now, conn, seq, r);
            return None;
        }
        let service_name = service.key.service.clone();
        let setup = service.setup.clone();
        let entrypoint = match routed.sub_route {
            Some(r) => r.entrypoint.clone(),
            None => setup.entrypoint.clone(),
        };
        let script_name = routed.script_name.to_owned();
        let path_info = routed.path_info.to_owned();
        let wildcard = routed.wildcard;
        let c = self
            .conns
            .get_mut(&conn)
            .expect("caller holds the connection");
        let guest = GuestRequest {
            script_name,
            path_info,
            request,
            remote: c.remote,
            local: c.local,
            entrypoint,
            wildcard,
            setup,
            body_follows,
        };
        let job = JobId(self.next_job);
        self.next_job += 1;
        if let Some(slot) = c.slot_mut(seq) {
            slot.job = Some(job);
        }
        let deadline = super::later(now, limits.deadline);
        self.queued += 1;
        self.queued_bytes += guest.request.body.len() + reserved;
        self.jobs.insert(
            job,
            Job {
                conn,
                seq,
                service: service_name.clone(),
                deadline,
                state: JobState::Queued(guest),
                body: body_follows.then(|| {
                    Box::new(BodyRelay {
                        reserved,
                        ..BodyRelay::default()
                    })
                }),
            },
        );
        self.timers.insert((deadline, Timer::Job(job)));
        self.disarm_idle(&service_name);
        let service = self
            .services
            .get_mut(&service_name)
            .expect("looked up above");
        service.queue.push_back(job);
        match service.state {
            Lifecycle::Cold => self.start_loading(&service_name),
            Lifecycle::Loading => {}
            Lifecycle::Warm => {
                self.mark_ready(&service_name);
                self.pump();
            }
        }
        Some(job)
    }

    /// Whether `head`, whose body is still on its way, starts now, and the body bytes its
    /// service allows if so: it goes to a service whose guests read their body as it
    /// arrives, and the length it declares (if any) is within that service's limit (else
    /// it is refused whole, with 413, as any other).
    pub(super) fn streams_body(&self, head: &Request) -> Option<usize> {
        let Destination::Service(routed) = self.router.route(head.path()) else {
            return None;
        };
        let s = self.services.get(routed.service)?;
        (s.setup.body_streams && declared_length(head).is_none_or(|n| n <= s.limits.body_bytes))
            .then_some(s.limits.body_bytes)
    }

    /// More of the body of the streaming `job` (gone already: dropped).
    pub(super) fn relay_body(&mut self, job_id: JobId, piece: BodyPiece) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(relay) = job.body.as_mut() else {
            return;
        };
        match (&mut job.state, piece) {
            // Within what it reserved: the connection stops it at the service's limit, the
            // parser at its declared length.
            (JobState::Queued(_), BodyPiece::Data(data)) => relay.early.extend_from_slice(&data),
            (JobState::Queued(guest), BodyPiece::End) => {
                guest.body_follows = false;
            }
            (_, piece) if relay.flowing => {
                self.outputs
                    .push_back(Output::RequestBody { job: job_id, piece });
            }
            (_, piece) => relay.held.push_back(piece),
        }
    }

    /// The task reported a slice: the driver holds it, so its body may flow from now on.
    fn body_flows(&mut self, job_id: JobId) {
        let Some(relay) = self.jobs.get_mut(&job_id).and_then(|j| j.body.as_mut()) else {
            return;
        };
        if relay.flowing {
            return;
        }
        relay.flowing = true;
        for piece in relay.held.drain(..) {
            self.outputs
                .push_back(Output::RequestBody { job: job_id, piece });
        }
    }

    /// Hands a management request to the driver, unless too many are out already.
    fn manage(
        &mut self,
        now: Instant,
        conn: ConnId,
        seq: u64,
        path_info: String,
        request: Request,
    ) {
        if self.calls.len() >= super::MAX_MANAGEMENT_CALLS {
            self.stats.shed += 1;
            let r = Response::text(503, "too many management calls in progress, retry shortly")
                .with_header("Retry-After", "1");
            return self.respond(now, conn, seq, r);
        }
        let c = self
            .conns
            .get_mut(&conn)
            .expect("caller holds the connection");
        let call = JobId(self.next_job);
        self.next_job += 1;
        if let Some(slot) = c.slot_mut(seq) {
            slot.job = Some(call);
        }
        self.calls.insert(call, (conn, seq));
        self.outputs
            .push_back(Output::Manage(Box::new(super::ManagementCall {
                call,
                path_info,
                request,
                remote: c.remote,
            })));
    }

    pub(super) fn on_managed(&mut self, now: Instant, call: JobId, response: Response) {
        // A call whose client left meanwhile was forgotten; its answer is dropped.
        if let Some((conn, seq)) = self.calls.remove(&call) {
            self.answer(now, conn, seq, response);
        }
    }

    /// Whether `name` has a waiting request that could start now.
    fn can_start(&self, name: &ServiceName) -> bool {
        self.running < self.config.max_running
            && self.services.get(name).is_some_and(|s| {
                s.state == Lifecycle::Warm
                    && !s.queue.is_empty()
                    && s.running < s.limits.max_concurrency
            })
    }

    /// The task whose slice is out, if any.
    fn out_job(&self) -> Option<JobId> {
        self.slice_out.as_ref().map(|s| s.job)
    }

    /// Queues `name` for a turn if it has something to run. The lane whose slice is out
    /// is queued when the slice ends, once its time is charged.
    pub(super) fn mark_ready(&mut self, name: &ServiceName) {
        if self.slice_out.as_ref().is_some_and(|s| s.lane == *name) {
            return;
        }
        let can_start = self.can_start(name);
        let lane = self.lanes.entry(name.clone()).or_default();
        if lane.queued_as.is_none() && (can_start || !lane.parked.is_empty()) {
            // Back from idle, a lane starts at the current virtual time.
            let key = (lane.finish.max(self.vclock), self.next_turn);
            self.next_turn = self.next_turn.wrapping_add(1);
            lane.queued_as = Some(key);
            self.ready.insert(key, name.clone());
        }
    }

    /// Hands the driver the next slice, unless one is out already: the lane with the
    /// lowest start tag gets it.
    pub(super) fn pump(&mut self) {
        if self.firing_timers {
            return;
        }
        while self.slice_out.is_none() {
            let Some(((tag, _), name)) = self.ready.pop_first() else {
                break;
            };
            let can_start = self.can_start(&name);
            let weight = self
                .services
                .get(&name)
                .map_or(1, |s| s.limits.cpu_weight.max(1));
            let Some(lane) = self.lanes.get_mut(&name) else {
                continue;
            };
            lane.queued_as = None;
            let Some(class) = lane.choose(can_start) else {
                if lane.parked.is_empty() && !self.services.contains_key(&name) {
                    self.lanes.remove(&name);
                }
                continue;
            };
            self.vclock = self.vclock.max(tag);
            lane.finish = tag;
            lane.begin(class);
            let job = match class {
                Class::Resume => {
                    let job = lane.parked.pop_front().expect("choose checked");
                    self.outputs.push_back(Output::Resume { job });
                    job
                }
                Class::Start => {
                    let service = self.services.get_mut(&name).expect("can_start checked");
                    let job = service.queue.pop_front().expect("can_start checked");
                    self.left_queue(job);
                    self.start(job);
                    job
                }
            };
            self.slice_out = Some(SliceOut {
                job,
                lane: name,
                class,
                weight,
            });
        }
    }

    /// Charges the time the slice of `job` ran to its lane, if that slice is the one out.
    pub(super) fn charge(&mut self, job: JobId, ran: Duration) {
        let Some(out) = self.slice_out.as_ref().filter(|s| s.job == job) else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(&out.lane) else {
            return;
        };
        let nanos = u64::try_from(ran.min(MAX_CHARGE).as_nanos()).unwrap_or(u64::MAX);
        let weighted = nanos.div_ceil(u64::from(out.weight.max(1)));
        lane.finish = lane.finish.saturating_add(weighted);
        let used = &mut lane.used[out.class.index()];
        *used = used.saturating_add(nanos);
    }

    /// Starts a queued job as a task; its first slice goes out with the `Execute`.
    fn start(&mut self, job_id: JobId) {
        let job = self.jobs.get_mut(&job_id).expect("starting a known job");
        let service = self
            .services
            .get_mut(&job.service)
            .expect("job of a live service");
        let state = std::mem::replace(&mut job.state, JobState::Started(service.key.clone()));
        let JobState::Queued(mut request) = state else {
            unreachable!("a job is started once");
        };
        if let Some(relay) = job.body.as_mut() {
            // Counted out of `queued_bytes` with the request (`left_queue`).
            request.request.body = relay.early.split().freeze();
        }
        if !request.body_follows {
            job.body = None;
        }
        service.running += 1;
        self.running += 1;
        self.outputs.push_back(Output::Execute(Box::new(Execution {
            job: job_id,
            module: service.key.clone(),
            request,
            limits: service.limits.run_limits(),
        })));
    }

    pub(super) fn on_yielded(&mut self, job: JobId) {
        // A report for a slice that is not out (cancelled meanwhile) is dropped.
        if self.out_job() != Some(job) {
            return;
        }
        self.slice_out = None;
        self.body_flows(job);
        self.stats.yields += 1;
        self.park(job);
    }

    /// Puts a started task that can run again at the back of its service's lane.
    fn park(&mut self, job: JobId) {
        let name = self
            .jobs
            .get(&job)
            .expect("a started task has a job")
            .service
            .clone();
        self.lanes
            .entry(name.clone())
            .or_default()
            .parked
            .push_back(job);
        self.mark_ready(&name);
        self.pump();
    }

    /// The slice ended with a piece of the task's answer: it goes out, and the task runs
    /// again, unless its connection has more than [`super::MAX_UNSENT`] bytes unwritten:
    /// then it is held, keeping its slot, until they are written ([`Self::release`]), so
    /// a client that reads slowly makes the guest wait rather than the server buffer.
    pub(super) fn on_streamed(&mut self, now: Instant, job_id: JobId, piece: Piece) {
        let Some(out) = self.slice_out.take_if(|s| s.job == job_id) else {
            return;
        };
        self.stats.yields += 1;
        self.body_flows(job_id);
        let job = self.jobs.get(&job_id).expect("an out slice has a job");
        let conn = job.conn;
        self.stream_piece(now, conn, job.seq, piece);
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.unsent > super::MAX_UNSENT)
        {
            self.held.insert(job_id);
            self.mark_ready(&out.lane);
            self.pump();
        } else {
            self.park(job_id);
        }
    }

    /// A held task's connection wrote its backlog: the task may run again.
    pub(super) fn release(&mut self, job: JobId) {
        if self.held.remove(&job) {
            self.park(job);
        }
    }

    pub(super) fn on_waiting(&mut self, job: JobId) {
        let Some(out) = self.slice_out.take_if(|s| s.job == job) else {
            return;
        };
        self.body_flows(job);
        self.waiting.insert(job);
        // Its service may have requests that can start meanwhile.
        self.mark_ready(&out.lane);
        self.pump();
    }

    pub(super) fn on_woken(&mut self, job: JobId) {
        // A task cancelled while it waited is gone; its late wake-up is dropped.
        if self.waiting.remove(&job) {
            self.park(job);
        }
    }

    pub(super) fn on_executed(
        &mut self,
        now: Instant,
        job_id: JobId,
        result: Result<Response, GuestFailure>,
    ) {
        if self.out_job() != Some(job_id) {
            return;
        }
        self.slice_out = None;
        let job = self.forget_job(job_id).expect("out slice has a job");
        let JobState::Started(module) = &job.state else {
            unreachable!("an out slice belongs to a started job");
        };
        self.task_done(module);
        self.answer_task(now, job.conn, job.seq, result);
        self.after_task(now, &job.service);
    }

    /// A task of `name` ended: its slot may start a waiting request, its service may idle.
    fn after_task(&mut self, now: Instant, name: &ServiceName) {
        if self.running + 1 == self.config.max_running {
            // The server-wide cap was reached: any service may have been held back by it.
            let waiting: Vec<ServiceName> = self
                .services
                .iter()
                .filter(|(_, s)| !s.queue.is_empty())
                .map(|(n, _)| n.clone())
                .collect();
            for n in &waiting {
                self.mark_ready(n);
            }
        }
        self.mark_ready(name);
        self.pump();
        self.arm_idle(now, name);
    }

    /// Drops a task that has not finished, wherever it is.
    fn cancel_task(&mut self, job: JobId, module: &ModuleKey, name: &ServiceName) {
        if self.out_job() == Some(job) {
            self.slice_out = None;
        } else if !self.waiting.remove(&job)
            && !self.held.remove(&job)
            && let Some(lane) = self.lanes.get_mut(name)
        {
            lane.parked.retain(|j| *j != job);
        }
        self.outputs.push_back(Output::Cancel { job });
        self.stats.cancelled += 1;
        self.task_done(module);
    }

    /// The job's client is gone: forget it without an answer.
    pub(super) fn drop_job(&mut self, now: Instant, job_id: JobId) {
        if self.calls.remove(&job_id).is_some() {
            return;
        }
        let Some(job) = self.forget_job(job_id) else {
            return;
        };
        match &job.state {
            JobState::Queued(_) => self.unqueue(&job.service, job_id, &job),
            JobState::Started(module) => {
                self.cancel_task(job_id, module, &job.service);
                self.after_task(now, &job.service);
            }
        }
    }

    pub(super) fn job_timer(&mut self, now: Instant, job_id: JobId) {
        let Some(job) = self.forget_job(job_id) else {
            return;
        };
        match &job.state {
            JobState::Queued(_) => {
                self.unqueue(&job.service, job_id, &job);
                let r = Response::text(504, "service did not start in time");
                self.answer(now, job.conn, job.seq, r);
            }
            JobState::Started(module) => {
                self.cancel_task(job_id, module, &job.service);
                self.answer_task(now, job.conn, job.seq, Err(GuestFailure::Timeout));
                self.after_task(now, &job.service);
            }
        }
    }

    /// Answers a queued job that will never run.
    /// Answers every job of a service's `queue`, taken out of it, with `status` and `why`.
    /// All are counted out of the queue first: an answer may close a connection, which
    /// forgets the jobs still on it.
    pub(super) fn fail_queue(
        &mut self,
        now: Instant,
        queue: VecDeque<JobId>,
        status: u16,
        why: &str,
    ) {
        for &job in &queue {
            self.left_queue(job);
        }
        for job in queue {
            self.fail_job(now, job, Response::text(status, why));
        }
    }

    pub(super) fn fail_job(&mut self, now: Instant, job: JobId, response: Response) {
        if let Some(job) = self.forget_job(job) {
            self.answer(now, job.conn, job.seq, response);
        }
    }

    /// Removes a job and its deadline timer, so finished jobs leave no timers behind.
    fn forget_job(&mut self, id: JobId) -> Option<Job> {
        let job = self.jobs.remove(&id)?;
        self.timers.remove(&(job.deadline, Timer::Job(id)));
        Some(job)
    }

    /// Takes a forgotten job that never started out of its service's queue.
    fn unqueue(&mut self, service: &ServiceName, id: JobId, job: &Job) {
        if let Some(s) = self.services.get_mut(service)
            && let Some(pos) = s.queue.iter().position(|j| *j == id)
        {
            s.queue.remove(pos);
            super::decrement(&mut self.queued, 1, "queued");
            super::decrement(&mut self.queued_bytes, queued_body(job), "queued_bytes");
        }
    }

    /// Counts a job that is still known out of the queues, before it starts or is failed.
    pub(super) fn left_queue(&mut self, job: JobId) {
        let bytes = self.jobs.get(&job).map_or(0, queued_body);
        super::decrement(&mut self.queued, 1, "queued");
        super::decrement(&mut self.queued_bytes, bytes, "queued_bytes");
    }
}

/// The body bytes a queued job counts: its whole body, or what a body still on its way
/// reserved.
pub(super) fn queued_body(job: &Job) -> usize {
    match &job.state {
        JobState::Queued(r) => r.request.body.len() + job.body.as_ref().map_or(0, |b| b.reserved),
        JobState::Started(_) => 0,
    }
}

fn not_found() -> Response {
    Response::text(404, "no service at this path")
}

/// The `Content-Length` a request head declares, if it declares a valid one.
fn declared_length(head: &Request) -> Option<usize> {
    std::str::from_utf8(head.header("content-length")?)
        .ok()?
        .parse()
        .ok()
}
