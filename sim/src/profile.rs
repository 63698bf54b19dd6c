//! Modelled costs: what the core does not contain (the kernel, the engine, the machine).
//! The defaults are figures measured on the real server; each says the command.

use serde::{Deserialize, Serialize};

/// Costs the simulation charges, in microseconds unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// Serving-thread CPU time for one connection that carries one request, guest aside:
    /// accept, read, parse, route, answer, close, the kernel's share included. Measured:
    /// 45-48 us, `bash bench/sim-validate` (one pinned serving thread's capacity with a
    /// connection per request, less the mean guest time its access log reports).
    pub connection_us: f64,
    /// Starting a fresh instance and dropping it, on top of the guest's own run time.
    /// Measured: 9.2 us, `cargo bench -p frenezulo-engines` (wasmtime, `hello.wat`).
    pub instance_us: f64,
    /// One time slice: a guest that runs longer yields after this much.
    /// `frenezulo_engines::SLICE`.
    pub slice_us: f64,
    /// Compiling a module never compiled before, in ms. Measured: 128 ms for the Rust
    /// example on wasmtime, `bash bench/registry` (cold start without the artifact cache).
    pub compile_ms: f64,
    /// Loading a module from the artifact cache, in ms. Measured: 1.24 ms for the Rust
    /// example, `bash bench/registry` (cold start with the cache).
    pub artifact_ms: f64,
    /// Memory one warm module holds, in MiB. Measured: (22.9 - 11.9) / 50 = 0.22 MiB for the
    /// Rust example on wasmtime, `bash bench/registry` (RSS with 50 services warmed).
    pub module_mib: f64,
    /// Linux's initial SYN retransmission timeout, in ms: a client whose SYN found the
    /// accept queue full tries again after this, then after twice as long, and so on.
    pub syn_rto_ms: f64,
    /// SYN retransmissions before a client gives up (Linux: `tcp_syn_retries`, 6).
    pub syn_retries: u32,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            connection_us: 50.0,
            instance_us: 9.2,
            slice_us: 500.0,
            compile_ms: 128.0,
            artifact_ms: 1.24,
            module_mib: 0.22,
            syn_rto_ms: 1000.0,
            syn_retries: 6,
        }
    }
}

impl Profile {
    /// Reads a TOML profile; keys left out keep their defaults.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}
