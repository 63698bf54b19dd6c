//! A component's task: the fiber its run is polled on, the pieces of its response handed
//! out between slices, and its outbound calls handed out one at a time.

use std::task::Waker;
use std::time::Instant;

use frenezulo_core::BodyPiece;

use super::outbound::SharedCalls;
use super::request_body::BodyFeed;
use super::response::Shared;
use crate::outbound::OutboundResult;
use crate::{GuestTask, Slice};

pub(super) struct ComponentTask {
    pub(super) fiber: Box<dyn GuestTask>,
    pub(super) calls: SharedCalls,
    pub(super) response: Shared,
    /// Where the rest of a body that streams goes.
    pub(super) body: Option<BodyFeed>,
    /// When a slice first ended with something to send (the head, or body bytes) that
    /// has not been handed out since.
    pub(super) unsent_since: Option<Instant>,
}

impl ComponentTask {
    /// Whether the guest set a head, or wrote bytes, that have not been handed out.
    fn has_unsent(&self) -> bool {
        let response = self.response.borrow();
        response.has_head() && (!response.is_streaming() || response.buffered() > 0)
    }

    /// Whether what the guest set or wrote goes out now ([`crate::piece_due`]); past
    /// [`crate::PIECE_BYTES`] read ahead, the guest waits in its write until it has.
    fn piece_due(&mut self) -> bool {
        let waiting = self.response.borrow().buffered();
        self.has_unsent() && crate::piece_due(waiting, &mut self.unsent_since)
    }
}

impl GuestTask for ComponentTask {
    fn run_slice(&mut self, waker: &Waker) -> Slice {
        let slice = self.fiber.run_slice(waker);
        let parked = match slice {
            Slice::Yielded => false,
            Slice::Parked => true,
            other => return other,
        };
        // A guest held at the high-water mark writes on once its bytes went out. One that
        // waits on something else has what it wrote sent now: nothing runs it meanwhile.
        if ((parked && self.has_unsent()) || self.piece_due())
            && let Some(piece) = self.response.borrow_mut().piece()
        {
            self.unsent_since = None;
            return Slice::Streamed(piece);
        }
        let Ok(mut calls) = self.calls.lock() else {
            return slice;
        };
        if calls.handed.is_none()
            && let Some((call, sender)) = calls.queued.pop_front()
        {
            calls.handed = Some(sender);
            return Slice::Waiting(call);
        }
        // The hook queues a call on its runtime's thread, perhaps a moment after the guest
        // began waiting for it: it wakes the task then.
        if parked {
            calls.waker = Some(waker.clone());
        }
        slice
    }

    fn deliver(&mut self, result: OutboundResult) {
        if let Some(sender) = self.calls.lock().ok().and_then(|mut c| c.handed.take()) {
            let _ = sender.send(result);
        }
    }

    fn push_body(&mut self, piece: BodyPiece) {
        if let Some(feed) = &self.body {
            feed.push(piece);
        }
    }
}
