//! Waking a parked guest task: the waker each task's slices run with. A task that ends a
//! slice [`frenezulo_engines::Slice::Parked`] (a component awaiting a timer, a stream, its
//! request body or a call's response; a WAGI guest asleep in `poll_oneoff`) is not run
//! again until its waker fires, possibly on another thread (wasmtime-wasi's runtime, the
//! engines' timer thread), which then sends the serving thread a message: a guest that
//! sleeps costs its thread nothing while it does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Wake, Waker};

use frenezulo_core::JobId;

use crate::mailbox::Mailbox;

/// A slice of the task runs, or it may run again: a wake needs no message.
const RUNNABLE: u8 = 0;
/// The task parked and the core holds it until it is woken.
const PARKED: u8 = 1;
/// Woken since it last ran: a park now is void.
const WOKEN: u8 = 2;

/// One task's wake state, shared with every clone of its waker.
pub(super) struct TaskWake {
    job: JobId,
    state: AtomicU8,
    /// Where a wake of a parked task goes: the serving thread's inbox.
    to: Mailbox<JobId>,
}

impl TaskWake {
    /// The wake state of task `job`, and the waker to run its slices with.
    pub(super) fn new(job: JobId, to: Mailbox<JobId>) -> (Arc<Self>, Waker) {
        let wake = Arc::new(Self {
            job,
            state: AtomicU8::new(RUNNABLE),
            to,
        });
        let waker = Waker::from(wake.clone());
        (wake, waker)
    }

    /// Called before each slice: wakes from before it are used up by running it.
    pub(super) fn running(&self) {
        self.state.store(RUNNABLE, Ordering::Release);
    }

    /// Called when a slice ended parked: true if the task now waits for a wake, which
    /// will send its job to the mailbox; false if it was woken during or since the slice
    /// and must simply run again.
    pub(super) fn park(&self) -> bool {
        self.state
            .compare_exchange(RUNNABLE, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only the wake that ends a park sends a message: one per park, however many
        // wakers fire (an epoch yield wakes its own task's, on the serving thread).
        if self.state.swap(WOKEN, Ordering::AcqRel) == PARKED {
            self.to.send(self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn wake_with_inbox() -> (Arc<TaskWake>, Waker, mpsc::Receiver<JobId>) {
        let (tx, rx) = mpsc::channel();
        let (wake, waker) = TaskWake::new(JobId(7), Mailbox::new(move |job| tx.send(job).is_ok()));
        (wake, waker, rx)
    }

    #[test]
    fn a_parked_task_is_sent_once_when_woken() {
        let (wake, waker, rx) = wake_with_inbox();
        wake.running();
        assert!(wake.park());
        assert!(rx.try_recv().is_err(), "nothing before the wake");
        let elsewhere = waker.clone();
        std::thread::spawn(move || elsewhere.wake()).join().unwrap();
        waker.wake_by_ref();
        assert_eq!(rx.try_recv(), Ok(JobId(7)));
        assert!(rx.try_recv().is_err(), "one message per park");
    }

    #[test]
    fn a_wake_during_the_slice_voids_the_park() {
        let (wake, waker, rx) = wake_with_inbox();
        wake.running();
        waker.wake_by_ref();
        assert!(!wake.park(), "woken already: run it again");
        assert!(rx.try_recv().is_err(), "and no message: it never parked");
        // The next slice parks for real, and its wake is sent.
        wake.running();
        assert!(wake.park());
        waker.wake();
        assert_eq!(rx.try_recv(), Ok(JobId(7)));
    }
}
