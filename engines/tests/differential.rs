//! Differential test: every guest in the corpus, on every request shape, gives byte-identical
//! client-visible responses on wasmtime and wasmi.
#![cfg(all(feature = "wasmtime", feature = "wasmi"))]

mod common;

use std::time::{Duration, Instant};

use common::{printer, repo, request};
use frenezulo_core::{GuestRequest, RunLimits, response};
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
            // Whether it finishes before the deadline depends on the engine's speed, not on
            // semantics: JIT code finishes, the interpreter does not.
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

fn requests() -> Vec<GuestRequest> {
    vec![
        request("GET", "/svc?0", &[("Host", "h")], b""),
        request(
            "POST",
            "/svc/a/b?name=Zed&1",
            &[("Host", "h"), ("Content-Type", "text/x")],
            &[7u8; 3000],
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
        for req in requests() {
            let limits = RunLimits {
                memory_bytes: 2 << 20,
                stdout_bytes: 64 << 10,
            };
            let deadline = || Instant::now() + Duration::from_millis(150);
            let wire = |out: frenezulo_engines::RunOutput| {
                let r = out.result.unwrap_or_else(|f| f.to_response());
                let (head, body) = response::serialize(&r, false, false, b"");
                ([head, body].concat(), out.stderr)
            };
            let x = wire(run_to_completion(a.as_ref(), &req, &limits, deadline()));
            let y = wire(run_to_completion(b.as_ref(), &req, &limits, deadline()));
            assert_eq!(
                String::from_utf8_lossy(&x.0),
                String::from_utf8_lossy(&y.0),
                "{name} on {}",
                req.request.target
            );
            assert_eq!(x.1, y.1, "{name}: stderr differs");
            compared += 1;
        }
    }
    assert!(compared >= 40, "compared only {compared} runs");
}
