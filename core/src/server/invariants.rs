//! The core checks itself: every count it keeps recomputed from what it counts, and every
//! id it holds looked up. Debug builds run this after [`Server::handle`] (after every
//! input while the state is small); it costs time linear in the state, and release
//! builds never call it.

use std::collections::{BTreeMap, BTreeSet};

use super::sched::JobState;
use super::{JobId, Lifecycle, MAX_MANAGEMENT_CALLS, Server, Timer};
use crate::guest::ModuleKey;

/// Entries of state (jobs, connections, timers) the debug check may walk per input, on
/// average. Up to this size the state is checked after every input, as in the unit and
/// property tests; a larger one (the simulator's thousand-deep queues) every
/// `size / CHECK_BUDGET` inputs, so the check costs each input about as much as a walk of
/// this many entries rather than slowing a debug run by the state's size.
#[cfg(debug_assertions)]
const CHECK_BUDGET: usize = 64;

impl Server {
    /// Runs [`Server::check_invariants`] after an input, as often as [`CHECK_BUDGET`]
    /// allows: after every one while the state is small.
    #[cfg(debug_assertions)]
    pub(super) fn check_after_handle(&mut self) {
        self.unchecked_inputs += 1;
        let size = self.jobs.len() + self.conns.len() + self.timers.len();
        if self.unchecked_inputs.saturating_mul(CHECK_BUDGET) >= size {
            self.unchecked_inputs = 0;
            self.check_invariants();
        }
    }

    /// Panics, naming what is wrong, if the core's bookkeeping disagrees with itself: the
    /// task and queue counters against the jobs they count, the queues, lanes, waiting set
    /// and the slice out against the jobs they name, jobs and management calls against the
    /// connections that await them, the timers against their owners, and the route table
    /// against the services.
    ///
    /// Debug builds call it after [`Server::handle`]: after every input while the state
    /// is small, and every few inputs, in proportion to its size, once it is large. A
    /// driver or test may call it whenever it likes.
    pub fn check_invariants(&self) {
        self.check_jobs_and_counters();
        self.check_scheduler();
        self.check_connections();
        self.check_timers();
        self.check_services();
    }

    /// Jobs against the counters and the queues.
    fn check_jobs_and_counters(&self) {
        let mut queued = 0usize;
        let mut queued_bytes = 0usize;
        // Started and not finished, per module version they run on.
        let mut started: BTreeMap<&ModuleKey, usize> = BTreeMap::new();
        for (id, job) in &self.jobs {
            assert!(id.0 < self.next_job, "{id:?} is beyond next_job");
            assert!(
                !self.calls.contains_key(id),
                "{id:?} is both a job and a management call"
            );
            match &job.state {
                JobState::Queued(_) => {
                    queued += 1;
                    queued_bytes += super::sched::queued_body(job);
                    // Its place in its service's queue is checked from the queues below.
                }
                JobState::Started(module) => {
                    assert_eq!(
                        module.service, job.service,
                        "{id:?} runs on another service's module"
                    );
                    *started.entry(module).or_default() += 1;
                }
            }
        }

        // Every id in a queue is a distinct queued job of that service; with the count
        // equal to the jobs in state Queued, every queued job is in exactly one queue.
        let mut in_queues = BTreeSet::new();
        for (name, s) in &self.services {
            for id in &s.queue {
                let job = self
                    .jobs
                    .get(id)
                    .unwrap_or_else(|| panic!("queue of {name} holds unknown {id:?}"));
                assert!(
                    matches!(job.state, JobState::Queued(_)),
                    "queue of {name} holds {id:?}, which has started"
                );
                assert_eq!(
                    job.service, *name,
                    "queue of {name} holds {id:?} of another service"
                );
                assert!(in_queues.insert(*id), "{id:?} is queued twice");
            }
        }
        assert_eq!(
            in_queues.len(),
            queued,
            "service queues hold {} jobs, but {queued} jobs are in state Queued",
            in_queues.len()
        );
        assert_eq!(
            self.queued, queued,
            "queued is {}, but {queued} jobs are in state Queued",
            self.queued
        );
        assert_eq!(
            self.queued_bytes, queued_bytes,
            "queued_bytes is {}, but queued jobs' bodies add up to {queued_bytes}",
            self.queued_bytes
        );

        // A started task counts under its service while the service is on the version it
        // runs on, else under that version in `retiring`.
        let mut counted: BTreeMap<&ModuleKey, usize> = BTreeMap::new();
        let mut services_running = 0usize;
        for (name, s) in &self.services {
            services_running += s.running;
            if s.running > 0 {
                *counted.entry(&s.key).or_default() += s.running;
            }
            assert!(
                !self.retiring.contains_key(&s.key),
                "{name}'s current version {:?} is also retiring",
                s.key.version
            );
        }
        let mut retiring_running = 0usize;
        for (key, n) in &self.retiring {
            assert!(*n > 0, "retiring version {key:?} with no tasks was kept");
            retiring_running += n;
            *counted.entry(key).or_default() += n;
        }
        assert_eq!(
            self.running,
            services_running + retiring_running,
            "running is {}, but services count {services_running} and retiring versions \
             {retiring_running}",
            self.running
        );
        let started_total: usize = started.values().sum();
        assert_eq!(
            self.running, started_total,
            "running is {}, but {started_total} jobs are in state Started",
            self.running
        );
        assert_eq!(
            counted, started,
            "tasks counted per module version (services' running and retiring) differ from \
             the started jobs per version"
        );
        assert!(
            self.running <= self.config.max_running,
            "running {} is over max_running {}",
            self.running,
            self.config.max_running
        );
    }

