//! The wasmi engine: an interpreter, for platforms where a JIT is not allowed. A time
//! slice is an amount of fuel: a resumable call runs until the guest finishes or its fuel
//! runs out, and the next slice resumes it with more.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};

use frenezulo_core::{GuestRequest, RunLimits};
use wasmi::errors::HostError;
use wasmi::{
    Caller, Config, Engine as Wasmi, ExternType, Linker, Memory, Module, Store, TypedFunc,
    TypedResumableCall, TypedResumableCallHostTrap, TypedResumableCallOutOfFuel, Val,
};

use crate::host::{GuestIo, HostStop};
use crate::outbound::{self, OutboundResult, not_delivered};
use crate::timer::Sleep;
use crate::wagi::{self, Ending, MemoryLimiter};
use crate::wasi::{self, Provided};
use crate::{CompileError, CompiledModule, Engine, EngineConfig, EngineKind, GuestTask, Slice};

/// Fuel per time slice: about [`crate::SLICE`] of interpretation in a release build
/// (measured on `engines/tests/guests/loop.wat`: 2M units took 3.2 ms).
pub const FUEL_SLICE: u64 = 300_000;

/// Fuel a start function may use: it runs inside instantiation, which cannot yield, so it
/// gets a budget of its own (about 2 ms), unchanged when slices were made shorter.
const START_FUEL: u64 = 1_250_000;

struct Host {
    io: GuestIo,
    memory: Option<Memory>,
    limiter: MemoryLimiter,
}

impl HostError for HostStop {}

impl wasmi::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        Ok(self.allow_memory(desired, max))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        Ok(self.allow_table(desired, max))
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The wasmi engine.
pub struct WasmiEngine {
    /// What every module's own wasmi engine is made with.
    wasmi_config: Config,
    config: EngineConfig,
}

impl WasmiEngine {
    /// Creates the engine. It needs no pool: wasmi allocates per instance.
    pub fn new(config: &EngineConfig) -> Self {
        let mut wasmi_config = Config::default();
        wasmi_config.consume_fuel(true);
        Self {
            wasmi_config,
            config: *config,
        }
    }
}

impl Engine for WasmiEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Wasmi
    }

    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn CompiledModule>, CompileError> {
        Ok(Arc::new(self.compile_module(wasm)?))
    }
}

impl WasmiEngine {
    fn compile_module(&self, wasm: &[u8]) -> Result<WasmiModule, CompileError> {
        if crate::is_component(wasm) {
            return Err(CompileError::ComponentNeedsWasmtime(EngineKind::Wasmi));
        }
        crate::shape::check(wasm, &self.config)?;
        // A wasmi engine keeps the code of every module it compiled until it is dropped
        // itself (its code map only grows): one engine per module hands a module's code
        // back when the module goes, so a server that evicts and compiles again does not
        // grow without bound.
        let engine = Wasmi::new(&self.wasmi_config);
        let module =
            Module::new(&engine, wasm).map_err(|e| CompileError::Invalid(e.to_string()))?;
        let mut linker = wasi_linker(&engine).map_err(|e| CompileError::Engine(e.to_string()))?;
        // `shape::check` accepted the imports and exports; what is left is linking the
        // unimplemented WASI functions to their errno stubs.
        for import in module.imports().filter(|i| i.module() == wasi::MODULE) {
            let (Provided::Stub(errno), ExternType::Func(ty)) =
                (wasi::provided(import.name()), import.ty())
            else {
                continue;
            };
            linker
                .func_new(
                    wasi::MODULE,
                    import.name(),
                    ty.clone(),
                    move |_, _, results| {
                        results[0] = Val::I32(errno);
                        Ok(())
                    },
                )
                .map_err(|e| CompileError::Engine(e.to_string()))?;
        }
        let entrypoints = module
            .exports()
            .filter_map(|e| match e.ty() {
                ExternType::Func(f) if f.params().is_empty() && f.results().is_empty() => {
                    Some(e.name().to_owned())
                }
                _ => None,
            })
            .collect();
        Ok(WasmiModule {
            engine,
            module,
            linker,
            entrypoints,
        })
    }
}

