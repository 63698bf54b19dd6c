//! The driver's side of time slices, written once for every driver: the slice the core
//! handed out and the driver has not run yet, and the budget of one turn of the driver's
//! loop (run slices until one yields or the budget is spent, then poll the sockets again).
//!
//! The serving loop and the simulator keep their slices in a [`Slices`]: outputs go
//! through [`Slices::take`], which keeps `Execute` and `Resume` and forgets a slice the
//! core cancelled before it ran; [`Slices::next`] hands the slice out while the turn
//! allows.

use std::time::{Duration, Instant};

use crate::server::{Execution, JobId, Output};

/// A slice the core handed out, not run yet. Exhaustive: the contract has these two.
#[derive(Debug)]
pub enum SliceOut {
    /// Start a task and run its first slice.
    Start(Box<Execution>),
    /// Run one more slice of a task that yielded or was woken.
    Resume(JobId),
}

impl SliceOut {
    /// The task the slice is of.
    pub fn job(&self) -> JobId {
        match self {
            SliceOut::Start(execution) => execution.job,
            SliceOut::Resume(job) => *job,
        }
    }
}

/// The slice out and the current turn's budget; see the module docs.
#[derive(Debug)]
pub struct Slices {
    out: Option<SliceOut>,
    budget: Duration,
    /// This turn runs no slice at or after this instant.
    turn_ends: Option<Instant>,
    /// A slice yielded this turn: the loop polls its sockets before the next.
    yielded: bool,
}

impl Slices {
    /// Nothing out yet; each turn runs slices for at most `budget`.
    pub fn new(budget: Duration) -> Self {
        Self {
            out: None,
            budget,
            turn_ends: None,
            yielded: false,
        }
    }

    /// Takes one output the core polled: keeps a slice (`Execute`, `Resume`) and gives
    /// back every other output to carry out. A `Cancel` is given back too (the driver drops
    /// the task), after forgetting the slice out if it is that task's.
    pub fn take(&mut self, output: Output) -> Option<Output> {
        let slice = match output {
            Output::Execute(execution) => SliceOut::Start(execution),
            Output::Resume { job } => SliceOut::Resume(job),
            Output::Cancel { job } => {
                if self.out.as_ref().is_some_and(|s| s.job() == job) {
                    self.out = None;
                }
                return Some(Output::Cancel { job });
            }
            other => return Some(other),
        };
        // The core hands out one slice at a time (the contract monitor checks it too).
        debug_assert!(self.out.is_none(), "two slices out");
        self.out = Some(slice);
        None
    }

    /// Whether a slice is out, not run yet (the loop then must not block in its poll).
    pub fn is_out(&self) -> bool {
        self.out.is_some()
    }

    /// The task whose slice is out, not run yet.
    pub fn out_job(&self) -> Option<JobId> {
        self.out.as_ref().map(SliceOut::job)
    }

    /// A turn of the loop begins at `now`: its budget starts afresh.
    pub fn begin_turn(&mut self, now: Instant) {
        self.turn_ends = Some(now + self.budget);
        self.yielded = false;
    }

    /// The slice to run now, if one is out and this turn may run it: no slice yielded in
    /// it and its budget is not spent.
    pub fn next(&mut self, now: Instant) -> Option<SliceOut> {
        if !self.may_run(now) {
            return None;
        }
        self.out.take()
    }

    /// Whether this turn may run a slice at `now`.
    pub fn may_run(&self, now: Instant) -> bool {
        !self.yielded && self.turn_ends.is_some_and(|ends| now < ends)
    }

    /// The slice run last yielded: this turn runs no more until [`Slices::reported`].
    pub fn yielded(&mut self) {
        self.yielded = true;
    }

    /// The yield was reported after the sockets were read: slices may run again this turn,
    /// within its budget.
    pub fn reported(&mut self) {
        self.yielded = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, micros: u64) -> Instant {
        start + Duration::from_micros(micros)
    }

    #[test]
    fn a_slice_runs_once_within_its_turn() {
        let start = Instant::now();
        let mut slices = Slices::new(Duration::from_millis(2));
        assert!(slices.take(Output::Resume { job: JobId(1) }).is_none());
        assert!(slices.is_out());
        assert!(slices.next(start).is_none(), "no turn begun yet");
        slices.begin_turn(start);
        assert_eq!(slices.next(at(start, 10)).map(|s| s.job()), Some(JobId(1)));
        assert!(slices.next(at(start, 20)).is_none(), "handed out once");
        assert!(!slices.is_out());
    }

    #[test]
    fn a_turn_runs_no_slice_after_a_yield_or_past_its_budget() {
        let start = Instant::now();
        let mut slices = Slices::new(Duration::from_millis(2));
        slices.begin_turn(start);
        slices.take(Output::Resume { job: JobId(1) });
        slices.yielded();
        assert!(slices.next(at(start, 10)).is_none());
        slices.reported();
        assert!(slices.next(at(start, 2_000)).is_none(), "budget spent");
        slices.begin_turn(at(start, 2_000));
        assert!(slices.next(at(start, 2_001)).is_some());
    }

    #[test]
    fn a_cancel_forgets_its_slice_and_reaches_the_driver() {
        let mut slices = Slices::new(Duration::from_millis(2));
        slices.take(Output::Resume { job: JobId(7) });
        let other = slices.take(Output::Cancel { job: JobId(8) });
        assert!(matches!(other, Some(Output::Cancel { job: JobId(8) })));
        assert!(slices.is_out(), "another task's cancel leaves the slice");
        let own = slices.take(Output::Cancel { job: JobId(7) });
        assert!(matches!(own, Some(Output::Cancel { job: JobId(7) })));
        assert!(!slices.is_out());
        assert!(matches!(
            slices.take(Output::Evict {
                module: crate::ModuleKey {
                    service: crate::ServiceName::new("a").unwrap(),
                    version: 1,
                },
            }),
            Some(Output::Evict { .. })
        ));
    }
}
