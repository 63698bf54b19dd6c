//! frenezulo-engines: WebAssembly engines behind one object-safe trait, and the WAGI
//! guest ABI they all speak.
//!
//! An [`Engine`] compiles module bytes into a [`CompiledModule`], shared by every serving
//! thread. A compiled module starts a [`GuestTask`] per request: a fresh instance with
//! limits (memory, stdout) that runs one time slice at a time on the thread that holds it,
//! so a serving loop can run guests inline and still preempt one that loops. A task that
//! finishes returns a [`wagi::RunOutput`]; one that runs on may hand out pieces of its
//! response first ([`Slice::Streamed`]), and one that waits on a timer, a stream or a
//! call's response parks ([`Slice::Parked`]) until the waker its slices run with fires;
//! dropping one that has not finished cancels it. [`run_to_completion`] drives a task to
//! its end, for tests and tools. Which engine runs is chosen at run time with
//! [`EngineKind`]; each is a cargo feature (`wasmtime`, `wasmi`), both on by default. A
//! build with only `wasmi` holds no JIT.
//!
//! The host side is shared: [`wasi`] is the small WASI preview-1 subset a WAGI guest needs
//! (stdin, stdout, stderr, argv, environment, clocks, random; no files, no sockets), and
//! [`wagi`] builds the CGI environment and parses the guest's output. Engines only adapt
//! calling conventions and map their errors onto [`frenezulo_core::GuestFailure`], so a
//! response never depends on which engine ran it.
//!
//! Not here: scheduling, admission and deadlines as the client sees them (`frenezulo-core`),
//! threads and sockets (the `frenezulo` binary).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};
use std::time::Instant;

use frenezulo_core::response::stream::Piece;
use frenezulo_core::subroute::SubRoutes;
use frenezulo_core::{GuestFailure, GuestRequest, GuestSetup, RunLimits};
use thiserror::Error;

mod abi;
#[cfg(feature = "wasmtime")]
pub mod component;
#[cfg(feature = "wasmtime")]
mod fiber;
mod file_table;
mod grants;
mod host;
mod http_calls;
pub mod outbound;
pub mod shape;
mod timer;
pub mod wagi;
pub mod wasi;

#[cfg(feature = "wasmi")]
mod wasmi_engine;
#[cfg(feature = "wasmtime")]
mod wasmtime_engine;

#[cfg(feature = "wasmi")]
pub use wasmi_engine::WasmiEngine;
#[cfg(feature = "wasmtime")]
pub use wasmtime_engine::WasmtimeEngine;

pub use grants::{Grants, OutboundGrant, Volume};
pub use wagi::RunOutput;

/// A WebAssembly engine: compiles modules for [`CompiledModule::run`].
pub trait Engine: Send + Sync {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// Validates and compiles a module. The module must be a WASI preview-1 command:
    /// it exports `_start` and `memory` and imports only WASI functions.
    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn CompiledModule>, CompileError>;

    /// Names the machine code this engine makes: its version, target and every setting
    /// that changes the code. `None` for an engine with nothing worth keeping between
    /// runs (the interpreter compiles fast).
    fn artifact_fingerprint(&self) -> Option<String> {
        None
    }

    /// Compiles like [`Engine::compile`], and serializes the machine code for a cache that
    /// outlives the process (`None` when the engine has none).
    #[allow(clippy::type_complexity)]
    fn compile_to_artifact(
        &self,
        wasm: &[u8],
    ) -> Result<(Arc<dyn CompiledModule>, Option<Vec<u8>>), CompileError> {
        Ok((self.compile(wasm)?, None))
    }

    /// Loads a module from an artifact that [`Engine::compile_to_artifact`] made.
    ///
    /// # Safety
    ///
    /// The artifact is machine code that runs as it is: it must be exactly the bytes an
    /// engine with the same [`Engine::artifact_fingerprint`] serialized (a cache on disk
    /// checks a checksum first). It is the one input frenezulo trusts without checking.
    #[allow(unsafe_code)]
    unsafe fn load_artifact(
        &self,
        artifact: &[u8],
    ) -> Result<Arc<dyn CompiledModule>, CompileError> {
        let _ = artifact;
        Err(CompileError::Engine(
            "this engine has no precompiled artifacts".to_owned(),
        ))
    }

