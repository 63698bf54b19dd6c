//! An arbitrary sequence of events drives the core through the shared fake driver
//! (`frenezulo_core::testing`, the same the core's proptest and the simulator's contract
//! scenario use): after each step its bounds and the polling contract hold, and at the end
//! every request on a connection still open has had exactly one response.
#![no_main]

use std::time::Instant;

use frenezulo_core::testing::{Harness, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<Op>| {
    if let Err(violation) = Harness::run(Instant::now(), &ops[..ops.len().min(200)]) {
        panic!("{violation}");
    }
});
