//! Instantiate + run + drop of a guest, per engine: the per-request cost of frenezulo.
//!
//! `cargo bench -p frenezulo-engines` (add `-- hello` or `-- rust` to pick a group).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use frenezulo_core::http::Header;
use frenezulo_core::{GuestRequest, Request, RunLimits, Version};
use frenezulo_engines::{EngineConfig, EngineKind};

fn request() -> GuestRequest {
    GuestRequest {
        request: Request {
            method: "GET".to_owned(),
            target: "/svc/path?name=bench".to_owned(),
            version: Version::Http11,
            headers: vec![
                Header {
                    name: "Host".to_owned(),
                    value: Bytes::from_static(b"localhost:8080"),
                },
                Header {
                    name: "User-Agent".to_owned(),
                    value: Bytes::from_static(b"criterion"),
                },
                Header {
                    name: "Accept".to_owned(),
                    value: Bytes::from_static(b"*/*"),
                },
            ],
            body: Bytes::new(),
            keep_alive: true,
        },
        script_name: "/svc".to_owned(),
        path_info: "/path".to_owned(),
        remote: "127.0.0.1:40000".parse().unwrap(),
        local: "127.0.0.1:8080".parse().unwrap(),
    }
}

fn module(path: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    wat::parse_file(path).unwrap()
}

fn bench(c: &mut Criterion) {
    let config = EngineConfig {
        max_instances: 8,
        max_memory_bytes: 64 << 20,
    };
    let request = request();
    for (group, path) in [
        ("hello", "examples/hello.wat"),
        ("rust", "examples/rust-hello.wasm"),
    ] {
        let wasm = module(path);
        let mut g = c.benchmark_group(group);
        for kind in EngineKind::compiled_in() {
            let engine = frenezulo_engines::create(kind, &config).unwrap();
            let compiled = engine.compile(&wasm).unwrap();
            g.bench_function(kind.name(), |b| {
                b.iter(|| {
                    let limits = RunLimits {
                        memory_bytes: 64 << 20,
                        stdout_bytes: 1 << 20,
                        deadline: Instant::now() + Duration::from_secs(10),
                    };
                    let out = compiled.run(&request, &limits);
                    assert!(out.result.is_ok());
                    out
                })
            });
        }
        g.finish();
    }
    let wasm = module("examples/rust-hello.wasm");
    let mut g = c.benchmark_group("compile-rust");
    g.sample_size(10);
    for kind in EngineKind::compiled_in() {
        let engine = frenezulo_engines::create(kind, &config).unwrap();
        g.bench_function(kind.name(), |b| b.iter(|| engine.compile(&wasm).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
