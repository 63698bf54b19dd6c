//! The outbound HTTP calls guests make (`wasi_experimental_http`), made off the serving
//! threads: a few worker threads with blocking ureq, fed by a bounded queue. A serving
//! thread hands a waiting task's call over and goes on with its other work; the result
//! comes back through its mailbox, which wakes it.
//!
//! Redirects are not followed (a 3xx goes to the guest, which may follow it if the target
//! is allowed too), a call has a time limit in all, and a response body past the size cap
//! fails the call. A call whose task is gone (cancelled at its deadline, or its client
//! left) before a worker took it up is not made: [`Pending`], which the task holds, marks
//! it when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use bytes::Bytes;
use frenezulo_core::JobId;
use frenezulo_engines::outbound::{
    OutboundError, OutboundRequest, OutboundResponse, OutboundResult, code,
};
use tracing::{debug, info};

use crate::mailbox::Mailbox;
use crate::resolver::CallResolver;

/// How calls are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Worker threads, so calls in flight at once, server-wide.
    pub workers: usize,
    /// Calls waiting for a worker; past it, a call fails at once.
    pub queue: usize,
    /// Time one call may take, connecting and reading the whole response included.
    pub timeout: Duration,
    /// Largest response body a guest may receive.
    pub max_response_bytes: usize,
}

impl Default for OutboundLimits {
    fn default() -> Self {
        Self {
            workers: 16,
            queue: 256,
            timeout: Duration::from_secs(10),
            max_response_bytes: 4 << 20,
        }
    }
}

/// A finished call, for the thread of the task that made it.
pub struct OutboundDone {
    /// The task.
    pub job: JobId,
    /// What the call came to.
    pub result: OutboundResult,
}

/// A call and where its result goes.
struct Call {
    request: OutboundRequest,
    job: JobId,
    reply: Mailbox<OutboundDone>,
    /// Set once nobody waits for the result.
    abandoned: Arc<AtomicBool>,
}

/// A submitted call, held by its task: dropping it (the task is gone, or has its result)
/// tells a worker that has not started the call yet to skip it.
#[derive(Debug)]
pub struct Pending(Arc<AtomicBool>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The workers, reached through a bounded queue; cloned into every serving thread.
#[derive(Clone)]
pub struct OutboundPool {
    queue: Sender<Call>,
}

impl OutboundPool {
    /// Starts the workers.
    pub fn start(limits: OutboundLimits) -> std::io::Result<Self> {
        // Every idle worker waits on the one queue: a call goes to whichever is free, never
        // behind a call that hangs.
        let (queue, calls) = crossbeam_channel::bounded::<Call>(limits.queue.max(1));
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(limits.timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .allow_non_standard_methods(true)
            .user_agent(concat!("frenezulo/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = |resolver| {
            ureq::Agent::with_parts(
                config.clone(),
                ureq::unversioned::transport::DefaultConnector::new(),
                resolver,
            )
        };
        let agents = Agents {
            any: agent(CallResolver::any()),
            public: agent(CallResolver::public_only("outbound_allowed_hosts")),
        };
        for i in 0..limits.workers.max(1) {
            let calls = calls.clone();
            let agents = agents.clone();
            std::thread::Builder::new()
                .name(format!("outbound-{i}"))
                .spawn(move || work(&calls, &agents, limits.max_response_bytes))?;
        }
        Ok(Self { queue })
    }

    /// Queues `request` for the task `job`, whose thread `reply` reaches; the task keeps
    /// the [`Pending`] until its result comes (dropped earlier, the call is skipped if no
    /// worker has started it). A full queue gives the call back at once, failed.
    pub fn submit(
        &self,
        job: JobId,
        request: OutboundRequest,
        reply: Mailbox<OutboundDone>,
    ) -> Result<Pending, OutboundResult> {
        let abandoned = Arc::new(AtomicBool::new(false));
        match self.queue.try_send(Call {
            request,
            job,
            reply,
            abandoned: abandoned.clone(),
        }) {
            Ok(()) => Ok(Pending(abandoned)),
            Err(TrySendError::Full(call) | TrySendError::Disconnected(call)) => {
                info!(target: "outbound", origin = call.request.origin, "outbound call failed: too many calls waiting for a worker");
                Err(Err(OutboundError {
                    code: code::RUNTIME_ERROR,
                    reason: "too many outbound calls in flight".to_owned(),
                }))
            }
        }
    }
}

/// One agent for calls that may go anywhere their host resolves to, one for calls the
/// operator's ceiling allowed to public addresses only.
#[derive(Clone)]
struct Agents {
    any: ureq::Agent,
    public: ureq::Agent,
}

fn work(calls: &Receiver<Call>, agents: &Agents, max: usize) {
    while let Ok(Call {
        request,
        job,
        reply,
        abandoned,
    }) = calls.recv()
    {
        if abandoned.load(Ordering::Acquire) {
            // Its task is gone: nobody would see the answer, and the call may not be
            // harmless to make.
            debug!(target: "outbound", origin = request.origin, method = request.method, "outbound call skipped: its task is gone");
            continue;
        }
        let began = Instant::now();
        let agent = if request.public_only {
            &agents.public
        } else {
            &agents.any
        };
        let result = perform(agent, &request, max);
        let ms = began.elapsed().as_secs_f64() * 1e3;
        match &result {
            Ok(r) => {
                debug!(target: "outbound", origin = request.origin, method = request.method, status = r.status, bytes = r.body.len(), ms, "outbound call")
            }
            Err(e) => {
                info!(target: "outbound", origin = request.origin, method = request.method, reason = e.reason, ms, "outbound call failed")
            }
        }
        // The call's permit goes before its result, so a guest that calls again at once
        // finds its slot free.
        drop(request);
        // A thread that is gone has no task to wake.
        reply.send(OutboundDone { job, result });
    }
}

fn perform(agent: &ureq::Agent, request: &OutboundRequest, max: usize) -> OutboundResult {
    let failed = |reason: String| OutboundError {
        code: code::REQUEST_ERROR,
        reason,
    };
    let mut builder = ureq::http::Request::builder()
        .method(request.method.as_str())
        .uri(request.url.as_str());
    // ureq sets `Host` from the URL; the engines already drop a guest's own.
    for (name, value) in request
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
    {
        builder = builder.header(name, value);
    }
    let http_request = builder
        .body(request.body.clone())
        .map_err(|e| failed(format!("request refused: {e}")))?;
    let mut response = agent.run(http_request).map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    let body = match response
        .body_mut()
        .with_config()
        .limit(max as u64)
        .read_to_vec()
    {
        Ok(body) => body,
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            return Err(failed(format!("response body larger than {max} bytes")));
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    Ok(OutboundResponse {
        status,
        headers,
        body: body.into(),
    })
}