/// Fuel one host call costs besides the bytes it moves: about the time of a call into the
/// host and back, in the fuel [`FUEL_SLICE`] is calibrated in (about 0.6 units a ns).
const HOST_CALL_FUEL: u64 = 32;

/// Bytes a host call copies between guest memory and the host per unit of fuel: measured
/// as a guest writing 16 MiB in 64 KiB writes (stdout growing as it goes), 1.2 bytes a ns.
const BYTES_PER_FUEL: u64 = 2;

/// Charges the guest fuel for the host call it just made: fuel counts only its own
/// instructions, so a guest whose time goes to host calls (writing megabytes of output,
/// reading files) would otherwise run far past its slice. Out of fuel, it yields at its
/// next instruction.
fn charge_host_call(caller: &mut Caller<'_, Host>) -> Result<(), wasmi::Error> {
    let moved = caller.data_mut().io.take_moved() as u64;
    let cost = HOST_CALL_FUEL + moved / BYTES_PER_FUEL;
    let fuel = caller.get_fuel()?;
    caller.set_fuel(fuel.saturating_sub(cost))
}

/// A linker with every implemented WASI function.
fn wasi_linker(engine: &Wasmi) -> Result<Linker<Host>, wasmi::errors::LinkerError> {
    let mut linker = Linker::new(engine);
    macro_rules! define_in {
        ($module:expr, $name:expr, $f:ident($($a:ident: $t:ty),*)) => {
            linker.func_wrap(
                $module,
                $name,
                |mut caller: Caller<'_, Host>, $($a: $t),*| -> Result<i32, wasmi::Error> {
                    let memory = caller.data().memory.ok_or(wasmi::Error::host(HostStop::NoMemory))?;
                    let (mem, host) = memory.data_and_store_mut(&mut caller);
                    let result = host.io.$f(mem, $($a),*).map_err(wasmi::Error::host);
                    charge_host_call(&mut caller)?;
                    result
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
    // Its `HostStop::Sleeping` traps resumably: the task parks and resumes it.
    define!(poll_oneoff(subs: i32, events: i32, count: i32, nevents: i32));
    outbound::for_each_function!(define_http);
    linker.func_wrap(
        wasi::MODULE,
        "proc_exit",
        |mut caller: Caller<'_, Host>, code: i32| -> Result<(), wasmi::Error> {
            Err(wasmi::Error::host(caller.data_mut().io.proc_exit(code)))
        },
    )?;
    http_functions(&mut linker)?;
    Ok(linker)
}

/// `wasi_experimental_http::req` (the module's other functions are registered with the
/// WASI ones). It stops the call with [`HostStop::Waiting`]: the task resumes it with the
/// result once the driver has made the call.
fn http_functions(linker: &mut Linker<Host>) -> Result<(), wasmi::errors::LinkerError> {
    fn memory(caller: &Caller<'_, Host>) -> Result<Memory, wasmi::Error> {
        caller
            .data()
            .memory
            .ok_or(wasmi::Error::host(HostStop::NoMemory))
    }
    #[allow(clippy::too_many_arguments)]
    linker.func_wrap(
        outbound::MODULE,
        "req",
        |mut caller: Caller<'_, Host>,
         url: i32,
         url_len: i32,
         method: i32,
         method_len: i32,
         headers: i32,
         headers_len: i32,
         body: i32,
         body_len: i32,
         status_out: i32,
         handle_out: i32|
         -> Result<i32, wasmi::Error> {
            let memory = memory(&caller)?;
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let now = host.io.http_req(
                mem,
                (url, url_len),
                (method, method_len),
                (headers, headers_len),
                (body, body_len),
                (status_out, handle_out),
            );
            now.ok_or(wasmi::Error::host(HostStop::Waiting))
        },
    )?;
    Ok(())
}

struct WasmiModule {
    engine: Wasmi,
    module: Module,
    linker: Linker<Host>,
    entrypoints: Vec<String>,
}

impl CompiledModule for WasmiModule {
    fn start(&self, request: &GuestRequest, limits: &RunLimits) -> Box<dyn GuestTask> {
        let host = Host {
            io: wagi::guest_io(request, limits),
            memory: None,
            limiter: MemoryLimiter::new(limits.memory_bytes),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        let phase = self.instantiate(&mut store, &request.entrypoint);
        Box::new(WasmiTask {
            store: Some(store),
            phase,
        })
    }

    fn entrypoints(&self) -> &[String] {
        &self.entrypoints
    }
}

impl WasmiModule {
    /// Instantiates the module; a start function must finish within [`START_FUEL`].
    fn instantiate(&self, store: &mut Store<Host>, entrypoint: &str) -> Phase {
        if store.set_fuel(START_FUEL).is_err() {
            return Phase::Ended(Ending::Instantiate("fuel metering is off".to_owned()));
        }
        let instance = match self.linker.instantiate_and_start(&mut *store, &self.module) {
            Ok(instance) => instance,
            Err(e) if e.as_trap_code() == Some(wasmi::TrapCode::OutOfFuel) => {
                return Phase::Ended(Ending::Interrupted);
            }
            Err(e) => return Phase::Ended(classify(&e, true)),
        };
        store.data_mut().memory = instance.get_memory(&*store, "memory");
        match instance.get_typed_func::<(), ()>(&*store, entrypoint) {
            Ok(start) => Phase::Ready(start),
            Err(e) => Phase::Ended(Ending::Trapped(e.to_string())),
        }
    }
}

/// A run in progress; dropping it drops the store and the instance in it.
struct WasmiTask {
    /// `None` once finished.
    store: Option<Store<Host>>,
    phase: Phase,
}

enum Phase {
    /// Instantiated; the entrypoint not called yet.
    Ready(TypedFunc<(), ()>),
    /// Out of fuel mid-call.
    Suspended(TypedResumableCallOutOfFuel<()>),
    /// Stopped in `req`, waiting for its result.
    Waiting(TypedResumableCallHostTrap<()>),
    /// Stopped in `poll_oneoff`, asleep until the sleep is over.
    Sleeping(TypedResumableCallHostTrap<()>, Sleep),
    /// Ended before the entrypoint could run.
    Ended(Ending),
    /// Finished and reported.
    Done,
}

impl GuestTask for WasmiTask {
    fn deliver(&mut self, result: OutboundResult) {
        self.deliver_to_store(result);
    }

    /// Parks while the guest sleeps in `poll_oneoff`; `waker` is woken when it is due.
    fn run_slice(&mut self, waker: &Waker) -> Slice {
        let Some(store) = self.store.as_mut() else {
            return crate::finished_twice();
        };
        let call = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Ready(start) => match store.set_fuel(FUEL_SLICE) {
                Ok(()) => start.call_resumable(&mut *store, ()),
                Err(e) => return self.finish(Ending::Instantiate(e.to_string())),
            },
            Phase::Suspended(out) => {
                let fuel = FUEL_SLICE.max(out.required_fuel());
                match store.set_fuel(fuel) {
                    Ok(()) => out.resume(&mut *store),
                    Err(e) => return self.finish(Ending::Trapped(e.to_string())),
                }
            }
            Phase::Waiting(trap) => {
                let answered = resume_host_call(store, trap, |io, mem| {
                    if io.http.is_waiting() {
                        io.http.deliver(Err(not_delivered()));
                    }
                    io.http.finish(mem)
                });
                match answered {
                    Ok(call) => call,
                    Err(ending) => return self.finish(ending),
                }
            }
            Phase::Sleeping(trap, mut sleep) => {
                if !sleep_over(&mut sleep, waker) {
                    self.phase = Phase::Sleeping(trap, sleep);
                    return Slice::Parked;
                }
                match resume_host_call(store, trap, GuestIo::wake) {
                    Ok(call) => call,
                    Err(ending) => return self.finish(ending),
                }
            }
            Phase::Ended(ending) => return self.finish(ending),
            Phase::Done => return crate::finished_twice(),
        };
        let ending = match call {
            Ok(TypedResumableCall::Finished(())) => Ending::Returned,
            Ok(TypedResumableCall::HostTrap(trap))
                if trap.host_error().downcast_ref::<HostStop>() == Some(&HostStop::Waiting) =>
            {
                match store.data_mut().io.http.take_request() {
                    Some(request) => {
                        self.phase = Phase::Waiting(trap);
                        return Slice::Waiting(request);
                    }
                    None => Ending::Stopped(HostStop::Waiting),
                }
            }
            Ok(TypedResumableCall::HostTrap(trap))
                if trap.host_error().downcast_ref::<HostStop>() == Some(&HostStop::Sleeping) =>
            {
                let io = &mut store.data_mut().io;
                match io.wake_at() {
                    Some(until) => {
                        let mut sleep = Sleep::until(until);
                        // What it wrote goes out before it sleeps; the next slice parks.
                        let slice = match wagi::stdout_piece_now(io) {
                            Some(piece) => Slice::Streamed(piece),
                            None if sleep_over(&mut sleep, waker) => Slice::Yielded,
                            None => Slice::Parked,
                        };
                        self.phase = Phase::Sleeping(trap, sleep);
                        return slice;
                    }
                    None => Ending::Stopped(HostStop::Sleeping),
                }
            }
            Ok(TypedResumableCall::HostTrap(trap)) => classify(trap.host_error(), false),
            Ok(TypedResumableCall::OutOfFuel(out)) => {
                self.phase = Phase::Suspended(out);
                return match wagi::stdout_piece(&mut store.data_mut().io) {
                    Some(piece) => Slice::Streamed(piece),
                    None => Slice::Yielded,
                };
            }
            Err(e) => classify(&e, false),
        };
        self.finish(ending)
    }
}

impl WasmiTask {
    fn deliver_to_store(&mut self, result: OutboundResult) {
        if let Some(store) = self.store.as_mut() {
            store.data_mut().io.http.deliver(result);
        }
    }

    fn finish(&mut self, ending: Ending) -> Slice {
        let Some(store) = self.store.take() else {
            return crate::finished_twice();
        };
        let host = store.into_data();
        Slice::Finished(wagi::finish(host.io, ending, host.limiter.refused))
    }
}

/// Resumes a call stopped in a host function (a new slice's fuel) with the errno
/// `answer` gives, after it wrote the call's results into guest memory.
fn resume_host_call(
    store: &mut Store<Host>,
    trap: TypedResumableCallHostTrap<()>,
    answer: impl FnOnce(&mut GuestIo, &mut [u8]) -> i32,
) -> Result<Result<TypedResumableCall<()>, wasmi::Error>, Ending> {
    let memory = store
        .data()
        .memory
        .ok_or(Ending::Stopped(HostStop::NoMemory))?;
    let (mem, host) = memory.data_and_store_mut(&mut *store);
    let code = answer(&mut host.io, mem);
    store
        .set_fuel(FUEL_SLICE)
        .map_err(|e| Ending::Trapped(e.to_string()))?;
    Ok(trap.resume(&mut *store, &[Val::I32(code)]))
}

/// Whether `sleep` is over; if not, `waker` is woken when it is.
fn sleep_over(sleep: &mut Sleep, waker: &Waker) -> bool {
    Pin::new(sleep)
        .poll(&mut Context::from_waker(waker))
        .is_ready()
}

fn classify(e: &wasmi::Error, instantiating: bool) -> Ending {
    if let Some(stop) = e.downcast_ref::<HostStop>() {
        return Ending::Stopped(*stop);
    }
    if let Some(code) = e.i32_exit_status() {
        return Ending::Stopped(HostStop::Exit(code));
    }
    if instantiating {
        Ending::Instantiate(e.to_string())
    } else {
        Ending::Trapped(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module's compiled code goes with the module: wasmi keeps code until its engine is
    /// dropped, so each module has its own (one shared engine grew with every compile).
    #[test]
    fn a_modules_code_goes_with_the_module() {
        let engine = WasmiEngine::new(&EngineConfig::default());
        let wasm =
            wat::parse_str(r#"(module (func (export "_start")) (memory (export "memory") 1))"#)
                .unwrap();
        let a = engine.compile_module(&wasm).unwrap();
        let b = engine.compile_module(&wasm).unwrap();
        assert!(!Wasmi::same(&a.engine, &b.engine));
        let code = a.engine.weak();
        drop(a);
        assert!(
            code.upgrade().is_none(),
            "the engine and its code map are gone"
        );
    }

    /// A guest whose time goes to host calls is sliced too: fuel counts only its own
    /// instructions, so the bytes its calls move are charged. `flood.wat` writes 64 KiB
    /// per call in a loop of a few instructions until its 16 MiB cap: a few thousand units
    /// of its own, about 8M charged, so it yields some 25 times (it ran to its end in one
    /// slice before). Fuel is counted, not timed: the count does not depend on the machine.
    #[test]
    fn time_in_host_calls_counts_against_the_slice() {
        let engine = WasmiEngine::new(&EngineConfig::default());
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guests/flood.wat");
        let module = engine
            .compile_module(&wat::parse_file(path).unwrap())
            .unwrap();
        let request = crate::loopback_get();
        let limits = RunLimits {
            memory_bytes: 1 << 20,
            stdout_bytes: 16 << 20,
        };
        let mut task = module.start(&request, &limits);
        let mut yields = 0;
        let failure = loop {
            match task.run_slice(std::task::Waker::noop()) {
                Slice::Yielded => yields += 1,
                Slice::Finished(out) => break out.result.unwrap_err(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(failure, frenezulo_core::GuestFailure::OutputTooLarge);
        // A 64 KiB write is charged 32K units, so a slice holds about ten of the 256.
        let per_slice = FUEL_SLICE.div_ceil((64 << 10) / BYTES_PER_FUEL);
        assert!(
            yields >= 256 / per_slice - 1,
            "{yields} yields, {per_slice} writes a slice"
        );
    }

    /// wasmi 2.0.0 fuses `i32.eqz` into the `select` after it and then ignores the
    /// condition: `select(a, b, i32.eqz c)` gives `a` whatever `c` is. The differential fuzz
    /// target found it, and skips such modules (`selects_on_eqz` in
    /// `fuzz/fuzz_targets/differential.rs`). This test fails once a wasmi release fixes it:
    /// then drop the skip, and this test.
    #[test]
    fn wasmi_2_0_0_ignores_a_select_condition_made_by_eqz() {
        let wasm = wat::parse_str(
            r#"(module (func (export "f") (param i32 i32) (result i32)
                 i32.const 1 local.get 0 local.get 1 i32.eqz select))"#,
        )
        .unwrap();
        let engine = wasmi::Engine::default();
        let module = wasmi::Module::new(&engine, &wasm[..]).unwrap();
        let mut store = wasmi::Store::new(&engine, ());
        let instance = wasmi::Linker::<()>::new(&engine)
            .instantiate_and_start(&mut store, &module)
            .unwrap();
        let f = instance
            .get_typed_func::<(i32, i32), i32>(&store, "f")
            .unwrap();
        // `c` is 3: `i32.eqz` gives 0, so the answer should be the second operand, 7.
        let got = f.call(&mut store, (7, 3)).unwrap();
        assert_eq!(
            got, 1,
            "wasmi now selects correctly after i32.eqz: remove the fuzz skip and this test"
        );
    }
}
