//! The response a component sets through `response-outparam`, read as it writes it, and
//! handed to the server in pieces when the guest runs on past a time slice.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use frenezulo_core::response::stream::Piece;
use frenezulo_core::{GuestFailure, Response};
use http_body::Body as _;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Where the guest's `response-outparam` sends its response.
pub(super) type Sender =
    tokio::sync::oneshot::Sender<Result<http::Response<HyperOutgoingBody>, ErrorCode>>;

/// A collector, shared by the run that fills it and the task that hands out its pieces
/// between slices (never at once: both are on the task's thread, the run only while
/// polled).
pub(super) type Shared = Rc<RefCell<Collect>>;

/// The response a guest sets through `response-outparam`, read as it is written.
pub(super) struct Collect {
    receiver: Option<
        tokio::sync::oneshot::Receiver<Result<http::Response<HyperOutgoingBody>, ErrorCode>>,
    >,
    status: u16,
    headers: Vec<(String, Bytes)>,
    body: Option<HyperOutgoingBody>,
    /// Body bytes read and not handed out.
    bytes: BytesMut,
    /// Body bytes handed out as pieces.
    handed: usize,
    /// The head was handed out: the response goes out in pieces.
    streaming: bool,
    cap: usize,
    ended: Option<Result<(), GuestFailure>>,
}

impl Collect {
    /// A collector for a response of at most `cap` body bytes, and the sender the guest's
    /// `response-outparam` gets.
    pub(super) fn shared(cap: usize) -> (Sender, Shared) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let collect = Self {
            receiver: Some(receiver),
            status: 0,
            headers: Vec::new(),
            body: None,
            bytes: BytesMut::new(),
            handed: 0,
            streaming: false,
            cap,
            ended: None,
        };
        (sender, Rc::new(RefCell::new(collect)))
    }

    pub(super) fn is_complete(&self) -> bool {
        matches!(self.ended, Some(Ok(())))
    }

    /// Takes what is there; ready once the response is whole or cannot be. With
    /// `hold`, reads no further than [`crate::PIECE_BYTES`] ahead of what was handed out: past
    /// that the guest's writes wait until the task hands the bytes out as a piece (so a
    /// slow client makes the guest wait, not the server buffer).
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, hold: bool) -> Poll<()> {
        if self.ended.is_some() {
            return Poll::Ready(());
        }
        if let Some(receiver) = self.receiver.as_mut() {
            let set = match Pin::new(receiver).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(set) => set,
            };
            self.receiver = None;
            match set {
                Ok(Ok(response)) => {
                    let (parts, body) = response.into_parts();
                    self.status = parts.status.as_u16();
                    self.headers = parts
                        .headers
                        .iter()
                        .map(|(name, value)| {
                            (
                                name.as_str().to_owned(),
                                Bytes::copy_from_slice(value.as_bytes()),
                            )
                        })
                        .collect();
                    self.body = Some(body);
                }
                Ok(Err(code)) => {
                    return self.end(Err(GuestFailure::BadResponse(format!(
                        "the component answered with an error: {code:?}"
                    ))));
                }
                Err(_) => {
                    return self.end(Err(GuestFailure::BadResponse(
                        "the component returned without setting a response".to_owned(),
                    )));
                }
            }
        }
        let Some(body) = self.body.as_mut() else {
            return Poll::Pending;
        };
        loop {
            if hold && self.bytes.len() >= crate::PIECE_BYTES {
                return Poll::Pending;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return self.end(Ok(())),
                Poll::Ready(Some(Err(e))) => {
                    return self.end(Err(GuestFailure::BadResponse(format!(
                        "the response body failed: {e:?}"
                    ))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not sent: HTTP/1.1 clients rarely ask for them.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if self.handed + self.bytes.len() + data.len() > self.cap {
                        return self.end(Err(GuestFailure::OutputTooLarge));
                    }
                    self.bytes.extend_from_slice(&data);
                }
            }
        }
    }

    fn end(&mut self, result: Result<(), GuestFailure>) -> Poll<()> {
        self.body = None;
        self.ended = Some(result);
        Poll::Ready(())
    }

    /// Whether the guest set its response and its body is still being written.
    pub(super) fn has_head(&self) -> bool {
        self.body.is_some()
    }

    /// Whether the head was handed out.
    pub(super) fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Body bytes read and not handed out.
    pub(super) fn buffered(&self) -> usize {
        self.bytes.len()
    }

    /// The next piece to send while the guest runs on: the head with what was read of
    /// the body, then what was read since. None before the guest set its response, when
    /// nothing new was read, and once the body is finished (it goes out with the end).
    pub(super) fn piece(&mut self) -> Option<Piece> {
        if !self.has_head() {
            return None;
        }
        if !self.streaming {
            self.streaming = true;
            self.handed += self.bytes.len();
            return Some(Piece::Start(Response {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                body: self.bytes.split().freeze(),
            }));
        }
        if self.bytes.is_empty() {
            return None;
        }
        self.handed += self.bytes.len();
        Some(Piece::More(self.bytes.split().freeze()))
    }

    /// The response once the guest returned: whole, or (after pieces) the status, and the
    /// body bytes not yet handed out.
    pub(super) fn finish(&mut self) -> Result<Response, GuestFailure> {
        match self.ended.take() {
            Some(Ok(())) => Ok(Response {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                body: self.bytes.split().freeze(),
            }),
            Some(Err(failure)) => Err(failure),
            None if self.receiver.is_none() => Err(GuestFailure::BadResponse(
                "the component returned without finishing its response body".to_owned(),
            )),
            None => Err(GuestFailure::BadResponse(
                "the component returned without setting a response".to_owned(),
            )),
        }
    }
}
