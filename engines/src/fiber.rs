//! A wasmtime guest's run as a future on a fiber, polled one time slice at a time: the
//! task both kinds of guest (WAGI modules, wasi:http components) run as.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use wasmtime::{Store, Trap};

use frenezulo_core::response::stream::Piece;

use crate::host::HostStop;
use crate::outbound::{OutboundRequest, OutboundResult, not_delivered};
use crate::wagi::{Ending, RunOutput};
use crate::{GuestTask, Slice};

/// Epoch ticks in one time slice: a guest yields at the next tick after its slice began
/// (at most 1 ms, about 0.5 ms on average: a short slice is what lets a request of
/// microseconds go between two slices of a guest that runs on, so that services share a
/// thread by time; see `bench/load`'s fair-share section).
const SLICE_TICKS: u64 = 1;

/// Makes `store`'s guest yield at the end of each time slice, and hands out the piece of
/// its response `piece_at_end` makes of its data there, if any: the slice then ends
/// [`Slice::Streamed`] with it. A yield is noted, so that the task tells a slice that ran
/// out ([`Slice::Yielded`]) from a guest that waits ([`Slice::Parked`]).
pub(crate) fn slice_by_epoch<T: 'static>(
    store: &mut Store<T>,
    mut piece_at_end: impl FnMut(&mut T) -> Option<Piece> + Send + Sync + 'static,
) {
    store.set_epoch_deadline(SLICE_TICKS);
    store.epoch_deadline_callback(move |mut ctx| {
        if let Some(piece) = piece_at_end(ctx.data_mut()) {
            hand_out(piece);
        }
        SLICE_ENDED.with(|ended| ended.set(true));
        Ok(wasmtime::UpdateDeadline::Yield(SLICE_TICKS))
    });
}

/// Hands out `piece` at the end of the slice being polled, which must not end otherwise
/// than pending (a host call about to suspend the guest, as a sleep).
pub(crate) fn hand_out(piece: Piece) {
    PIECE_MADE.with(|slot| *slot.borrow_mut() = Some(piece));
}

thread_local! {
    /// The call `req` set aside in the slice just polled, for the task to hand out.
    pub(crate) static CALL_MADE: RefCell<Option<OutboundRequest>> = const { RefCell::new(None) };
    /// The result the task was given, for the `req` it resumes.
    pub(crate) static CALL_RESULT: RefCell<Option<OutboundResult>> = const { RefCell::new(None) };
    /// The piece of its response a guest's slice ended with, for the task to hand out.
    static PIECE_MADE: RefCell<Option<Piece>> = const { RefCell::new(None) };
    /// Whether the slice being polled ended at its epoch deadline.
    static SLICE_ENDED: Cell<bool> = const { Cell::new(false) };
}

/// A task that runs `run`, a slice per poll.
pub(crate) fn task(run: Pin<Box<dyn Future<Output = RunOutput>>>) -> Box<dyn GuestTask> {
    Box::new(WasmtimeTask {
        run: Some(run),
        waiting: false,
        result: None,
    })
}

/// A run in progress: the future owns the store, so dropping it drops the instance.
struct WasmtimeTask {
    run: Option<Pin<Box<dyn Future<Output = RunOutput>>>>,
    /// Whether the guest waits in `req`.
    waiting: bool,
    /// The result of its call, once delivered.
    result: Option<OutboundResult>,
}

impl GuestTask for WasmtimeTask {
    fn run_slice(&mut self, waker: &Waker) -> Slice {
        let Some(run) = self.run.as_mut() else {
            return crate::finished_twice();
        };
        if std::mem::take(&mut self.waiting) {
            let result = self.result.take().unwrap_or(Err(not_delivered()));
            CALL_RESULT.with(|slot| *slot.borrow_mut() = Some(result));
        }
        SLICE_ENDED.with(|ended| ended.set(false));
        let polled = run.as_mut().poll(&mut Context::from_waker(waker));
        let ran_out = SLICE_ENDED.with(|ended| ended.replace(false));
        // Left by nobody's fault only if the guest trapped first; never for another task.
        CALL_RESULT.with(|slot| slot.borrow_mut().take());
        let call = CALL_MADE.with(|slot| slot.borrow_mut().take());
        // Made only at an epoch yield or as the guest sleeps: never beside a call or an
        // ending.
        let piece = PIECE_MADE.with(|slot| slot.borrow_mut().take());
        match (polled, call) {
            (Poll::Pending, Some(call)) => {
                self.waiting = true;
                Slice::Waiting(call)
            }
            (Poll::Pending, None) => match piece {
                Some(piece) => Slice::Streamed(piece),
                None if ran_out => Slice::Yielded,
                // Pending before its time was up: the guest awaits a timer, a stream or a
                // call's response, which wakes `waker` when it is ready.
                None => Slice::Parked,
            },
            (Poll::Ready(output), _) => {
                self.run = None;
                Slice::Finished(output)
            }
        }
    }

    fn deliver(&mut self, result: OutboundResult) {
        self.result = Some(result);
    }
}

pub(crate) fn classify(e: wasmtime::Error) -> Ending {
    if let Some(stop) = e.downcast_ref::<HostStop>() {
        return Ending::Stopped(*stop);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Ending::Interrupted,
        Some(trap) => Ending::Trapped(trap.to_string()),
        None => Ending::Trapped(format!("{e:#}")),
    }
}
