//! Outbound calls from components: `wasi:http/outgoing-handler` checked against the same
//! grant (`allowed_hosts`, `http_max_concurrency`) and made by the same driver-side client,
//! with the same timeouts and size caps, as WAGI's `wasi_experimental_http`.
//!
//! wasmtime-wasi-http runs the hook's future on its own tokio runtime. The future checks
//! the call and queues it here (waking the task if it parked meanwhile); the task hands it
//! to the driver as [`Slice::Waiting`] and passes the result back through a oneshot
//! channel. The serving thread never waits on the network.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use frenezulo_core::GuestSetup;
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::http_calls::{MAX_REQUEST_BODY, admit};
use crate::outbound::{OutboundRequest, OutboundResult, code};

/// Calls one instance may have queued behind the one being made; more are refused with
/// `connection-limit-reached`.
const MAX_QUEUED: usize = 16;

/// Calls checked and waiting for the driver, and the one it is making.
#[derive(Default)]
pub(super) struct Calls {
    pub(super) queued: VecDeque<(OutboundRequest, oneshot::Sender<OutboundResult>)>,
    pub(super) handed: Option<oneshot::Sender<OutboundResult>>,
    /// The waker of the task's last slice, if it parked: a call queued wakes it.
    pub(super) waker: Option<std::task::Waker>,
}

/// The calls of one request's instance, shared by its hooks and its task.
pub(super) type SharedCalls = Arc<Mutex<Calls>>;

/// The wasi:http hooks of one instance: outbound calls go through the service's grant.
pub(super) struct Outbound {
    pub(super) setup: Arc<GuestSetup>,
    pub(super) calls: SharedCalls,
}

type Sent = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl wasmtime_wasi_http::WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let (setup, calls) = (self.setup.clone(), self.calls.clone());
        Box::new(async move {
            let (parts, body) = request.into_parts();
            let body = http_body_util::Limited::new(body, MAX_REQUEST_BODY as usize)
                .collect()
                .await
                .map_err(|_| Error::HttpRequestBodySize(None))?
                .to_bytes();
            let mut headers = Vec::with_capacity(parts.headers.len());
            for (name, value) in &parts.headers {
                let value = value.to_str().map_err(|_| Error::HttpProtocolError)?;
                headers.push((name.as_str().to_owned(), value.to_owned()));
            }
            let url = parts.uri.to_string();
            let call = admit(&setup, parts.method.as_str(), &url, headers, body.to_vec())
                .map_err(refused)?;
            let (sender, receiver) = oneshot::channel();
            let waker = {
                let mut calls = calls.lock().map_err(|_| Error::InternalError(None))?;
                if calls.queued.len() >= MAX_QUEUED {
                    return Err(Error::ConnectionLimitReached);
                }
                calls.queued.push_back((call, sender));
                calls.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            let response = receiver
                .await
                .map_err(|_| Error::InternalError(Some("the call was dropped".to_owned())))?
                .map_err(|_| Error::DestinationUnavailable)?;
            let mut builder = http::Response::builder().status(response.status);
            for (name, value) in &response.headers {
                builder = builder.header(name.as_str(), value.as_ref());
            }
            let body = http_body_util::Full::new(response.body)
                .map_err(|never| -> Error { match never {} })
                .boxed_unsync();
            let response = builder
                .body(body)
                .map_err(|e| Error::InternalError(Some(e.to_string())))?;
            let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// Maps a grant's refusal (a `wasi_experimental_http` code) to the wasi:http error.
fn refused(why: i32) -> Error {
    match why {
        code::DESTINATION_NOT_ALLOWED => Error::HttpRequestDenied,
        code::TOO_MANY_SESSIONS => Error::ConnectionLimitReached,
        code::INVALID_URL => Error::HttpRequestUriInvalid,
        other => Error::InternalError(Some(format!("refused with code {other}"))),
    }
}
