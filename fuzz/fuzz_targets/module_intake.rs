//! Arbitrary bytes offered as a module are accepted or rejected cleanly by every engine;
//! an accepted module runs to a response or a typed failure.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use frenezulo_core::RunLimits;
use frenezulo_engines::{Engine, EngineConfig, EngineKind};
use frenezulo_fuzz_support::request;
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod frenezulo_fuzz_support;

fn engines() -> &'static [Arc<dyn Engine>] {
    static ENGINES: OnceLock<Vec<Arc<dyn Engine>>> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let config = EngineConfig {
            max_instances: 2,
            max_memory_bytes: 16 << 20,
        };
        EngineKind::compiled_in()
            .map(|k| frenezulo_engines::create(k, &config).unwrap())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for engine in engines() {
        if let Ok(module) = engine.compile(data) {
            let limits = RunLimits {
                memory_bytes: 1 << 20,
                stdout_bytes: 4096,
            };
            let deadline = Instant::now() + Duration::from_millis(20);
            let _ = frenezulo_engines::run_to_completion(module.as_ref(), &request(), &limits, deadline);
        }
    }
});
