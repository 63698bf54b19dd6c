//! `wasi:http/proxy` components (WASI 0.2) on wasmtime: what `cargo build --target
//! wasm32-wasip2`, Spin's SDKs, `componentize-py` and `jco` build.
//!
//! Each request gets a fresh instance from a `ProxyPre`, in the same pooled slots, under
//! the same memory limiter and epoch time slices as a WAGI module's; the host side of WASI
//! and wasi:http is the reference one (`wasmtime-wasi`, `wasmtime-wasi-http`). The guest's
//! response is collected while it runs (`response.rs`) and answered whole when the guest
//! finishes soon enough; one that writes more than [`crate::PIECE_BYTES`] bytes, or
//! runs on a slice's time with something set or written and not sent, has it sent in
//! pieces as it writes (`task.rs`), the total still under the service's output cap. Outbound calls go
//! through the service's grant and the driver, as WAGI's do (`outbound.rs`).
//!
//! The request reaches the guest with its full path; the prefix the service was matched on
//! and the rest of the path are in the [`SCRIPT_NAME_HEADER`] and [`PATH_INFO_HEADER`]
//! headers (a client's own values for those names are dropped).

mod host;
mod outbound;
mod request_body;
mod response;
mod task;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use frenezulo_core::{GuestFailure, GuestRequest, Response, RunLimits};
use http_body_util::BodyExt as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine as Wasmtime, Store};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

pub(crate) use self::host::ComponentHost;
pub use self::host::{MAX_FIELDS_BYTES, MAX_RESOURCES};
use self::request_body::BodyFeed;
use self::response::Collect;
use crate::wagi::RunOutput;
use crate::{CompileError, CompiledModule, GuestTask, ModuleKind};

/// The header that carries the path prefix the service was matched on (CGI's
/// `SCRIPT_NAME`): `/shop` for a request to `/shop/cart`.
pub const SCRIPT_NAME_HEADER: &str = "frenezulo-script-name";

/// The header that carries the rest of the path after [`SCRIPT_NAME_HEADER`] (CGI's
/// `PATH_INFO`, raw): `/cart` for a request to `/shop/cart`.
pub const PATH_INFO_HEADER: &str = "frenezulo-path-info";

/// A linker with WASI 0.2 and wasi:http; built once per engine. Sockets and files are
/// linked but grant nothing: no preopened directory, no address allowed.
pub(crate) fn linker(engine: &Wasmtime) -> wasmtime::Result<Linker<ComponentHost>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// A compiled component and its machine code, serialized for the artifact cache.
type WithArtifact = (std::sync::Arc<dyn CompiledModule>, Option<Vec<u8>>);

/// Compiles and links a component that exports `wasi:http/incoming-handler`.
pub(crate) fn compile(
    engine: &Wasmtime,
    linker: &Linker<ComponentHost>,
    wasm: &[u8],
) -> Result<WithArtifact, CompileError> {
    let component = Component::new(engine, wasm)
        .map_err(|e| CompileError::ComponentRefused(format!("{e:#}")))?;
    let artifact = component.serialize().ok();
    Ok((prepare(engine, linker, &component)?, artifact))
}

/// Links a compiled (or deserialized) component.
pub(crate) fn prepare(
    engine: &Wasmtime,
    linker: &Linker<ComponentHost>,
    component: &Component,
) -> Result<std::sync::Arc<dyn CompiledModule>, CompileError> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| CompileError::ComponentImport(format!("{e:#}")))?;
    let pre = ProxyPre::new(pre).map_err(|e| CompileError::NotAHandler(format!("{e:#}")))?;
    Ok(std::sync::Arc::new(HttpComponent {
        engine: engine.clone(),
        pre,
    }))
}

struct HttpComponent {
    engine: Wasmtime,
    pre: ProxyPre<ComponentHost>,
}

impl CompiledModule for HttpComponent {
    fn start(&self, request: &GuestRequest, limits: &RunLimits) -> Box<dyn GuestTask> {
        let calls = outbound::SharedCalls::default();
        let mut store = Store::new(
            &self.engine,
            ComponentHost::new(request, limits.memory_bytes, calls.clone()),
        );
        store.limiter(|h| &mut h.limiter);
        // Its pieces are made by its task from what the collector read (`task.rs`).
        crate::fiber::slice_by_epoch(&mut store, |_| None);
        let http_request = to_http(request);
        let pre = self.pre.clone();
        let (sender, response) = Collect::shared(limits.stdout_bytes);
        let collected = response.clone();
        let body = request.body_follows.then(BodyFeed::default);
        let feed = body.clone();
        let mut run = Box::pin(async move {
            let out = (sender, collected);
            let result = match (http_request, feed) {
                (Ok(whole), None) => {
                    let whole = whole.map(|b| b.map_err(|never| -> ErrorCode { match never {} }));
                    handle(&pre, &mut store, whole, out).await
                }
                (Ok(head), Some(feed)) => {
                    let streamed =
                        head.map(|first| feed.body(first.into_inner().unwrap_or_default()));
                    handle(&pre, &mut store, streamed, out).await
                }
                (Err(why), _) => Err(GuestFailure::Instantiate(why)),
            };
            RunOutput {
                result,
                stderr: store.data().log.contents(),
            }
        });
        // wasmtime-wasi's clocks and its spawned tasks want a tokio runtime; its own
        // ambient one serves when the serving thread has none.
        let run = std::future::poll_fn(move |cx| {
            wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| run.as_mut().poll(cx))
        });
        Box::new(task::ComponentTask {
            fiber: crate::fiber::task(Box::pin(run)),
            calls,
            response,
            body,
            unsent_since: None,
        })
    }

    fn entrypoints(&self) -> &[String] {
        &[]
    }

    fn kind(&self) -> ModuleKind {
        ModuleKind::HttpComponent
    }
}

