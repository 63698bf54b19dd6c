//! Guests and requests shared by the engine tests, benchmarks and the `run_guest` example.
#![allow(dead_code)]

use std::path::PathBuf;

use bytes::Bytes;
use frenezulo_core::http::Header;
use frenezulo_core::{GuestRequest, GuestSetup, Request, Version};
use frenezulo_engines::outbound::origin_of;
use frenezulo_engines::{Grants, OutboundGrant};

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A guest from the repository (`.wat`, `.wasm`, or `.wasm.gz` for a large one), as wasm bytes.
pub fn guest(path: &str) -> Vec<u8> {
    if path.ends_with(".gz") {
        let mut wasm = Vec::new();
        let file = std::fs::File::open(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut wasm)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        return wasm;
    }
    wat::parse_file(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A guest that writes `output` to stdout and returns.
pub fn printer(output: &[u8]) -> Vec<u8> {
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
    wat::parse_str(wat).expect("printer guest")
}

/// A request for the service mounted at `/svc`; `target` must start with `/svc`.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> GuestRequest {
    assert!(target.starts_with("/svc"), "targets start with /svc");
    let request = Request {
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
    };
    GuestRequest::new(
        request,
        "/svc",
        "10.1.2.3:4567".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    )
}

/// A setup that grants outbound calls to `allowed` (any origin when `None`).
pub fn outbound_setup(allowed: Option<&[&str]>, max: usize) -> std::sync::Arc<GuestSetup> {
    let grants = Grants {
        outbound: Some(OutboundGrant {
            allowed: allowed.map(|a| a.iter().map(|u| origin_of(u).unwrap()).collect()),
            max_in_flight: max,
            in_flight: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            public_only: false,
        }),
        ..Grants::default()
    };
    std::sync::Arc::new(GuestSetup {
        host: grants.into_host(),
        ..Default::default()
    })
}
