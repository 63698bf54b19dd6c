//! Instantiate + run + drop of a guest, per engine: the per-request cost of frenezulo.
//!
//! `cargo bench -p frenezulo-engines` (add `-- hello`, `-- rust` or `-- component` to pick
//! a group).

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{guest, request};
use criterion::{Criterion, criterion_group, criterion_main};
use frenezulo_core::{GuestRequest, GuestSetup, RunLimits};
use frenezulo_engines::{
    CompiledModule, EngineConfig, EngineKind, Grants, RunOutput, Volume, run_to_completion,
};

/// One request in a fresh instance, to the end: what each iteration measures.
fn run_once(compiled: &dyn CompiledModule, request: &GuestRequest) -> RunOutput {
    let limits = RunLimits {
        memory_bytes: 64 << 20,
        stdout_bytes: 1 << 20,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    run_to_completion(compiled, request, &limits, deadline)
}

fn bench(c: &mut Criterion) {
    let config = EngineConfig {
        max_instances: 8,
        max_memory_bytes: 64 << 20,
    };
    let request = request(
        "GET",
        "/svc/path?name=bench",
        &[
            ("Host", "localhost:8080"),
            ("User-Agent", "criterion"),
            ("Accept", "*/*"),
        ],
        b"",
    );
    for (group, path) in [
        ("hello", "examples/hello.wat"),
        ("rust", "examples/rust-hello.wasm"),
    ] {
        let wasm = guest(path);
        let mut g = c.benchmark_group(group);
        for kind in EngineKind::compiled_in() {
            let engine = frenezulo_engines::create(kind, &config).unwrap();
            let compiled = engine.compile(&wasm).unwrap();
            g.bench_function(kind.name(), |b| {
                b.iter(|| {
                    let out = run_once(compiled.as_ref(), &request);
                    assert!(out.result.is_ok());
                    out
                })
            });
        }
        g.finish();
    }
    // A wasi:http component (wasmtime only) against the WAGI hello on the same engine: what
    // the component model and the reference wasi:http host cost per request.
    #[cfg(feature = "wasmtime")]
    {
        let engine = frenezulo_engines::create(EngineKind::Wasmtime, &config).unwrap();
        let mut g = c.benchmark_group("component");
        for (name, path) in [
            ("wagi-hello", "examples/hello.wat"),
            ("wagi-rust-hello", "examples/rust-hello.wasm"),
            (
                "wasi-http-rust-hello",
                "examples/components/rust-hello.wasm",
            ),
            (
                "wasi-http-spin-hello",
                "examples/components/spin-hello.wasm",
            ),
        ] {
            let compiled = engine.compile(&guest(path)).unwrap();
            g.bench_function(name, |b| {
                b.iter(|| {
                    let out = run_once(compiled.as_ref(), &request);
                    assert!(out.result.is_ok(), "{:?}", out.result);
                    out
                })
            });
        }
        g.finish();
    }
    // What a service's grants add per request: one environment value and one volume
    // (a preopened directory) against none, on the hello guest.
    let wasm = guest("examples/hello.wat");
    let mut granted = request.clone();
    granted.setup = std::sync::Arc::new(GuestSetup {
        env: vec![(
            "DATABASE_URL".to_owned(),
            "postgres://db:5432/app".to_owned(),
        )],
        host: Grants {
            volumes: vec![Volume {
                guest_path: "/static".to_owned(),
                dir: std::sync::Arc::new(std::fs::File::open(common::repo("examples")).unwrap()),
            }],
            ..Grants::default()
        }
        .into_host(),
        ..Default::default()
    });
    let mut g = c.benchmark_group("grants");
    for kind in EngineKind::compiled_in() {
        let engine = frenezulo_engines::create(kind, &config).unwrap();
        let compiled = engine.compile(&wasm).unwrap();
        for (name, req) in [("none", &request), ("env+volume", &granted)] {
            g.bench_function(format!("{}/{name}", kind.name()), |b| {
                b.iter(|| run_once(compiled.as_ref(), req))
            });
        }
    }
    g.finish();
    let wasm = guest("examples/rust-hello.wasm");
    // Compiling the same bytes again: the engine keeps no cache (the server's artifact
    // cache on disk is what spares a cold start this).
    let mut g = c.benchmark_group("recompile-rust");
    g.sample_size(10);
    for kind in EngineKind::compiled_in() {
        let engine = frenezulo_engines::create(kind, &config).unwrap();
        g.bench_function(kind.name(), |b| b.iter(|| engine.compile(&wasm).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
