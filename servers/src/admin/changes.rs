//! The management thread as the driver of the control plane
//! ([`frenezulo_core::control::Control`]): what its outputs mean here (a worker thread that
//! fetches and compiles, a write to NATS, the registry's durable change and publication, an
//! HTTP answer) and what comes back as its inputs. The order of things (preparing slots,
//! revisions, conflicts, another node's changes) is the control plane's; the contents of a
//! change (entries, limits, ownership, what a shared entry must pass) are the registry's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use frenezulo_core::control::catalog;
use frenezulo_core::control::{Change, Input, Outcome, Output, Payloads, RemoteChange, Ticket};
use frenezulo_core::{ModuleKey, Response, RunLimits, ServiceName};
use frenezulo_engines::CompiledModule;

use tracing::{debug, error, info, warn};

use super::error as http_error;
use super::fetch::FetchError;
use super::{Admin, CallOrigin, Event, change_error, json_response, service_view};
use crate::api;
use crate::artifacts::{Artifacts, Loaded};
use crate::cluster::{ClusterEvent, Command, WriteError};
use crate::registry::manifest::Entry;
use crate::registry::store::Digest;
use crate::registry::{ChangeError, NewModule};
use crate::settings::{SettingsError, SettingsPatch};

/// What the management thread carries through the control plane.
pub(super) struct Plane;

impl Payloads for Plane {
    type Caller = CallOrigin;
    type Job = Job;
    type Ready = Ready;
    type Refusal = Refusal;
    type WriteError = WriteError;
    type Applied = Applied;
    type ApplyError = ChangeError;
}

/// Fetches a module's bytes and says where they came from.
pub(super) type Get = Box<dyn FnOnce() -> Result<(Vec<u8>, String), FetchError> + Send>;

/// What to prepare.
pub(super) enum Job {
    /// A caller's new module, with the settings it asked for.
    Asked {
        get: Get,
        /// Whether a parse error may quote the module (the caller's own upload) or not (a
        /// fetched source).
        quote: bool,
        settings: Box<SettingsPatch>,
    },
    /// Another node's entry and module, checked when they arrived.
    Shared { entry: Box<Entry>, wasm: Bytes },
}

/// A change ready to write and apply.
#[derive(Clone)]
pub(super) enum Ready {
    /// An entry with a new module.
    Module {
        entry: Box<Entry>,
        module: NewModule,
        loaded: Loaded,
        elapsed: Duration,
    },
    /// An entry for the module the service has; its compiled form, if a thread holds it.
    Settings {
        entry: Box<Entry>,
        compiled: Option<Arc<dyn CompiledModule>>,
    },
}

/// Why a module was not prepared or its change was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// Fetching, parsing or compiling failed.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The registry refused the change the module makes.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// The service's hosts are beyond the operator's ceiling.
    #[error("{0}")]
    Ceiling(String),
    /// No worker thread could be started.
    #[error("could not start preparing the module: {0}")]
    Spawn(std::io::Error),
}

impl Refusal {
    fn response(&self) -> Response {
        match self {
            Refusal::Prepare(e) => http_error(e.status(), &e.to_string()),
            Refusal::Change(e) => change_error(e),
            Refusal::Ceiling(e) => http_error(400, e),
            Refusal::Spawn(_) => http_error(503, &self.to_string()),
        }
    }
}

/// What applying a change here did.
pub(super) enum Applied {
    /// A module put: whether the service is new.
    Put { new: bool },
    /// New settings for the module it has.
    Configured,
    /// The service removed.
    Removed,
}

/// Why a module could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(super) enum PrepareError {
    /// Fetching its source failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// No bytes.
    #[error("the module is empty")]
    Empty,
    /// The caller's upload is neither a module nor WAT.
    #[error("not a WebAssembly module or WAT text: {0}")]
    Parse(String),
    /// A fetched source that does not parse: its content is not quoted back.
    #[error("the fetched source is not a WebAssembly module or WAT text")]
    NotModule,
    /// Larger than `max_module_size`, before or after WAT is turned into a module.
    #[error("module is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The engine refused it (shape, imports, compile).
    #[error("module refused: {0}")]
    Compile(#[from] frenezulo_engines::CompileError),
    /// Its `_routes` export failed or printed something that is no route.
    #[error("module refused: {0}")]
    Routes(String),
}

impl PrepareError {
    fn status(&self) -> u16 {
        match self {
            PrepareError::TooLarge(_) | PrepareError::Fetch(FetchError::TooLarge(_)) => 413,
            PrepareError::Fetch(FetchError::Status(_) | FetchError::Transfer(_)) => 502,
            _ => 400,
        }
    }
}