    /// Loads a core module (not a component) from an artifact file whose first `len`
    /// bytes [`Engine::compile_to_artifact`] made (anything after them is ignored): mapped
    /// where the engine can, so that loading copies nothing.
    ///
    /// # Safety
    ///
    /// As for [`Engine::load_artifact`]; and the file must not be changed in place while
    /// the module lives (a cache replaces files by renaming, which leaves a mapping alone).
    #[allow(unsafe_code)]
    unsafe fn load_module_artifact_file(
        &self,
        file: std::fs::File,
        len: u64,
    ) -> Result<Arc<dyn CompiledModule>, CompileError> {
        use std::io::Read as _;
        let mut artifact = Vec::new();
        file.take(len)
            .read_to_end(&mut artifact)
            .map_err(|e| CompileError::Engine(format!("artifact not read: {e}")))?;
        // SAFETY: the caller's promise for the file holds for the bytes read from it.
        unsafe { self.load_artifact(&artifact) }
    }
}

/// A compiled module, shareable across threads; each task gets a fresh instance.
pub trait CompiledModule: Send + Sync {
    /// Prepares a run of `request` in a fresh instance, within `limits`. The guest runs
    /// when [`GuestTask::run_slice`] is called, on the thread that holds the task.
    fn start(&self, request: &GuestRequest, limits: &RunLimits) -> Box<dyn GuestTask>;

    /// The exported functions that take and return nothing: what an entrypoint or a
    /// sub-route may name.
    fn entrypoints(&self) -> &[String];

    /// How the guest speaks HTTP.
    fn kind(&self) -> ModuleKind {
        ModuleKind::Wagi
    }
}

/// How a guest speaks HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModuleKind {
    /// A WASI preview-1 module that answers in CGI (WAGI): both engines.
    Wagi,
    /// A component exporting `wasi:http/incoming-handler` (WASI 0.2): wasmtime only.
    HttpComponent,
}

impl ModuleKind {
    /// What `wasm` holds, read from its header; says nothing of whether it is valid.
    pub fn of(wasm: &[u8]) -> ModuleKind {
        if is_component(wasm) {
            ModuleKind::HttpComponent
        } else {
            ModuleKind::Wagi
        }
    }

