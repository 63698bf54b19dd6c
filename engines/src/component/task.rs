//! A component's task: the fiber its run is polled on, the pieces of its response handed
//! out between slices, and its outbound calls handed out one at a time.

use std::time::Instant;

use super::outbound::SharedCalls;
use super::response::Shared;
use crate::outbound::OutboundResult;
use crate::{GuestTask, Slice};

pub(super) struct ComponentTask {
    pub(super) fiber: Box<dyn GuestTask>,
    pub(super) calls: SharedCalls,
    pub(super) response: Shared,
    /// When a slice first ended with something to send (the head, or body bytes) that
    /// has not been handed out since.
    pub(super) unsent_since: Option<Instant>,
}

impl ComponentTask {
    /// Whether what the guest set or wrote goes out now ([`crate::piece_due`]); past
    /// [`crate::PIECE_BYTES`] read ahead, the guest waits in its write until it has.
    fn piece_due(&mut self) -> bool {
        let response = self.response.borrow();
        let something =
            response.has_head() && (!response.is_streaming() || response.buffered() > 0);
        something && crate::piece_due(response.buffered(), &mut self.unsent_since)
    }
}

impl GuestTask for ComponentTask {
    fn run_slice(&mut self) -> Slice {
        let slice = self.fiber.run_slice();
        let Slice::Yielded = slice else {
            return slice;
        };
        // A guest held at the high-water mark writes on once its bytes went out.
        if self.piece_due()
            && let Some(piece) = self.response.borrow_mut().piece()
        {
            self.unsent_since = None;
            return Slice::Streamed(piece);
        }
        // The hook may queue a call on its runtime's thread a moment after the guest began
        // waiting for it: a later slice finds it then.
        let Ok(mut calls) = self.calls.lock() else {
            return slice;
        };
        if calls.handed.is_none()
            && let Some((call, sender)) = calls.queued.pop_front()
        {
            calls.handed = Some(sender);
            return Slice::Waiting(call);
        }
        slice
    }

    fn deliver(&mut self, result: OutboundResult) {
        if let Some(sender) = self.calls.lock().ok().and_then(|mut c| c.handed.take()) {
            let _ = sender.send(result);
        }
    }
}