    /// The slice out, the waiting and held sets, the lanes and `ready` against the jobs:
    /// every started task is in exactly one of the slice out, those sets and its lane.
    fn check_scheduler(&self) {
        let started = |id: &JobId, place: &str| {
            let job = self
                .jobs
                .get(id)
                .unwrap_or_else(|| panic!("{place} names unknown {id:?}"));
            assert!(
                matches!(job.state, JobState::Started(_)),
                "{place} names {id:?}, which has not started"
            );
            job
        };
        let mut placed = BTreeSet::new();
        if let Some(out) = &self.slice_out {
            let job = started(&out.job, "the slice out");
            assert_eq!(job.service, out.lane, "the slice out is in another lane");
            let lane = self
                .lanes
                .get(&out.lane)
                .unwrap_or_else(|| panic!("the slice out's lane {} is gone", out.lane));
            assert!(
                lane.queued_as.is_none(),
                "the lane of the slice out is also waiting for a turn"
            );
            placed.insert(out.job);
        }
        for id in &self.waiting {
            started(id, "the waiting set");
            assert!(placed.insert(*id), "{id:?} waits and is out at once");
        }
        for id in &self.held {
            let job = started(id, "the held set");
            assert!(placed.insert(*id), "{id:?} is held and elsewhere at once");
            let slot = self
                .conns
                .get(&job.conn)
                .and_then(|c| c.pipeline.iter().find(|s| s.seq == job.seq));
            assert!(
                slot.is_some_and(|s| s.stream.is_some()),
                "{id:?} is held but sends no answer in pieces"
            );
        }
        for (name, lane) in &self.lanes {
            for id in &lane.parked {
                let job = started(id, "a lane");
                assert_eq!(job.service, *name, "{id:?} is parked in another lane");
                assert!(
                    placed.insert(*id),
                    "{id:?} is parked twice or also elsewhere"
                );
            }
            if let Some(key) = lane.queued_as {
                assert_eq!(
                    self.ready.get(&key),
                    Some(name),
                    "lane {name} thinks it is ready as {key:?}"
                );
            }
        }
        for (key, name) in &self.ready {
            let lane = self
                .lanes
                .get(name)
                .unwrap_or_else(|| panic!("ready names {name}, which has no lane"));
            assert_eq!(
                lane.queued_as,
                Some(*key),
                "ready holds {name} under a key its lane does not know"
            );
        }
        assert_eq!(
            placed.len(),
            self.running,
            "{} started tasks are out, waiting or parked, but running is {}",
            placed.len(),
            self.running
        );
    }