    /// The name the management API shows.
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Wagi => "wagi",
            ModuleKind::HttpComponent => "wasi-http",
        }
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `wasm` is a component (the component model's binary) rather than a core module;
/// says nothing of whether it is valid.
pub fn is_component(wasm: &[u8]) -> bool {
    wasmparser::Parser::is_component(wasm)
}

/// Checks that every export `setup` names (its entrypoint and its sub-routes') is one
/// `module` can run.
pub fn check_entrypoints(module: &dyn CompiledModule, setup: &GuestSetup) -> Result<(), String> {
    if module.kind() == ModuleKind::HttpComponent {
        // A component answers through its handler export, for every path it owns.
        if &*setup.entrypoint != frenezulo_core::DEFAULT_ENTRYPOINT {
            return Err(format!(
                "a wasi:http component has no entrypoints (`{}` was set); it answers through `wasi:http/incoming-handler`",
                setup.entrypoint
            ));
        }
        if !setup.routes.routes().is_empty() {
            return Err(
                "a wasi:http component takes no sub-routes; it routes its own paths".to_owned(),
            );
        }
        return Ok(());
    }
    let names = std::iter::once(&setup.entrypoint)
        .chain(setup.routes.routes().iter().map(|r| &r.entrypoint));
    for name in names {
        if &**name == frenezulo_core::subroute::ROUTES_EXPORT {
            return Err(format!(
                "`{name}` lists the routes; it cannot answer requests"
            ));
        }
        if !module.entrypoints().iter().any(|e| e == &**name) {
            return Err(format!(
                "the module has no exported function `{name}` taking and returning nothing"
            ));
        }
    }
    Ok(())
}

/// Why a module's sub-routes could not be learned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiscoverRoutesError {
    /// `_routes` failed or ran past its time.
    #[error("`_routes` failed: {0}")]
    Failed(GuestFailure),
    /// What `_routes` wrote is not a route list.
    #[error("`_routes` output refused: {0}")]
    Refused(#[from] frenezulo_core::subroute::RoutesError),
}

/// Most time a module's `_routes` export may run.
pub const ROUTES_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a module's `_routes` export, as WAGI does when a module loads, and parses the
/// sub-routes it writes; none when the module has no such export.
pub fn discover_routes(
    module: &dyn CompiledModule,
    limits: &RunLimits,
) -> Result<SubRoutes, DiscoverRoutesError> {
    use frenezulo_core::subroute::ROUTES_EXPORT;
    if !module.entrypoints().iter().any(|e| e == ROUTES_EXPORT) {
        return Ok(SubRoutes::default());
    }
    let request = GuestRequest {
        entrypoint: ROUTES_EXPORT.into(),
        wildcard: false,
        ..loopback_get()
    };
    let deadline = Instant::now() + ROUTES_DEADLINE;
    let output = run_to_completion(module, &request, limits, deadline)
        .result
        .map_err(DiscoverRoutesError::Failed)?;
    Ok(SubRoutes::parse(&output.body)?)
}

/// A bare `GET /` from loopback, for runs that answer no client.
pub(crate) fn loopback_get() -> GuestRequest {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let get = frenezulo_core::Request {
        method: "GET".to_owned(),
        target: "/".to_owned(),
        version: frenezulo_core::Version::Http11,
        headers: Vec::new(),
        body: bytes::Bytes::new(),
        keep_alive: false,
    };
    GuestRequest::new(get, "", loopback, loopback)
}

/// One request's run in its own instance, a time slice at a time. Dropping a task that
/// has not finished cancels it and frees its instance.
pub trait GuestTask {
    /// Runs the guest until it finishes, its time slice (about [`SLICE`]) runs out, or it
    /// waits on something outside it. `waker` is woken when a task that ended the slice
    /// [`Slice::Parked`] may go on; it may be woken from another thread, and already
    /// during the slice. Once it returned [`Slice::Finished`], further calls return a trap.
    fn run_slice(&mut self, waker: &Waker) -> Slice;

    /// Gives a task that returned [`Slice::Waiting`] the result of its call; the guest sees
    /// it when the next slice runs. A slice run without it gives the guest a runtime error.
    fn deliver(&mut self, result: outbound::OutboundResult);

    /// Gives a task more of its request body, when its request started before the body
    /// was in ([`GuestRequest::body_follows`]), waking it if it waits for it. A task
    /// whose request came whole, as every WAGI guest's does, never gets any.
    fn push_body(&mut self, piece: frenezulo_core::BodyPiece) {
        let _ = piece;
    }
}

/// Roughly how long one time slice lets a guest run before it yields: wasmtime counts it
/// in epoch ticks, wasmi in fuel calibrated to about this on a release build.
pub const SLICE: std::time::Duration = std::time::Duration::from_micros(500);

/// Bytes of response a guest may write ahead of the server before they go out as a
/// [`Slice::Streamed`] piece: a larger response goes out in pieces of about this size.
pub const PIECE_BYTES: usize = 64 * 1024;

/// Whether what a guest wrote and the server has not taken (`waiting` bytes, or a head
/// alone) goes out now as a piece, for both kinds of guest: once [`PIECE_BYTES`] wait, or
/// once something has waited [`SLICE`] since `since` (set at the first look). A guest
/// that answers within a slice or two is sent whole, with its length; one that writes a
/// lot goes out in pieces of about [`PIECE_BYTES`], not one per write.
pub(crate) fn piece_due(waiting: usize, since: &mut Option<Instant>) -> bool {
    waiting >= PIECE_BYTES || since.get_or_insert_with(Instant::now).elapsed() >= SLICE
}

/// How a time slice ended.
#[derive(Debug)]
pub enum Slice {
    /// The slice ran out with the guest still running; run another to continue.
    Yielded,
    /// The guest waits on this outbound call: make it, [`GuestTask::deliver`] the result,
    /// then run another slice.
    Waiting(outbound::OutboundRequest),
    /// The guest waits on something that wakes the slice's waker (a timer, a stream, a
    /// call's response on its way): run another slice once it was woken (it may have been
    /// already), not before; a task that is run anyway only parks again.
    Parked,
    /// The guest, still running, handed over a piece of its response to send now: the
    /// head and first bytes ([`Piece::Start`]), then more of the body. Run another slice
    /// to continue; the [`RunOutput`] it finishes with then carries the last body bytes.
    Streamed(Piece),
    /// The guest finished: its response, or why there is none.
    Finished(RunOutput),
}

/// Runs a task slice after slice until it finishes or `deadline` passes (then
/// [`GuestFailure::Timeout`]), and gives its whole response, pieces it streamed joined
/// up; a parked task is waited for on this thread. For tests, benchmarks and tools; the
/// server schedules slices itself.
pub fn run_to_completion(
    module: &dyn CompiledModule,
    request: &GuestRequest,
    limits: &RunLimits,
    deadline: Instant,
) -> RunOutput {
    let mut task = module.start(request, limits);
    let wakeup = ThreadWaker::new();
    let waker = wakeup.waker();
    let mut streamed: Option<(frenezulo_core::Response, bytes::BytesMut)> = None;
    let timeout = || RunOutput {
        result: Err(GuestFailure::Timeout),
        stderr: Vec::new(),
    };
    loop {
        match task.run_slice(&waker) {
            Slice::Finished(mut output) => {
                if let (Some((head, mut body)), Ok(last)) = (streamed, &mut output.result) {
                    body.extend_from_slice(&last.body);
                    *last = frenezulo_core::Response {
                        body: body.freeze(),
                        ..head
                    };
                }
                return output;
            }
            Slice::Streamed(Piece::Start(head)) => {
                let body = bytes::BytesMut::from(&head.body[..]);
                streamed = Some((head, body));
            }
            Slice::Streamed(Piece::More(more)) => {
                if let Some((_, body)) = streamed.as_mut() {
                    body.extend_from_slice(&more);
                }
            }
            Slice::Streamed(_) | Slice::Yielded => {}
            Slice::Parked => {
                if !wakeup.wait(deadline) {
                    return timeout();
                }
            }
            // Tools and tests make no outbound calls: the guest is told the host could not.
            Slice::Waiting(_) => task.deliver(Err(outbound::OutboundError {
                code: outbound::code::RUNTIME_ERROR,
                reason: "run_to_completion makes no outbound calls".to_owned(),
            })),
        }
        if Instant::now() >= deadline {
            return timeout();
        }
    }
}

/// A waker for a task run on the calling thread (tests, benchmarks, tools): a wake
/// unparks the thread that made it.
pub struct ThreadWaker(Arc<ThreadWake>);

struct ThreadWake {
    woken: AtomicBool,
    thread: std::thread::Thread,
}

impl Wake for ThreadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl ThreadWaker {
    /// A waker for the calling thread.
    pub fn new() -> Self {
        Self(Arc::new(ThreadWake {
            woken: AtomicBool::new(false),
            thread: std::thread::current(),
        }))
    }

    /// The waker to give [`GuestTask::run_slice`].
    pub fn waker(&self) -> Waker {
        Waker::from(self.0.clone())
    }

    /// Waits on the calling thread (the one that made this) until the waker was woken
    /// since the last wait, or `deadline` passes; says whether it was woken.
    pub fn wait(&self, deadline: Instant) -> bool {
        loop {
            if self.0.woken.swap(false, Ordering::Acquire) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::park_timeout(left);
        }
    }
}

impl Default for ThreadWaker {
    fn default() -> Self {
        Self::new()
    }
}

/// The output of polling a task that already finished.
fn finished_twice() -> Slice {
    Slice::Finished(RunOutput {
        result: Err(GuestFailure::Trap("task already finished".to_owned())),
        stderr: Vec::new(),
    })
}

/// The engines frenezulo knows, whether or not this build carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineKind {
    /// wasmtime: Cranelift JIT, pooling allocator.
    Wasmtime,
    /// wasmi: an interpreter, for platforms that forbid JIT compilation.
    Wasmi,
}

