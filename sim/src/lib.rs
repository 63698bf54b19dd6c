//! frenezulo-sim: deterministic simulation of `frenezulo-core` in virtual time.
//!
//! Not built yet: the scale-to-zero and accept-queue scenarios are their own issue. The
//! crate exists so the workspace has its final shape and the core is shaped for a second driver.
