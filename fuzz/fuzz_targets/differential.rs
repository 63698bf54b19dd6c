//! wasm-smith modules shaped as WAGI guests run on wasmtime and wasmi and must give the same
//! client-visible response, unless one of them ran out of time (speeds differ, semantics not).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use frenezulo_core::{GuestFailure, RunLimits, response};
use frenezulo_engines::{Engine, EngineConfig, EngineKind};
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;

fn engines() -> &'static (Box<dyn Engine>, Box<dyn Engine>) {
    static ENGINES: OnceLock<(Box<dyn Engine>, Box<dyn Engine>)> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let config = EngineConfig {
            max_instances: 2,
            max_memory_bytes: 16 << 20,
        };
        let make = |k| -> Box<dyn Engine> {
            let e = frenezulo_engines::create(k, &config).unwrap();
            Box::new(Shared(e))
        };
        (make(EngineKind::Wasmtime), make(EngineKind::Wasmi))
    })
}

struct Shared(std::sync::Arc<dyn Engine>);

impl Engine for Shared {
    fn kind(&self) -> EngineKind {
        self.0.kind()
    }
    fn compile(
        &self,
        wasm: &[u8],
    ) -> Result<
        std::sync::Arc<dyn frenezulo_engines::CompiledModule>,
        frenezulo_engines::CompileError,
    > {
        self.0.compile(wasm)
    }
}

fn config(u: &mut Unstructured<'_>) -> arbitrary::Result<wasm_smith::Config> {
    let mut c: wasm_smith::Config = u.arbitrary()?;
    // What a WAGI guest must export, and WASI functions it may import.
    c.exports = Some(
        wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
            .unwrap(),
    );
    c.available_imports = Some(
        wat::parse_str(
            r#"(module
              (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
              (import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))
              (import "wasi_snapshot_preview1" "environ_sizes_get" (func (param i32 i32) (result i32)))
              (import "wasi_snapshot_preview1" "environ_get" (func (param i32 i32) (result i32)))
              (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))"#,
        )
        .unwrap(),
    );
    // Proposals both engines support identically; NaN bits are canonical so they compare.
    c.canonicalize_nans = true;
    c.simd_enabled = false;
    c.relaxed_simd_enabled = false;
    c.gc_enabled = false;
    c.exceptions_enabled = false;
    c.threads_enabled = false;
    c.memory64_enabled = false;
    c.custom_page_sizes_enabled = false;
    c.wide_arithmetic_enabled = false;
    c.reference_types_enabled = false;
    c.tail_call_enabled = false;
    c.max_memories = 1;
    c.max_memory32_bytes = 4 << 20;
    c.max_tables = 1;
    Ok(c)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(config) = config(&mut u) else { return };
    let Ok(module) = wasm_smith::Module::new(config, &mut u) else {
        return;
    };
    let wasm = module.to_bytes();
    if selects_on_eqz(&wasm) {
        return;
    }
    let (wasmtime, wasmi) = engines();
    let (a, b) = match (wasmtime.compile(&wasm), wasmi.compile(&wasm)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(_), Err(_)) => return,
        (a, b) => panic!(
            "compile differs: wasmtime {:?}, wasmi {:?}",
            a.err(),
            b.err()
        ),
    };
    let run = |m: &dyn frenezulo_engines::CompiledModule| {
        let limits = RunLimits {
            memory_bytes: 2 << 20,
            stdout_bytes: 4096,
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        frenezulo_engines::run_to_completion(m, &support::request(), &limits, deadline).result
    };
    let (x, y) = (run(a.as_ref()), run(b.as_ref()));
    if x == Err(GuestFailure::Timeout) || y == Err(GuestFailure::Timeout) {
        return;
    }
    let wire = |r: Result<frenezulo_core::Response, GuestFailure>| {
        let r = r.unwrap_or_else(|f| f.to_response());
        let (head, body) = response::serialize(&r, false, false, b"");
        [head, body].concat()
    };
    assert_eq!(
        String::from_utf8_lossy(&wire(x)),
        String::from_utf8_lossy(&wire(y)),
        "wasmtime and wasmi disagree"
    );
});

/// Whether a function has `i32.eqz` right before `select`: wasmi 2.0.0 fuses the two and
/// then ignores the condition (it always picks the first operand), a bug of its own that
/// this target found. Skipped until a wasmi release fixes it; the test
/// `wasmi_2_0_0_ignores_a_select_condition_made_by_eqz` in `engines/src/wasmi_engine.rs`
/// fails as soon as one does, to say this filter can go.
fn selects_on_eqz(wasm: &[u8]) -> bool {
    use wasmparser::{Operator, Parser, Payload};
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(Payload::CodeSectionEntry(body)) = payload else {
            continue;
        };
        let Ok(mut reader) = body.get_operators_reader() else {
            return false;
        };
        let mut eqz = false;
        while !reader.eof() {
            let Ok(op) = reader.read() else { break };
            if eqz && matches!(op, Operator::Select | Operator::TypedSelect { .. }) {
                return true;
            }
            eqz = matches!(op, Operator::I32Eqz);
        }
    }
    false
}
