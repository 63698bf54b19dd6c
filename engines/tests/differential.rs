//! Differential test: every guest in the corpus, on every request shape, gives byte-identical
//! client-visible responses on wasmtime and wasmi.
#![cfg(all(feature = "wasmtime", feature = "wasmi"))]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use frenezulo_core::http::Header;
use frenezulo_core::{GuestRequest, Request, RunLimits, Version, response};
use frenezulo_engines::{EngineConfig, EngineKind};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
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
        let escaped: String = output.iter().map(|b| format!("\\{b:02x}")).collect();
        let wat = format!(
            r#"(module
              (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
              (memory (export "memory") 1)
              (data (i32.const 64) "{escaped}")
              (func (export "_start")
                (i32.store (i32.const 0) (i32.const 64))
                (i32.store (i32.const 4) (i32.const {len}))
                (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
            len = output.len()
        );
        guests.push((
            format!("printer {:?}", String::from_utf8_lossy(output)),
            wat::parse_str(wat).unwrap(),
        ));
    }
    guests
}

fn requests() -> Vec<GuestRequest> {
    let make = |method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]| {
        let path = target.split('?').next().unwrap();
        GuestRequest {
            request: Request {
                method: method.to_owned(),
                target: target.to_owned(),
                version: Version::Http11,
                headers: headers
                    .iter()
                    .map(|(n, v)| Header {
                        name: (*n).to_owned(),
                        value: Bytes::copy_from_slice(v.as_bytes()),
                    })
                    .collect(),
                body: Bytes::copy_from_slice(body),
                keep_alive: true,
            },
            script_name: "/svc".to_owned(),
            path_info: path.strip_prefix("/svc").unwrap().to_owned(),
            remote: "192.0.2.1:1000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
        }
    };
    vec![
        make("GET", "/svc?0", &[("Host", "h")], b""),
        make(
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
                deadline: Instant::now() + Duration::from_millis(150),
            };
            let wire = |out: frenezulo_engines::RunOutput| {
                let r = out.result.unwrap_or_else(|f| f.to_response());
                let (head, body) = response::serialize(&r, false, false, b"");
                ([head, body].concat(), out.stderr)
            };
            let x = wire(a.run(&req, &limits));
            let limits = RunLimits {
                deadline: Instant::now() + Duration::from_millis(150),
                ..limits
            };
            let y = wire(b.run(&req, &limits));
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
