//! The wasmtime engine: Cranelift, the pooling instance allocator with copy-on-write
//! memory images and pooled fiber stacks, `InstancePre` for cheap instantiation, and epoch
//! interruption that makes a running guest yield at the end of its time slice.
//!
//! A task is the future of an async call: the guest runs on a fiber, and polling the
//! future once runs it until it finishes or the epoch deadline makes it yield.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use frenezulo_core::{GuestRequest, RunLimits};
use wasmtime::{
    Caller, Config, Engine as Wasmtime, Extern, ExternType, InstanceAllocationStrategy,
    InstancePre, Linker, Memory, Module, ModuleExport, PoolingAllocationConfig, Store, Val,
};

use crate::fiber;
use crate::host::{GuestIo, HostStop};
use crate::outbound;
use crate::timer::Sleep;
use crate::wagi::{self, Ending, MemoryLimiter};
use crate::wasi::{self, Provided};
use crate::{
    CompileError, CompiledModule, Engine, EngineConfig, EngineError, EngineKind, GuestTask,
};

/// How often the engine's epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Core instances a component may hold (and pool slots it takes for them): a Rust
/// component holds 3-5, componentize-py's 14 (CPython's libraries, linked one by one).
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;

/// Per-store state: the guest's I/O, its memory once known, its limits.
struct Host {
    io: GuestIo,
    memory: Option<Memory>,
    limiter: MemoryLimiter,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.allow_memory(desired, max))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.allow_table(desired, max))
    }
}

/// The wasmtime engine. One per process; modules compiled by it share its instance pool
/// and its epoch ticker.
pub struct WasmtimeEngine {
    engine: Wasmtime,
    linker: Linker<Host>,
    components: wasmtime::component::Linker<crate::component::ComponentHost>,
    stop_ticker: Arc<AtomicBool>,
    config: EngineConfig,
}

/// The error for an artifact wasmtime would not load (another version, settings or CPU).
fn refused(e: wasmtime::Error) -> CompileError {
    CompileError::Engine(format!("artifact refused: {e:#}"))
}

impl WasmtimeEngine {
    /// Creates the engine, its instance pool and the epoch ticker thread.
    pub fn new(config: &EngineConfig) -> Result<Self, EngineError> {
        let setup = |reason: String| EngineError::Setup {
            kind: EngineKind::Wasmtime,
            reason,
        };
        let mut pool = PoolingAllocationConfig::new();
        // A component instance holds a few core instances (its code, and the adapter and
        // shim modules toolchains add), each with tables; most have one memory.
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * CORE_INSTANCES_PER_COMPONENT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(2)
            .max_tables_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memory_size(config.max_memory_bytes)
            // Keep up to 1 MiB of each slot mapped between instances and, where the kernel
            // has PAGEMAP_SCAN (Linux 6.7+), reset only the pages a guest dirtied. Measured
            // on the Rust example: 63 us per request without the scan, 14-21 us with it.
            .linear_memory_keep_resident(1 << 20)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .table_keep_resident(1 << 16)
            // One fiber stack per running task.
            .total_stacks(config.max_instances)
            .max_tables_per_module(crate::shape::MAX_TABLES)
            .table_elements(crate::shape::MAX_TABLE_ELEMENTS);
        let mut cfg = Config::new();
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .memory_init_cow(true)
            // Guests run on fibers so that a slice can end mid-call. The stack holds the
            // guest's (wasmtime's 512 KiB default) plus host frames.
            .async_stack_size(1 << 20);
        let engine = Wasmtime::new(&cfg).map_err(|e| setup(e.to_string()))?;
        let linker = wasi_linker(&engine).map_err(|e| setup(e.to_string()))?;
        let components = crate::component::linker(&engine).map_err(|e| setup(format!("{e:#}")))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = stop_ticker.clone();
        std::thread::Builder::new()
            .name("wasmtime-epoch".to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| setup(e.to_string()))?;
        Ok(Self {
            engine,
            linker,
            components,
            stop_ticker,
            config: *config,
        })
    }
}

