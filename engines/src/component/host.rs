//! A component's store: the reference WASI 0.2 and wasi:http hosts (`wasmtime-wasi`,
//! `wasmtime-wasi-http`), a log pipe for stdout and stderr, and hooks that hand outbound
//! calls to frenezulo's driver.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use frenezulo_core::GuestRequest;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::outbound::{Outbound, SharedCalls};

use crate::host::STDERR_CAP;
use crate::wagi::MemoryLimiter;

/// Host resources (fields, bodies, streams, pollables...) one request's instance may hold
/// at once. They live outside its linear memory, so its memory limit does not bound them:
/// this does, with [`MAX_FIELDS_BYTES`] (a handler uses a few dozen).
pub const MAX_RESOURCES: usize = 1024;

/// Most bytes (roughly, as held in memory) one `fields` resource a guest builds may hold:
/// at most `MAX_RESOURCES * MAX_FIELDS_BYTES` (32 MiB) of headers per instance.
pub const MAX_FIELDS_BYTES: usize = 32 * 1024;

/// Per-request store data.
pub(crate) struct ComponentHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    pub(super) limiter: MemoryLimiter,
    /// What the guest wrote to stdout and stderr, for the log.
    pub(super) log: LogPipe,
}

impl ComponentHost {
    pub(super) fn new(request: &GuestRequest, memory_bytes: usize, calls: SharedCalls) -> Self {
        let log = LogPipe::default();
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&request.setup.env)
            .args(&[request.setup.name.as_str()])
            .stdout(log.clone())
            .stderr(log.clone());
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi: wasi.build(),
            http,
            table,
            hooks: Outbound {
                setup: request.setup.clone(),
                calls,
            },
            limiter: MemoryLimiter::new(memory_bytes),
            log,
        }
    }
}

impl WasiView for ComponentHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// stdout and stderr of one request, kept up to [`STDERR_CAP`] bytes; the rest is dropped
/// (a guest that logs a lot is not failed for it, as WAGI's stderr is not).
#[derive(Clone, Default)]
pub(super) struct LogPipe(Arc<Mutex<Vec<u8>>>);

impl LogPipe {
    /// What was written, up to the cap.
    pub(super) fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl LogPipe {
    fn append(&self, bytes: &[u8]) {
        if let Ok(mut buf) = self.0.lock() {
            let room = STDERR_CAP.saturating_sub(buf.len());
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: what does not fit is dropped, not refused.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_its_cap_and_never_refuses() {
        let mut log = LogPipe::default();
        assert_eq!(log.check_write().unwrap(), 64 * 1024);
        log.write(Bytes::from(vec![b'a'; STDERR_CAP - 1])).unwrap();
        log.write(Bytes::from_static(b"bc")).unwrap();
        log.write(Bytes::from_static(b"d")).unwrap();
        let kept = log.contents();
        assert_eq!(kept.len(), STDERR_CAP);
        assert_eq!(kept.last(), Some(&b'b'));
    }
}
