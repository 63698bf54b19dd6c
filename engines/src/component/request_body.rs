//! A request body that streams to its component: the guest's `incoming-body` reads the
//! bytes as the server hands them over ([`frenezulo_core::BodyPiece`], through
//! `GuestTask::push_body`), and a read that finds none waits, parking the task, until
//! more arrive. The server bounds what arrives by the service's body limit.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use frenezulo_core::BodyPiece;
use http_body::{Body, Frame};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

/// The body's side the task feeds; the guest reads the [`StreamedBody`] made from it.
#[derive(Clone, Default)]
pub(super) struct BodyFeed(Arc<Mutex<Queue>>);

#[derive(Default)]
struct Queue {
    pieces: VecDeque<Bytes>,
    /// `Some(true)` once complete, `Some(false)` once broken off.
    ended: Option<bool>,
    /// The reader that found nothing to read.
    waiting: Option<Waker>,
}

impl BodyFeed {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body the guest reads: `first` (what arrived with the head), then what is fed.
    pub(super) fn body(&self, first: Bytes) -> StreamedBody {
        if !first.is_empty() {
            self.queue().pieces.push_back(first);
        }
        StreamedBody(self.clone())
    }

    /// More of the body, or its end; wakes a reader waiting for it.
    pub(super) fn push(&self, piece: BodyPiece) {
        let mut queue = self.queue();
        if queue.ended.is_some() {
            return;
        }
        match piece {
            BodyPiece::Data(data) if data.is_empty() => return,
            BodyPiece::Data(data) => queue.pieces.push_back(data),
            BodyPiece::End => queue.ended = Some(true),
            // A piece added later means nothing to this engine: the body just ends.
            _ => queue.ended = Some(false),
        }
        let waiting = queue.waiting.take();
        drop(queue);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

/// The reading side of a [`BodyFeed`].
pub(super) struct StreamedBody(BodyFeed);

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = ErrorCode;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ErrorCode>>> {
        let mut queue = self.0.queue();
        if let Some(data) = queue.pieces.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match queue.ended {
            Some(true) => Poll::Ready(None),
            Some(false) => Poll::Ready(Some(Err(ErrorCode::HttpProtocolError))),
            None => {
                queue.waiting = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThreadWaker;

    fn next(body: &mut StreamedBody, waker: &Waker) -> Poll<Option<Result<Bytes, ErrorCode>>> {
        Pin::new(body)
            .poll_frame(&mut Context::from_waker(waker))
            .map(|f| f.map(|f| f.map(|f| f.into_data().expect("data"))))
    }

    #[test]
    fn pieces_are_read_in_order_and_a_reader_waits_for_more() {
        let feed = BodyFeed::default();
        let mut body = feed.body(Bytes::from_static(b"head "));
        let wakeup = ThreadWaker::new();
        let waker = wakeup.waker();
        assert!(matches!(next(&mut body, &waker), Poll::Ready(Some(Ok(b))) if b == "head "));
        assert!(next(&mut body, &waker).is_pending());
        feed.push(BodyPiece::Data(Bytes::from_static(b"more")));
        assert!(wakeup.wait(std::time::Instant::now() + std::time::Duration::from_secs(60)));
        assert!(matches!(next(&mut body, &waker), Poll::Ready(Some(Ok(b))) if b == "more"));
        feed.push(BodyPiece::End);
        assert!(matches!(next(&mut body, &waker), Poll::Ready(None)));
        // Nothing after the end.
        feed.push(BodyPiece::Data(Bytes::from_static(b"late")));
        assert!(matches!(next(&mut body, &waker), Poll::Ready(None)));
    }

    #[test]
    fn a_broken_body_is_an_error_after_what_arrived() {
        let feed = BodyFeed::default();
        let mut body = feed.body(Bytes::new());
        feed.push(BodyPiece::Data(Bytes::from_static(b"part")));
        feed.push(BodyPiece::Broken);
        let waker = Waker::noop();
        assert!(matches!(next(&mut body, waker), Poll::Ready(Some(Ok(b))) if b == "part"));
        assert!(matches!(next(&mut body, waker), Poll::Ready(Some(Err(_)))));
    }
}