impl Drop for WasmtimeEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A linker with every implemented WASI function; built once per engine.
fn wasi_linker(engine: &Wasmtime) -> wasmtime::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    macro_rules! define_in {
        ($module:expr, $name:expr, $f:ident($($a:ident: $t:ty),*)) => {
            linker.func_wrap(
                $module,
                $name,
                |mut caller: Caller<'_, Host>, $($a: $t),*| -> wasmtime::Result<i32> {
                    let memory = caller.data().memory.ok_or(HostStop::NoMemory)?;
                    let (mem, host) = memory.data_and_store_mut(&mut caller);
                    host.io.$f(mem, $($a),*).map_err(wasmtime::Error::new)
                },
            )?;
        };
    }
    macro_rules! define {
        ($f:ident($($a:ident: $t:ty),*)) => {
            define_in!(wasi::MODULE, stringify!($f), $f($($a: $t),*))
        };
    }
    macro_rules! define_http {
        ($name:literal, $f:ident($($a:ident: $t:ty),*)) => {
            define_in!(outbound::MODULE, $name, $f($($a: $t),*))
        };
    }
    wasi::for_each_function!(define);
    outbound::for_each_function!(define_http);
    linker.func_wrap(
        wasi::MODULE,
        "proc_exit",
        |mut caller: Caller<'_, Host>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(caller.data_mut().io.proc_exit(code)))
        },
    )?;
    linker.func_wrap_async(
        wasi::MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, Host>, (subs, events, count, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                let memory = caller.data().memory.ok_or(HostStop::NoMemory)?;
                let (mem, host) = memory.data_and_store_mut(&mut caller);
                let until = match host.io.poll_oneoff(mem, subs, events, count, nevents) {
                    Err(HostStop::Sleeping) => host.io.wake_at(),
                    answered => return answered.map_err(wasmtime::Error::new),
                };
                // What it wrote goes out before it sleeps, not when it wakes.
                if let Some(piece) = wagi::stdout_piece_now(&mut host.io) {
                    fiber::hand_out(piece);
                }
                if let Some(until) = until {
                    // Pending before the slice ran out: the task parks until it is due.
                    Sleep::until(until).await;
                }
                let (mem, host) = memory.data_and_store_mut(&mut caller);
                Ok(host.io.wake(mem))
            })
        },
    )?;
    http_functions(&mut linker)?;
    Ok(linker)
}

/// `wasi_experimental_http::req` (the module's other functions are registered with the
/// WASI ones). It is async: it hands its call to the task through
/// `fiber::CALL_MADE` and stays pending, suspending the guest's fiber, until the task is polled
/// again with the result in `fiber::CALL_RESULT`. A thread polls one task at a time, so the two
/// slots are only ever the polled task's.
fn http_functions(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        outbound::MODULE,
        "req",
        |mut caller: Caller<'_, Host>,
         (
            url,
            url_len,
            method,
            method_len,
            headers,
            headers_len,
            body,
            body_len,
            status_out,
            handle_out,
        ): (i32, i32, i32, i32, i32, i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let memory = caller.data().memory.ok_or(HostStop::NoMemory)?;
                let (mem, host) = memory.data_and_store_mut(&mut caller);
                let now = host.io.http_req(
                    mem,
                    (url, url_len),
                    (method, method_len),
                    (headers, headers_len),
                    (body, body_len),
                    (status_out, handle_out),
                );
                if let Some(code) = now {
                    return Ok(code);
                }
                let call = host.io.http.take_request();
                fiber::CALL_MADE.with(|slot| *slot.borrow_mut() = call);
                let result = std::future::poll_fn(|_| {
                    match fiber::CALL_RESULT.with(|slot| slot.borrow_mut().take()) {
                        Some(result) => Poll::Ready(result),
                        None => Poll::Pending,
                    }
                })
                .await;
                let (mem, host) = memory.data_and_store_mut(&mut caller);
                host.io.http.deliver(result);
                Ok(host.io.http.finish(mem))
            })
        },
    )?;
    Ok(())
}