/// A module fetched and compiled on a worker thread (or why not), and what it was for.
pub struct Prepared {
    ticket: Ticket,
    name: ServiceName,
    /// The caller's settings; `None` for another node's change, whose entry is here.
    asked: Option<Box<SettingsPatch>>,
    entry: Option<Box<Entry>>,
    result: Result<(NewModule, Loaded, Duration), PrepareError>,
}

impl Admin {
    /// Hands the control plane an input and carries out what it asks, until it asks
    /// nothing more.
    pub(super) fn drive(&mut self, input: Input<Plane>) {
        if let Err(e) = self.control.handle(input) {
            error!(target: "admin", error = %e, "control plane contract broken; input dropped");
        }
        while let Some(output) = self.control.poll_output() {
            match output {
                Output::Prepare { ticket, name, job } => self.spawn_prepare(ticket, name, job),
                Output::Write {
                    ticket,
                    name,
                    change,
                    expected,
                } => self.write(ticket, &name, change, expected),
                Output::Apply {
                    ticket,
                    name,
                    change,
                    revision,
                } => {
                    let result = self.apply(&name, change, revision);
                    if let Err(e) = self.control.handle(Input::Applied { ticket, result }) {
                        error!(target: "admin", error = %e, "control plane contract broken");
                    }
                }
                Output::Reply {
                    caller,
                    name,
                    outcome,
                } => {
                    let response = self.reply(&name, outcome);
                    self.answer(&caller, response);
                }
                Output::Remote {
                    name,
                    revision,
                    outcome,
                } => remote_outcome(&name, revision, outcome),
                _ => warn!(target: "admin", "control plane output not understood"),
            }
        }
    }

    /// Tells the control plane whether NATS is reachable, when that changed.
    pub(super) fn sync_shared(&mut self) {
        if let Some(cluster) = &self.setup.cluster {
            let available = cluster.available();
            if available != self.control.writable() {
                self.drive(Input::Shared { available });
            }
        }
    }

    /// Runs a job's fetch and compile on a worker thread; the result comes back as
    /// [`Event::Prepared`].
    fn spawn_prepare(&mut self, ticket: Ticket, name: ServiceName, job: Job) {
        let (get, quote, limits, asked, entry): (Get, _, _, _, _) = match job {
            Job::Asked {
                get,
                quote,
                settings,
            } => (get, quote, settings.limits.clone(), Some(settings), None),
            Job::Shared { entry, wasm } => {
                let source = entry.source.clone();
                // Its parse errors go to this node's log only.
                let get: Get = Box::new(move || Ok((wasm.to_vec(), source)));
                (get, true, Some(entry.limits.clone()), None, Some(entry))
            }
        };
        let artifacts = self.setup.artifacts.clone();
        let max = self.setup.fetch.max_bytes;
        // `_routes` runs within the limits the service will have.
        let run_limits = limits
            .as_ref()
            .map_or(self.setup.base_limits, |l| l.apply(self.setup.base_limits))
            .run_limits();
        let sender = self.sender.clone();
        let spawned = std::thread::Builder::new()
            .name("admin-prepare".to_owned())
            .spawn(move || {
                let result = get()
                    .map_err(PrepareError::from)
                    .and_then(|(bytes, source)| {
                        prepare_module(&artifacts, bytes, source, max, &run_limits).map_err(|e| {
                            match e {
                                PrepareError::Parse(_) if !quote => PrepareError::NotModule,
                                e => e,
                            }
                        })
                    });
                let prepared = Prepared {
                    ticket,
                    name,
                    asked,
                    entry,
                    result,
                };
                let _ = sender.send(Event::Prepared(Box::new(prepared)));
            });
        if let Err(e) = spawned {
            self.drive(Input::Prepared {
                ticket,
                result: Err(Refusal::Spawn(e)),
            });
        }
    }