impl EngineKind {
    /// Every engine kind.
    pub const ALL: [EngineKind; 2] = [EngineKind::Wasmtime, EngineKind::Wasmi];

    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Wasmtime => "wasmtime",
            EngineKind::Wasmi => "wasmi",
        }
    }

    /// Whether this build carries the engine.
    pub fn is_compiled_in(self) -> bool {
        match self {
            EngineKind::Wasmtime => cfg!(feature = "wasmtime"),
            EngineKind::Wasmi => cfg!(feature = "wasmi"),
        }
    }

    /// The engines this build carries.
    pub fn compiled_in() -> impl Iterator<Item = EngineKind> {
        Self::ALL.into_iter().filter(|k| k.is_compiled_in())
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown engine `{s}` (known: wasmtime, wasmi)"))
    }
}

/// Settings an engine is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Instances alive at once (every serving thread's running tasks, plus slack); sizes
    /// wasmtime's pool of instances, memories and fiber stacks.
    pub max_instances: u32,
    /// Upper bound on any service's memory limit, in bytes; sizes wasmtime's pool slots.
    pub max_memory_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_instances: 64,
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why an engine could not be created.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The build does not carry this engine.
    #[error("engine `{0}` is not compiled into this build (built with: {list})", list = compiled_in_list())]
    NotCompiledIn(EngineKind),
    /// The engine rejected its configuration.
    #[error("engine `{kind}` could not start: {reason}")]
    Setup {
        /// The engine.
        kind: EngineKind,
        /// What it said.
        reason: String,
    },
}

