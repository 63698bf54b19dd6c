//! The polling contract, checked: a [`Monitor`] watches the inputs a driver hands a
//! [`Server`](crate::Server) and the outputs it polls, and panics naming the side that
//! broke the contract (see the crate docs) and how.
//!
//! The core's side: at most one slice out at a time; every task started once and ended
//! once (`Executed` or `Cancel`), never resumed while waiting or after it ended; nothing
//! sent on or after closing a connection, or after the driver said it is gone. The
//! driver's side: a slice's report (`Yielded`, `Waiting`, `Executed`) is for the slice out
//! (or late, for a task cancelled since: the core ignores it);
//! `Woken` is for a task that waits (or one cancelled meanwhile, which the core ignores);
//! every `Compile` gets its `Compiled` (one may also come unasked, for a module the driver
//! holds already); a connection id is not reused while open. At the
//! end, [`Monitor::unanswered_compiles`] lists compiles the driver still owes.
//!
//! The core's own tests, the fuzz target, the simulator and debug builds of the server all
//! drive the core through one, so the contract is written down once, here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::guest::ModuleKey;
use crate::server::{ConnId, Input, JobId, Output};

/// Tasks remembered as ended, to catch one started or ended again: the newest this many.
const REMEMBERED: usize = 1 << 16;

/// Watches one core's inputs and outputs; see the module docs.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Connections the driver reported connected and neither side has closed.
    open: BTreeSet<ConnId>,
    /// Connections the core closed or the driver reported gone, until the id is reused.
    closed: BTreeSet<ConnId>,
    /// Tasks started and not ended.
    live: BTreeSet<JobId>,
    /// The newest tasks that ended, oldest first, and the same as a set.
    ended: VecDeque<JobId>,
    ended_set: BTreeSet<JobId>,
    /// The task whose slice is out with the driver.
    out: Option<JobId>,
    /// Tasks waiting on an outbound call.
    waiting: BTreeSet<JobId>,
    /// Compiles asked for and not answered, by module (a module may be asked for again).
    compiles: BTreeMap<ModuleKey, usize>,
    /// Live tasks that reported a slice, and so may be given request body.
    reported: BTreeSet<JobId>,
    /// Live tasks whose request body was given its end.
    body_ended: BTreeSet<JobId>,
}

impl Monitor {
    /// A monitor for a core that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The driver hands the core `input`.
    pub fn input(&mut self, input: &Input<'_>) {
        match input {
            Input::Connected { conn, .. } => {
                assert!(
                    self.open.insert(*conn),
                    "driver: {conn:?} connected while it is open"
                );
                self.closed.remove(conn);
            }
            Input::Disconnected { conn } => {
                self.open.remove(conn);
                self.closed.insert(*conn);
            }
            Input::Yielded { job, .. }
            | Input::Streamed { job, .. }
            | Input::Executed { job, .. } => {
                let current = self.report(*job, "a slice's end");
                if current && matches!(input, Input::Executed { .. }) {
                    self.end(*job);
                }
            }
            Input::Waiting { job, .. } if self.report(*job, "a wait") => {
                self.waiting.insert(*job);
            }
            Input::Woken { job } => {
                let cancelled = !self.live.contains(job);
                assert!(
                    cancelled || self.waiting.remove(job),
                    "driver: woke {job:?}, which does not wait"
                );
            }
            // A module may also be announced compiled unasked (a driver that holds it).
            Input::Compiled { module, .. } => {
                if let Some(owed) = self.compiles.get_mut(module) {
                    *owed -= 1;
                    if *owed == 0 {
                        self.compiles.remove(module);
                    }
                }
            }
            _ => {}
        }
    }