/// The request as `http` types: the full URI (authority from `Host`, else the local
/// address), headers but `Transfer-Encoding` (the body comes unframed), and the prefix
/// headers. Built in place rather than through `http`'s builders: header values and the
/// body are shared, not copied, and the map is sized once.
fn to_http(request: &GuestRequest) -> Result<http::Request<http_body_util::Full<Bytes>>, String> {
    use http::header::{HeaderName, HeaderValue};
    let req = &request.request;
    let authority = req
        .header("host")
        .and_then(|v| http::uri::Authority::from_maybe_shared(v.clone()).ok())
        .unwrap_or_else(|| {
            request
                .local
                .to_string()
                .parse()
                .expect("a socket address is an authority")
        });
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(
        req.target
            .parse()
            .map_err(|e| format!("request target `{}`: {e}", req.target))?,
    );
    let mut http_request = http::Request::new(http_body_util::Full::new(req.body.clone()));
    *http_request.method_mut() = http::Method::from_bytes(req.method.as_bytes())
        .map_err(|e| format!("method `{}`: {e}", req.method))?;
    *http_request.uri_mut() =
        http::Uri::from_parts(uri).map_err(|e| format!("request target `{}`: {e}", req.target))?;
    let headers = http_request.headers_mut();
    headers.reserve(req.headers.len() + 2);
    let unrepresentable = |e: &dyn std::fmt::Display| format!("request not representable: {e}");
    for field in &req.headers {
        let name = &field.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case(SCRIPT_NAME_HEADER)
            || name.eq_ignore_ascii_case(PATH_INFO_HEADER)
        {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| unrepresentable(&e))?;
        let value =
            HeaderValue::from_maybe_shared(field.value.clone()).map_err(|e| unrepresentable(&e))?;
        headers.append(name, value);
    }
    for (name, value) in [
        (SCRIPT_NAME_HEADER, &request.script_name),
        (PATH_INFO_HEADER, &request.path_info),
    ] {
        let value = HeaderValue::from_str(value).map_err(|e| unrepresentable(&e))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok(http_request)
}

/// Instantiates, calls `handle`, and collects the response it sets.
async fn handle<B>(
    pre: &ProxyPre<ComponentHost>,
    store: &mut Store<ComponentHost>,
    request: http::Request<B>,
    (sender, response): (response::Sender, response::Shared),
) -> Result<Response, GuestFailure>
where
    B: http_body::Body<Data = Bytes, Error = ErrorCode> + Send + 'static,
{
    let mut view = store.data_mut().http();
    let made = view
        .new_incoming_request(Scheme::Http, request)
        .and_then(|req| Ok((req, view.new_response_outparam(sender)?)));
    let (req, out) = made.map_err(|e| GuestFailure::Instantiate(format!("{e:#}")))?;
    let proxy = match pre.instantiate_async(&mut *store).await {
        Ok(proxy) => proxy,
        Err(e) => return Err(failure(e, store.data().limiter.refused)),
    };
    let called = {
        let mut call = pin!(
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut *store, req, out)
        );
        let mut called = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = call.as_mut().poll(cx) {
                called = Some(result);
            }
            // Drained on every turn up to the high-water mark: past it, a guest that
            // writes more waits until the task hands the bytes out.
            match (response.borrow_mut().poll(cx, true), &called) {
                (Poll::Ready(()), _) | (Poll::Pending, Some(_)) => Poll::Ready(()),
                (Poll::Pending, None) => Poll::Pending,
            }
        })
        .await;
        called
    };
    if let Some(Err(e)) = called {
        let success = e
            .downcast_ref::<wasmtime_wasi::I32Exit>()
            .is_some_and(|exit| exit.0 == 0);
        if !response.borrow().is_complete() && !success {
            return Err(failure(e, store.data().limiter.refused));
        }
    }
    // The guest returned: what it wrote is in the channel, and a body it never finished
    // ends when its resources go. Nothing here can wait any more.
    drop(std::mem::take(store.data_mut().http().table));
    let mut response = response.borrow_mut();
    let _ = response.poll(&mut Context::from_waker(std::task::Waker::noop()), false);
    response.finish()
}

fn failure(e: wasmtime::Error, memory_refused: bool) -> GuestFailure {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return GuestFailure::Exit(exit.0);
    }
    match crate::fiber::classify(e) {
        crate::wagi::Ending::Trapped(_) | crate::wagi::Ending::Instantiate(_) if memory_refused => {
            GuestFailure::OutOfMemory
        }
        crate::wagi::Ending::Instantiate(why) => GuestFailure::Instantiate(why),
        crate::wagi::Ending::Interrupted => GuestFailure::Timeout,
        crate::wagi::Ending::Trapped(why) => GuestFailure::Trap(why),
        other => GuestFailure::Trap(format!("{other:?}")),
    }
}
