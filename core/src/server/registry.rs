//! The registry's in-memory view: services and their module versions, and each service's
//! lifecycle (`Cold` -> `Loading` -> `Warm` -> idle -> `Cold`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{JobId, LazyTimer, Lifecycle, Output, RegistryChange, Server, ServiceLimits, Timer};
use crate::guest::{GuestSetup, ModuleKey};
use crate::route::{ServiceName, ServiceRoute};

pub(super) struct Service {
    pub(super) key: ModuleKey,
    wasm: Bytes,
    pub(super) limits: ServiceLimits,
    pub(super) setup: Arc<GuestSetup>,
    pub(super) state: Lifecycle,
    /// Tasks started on `key` and not finished.
    pub(super) running: usize,
    /// Requests admitted and waiting for a task slot, oldest first.
    pub(super) queue: VecDeque<JobId>,
    /// Since when the service has had nothing to do; `None` while busy.
    idle_since: Option<Instant>,
    pub(super) idle_timer: LazyTimer,
}

impl Server {
    pub(super) fn on_registry(&mut self, now: Instant, change: RegistryChange) {
        match change {
            RegistryChange::Put {
                module,
                wasm,
                limits,
                setup,
            } => self.put_service(module, wasm, limits, setup),
            RegistryChange::Remove { service } => self.remove_service(now, &service),
        }
    }

    fn put_service(
        &mut self,
        key: ModuleKey,
        wasm: Bytes,
        limits: ServiceLimits,
        setup: Arc<GuestSetup>,
    ) {
        let limits = self.clamp(limits);
        let name = key.service.clone();
        let route = setup
            .route
            .clone()
            .unwrap_or_else(|| ServiceRoute::of_name(&name));
        let Some(service) = self.services.get_mut(&name) else {
            self.router.insert(&name, route, setup.routes.clone());
            let (state, running) = self.take_back(&key);
            self.services.insert(
                name,
                Service {
                    key,
                    wasm,
                    limits,
                    setup,
                    state,
                    running,
                    queue: VecDeque::new(),
                    idle_since: None,
                    idle_timer: LazyTimer::default(),
                },
            );
            return;
        };
        if key.version <= service.key.version {
            return;
        }
        self.router.insert(&name, route, setup.routes.clone());
        let (state, running) = self.take_back(&key);
        let service = self.services.get_mut(&name).expect("found above");
        let old = std::mem::replace(&mut service.key, key);
        let old_state = std::mem::replace(&mut service.state, state);
        let old_running = std::mem::replace(&mut service.running, running);
        service.wasm = wasm;
        service.limits = limits;
        service.setup = setup;
        service.idle_since = None;
        let has_queue = !service.queue.is_empty();
        self.retire(old, old_state, old_running);
        if has_queue && state == Lifecycle::Warm {
            self.mark_ready(&name);
        } else if has_queue {
            self.start_loading(&name);
        }
        self.pump();
    }

    /// The state and running count a service starts with on version `key`: cold and
    /// idle, unless `key` is a version still retiring: the service was removed while
    /// tasks ran on it and is put back at that version (directly, or by way of a lower
    /// one), so the registry allowed it though the core has not finished with it.
    /// The driver still holds that one compiled, and its tasks are the service's again:
    /// counted once, under the service, so neither count goes below zero when they end.
    fn take_back(&mut self, key: &ModuleKey) -> (Lifecycle, usize) {
        match self.retiring.remove(key) {
            Some(running) => (Lifecycle::Warm, running),
            None => (Lifecycle::Cold, 0),
        }
    }

    fn remove_service(&mut self, now: Instant, name: &ServiceName) {
        let Some(service) = self.services.remove(name) else {
            return;
        };
        self.router.remove(name);
        self.fail_queue(now, service.queue, 503, "service was removed");
        self.retire(service.key, service.state, service.running);
        self.pump();
    }

    fn clamp(&self, mut limits: ServiceLimits) -> ServiceLimits {
        limits.body_bytes = limits.body_bytes.min(self.config.framing.max_body_bytes);
        limits.max_concurrency = limits.max_concurrency.max(1);
        limits.cpu_weight = limits.cpu_weight.clamp(1, super::MAX_CPU_WEIGHT);
        limits
    }

