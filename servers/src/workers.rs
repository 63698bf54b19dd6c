//! Worker threads that compile modules and run guests, off the thread that accepts and
//! parses. The core bounds how many runs are handed out, so the job queue stays short.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use frenezulo_core::{Execution, GuestFailure, JobId, ModuleKey};
use frenezulo_engines::{CompileError, CompiledModule, Engine, RunOutput};
use smol::channel::{Receiver, Sender};

/// Work for a worker thread.
pub enum Job {
    /// Compile a module.
    Compile {
        /// The key to report it under.
        module: ModuleKey,
        /// Its bytes.
        wasm: Bytes,
    },
    /// Run one request, as the core asked for it.
    Run {
        /// What to run, on which module version, within which limits.
        execution: Box<Execution>,
        /// The compiled module for `execution.module`.
        module: Arc<dyn CompiledModule>,
    },
}

/// What a worker thread reports back.
pub enum Done {
    /// A compilation finished.
    Compiled {
        /// The module.
        module: ModuleKey,
        /// The compiled module, or why not.
        result: Result<Arc<dyn CompiledModule>, CompileError>,
        /// Wall time it took.
        elapsed: Duration,
    },
    /// A run finished.
    Ran {
        /// The core's job id.
        job: JobId,
        /// Which module version.
        key: ModuleKey,
        /// What the guest produced.
        output: RunOutput,
        /// Wall time it took.
        elapsed: Duration,
    },
}

/// Stack for worker threads: deeper than wasmtime's guest stack limit plus host frames.
const WORKER_STACK: usize = 8 << 20;

/// Starts `count` worker threads. They exit when the job sender is dropped.
pub fn spawn(
    count: usize,
    engine: Arc<dyn Engine>,
    jobs: Receiver<Job>,
    done: Sender<Done>,
) -> std::io::Result<()> {
    for i in 0..count {
        let (engine, jobs, done) = (engine.clone(), jobs.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                while let Ok(job) = jobs.recv_blocking() {
                    if done.send_blocking(work(engine.as_ref(), job)).is_err() {
                        break;
                    }
                }
            })?;
    }
    Ok(())
}

fn work(engine: &dyn Engine, job: Job) -> Done {
    let started = Instant::now();
    match job {
        Job::Compile { module, wasm } => {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| engine.compile(&wasm)))
                .unwrap_or_else(|_| {
                    Err(CompileError::Engine(
                        "the engine panicked while compiling".to_owned(),
                    ))
                });
            Done::Compiled {
                module,
                result,
                elapsed: started.elapsed(),
            }
        }
        Job::Run { execution, module } => {
            let Execution {
                job,
                module: key,
                request,
                limits,
            } = *execution;
            // An engine bug on one guest must not take the worker down with it.
            let output =
                std::panic::catch_unwind(AssertUnwindSafe(|| module.run(&request, &limits)))
                    .unwrap_or_else(|_| RunOutput {
                        result: Err(GuestFailure::Trap("the engine panicked".to_owned())),
                        stderr: Vec::new(),
                    });
            Done::Ran {
                job,
                key,
                output,
                elapsed: started.elapsed(),
            }
        }
    }
}