    /// A worker is done: the change is composed with what the registry has now.
    pub(super) fn on_prepared(&mut self, p: Prepared) {
        let Prepared {
            ticket,
            name,
            asked,
            entry,
            result,
        } = p;
        let asked_here = asked.is_some();
        let result = result
            .map_err(Refusal::from)
            .and_then(|(module, loaded, elapsed)| {
                let entry = match (asked, entry) {
                    (Some(asked), _) => {
                        let entry = self.setup.registry.entry_for_put(&name, &module, &asked)?;
                        // Hosts kept from the stored entry are held to the ceiling as it is now.
                        self.within_ceiling(&entry).map_err(Refusal::Ceiling)?;
                        Box::new(entry)
                    }
                    (None, Some(entry)) => {
                        self.setup.registry.check_module(&entry, &module)?;
                        entry
                    }
                    (None, None) => unreachable!("a job is asked or shared"),
                };
                Ok(Ready::Module {
                    entry,
                    module,
                    loaded,
                    elapsed,
                })
            });
        if let (Err(e), true) = (&result, asked_here) {
            info!(target: "admin", service = %name, error = %e, "module refused");
        }
        self.drive(Input::Prepared { ticket, result });
    }

    /// Hands a write to NATS; its answer comes back as [`ClusterEvent::Written`].
    fn write(
        &mut self,
        ticket: Ticket,
        name: &ServiceName,
        change: Change<Ready>,
        expected: Option<u64>,
    ) {
        let cluster = self
            .setup
            .cluster
            .as_ref()
            .expect("writes only in a cluster");
        let command = match change {
            Change::Put(Ready::Module { entry, module, .. }) => Command::Put {
                token: ticket.0,
                name: name.to_string(),
                entry,
                wasm: Some(module.wasm),
                expected,
            },
            Change::Put(Ready::Settings { entry, .. }) => Command::Put {
                token: ticket.0,
                name: name.to_string(),
                entry,
                wasm: self.setup.registry.service(name).map(|s| s.wasm.clone()),
                expected,
            },
            Change::Remove => Command::Delete {
                token: ticket.0,
                name: name.to_string(),
                // A removal is written only for a service the store has.
                expected: expected.unwrap_or_default(),
            },
        };
        if let Err(e) = cluster.send(command) {
            self.drive(Input::Written {
                ticket,
                result: Err(e),
            });
        }
    }