    /// Jobs and management calls against the connections whose answers they owe, and
    /// each connection's pipeline against them.
    fn check_connections(&self) {
        let awaited = |conn, seq, id: &JobId, what: &str| {
            let c = self
                .conns
                .get(&conn)
                .unwrap_or_else(|| panic!("{what} {id:?} belongs to unknown {conn:?}"));
            let slot = c
                .pipeline
                .iter()
                .find(|s| s.seq == seq)
                .unwrap_or_else(|| panic!("{what} {id:?}: {conn:?} has no slot {seq}"));
            assert_eq!(slot.job, Some(*id), "{what} {id:?}: slot names another job");
            assert!(slot.ready.is_none(), "{what} {id:?}: its slot is answered");
        };
        for (id, job) in &self.jobs {
            awaited(job.conn, job.seq, id, "job");
        }
        assert!(
            self.calls.len() <= MAX_MANAGEMENT_CALLS,
            "{} management calls out",
            self.calls.len()
        );
        for (id, (conn, seq)) in &self.calls {
            assert!(id.0 < self.next_job, "call {id:?} is beyond next_job");
            awaited(*conn, *seq, id, "management call");
        }
        for (id, c) in &self.conns {
            let mut last = None;
            for slot in &c.pipeline {
                assert!(
                    last.is_none_or(|l| l < slot.seq) && slot.seq < c.next_seq,
                    "{id:?}: slot {} out of order",
                    slot.seq
                );
                last = Some(slot.seq);
                if let Some(job) = slot.job {
                    let live = self.jobs.contains_key(&job) || self.calls.contains_key(&job);
                    assert_eq!(
                        live,
                        slot.ready.is_none(),
                        "{id:?}: slot {} of {job:?}: job known {live}, answered {}",
                        slot.seq,
                        slot.ready.is_some()
                    );
                }
            }
            // Answers go out in order as soon as they can: the first slot still waits.
            assert!(
                c.pipeline
                    .front()
                    .is_none_or(|s| s.ready.is_none() && s.pending.is_empty()),
                "{id:?}: the first answer is ready, or has pieces, but was not sent"
            );
        }
    }

    /// Timers against their owners.
    fn check_timers(&self) {
        for (at, timer) in &self.timers {
            match timer {
                Timer::Job(id) => {
                    let job = self
                        .jobs
                        .get(id)
                        .unwrap_or_else(|| panic!("a deadline timer for unknown {id:?}"));
                    assert_eq!(job.deadline, *at, "{id:?}'s timer is not at its deadline");
                }
                Timer::Conn(id) => {
                    let c = self
                        .conns
                        .get(id)
                        .unwrap_or_else(|| panic!("a timer for unknown {id:?}"));
                    assert_eq!(c.timer.armed, Some(*at), "{id:?}: a timer it did not arm");
                }
                // A removed service leaves its idle timer behind, ignored when it fires
                // (unknown service, or not the time armed): nothing to check this way.
                Timer::Idle(_) => {}
            }
        }
        for (id, job) in &self.jobs {
            assert!(
                self.timers.contains(&(job.deadline, Timer::Job(*id))),
                "{id:?} has no deadline timer"
            );
        }
        for (id, c) in &self.conns {
            if let Some(at) = c.timer.armed {
                assert!(
                    self.timers.contains(&(at, Timer::Conn(*id))),
                    "{id:?}'s armed timer is missing"
                );
            }
        }
        for (name, s) in &self.services {
            if let Some(at) = s.idle_timer.armed {
                assert!(
                    self.timers.contains(&(at, Timer::Idle(name.clone()))),
                    "{name}'s armed idle timer is missing"
                );
            }
        }
    }

    /// Services against the route table and their own lifecycle.
    fn check_services(&self) {
        self.router.check_invariants();
        assert_eq!(
            self.router.service_count(),
            self.services.len(),
            "the router has {} services, the registry {}",
            self.router.service_count(),
            self.services.len()
        );
        for (name, s) in &self.services {
            assert_eq!(s.key.service, *name, "service {name} holds another's key");
            assert!(self.router.has(name), "{name} has no route");
            // Tasks start only on a warm version, and a version stays warm while any runs.
            assert!(
                s.running == 0 || s.state == Lifecycle::Warm,
                "{name} has {} tasks running but is {:?}",
                s.running,
                s.state
            );
            // Requests wait for a version that is loading or warm; a cold one is loaded
            // by the first request, and a failed load answers all that wait.
            assert!(
                s.queue.is_empty() || s.state != Lifecycle::Cold,
                "{name} has requests queued but is cold"
            );
        }
    }
}