fn compiled_in_list() -> String {
    EngineKind::compiled_in()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a module was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The bytes are not a valid WebAssembly module.
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    /// The module imports something other than a WASI preview-1 or outbound HTTP function.
    #[error("unsupported import `{module}::{name}`: only {wasi} and {http} functions are provided", wasi = wasi::MODULE, http = outbound::MODULE)]
    UnsupportedImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// A WASI import has the wrong signature.
    #[error("{0}")]
    ImportSignature(String),
    /// The module does not export `_start` as a function with no parameters or results.
    #[error(
        "module does not export a `_start` function taking and returning nothing (is it a WASI command?)"
    )]
    MissingStart,
    /// The module does not export its linear memory as `memory`.
    #[error("module does not export its linear memory as `memory`")]
    MissingMemory,
    /// A component was given to an engine that runs only core modules.
    #[error(
        "this is a WebAssembly component (wasi:http); components need the wasmtime engine, and this server runs {0}"
    )]
    ComponentNeedsWasmtime(EngineKind),
    /// A component wasmtime does not take: malformed, or beyond what one instance may hold
    /// here (core instances, memories, tables).
    #[error("component not accepted: {0}")]
    ComponentRefused(String),
    /// A component imports something the host does not provide, or with another type.
    #[error("component not linkable: {0}")]
    ComponentImport(String),
    /// A component that does not export `wasi:http/incoming-handler`.
    #[error("component does not export `wasi:http/incoming-handler@0.2.x`: {0}")]
    NotAHandler(String),
    /// The engine failed for another reason.
    #[error("engine error: {0}")]
    Engine(String),
}

/// Creates an engine of `kind`.
pub fn create(kind: EngineKind, config: &EngineConfig) -> Result<Arc<dyn Engine>, EngineError> {
    let _ = config;
    match kind {
        #[cfg(feature = "wasmtime")]
        EngineKind::Wasmtime => Ok(Arc::new(WasmtimeEngine::new(config)?)),
        #[cfg(feature = "wasmi")]
        EngineKind::Wasmi => Ok(Arc::new(WasmiEngine::new(config))),
        #[allow(unreachable_patterns)]
        other => Err(EngineError::NotCompiledIn(other)),
    }
}
