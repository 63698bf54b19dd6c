//! The compile pool: cold starts compile here, off the serving loops, and the compiled
//! module is shared by every serving thread that asks for the same version.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use frenezulo_core::{ModuleKey, ServiceName};
use frenezulo_engines::{CompileError, CompiledModule};
use tracing::{error, info};

use crate::artifacts::{Artifacts, Loaded};
use crate::mailbox::Mailbox;

/// What a compile produced, as a serving thread receives it.
pub type Compiled = Result<Arc<dyn CompiledModule>, CompileError>;

/// A finished compile, for each thread that asked.
pub struct CompileDone {
    /// The module version.
    pub module: ModuleKey,
    /// The compiled module, or why not.
    pub result: Compiled,
}

/// A handle to the pool; cheap to clone, one per serving thread.
#[derive(Clone)]
pub struct CompilePool {
    jobs: Sender<Job>,
    shared: Arc<Mutex<HashMap<ModuleKey, Entry>>>,
    loads: Arc<Mutex<BTreeMap<ServiceName, LoadStats>>>,
}

/// How a service's modules were made ready, since start: for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadStats {
    /// Compiled from the module's bytes.
    pub compiled: u64,
    /// Deserialized from the artifact cache.
    pub from_artifact: u64,
    /// Time spent on both, in seconds.
    pub seconds: f64,
}

struct Job {
    module: ModuleKey,
    wasm: Bytes,
}

enum Entry {
    /// Compiled; alive while some serving thread holds it.
    Ready(Weak<dyn CompiledModule>),
    /// Being compiled; these threads wait for it.
    Compiling(Vec<Mailbox<CompileDone>>),
}

impl CompilePool {
    /// Starts `threads` compile threads.
    pub fn start(artifacts: Arc<Artifacts>, threads: usize) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let pool = Self {
            jobs,
            shared: Arc::default(),
            loads: Arc::default(),
        };
        for i in 0..threads.max(1) {
            let (artifacts, rx, pool) = (artifacts.clone(), rx.clone(), pool.clone());
            std::thread::Builder::new()
                .name(format!("compile-{i}"))
                .spawn(move || pool.work(&artifacts, &rx))?;
        }
        Ok(pool)
    }

    /// Counts a module of `service` made ready, here or elsewhere (start-up, validation).
    pub fn record(&self, service: &ServiceName, loaded: Loaded, elapsed: Duration) {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        let stats = loads.entry(service.clone()).or_default();
        match loaded {
            Loaded::Compiled => stats.compiled += 1,
            Loaded::FromArtifact => stats.from_artifact += 1,
        }
        stats.seconds += elapsed.as_secs_f64();
    }

    /// Every service's load counts.
    pub fn load_stats(&self) -> BTreeMap<ServiceName, LoadStats> {
        self.loads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a module compiled elsewhere (at start-up), so cold starts of the same
    /// version share it.
    pub fn insert(&self, module: ModuleKey, compiled: &Arc<dyn CompiledModule>) {
        let mut shared = self.lock();
        shared.insert(module, Entry::Ready(Arc::downgrade(compiled)));
    }

    /// The compiled `module`, if a serving thread still holds it.
    pub fn cached(&self, module: &ModuleKey) -> Option<Arc<dyn CompiledModule>> {
        match self.lock().get(module) {
            Some(Entry::Ready(weak)) => weak.upgrade(),
            _ => None,
        }
    }

    /// Asks for `module`: returns it at once if a serving thread holds it already,
    /// otherwise compiles it (once, however many threads ask) and answers each asker's
    /// mailbox with a [`CompileDone`].
    pub fn request(
        &self,
        module: ModuleKey,
        wasm: Bytes,
        reply: &Mailbox<CompileDone>,
    ) -> Option<Compiled> {
        let mut shared = self.lock();
        match shared.get_mut(&module) {
            Some(Entry::Ready(weak)) => {
                if let Some(compiled) = weak.upgrade() {
                    return Some(Ok(compiled));
                }
            }
            Some(Entry::Compiling(waiting)) => {
                waiting.push(reply.clone());
                return None;
            }
            None => {}
        }
        // Forget versions nobody holds any more, so the map stays as small as what runs.
        shared.retain(|_, e| !matches!(e, Entry::Ready(w) if w.strong_count() == 0));
        shared.insert(module.clone(), Entry::Compiling(vec![reply.clone()]));
        drop(shared);
        // The pool threads live as long as the process; a send cannot fail before exit.
        let _ = self.jobs.send(Job { module, wasm });
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ModuleKey, Entry>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work(&self, artifacts: &Artifacts, jobs: &Mutex<Receiver<Job>>) {
        loop {
            let job = {
                let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            let started = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| artifacts.load(&job.wasm)))
                .unwrap_or_else(|_| {
                    Err(CompileError::Engine(
                        "the engine panicked while compiling".to_owned(),
                    ))
                });
            let result = match result {
                Ok((compiled, loaded, elapsed)) => {
                    self.record(&job.module.service, loaded, elapsed);
                    log(&job.module, Ok(loaded), elapsed);
                    Ok(compiled)
                }
                Err(e) => {
                    log(&job.module, Err(&e), started.elapsed());
                    Err(e)
                }
            };
            let waiting = {
                let mut shared = self.lock();
                let waiting = match shared.remove(&job.module) {
                    Some(Entry::Compiling(waiting)) => waiting,
                    _ => Vec::new(),
                };
                // A failed compile is forgotten, so a later request tries again.
                if let Ok(compiled) = &result {
                    shared.insert(job.module.clone(), Entry::Ready(Arc::downgrade(compiled)));
                }
                waiting
            };
            for mailbox in waiting {
                // A thread that is gone has nothing to load it into.
                mailbox.send(CompileDone {
                    module: job.module.clone(),
                    result: result.clone(),
                });
            }
        }
    }
}

fn log(module: &ModuleKey, result: Result<Loaded, &CompileError>, elapsed: Duration) {
    let ms = elapsed.as_secs_f64() * 1e3;
    match result {
        Ok(loaded) => {
            info!(service = %module.service, version = module.version, ms, from = loaded.name(), "module ready")
        }
        Err(e) => {
            error!(service = %module.service, version = module.version, error = %e, "compile failed")
        }
    }
}