impl Engine for WasmtimeEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Wasmtime
    }

    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn CompiledModule>, CompileError> {
        Ok(self.compile_to_artifact(wasm)?.0)
    }

    fn artifact_fingerprint(&self) -> Option<String> {
        // Covers the wasmtime version, the target and CPU features, and the settings that
        // change machine code; an artifact from any other engine does not match.
        let mut h = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(format!("wasmtime-{:016x}", h.finish()))
    }

    fn compile_to_artifact(
        &self,
        wasm: &[u8],
    ) -> Result<(Arc<dyn CompiledModule>, Option<Vec<u8>>), CompileError> {
        if crate::is_component(wasm) {
            return crate::component::compile(&self.engine, &self.components, wasm);
        }
        crate::shape::check(wasm, &self.config)?;
        let module =
            Module::new(&self.engine, wasm).map_err(|e| CompileError::Invalid(format!("{e:#}")))?;
        let prepared = self.prepare(&module)?;
        Ok((prepared, module.serialize().ok()))
    }

    #[allow(unsafe_code)]
    unsafe fn load_artifact(
        &self,
        artifact: &[u8],
    ) -> Result<Arc<dyn CompiledModule>, CompileError> {
        // SAFETY: the caller vouches that `artifact` is exactly what `compile_to_artifact`
        // serialized on an engine with this fingerprint; wasmtime checks the rest of its
        // header (version, settings) itself.
        if let Some(wasmtime::Precompiled::Component) = Wasmtime::detect_precompiled(artifact) {
            // SAFETY: as above.
            let component =
                unsafe { wasmtime::component::Component::deserialize(&self.engine, artifact) }
                    .map_err(refused)?;
            return crate::component::prepare(&self.engine, &self.components, &component);
        }
        let module = unsafe { Module::deserialize(&self.engine, artifact) }.map_err(refused)?;
        self.prepare(&module)
    }

    #[allow(unsafe_code)]
    unsafe fn load_module_artifact_file(
        &self,
        file: std::fs::File,
        len: u64,
    ) -> Result<Arc<dyn CompiledModule>, CompileError> {
        // The file is mapped copy-on-write as it is: the ELF image wasmtime reads ends at
        // `len`, and what a cache keeps after it is never looked at.
        let _ = len;
        // SAFETY: the caller vouches for the file as for `load_artifact`, and that it is
        // not changed in place while mapped.
        let module =
            unsafe { Module::deserialize_open_file(&self.engine, file) }.map_err(refused)?;
        self.prepare(&module)
    }
}

impl WasmtimeEngine {
    /// Links a compiled module: its WASI imports, and errno stubs for the functions
    /// `shape::check` accepted but this host does not implement.
    fn prepare(&self, module: &Module) -> Result<Arc<dyn CompiledModule>, CompileError> {
        let mut linker: Option<Linker<Host>> = None;
        for import in module.imports().filter(|i| i.module() == wasi::MODULE) {
            let (Provided::Stub(errno), ExternType::Func(ty)) =
                (wasi::provided(import.name()), import.ty())
            else {
                continue;
            };
            let linker = linker.get_or_insert_with(|| self.linker.clone());
            linker
                .func_new(wasi::MODULE, import.name(), ty, move |_, _, results| {
                    results[0] = Val::I32(errno);
                    Ok(())
                })
                .map_err(|e| CompileError::Engine(e.to_string()))?;
        }
        let start = module
            .get_export_index("_start")
            .ok_or(CompileError::MissingStart)?;
        let memory = module
            .get_export_index("memory")
            .ok_or(CompileError::MissingMemory)?;
        let pre = linker
            .as_ref()
            .unwrap_or(&self.linker)
            .instantiate_pre(module)
            .map_err(|e| CompileError::ImportSignature(e.to_string()))?;
        let entrypoints = module
            .exports()
            .filter_map(|e| match e.ty() {
                ExternType::Func(f) if f.params().len() == 0 && f.results().len() == 0 => {
                    Some(e.name().to_owned())
                }
                _ => None,
            })
            .collect();
        Ok(Arc::new(WasmtimeModule {
            engine: self.engine.clone(),
            pre,
            start,
            memory,
            entrypoints,
        }))
    }
}

struct WasmtimeModule {
    engine: Wasmtime,
    pre: InstancePre<Host>,
    start: ModuleExport,
    memory: ModuleExport,
    entrypoints: Vec<String>,
}