    /// Drops a module version now, or once the tasks started on it finish.
    fn retire(&mut self, key: ModuleKey, state: Lifecycle, running: usize) {
        if running > 0 {
            self.retiring.insert(key, running);
        } else if state == Lifecycle::Warm {
            self.outputs.push_back(Output::Evict { module: key });
        }
        // A module still loading is evicted when its `Compiled` arrives, as stale.
    }

    /// Counts a finished task out of the version it ran on, evicting a retired version
    /// once its last task is done.
    pub(super) fn task_done(&mut self, module: &ModuleKey) {
        super::decrement(&mut self.running, 1, "running");
        match self.services.get_mut(&module.service) {
            Some(s) if s.key == *module => {
                super::decrement(&mut s.running, 1, "a service's running");
            }
            _ => {
                if let Some(n) = self.retiring.get_mut(module) {
                    super::decrement(n, 1, "a retiring version's running");
                    if *n == 0 {
                        self.retiring.remove(module);
                        self.outputs.push_back(Output::Evict {
                            module: module.clone(),
                        });
                    }
                }
            }
        }
    }

    pub(super) fn start_loading(&mut self, name: &ServiceName) {
        let service = self.services.get_mut(name).expect("caller checked");
        service.state = Lifecycle::Loading;
        self.stats.compiles += 1;
        self.outputs.push_back(Output::Compile {
            module: service.key.clone(),
            wasm: service.wasm.clone(),
        });
    }

    pub(super) fn on_compiled(
        &mut self,
        now: Instant,
        module: ModuleKey,
        result: Result<(), String>,
    ) {
        let state = self
            .services
            .get(&module.service)
            .filter(|s| s.key == module)
            .map(|s| s.state);
        match (state, result) {
            (Some(Lifecycle::Loading | Lifecycle::Cold), Ok(())) => {
                let service = self.services.get_mut(&module.service).expect("found above");
                service.state = Lifecycle::Warm;
                self.mark_ready(&module.service);
                self.pump();
                self.arm_idle(now, &module.service);
            }
            (Some(Lifecycle::Loading), Err(_)) => {
                let service = self.services.get_mut(&module.service).expect("found above");
                service.state = Lifecycle::Cold;
                let queue = std::mem::take(&mut service.queue);
                self.fail_queue(now, queue, 500, "service failed to load");
            }
            // Replaced, removed or already warm: the driver may drop what it compiled.
            (_, Ok(())) if state != Some(Lifecycle::Warm) => {
                self.outputs.push_back(Output::Evict { module });
            }
            _ => {}
        }
    }

    pub(super) fn arm_idle(&mut self, now: Instant, name: &ServiceName) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        if s.state != Lifecycle::Warm || s.running > 0 || !s.queue.is_empty() {
            return;
        }
        let since = *s.idle_since.get_or_insert(now);
        let deadline = super::later(since, self.config.idle_timeout);
        s.idle_timer
            .arm(&mut self.timers, deadline, Timer::Idle(name.clone()));
    }

    /// The service is busy again: its idle clock stops (its timer stays armed).
    pub(super) fn disarm_idle(&mut self, name: &ServiceName) {
        if let Some(s) = self.services.get_mut(name) {
            s.idle_since = None;
        }
    }

    pub(super) fn idle_timer(&mut self, now: Instant, name: ServiceName, at: Instant) {
        let Some(s) = self.services.get_mut(&name) else {
            return;
        };
        // Busy: armed again when it next goes idle.
        let deadline = s
            .idle_since
            .map(|since| super::later(since, self.config.idle_timeout));
        let due = s
            .idle_timer
            .fired(&mut self.timers, at, now, deadline, Timer::Idle(name));
        if due && s.state == Lifecycle::Warm && s.running == 0 && s.queue.is_empty() {
            s.state = Lifecycle::Cold;
            s.idle_since = None;
            self.stats.evictions += 1;
            self.outputs.push_back(Output::Evict {
                module: s.key.clone(),
            });
        }
    }
}