    /// Stores and publishes a change.
    fn apply(
        &mut self,
        name: &ServiceName,
        change: Change<Ready>,
        revision: Option<u64>,
    ) -> Result<Applied, ChangeError> {
        let registry = &mut self.setup.registry;
        match change {
            Change::Put(Ready::Module {
                mut entry,
                module,
                loaded,
                elapsed,
            }) => {
                entry.revision = revision.or(entry.revision);
                let compiled = module.compiled.clone();
                let digest = module.digest;
                let new = registry.install(name, *entry, module)?;
                // A shared service hidden by this node's own of the same name is stored, not
                // served: its compiled module must not be filed under the served one's version.
                if let Some(service) = registry.service(name)
                    && service.digest == digest
                {
                    let key = ModuleKey {
                        service: name.clone(),
                        version: service.version,
                    };
                    self.setup.compile.insert(key, &compiled);
                    self.setup.compile.record(name, loaded, elapsed);
                }
                Ok(Applied::Put { new })
            }
            Change::Put(Ready::Settings {
                mut entry,
                compiled,
            }) => {
                entry.revision = revision.or(entry.revision);
                registry.install_configured(name, *entry, compiled.clone())?;
                if let (Some(compiled), Some(service)) = (&compiled, registry.service(name)) {
                    let key = ModuleKey {
                        service: name.clone(),
                        version: service.version,
                    };
                    self.setup.compile.insert(key, compiled);
                }
                Ok(Applied::Configured)
            }
            // One the shared registry's watch removed first is gone already: the same outcome.
            Change::Remove => match registry.uninstall(name) {
                Ok(()) | Err(ChangeError::Refused(catalog::Refusal::NotFound(_))) => {
                    Ok(Applied::Removed)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// The answer to a caller's change.
    fn reply(&self, name: &ServiceName, outcome: Outcome<Plane>) -> Response {
        let registry = &self.setup.registry;
        match outcome {
            Outcome::Done(Applied::Put { new }) => {
                let Some(service) = registry.service(name) else {
                    return http_error(500, "the service was stored but is not served");
                };
                info!(target: "admin", service = %name, version = service.version, digest = %service.digest, source = service.source, "service {}", if new { "added" } else { "replaced" });
                let loads = self.setup.compile.load_stats();
                json_response(
                    if new { 201 } else { 200 },
                    &service_view(service, &[], &loads, false),
                )
            }
            Outcome::Done(Applied::Configured) => {
                let Some(service) = registry.service(name) else {
                    return http_error(500, "the service was stored but is not served");
                };
                info!(target: "admin", service = %name, version = service.version, "service reconfigured");
                json_response(200, &service_view(service, &[], &Default::default(), false))
            }
            Outcome::Done(Applied::Removed) => {
                info!(target: "admin", service = %name, "service removed");
                json_response(
                    200,
                    &api::Removed {
                        removed: name.as_str().to_owned(),
                    },
                )
            }
            Outcome::Superseded { current } => http_error(
                409,
                &format!(
                    "service `{name}` was changed by another write at the same time (it is now at revision {current}); read it again and retry"
                ),
            ),
            Outcome::Busy => http_error(503, "too many modules being added at once, retry shortly")
                .with_header("Retry-After", "1"),
            Outcome::Unavailable => super::unavailable(self.setup.cluster.as_ref()),
            Outcome::Refused(e) => e.response(),
            Outcome::WriteFailed(e) => {
                info!(target: "admin", error = %e, "shared registry write refused");
                super::write_error(&e)
            }
            Outcome::ApplyFailed(e) => change_error(&e),
            _ => http_error(500, "unknown outcome"),
        }
    }

    /// News from the NATS thread.
    pub(super) fn on_cluster(&mut self, event: ClusterEvent) {
        self.sync_shared();
        match event {
            ClusterEvent::Changed {
                name,
                revision,
                entry,
                wasm,
            } => {
                let Ok(name) = ServiceName::new(&name) else {
                    warn!(target: "cluster", key = name, "shared entry under a key that is no service name; ignored");
                    return;
                };
                // Another node's writer is trusted no more than a token holder: the same
                // checks apply (a newer node may also allow what this one does not).
                let checked = entry
                    .settings()
                    .map_err(SettingsError::from)
                    .and_then(|settings| settings.check())
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.within_pool(&entry.limits))
                    .and_then(|()| self.within_ceiling(&entry));
                if let Err(e) = checked {
                    error!(target: "cluster", service = %name, revision, error = %e, "shared entry refused; this node keeps the version it has");
                    return;
                }
                let change = RemoteChange::Put(Job::Shared { entry, wasm });
                self.drive(Input::Remote {
                    name,
                    revision,
                    change,
                });
            }
            ClusterEvent::Removed { name, revision } => {
                let Ok(name) = ServiceName::new(&name) else {
                    return;
                };
                self.drive(Input::Remote {
                    name,
                    revision,
                    change: RemoteChange::Remove,
                });
            }
            ClusterEvent::Written { token, result } => self.drive(Input::Written {
                ticket: Ticket(token),
                result,
            }),
        }
    }
}

/// Says in the log how another node's change ended here.
fn remote_outcome(name: &ServiceName, revision: u64, outcome: Outcome<Plane>) {
    match outcome {
        Outcome::Done(Applied::Removed) => {
            info!(target: "cluster", service = %name, revision, "service removed through the shared registry")
        }
        Outcome::Done(_) => {
            info!(target: "cluster", service = %name, revision, "service updated from the shared registry")
        }
        Outcome::Superseded { current } => {
            debug!(target: "cluster", service = %name, revision, current, "shared change already superseded here")
        }
        Outcome::Refused(e) => {
            error!(target: "cluster", service = %name, revision, error = %e, "a shared service cannot be loaded on this node; it keeps the version it has")
        }
        Outcome::ApplyFailed(e) => {
            error!(target: "cluster", service = %name, revision, error = %e, "shared change not applied")
        }
        _ => {
            warn!(target: "cluster", service = %name, revision, "shared change ended unexpectedly")
        }
    }
}

/// Parses (WAT to binary), checks the size, compiles and hashes a module, and learns its
/// sub-routes.
fn prepare_module(
    artifacts: &Artifacts,
    bytes: Vec<u8>,
    source: String,
    max: usize,
    run_limits: &RunLimits,
) -> Result<(NewModule, Loaded, Duration), PrepareError> {
    if bytes.is_empty() {
        return Err(PrepareError::Empty);
    }
    if bytes.len() > max {
        return Err(PrepareError::TooLarge(max));
    }
    let wasm = wat::parse_bytes(&bytes)
        .map_err(|e| PrepareError::Parse(e.to_string()))?
        .into_owned();
    if wasm.len() > max {
        return Err(PrepareError::TooLarge(max));
    }
    let (compiled, loaded, elapsed) = artifacts.load(&wasm)?;
    let routes = frenezulo_engines::discover_routes(compiled.as_ref(), run_limits)
        .map_err(|e| PrepareError::Routes(e.to_string()))?;
    Ok((
        NewModule {
            digest: Digest::of(&wasm),
            wasm: wasm.into(),
            source,
            compiled,
            routes,
        },
        loaded,
        elapsed,
    ))
}