impl CompiledModule for WasmtimeModule {
    fn start(&self, request: &GuestRequest, limits: &RunLimits) -> Box<dyn GuestTask> {
        let host = Host {
            io: wagi::guest_io(request, limits),
            memory: None,
            limiter: MemoryLimiter::new(limits.memory_bytes),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        // At each slice's end, a piece of the response when one is due.
        fiber::slice_by_epoch(&mut store, |host| wagi::stdout_piece(&mut host.io));
        // `_start`'s export is looked up once per module; any other entrypoint by name.
        let entry = match &*request.entrypoint {
            frenezulo_core::DEFAULT_ENTRYPOINT => Entry::Start(self.start),
            _ => Entry::Named(request.entrypoint.clone()),
        };
        let (pre, memory) = (self.pre.clone(), self.memory);
        let run = async move {
            let ending = run(&pre, &mut store, entry, memory).await;
            let host = store.into_data();
            wagi::finish(host.io, ending, host.limiter.refused)
        };
        fiber::task(Box::pin(run))
    }

    fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }
}

/// The export a task runs.
enum Entry {
    /// `_start`, found when the module was prepared.
    Start(ModuleExport),
    /// Another export, found by name.
    Named(Arc<str>),
}

async fn run(
    pre: &InstancePre<Host>,
    store: &mut Store<Host>,
    entry: Entry,
    memory: ModuleExport,
) -> Ending {
    let instance = match pre.instantiate_async(&mut *store).await {
        Ok(instance) => instance,
        // A start function may exit (`proc_exit`) as `_start` may: that is an ending, not a
        // failure to instantiate (wasmi sees it the same way).
        Err(e) => {
            return match e.downcast_ref::<HostStop>() {
                Some(stop) => Ending::Stopped(*stop),
                None => Ending::Instantiate(format!("{e:#}")),
            };
        }
    };
    if let Some(Extern::Memory(m)) = instance.get_module_export(&mut *store, &memory) {
        store.data_mut().memory = Some(m);
    }
    let export = match &entry {
        Entry::Start(start) => instance.get_module_export(&mut *store, start),
        Entry::Named(name) => instance.get_export(&mut *store, name),
    };
    let Some(Extern::Func(start)) = export else {
        return Ending::Trapped("the entrypoint is not an exported function".to_owned());
    };
    let start = match start.typed::<(), ()>(&*store) {
        Ok(f) => f,
        Err(e) => return Ending::Trapped(e.to_string()),
    };
    match start.call_async(&mut *store, ()).await {
        Ok(()) => Ending::Returned,
        Err(e) => fiber::classify(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_loads_back_and_runs() {
        let engine = WasmtimeEngine::new(&EngineConfig {
            max_instances: 2,
            max_memory_bytes: 1 << 20,
        })
        .unwrap();
        let hello = wat::parse_str(
            r#"(module
              (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (data (i32.const 64) "Content-Type: t\n\nhi")
              (func (export "_start")
                (i32.store (i32.const 0) (i32.const 64))
                (i32.store (i32.const 4) (i32.const 19))
                (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        )
        .unwrap();
        let (_, artifact) = engine.compile_to_artifact(&hello).unwrap();
        let artifact = artifact.expect("wasmtime serializes");
        // SAFETY: made just above by this engine.
        #[allow(unsafe_code)]
        let module = unsafe { engine.load_artifact(&artifact) }.unwrap();
        let get = frenezulo_core::Request {
            method: "GET".into(),
            target: "/s".into(),
            version: frenezulo_core::Version::Http11,
            headers: vec![],
            body: bytes::Bytes::new(),
            keep_alive: true,
        };
        let loopback = "127.0.0.1:1".parse().unwrap();
        let request = frenezulo_core::GuestRequest::new(get, "/s", loopback, loopback);
        let limits = RunLimits {
            memory_bytes: 1 << 20,
            stdout_bytes: 1024,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let out = crate::run_to_completion(module.as_ref(), &request, &limits, deadline)
            .result
            .unwrap();
        assert_eq!(&out.body[..], b"hi");
        let fingerprint = engine.artifact_fingerprint().unwrap();
        assert!(fingerprint.starts_with("wasmtime-"));
        assert_eq!(Some(fingerprint), engine.artifact_fingerprint(), "stable");
        // Bytes wasmtime did not serialize are refused, not run.
        #[allow(unsafe_code)]
        let refused = unsafe { engine.load_artifact(b"\x7fELF not an artifact") };
        assert!(refused.is_err());
    }
}
