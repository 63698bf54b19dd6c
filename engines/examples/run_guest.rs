//! Runs a guest N times in-process and prints the last response: for profiling the
//! per-request path (`valgrind --tool=callgrind`) without HTTP in the way.
//!
//! `cargo run --release -p frenezulo-engines --example run_guest -- wasmtime examples/hello.wat 1000`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use frenezulo_core::RunLimits;
use frenezulo_engines::{EngineConfig, EngineKind};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, engine, path, count] = &args[..] else {
        eprintln!("usage: run_guest ENGINE MODULE COUNT");
        std::process::exit(2);
    };
    let kind: EngineKind = engine.parse().unwrap();
    let count: usize = count.parse().unwrap();
    let wasm = wat::parse_file(path).unwrap();
    // A small pool: valgrind cannot reserve the address space of a large one.
    let config = EngineConfig {
        max_instances: 2,
        ..EngineConfig::default()
    };
    let engine = frenezulo_engines::create(kind, &config).unwrap();
    let module = engine.compile(&wasm).unwrap();
    let request = common::request(
        "GET",
        "/svc/path?name=profile",
        &[("Host", "localhost:8080")],
        b"",
    );
    let started = Instant::now();
    let mut last = None;
    for _ in 0..count {
        let limits = RunLimits {
            memory_bytes: 64 << 20,
            stdout_bytes: 1 << 20,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        last = Some(frenezulo_engines::run_to_completion(
            module.as_ref(),
            &request,
            &limits,
            deadline,
        ));
    }
    let per = started.elapsed() / count.max(1) as u32;
    eprintln!("{count} runs, {per:?} each");
    if let Some(out) = last {
        match out.result {
            Ok(r) => println!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(e) => println!("failed: {e}"),
        }
    }
}
