//! Differential test: every guest in the corpus, on every request shape, gives byte-identical
//! client-visible responses on wasmtime and wasmi.
//!
//! Whether a run meets a deadline depends on the engine's and the machine's speed, not on
//! semantics, so no comparison rests on one: guests that end are run with a deadline far
//! beyond their work and must finish on both engines, and guests that never end must be
//! stopped at the deadline on both.
#![cfg(all(feature = "wasmtime", feature = "wasmi"))]

mod common;

use std::time::{Duration, Instant};

use common::{printer, repo, request};
use frenezulo_core::{GuestFailure, GuestRequest, RunLimits, response};
use frenezulo_engines::{EngineConfig, EngineKind, run_to_completion};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = repo("");
    let mut guests = Vec::new();
    for dir in ["examples", "engines/tests/guests"] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            // 300 million iterations: seconds on the interpreter, for nothing spin.wat
            // does not already cover.
            if path.ends_with("slow.wat") {
                continue;
            }
            let wasm = match path.extension().and_then(|e| e.to_str()) {
                Some("wat") => wat::parse_file(&path).unwrap(),
                Some("wasm") => std::fs::read(&path).unwrap(),
                _ => continue,
            };
            guests.push((path.display().to_string(), wasm));
        }
    }
    // Edge cases of CGI output parsing, as guests that print them.
    for output in [
        &b"Content-Type: a\n\n"[..],
        b"Content-Type: a\r\n\r\n\r\n",
        b"Status: 204\n\n",
        b"Status: 200 OK\nStatus: 201\n\n",
        b"Location: x\nStatus: 307 Temporary\n\nbody",
        b"Content-Type: a\nX-Weird:   spaced   \n\nbody\n\n\nmore",
        b"Content-Type: a",
        b"\n\nbody first",
        b"Content-Length: 9999\nContent-Type: a\n\nshort",
        b"Status: 700\n\n",
        b":\n\n",
    ] {
        guests.push((
            format!("printer {:?}", String::from_utf8_lossy(output)),
            printer(output),
        ));
    }
    guests
}

/// Guests that never end by themselves: stopped at the deadline on every engine.
const ENDLESS: &[&str] = &["loop.wat", "host-loop.wat"];

fn requests() -> Vec<GuestRequest> {
    // spin.wat reads its iteration count from the body's first four bytes: 4096 here.
    let mut body = vec![7u8; 3000];
    body[..4].copy_from_slice(&4096u32.to_le_bytes());
    vec![
        request("GET", "/svc?0", &[("Host", "h")], b""),
        request(
            "POST",
            "/svc/a/b?name=Zed&1",
            &[("Host", "h"), ("Content-Type", "text/x")],
            &body,
        ),
    ]
}

#[test]
fn both_engines_give_identical_responses() {
    let config = EngineConfig {
        max_instances: 8,
        max_memory_bytes: 64 << 20,
    };
    let wasmtime = frenezulo_engines::create(EngineKind::Wasmtime, &config).unwrap();
    let wasmi = frenezulo_engines::create(EngineKind::Wasmi, &config).unwrap();
    let mut compared = 0;
    for (name, wasm) in corpus() {
        let a = wasmtime.compile(&wasm);
        let b = wasmi.compile(&wasm);
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                assert_eq!(
                    std::mem::discriminant(&a),
                    std::mem::discriminant(&b),
                    "{name}"
                );
                continue;
            }
            (a, b) => panic!(
                "{name}: compile results differ: {:?} vs {:?}",
                a.err(),
                b.err()
            ),
        };
        let endless = ENDLESS.iter().any(|e| name.ends_with(e));
        for req in requests() {
            let limits = RunLimits {
                memory_bytes: 2 << 20,
                stdout_bytes: 64 << 10,
            };
            // An endless guest is stopped soon; one that ends gets far more than it needs.
            let budget = Duration::from_millis(if endless { 100 } else { 120_000 });
            let run = |module: &dyn frenezulo_engines::CompiledModule| {
                let out = run_to_completion(module, &req, &limits, Instant::now() + budget);
                let timed_out = matches!(out.result, Err(GuestFailure::Timeout));
                let r = out.result.unwrap_or_else(|f| f.to_response());
                let (head, body) = response::serialize(&r, false, false, b"");
                ([head, body].concat(), out.stderr, timed_out)
            };
            let x = run(a.as_ref());
            let y = run(b.as_ref());
            let target = &req.request.target;
            assert_eq!(
                (x.2, y.2),
                (endless, endless),
                "{name} on {target}: timed out on (wasmtime, wasmi)"
            );
            assert_eq!(
                String::from_utf8_lossy(&x.0),
                String::from_utf8_lossy(&y.0),
                "{name} on {target}"
            );
            assert_eq!(x.1, y.1, "{name}: stderr differs");
            compared += 1;
        }
    }
    assert!(compared >= 40, "compared only {compared} runs");
}