    /// The core gave `output`.
    pub fn output(&mut self, output: &Output) {
        match output {
            Output::Transmit { conn, .. } => {
                assert!(
                    !self.closed.contains(conn),
                    "core: sent on {conn:?} after it closed"
                );
            }
            Output::Close { conn } => {
                assert!(!self.closed.contains(conn), "core: closed {conn:?} twice");
                self.open.remove(conn);
                self.closed.insert(*conn);
            }
            Output::Execute(e) => {
                self.slice_out_to(e.job);
                assert!(
                    !self.ended_set.contains(&e.job) && self.live.insert(e.job),
                    "core: started {:?} twice",
                    e.job
                );
            }
            Output::Resume { job } => {
                self.slice_out_to(*job);
                assert!(self.live.contains(job), "core: resumed {job:?}, not a task");
                assert!(
                    !self.waiting.contains(job),
                    "core: resumed {job:?} while it waits"
                );
            }
            Output::Cancel { job } => {
                assert!(
                    self.live.contains(job),
                    "core: cancelled {job:?}, not a task"
                );
                if self.out == Some(*job) {
                    self.out = None;
                }
                self.waiting.remove(job);
                self.end(*job);
            }
            Output::Compile { module, .. } => {
                *self.compiles.entry(module.clone()).or_default() += 1;
            }
            Output::RequestBody { job, piece } => {
                assert!(
                    self.reported.contains(job),
                    "core: gave {job:?} request body before it reported a slice (or after it ended)"
                );
                assert!(
                    !self.body_ended.contains(job),
                    "core: gave {job:?} request body after its end"
                );
                if !matches!(piece, crate::BodyPiece::Data(_)) {
                    self.body_ended.insert(*job);
                }
            }
            _ => {}
        }
    }

    /// Compiles the driver has not answered yet.
    pub fn unanswered_compiles(&self) -> impl Iterator<Item = &ModuleKey> {
        self.compiles.keys()
    }

    /// The task whose slice is out with the driver, if any.
    pub fn slice_out(&self) -> Option<JobId> {
        self.out
    }

    fn slice_out_to(&mut self, job: JobId) {
        assert!(
            self.out.is_none(),
            "core: handed out {job:?} while {:?} is out",
            self.out
        );
        self.out = Some(job);
    }

    /// Checks a slice's report; false if it is a late one, for a task cancelled since.
    fn report(&mut self, job: JobId, what: &str) -> bool {
        if self.out != Some(job) && self.ended_set.contains(&job) {
            return false;
        }
        assert_eq!(
            self.out,
            Some(job),
            "driver: reported {what} for {job:?}, but the slice out is {:?}",
            self.out
        );
        self.out = None;
        self.reported.insert(job);
        true
    }

    fn end(&mut self, job: JobId) {
        self.live.remove(&job);
        self.reported.remove(&job);
        self.body_ended.remove(&job);
        self.ended.push_back(job);
        self.ended_set.insert(job);
        if self.ended.len() > REMEMBERED
            && let Some(old) = self.ended.pop_front()
        {
            self.ended_set.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    fn breach(steps: impl FnOnce(&mut Monitor)) -> String {
        let mut m = Monitor::new();
        let err = catch_unwind(AssertUnwindSafe(|| steps(&mut m))).expect_err("a breach");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    fn addr() -> std::net::SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn each_breach_is_named() {
        let job = JobId(1);
        let resume = |m: &mut Monitor, j| m.output(&Output::Resume { job: j });
        assert!(breach(|m| resume(m, job)).contains("not a task"));
        let body = |m: &mut Monitor, piece| m.output(&Output::RequestBody { job, piece });
        assert!(breach(|m| body(m, crate::BodyPiece::End)).contains("before it reported"));
        let conn = ConnId(7);
        let close = |m: &mut Monitor| m.output(&Output::Close { conn });
        assert!(
            breach(|m| {
                close(m);
                close(m)
            })
            .contains("closed ConnId(7) twice")
        );
        assert!(
            breach(|m| {
                m.input(&Input::Disconnected { conn });
                m.output(&Output::Transmit {
                    conn,
                    head: Default::default(),
                    body: Default::default(),
                });
            })
            .contains("after it closed")
        );
        assert!(
            breach(|m| m.input(&Input::Yielded {
                job,
                ran: Default::default()
            }))
            .contains("driver: reported a slice's end")
        );
        assert!(
            breach(|m| {
                m.input(&Input::Connected {
                    conn,
                    remote: addr(),
                    local: addr(),
                });
                m.input(&Input::Connected {
                    conn,
                    remote: addr(),
                    local: addr(),
                });
            })
            .contains("connected while it is open")
        );
    }
}
