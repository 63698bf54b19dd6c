//! The wasmi engine: an interpreter, for platforms where a JIT is not allowed. Deadlines
//! are enforced with fuel, spent in slices with the clock checked between them.

use std::sync::Arc;
use std::time::Instant;

use frenezulo_core::{GuestRequest, RunLimits};
use wasmi::errors::HostError;
use wasmi::{
    Caller, Config, Engine as Wasmi, ExternType, Linker, Memory, Module, Store, TypedResumableCall,
    Val,
};

use crate::wagi::{self, Ending, MemoryLimiter, RunOutput};
use crate::wasi::{self, GuestIo, HostStop, Provided};
use crate::{CompileError, CompiledModule, Engine, EngineConfig, EngineKind};

/// Fuel per slice: between slices the deadline is checked. Roughly a few milliseconds of
/// interpretation in a release build.
pub const FUEL_SLICE: u64 = 4_000_000;

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
        _max: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        Ok(self.allow_memory(desired))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        Ok(self.allow_table(desired))
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
    engine: Wasmi,
    config: EngineConfig,
}

impl WasmiEngine {
    /// Creates the engine. It needs no pool: wasmi allocates per instance.
    pub fn new(config: &EngineConfig) -> Self {
        let mut wasmi_config = Config::default();
        wasmi_config.consume_fuel(true);
        Self {
            engine: Wasmi::new(&wasmi_config),
            config: *config,
        }
    }
}

impl Engine for WasmiEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Wasmi
    }

    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn CompiledModule>, CompileError> {
        crate::shape::check(wasm, &self.config)?;
        let module =
            Module::new(&self.engine, wasm).map_err(|e| CompileError::Invalid(e.to_string()))?;
        let mut linker =
            wasi_linker(&self.engine).map_err(|e| CompileError::Engine(e.to_string()))?;
        // `shape::check` accepted the imports and exports; what is left is linking the
        // unimplemented WASI functions to their errno stubs.
        for import in module.imports() {
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
        Ok(Arc::new(WasmiModule {
            engine: self.engine.clone(),
            module,
            linker,
        }))
    }
}

/// A linker with every implemented WASI function.
fn wasi_linker(engine: &Wasmi) -> Result<Linker<Host>, wasmi::errors::LinkerError> {
    let mut linker = Linker::new(engine);
    macro_rules! define {
        ($f:ident($($a:ident: $t:ty),*)) => {
            linker.func_wrap(
                wasi::MODULE,
                stringify!($f),
                |mut caller: Caller<'_, Host>, $($a: $t),*| -> Result<i32, wasmi::Error> {
                    let memory = caller.data().memory.ok_or(wasmi::Error::host(HostStop::NoMemory))?;
                    let (mem, host) = memory.data_and_store_mut(&mut caller);
                    host.io.$f(mem, $($a),*).map_err(wasmi::Error::host)
                },
            )?;
        };
    }
    wasi::for_each_function!(define);
    linker.func_wrap(
        wasi::MODULE,
        "proc_exit",
        |mut caller: Caller<'_, Host>, code: i32| -> Result<(), wasmi::Error> {
            Err(wasmi::Error::host(caller.data_mut().io.proc_exit(code)))
        },
    )?;
    Ok(linker)
}

struct WasmiModule {
    engine: Wasmi,
    module: Module,
    linker: Linker<Host>,
}

impl CompiledModule for WasmiModule {
    fn run(&self, request: &GuestRequest, limits: &RunLimits) -> RunOutput {
        let host = Host {
            io: wagi::guest_io(request, limits.stdout_bytes),
            memory: None,
            limiter: MemoryLimiter::new(limits.memory_bytes),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        let ending = self.start(&mut store, limits.deadline);
        let host = store.into_data();
        wagi::finish(host.io, ending, host.limiter.refused)
    }
}

impl WasmiModule {
    fn start(&self, store: &mut Store<Host>, deadline: Instant) -> Ending {
        if store.set_fuel(FUEL_SLICE).is_err() {
            return Ending::Instantiate("fuel metering is off".to_owned());
        }
        let instance = match self.linker.instantiate_and_start(&mut *store, &self.module) {
            Ok(instance) => instance,
            Err(e) if e.as_trap_code() == Some(wasmi::TrapCode::OutOfFuel) => {
                return Ending::Interrupted;
            }
            Err(e) => return classify(&e, true),
        };
        store.data_mut().memory = instance.get_memory(&*store, "memory");
        let start = match instance.get_typed_func::<(), ()>(&*store, "_start") {
            Ok(f) => f,
            Err(e) => return Ending::Trapped(e.to_string()),
        };
        let mut call = start.call_resumable(&mut *store, ());
        loop {
            match call {
                Ok(TypedResumableCall::Finished(())) => return Ending::Returned,
                Ok(TypedResumableCall::HostTrap(trap)) => {
                    return classify(trap.host_error(), false);
                }
                Ok(TypedResumableCall::OutOfFuel(out)) => {
                    if Instant::now() >= deadline {
                        return Ending::Interrupted;
                    }
                    let fuel = FUEL_SLICE.max(out.required_fuel());
                    if store.set_fuel(fuel).is_err() {
                        return Ending::Interrupted;
                    }
                    call = out.resume(&mut *store);
                }
                Err(e) => return classify(&e, false),
            }
        }
    }
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
