//! frenezulo-sim: the real `frenezulo_core::Server`, one per modelled serving thread,
//! driven in virtual time, to answer what an operator asks before deploying: what an
//! `idle_timeout` costs in cold starts and saves in memory, what happens past capacity
//! with and without admission control, what one slow or hostile service does to the others.
//!
//! [`model`] is the simulation (what the core does not contain: clients, the kernel's accept
//! queue, serving threads as CPUs, compiles); [`scenarios`] the questions it answers;
//! [`report`] tables, JSON and SVG. One seed fans out to a random stream per subsystem
//! ([`rng`]); the same seed and options give the same bytes. Invariants are checked as a run
//! goes ([`model::Violation`]). No wall clock is read: the model keeps virtual time.
//!
//! [`cluster`] does the same for the control plane: several nodes' real
//! `frenezulo_core::control::Control` against a modelled shared store with delays,
//! conflicts, outages, partitions and restarts.

pub mod cluster;
pub mod model;
pub mod profile;
pub mod report;
pub mod rng;
pub mod scenarios;
pub mod stats;
