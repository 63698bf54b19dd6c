//! The registry: which services exist, with which module, limits and environment, and
//! who defined each. Owned by the management thread; every change is made durable in the
//! store first, then published once to every serving thread as a
//! [`RegistryChange`](frenezulo_core::RegistryChange).
//!
//! Services come from three places. The command line and the config file define services
//! the API may read but not change (those files are their record). The management API
//! adds services to the manifest in the store. The built-in `hello`, served when nothing
//! else is configured, gives way to an API service of the same name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use frenezulo_core::control::Known;
use frenezulo_core::control::catalog::{Catalog, Placement, Refusal, SharedRoute};
use frenezulo_core::subroute::SubRoutes;
use frenezulo_core::{
    ModuleKey, RegistryChange, RouteError, ServiceLimits, ServiceName, ServiceRoute,
};
use frenezulo_engines::CompiledModule;
use frenezulo_engines::{Grants, Volume};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::guest::{GuestConfig, HostCeiling};
use crate::mailbox::Mailbox;
use crate::settings::{ServiceSettings, SettingsError, SettingsPatch};
use crate::spec::{EnvValues, LimitError, LimitsConfig};

pub mod manifest;
pub mod store;

use crate::spec::Origin;
use manifest::{Entry, Manifest};
use store::{BlobStore, Digest, ManifestStore, StoreError};

/// Both halves of a store.
pub trait Store: ManifestStore + BlobStore {}
impl<T: ManifestStore + BlobStore> Store for T {}

/// A service as served.
#[derive(Clone)]
pub struct Service {
    /// Its name, which is its prefix.
    pub name: ServiceName,
    /// Who defined it.
    pub origin: Origin,
    /// Where its module came from: a URL, `upload`, or a file path.
    pub source: String,
    /// Its module's digest.
    pub digest: Digest,
    /// The module bytes.
    pub wasm: Bytes,
    /// The limits set for it (the rest follow the server's `[limits]`).
    pub limits_set: LimitsConfig,
    /// The limits it runs with, server-wide (each serving thread gets its share).
    pub limits: ServiceLimits,
    /// Environment values for its guests.
    pub env: EnvValues,
    /// Its entrypoint, argv template and volumes.
    pub guest: GuestConfig,
    /// Its volumes' directories, opened.
    pub volumes: Vec<Volume>,
    /// The sub-routes its module declares.
    pub routes: SubRoutes,
    /// Its outbound calls in flight, counted across every serving thread.
    pub outbound_in_flight: Arc<AtomicUsize>,
    /// The version serving threads know it by; every change moves it forward.
    pub version: u64,
    /// Its revision in the shared registry, in a cluster (what `If-Match` names).
    pub revision: Option<u64>,
    /// When it last changed, in seconds since the Unix epoch.
    pub updated_unix: u64,
}

impl Service {
    /// The paths it owns.
    pub fn route(&self) -> ServiceRoute {
        self.guest
            .route
            .clone()
            .unwrap_or_else(|| ServiceRoute::of_name(&self.name))
    }
}

/// A change for one serving thread: what its core takes, and the compiled module of a
/// `Put` when the publisher has it (so the thread need not load it again).
pub struct Publication {
    /// The change.
    pub change: RegistryChange,
    /// The compiled module of a `Put`, if the publisher holds it.
    pub compiled: Option<Arc<dyn CompiledModule>>,
}

/// A service from the command line, the config file or the built-in, compiled at start.
pub struct Static {
    /// The service, version unset.
    pub service: Service,
    /// Its compiled module, until the serving threads have it ([`Registry::release_compiled`]).
    pub compiled: Option<Arc<dyn CompiledModule>>,
}

/// Why a change to the registry was refused or failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// Refused by the rules on names and routes (who owns them).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The module does not export what the service's entrypoint or sub-routes name.
    #[error("{0}")]
    Entrypoint(String),
    /// The stored route is not a route.
    #[error("route: {0}")]
    Route(#[from] RouteError),
    /// A limit is out of its range (see [`crate::spec::ceiling`]).
    #[error("limits: {0}")]
    Limits(#[from] LimitError),
    /// The environment, entrypoint, argv template or outbound grant cannot be used.
    #[error(transparent)]
    Settings(SettingsError),
    /// The store failed; nothing changed.
    #[error("the registry could not be saved: {0}")]
    Store(#[from] StoreError),
}

impl From<SettingsError> for ChangeError {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::Limits(e) => ChangeError::Limits(e),
            SettingsError::Route(e) => ChangeError::Route(e),
            other => ChangeError::Settings(other),
        }
    }
}

/// A new module for a service, validated and compiled.
#[derive(Clone)]
pub struct NewModule {
    /// The module bytes.
    pub wasm: Bytes,
    /// Their digest.
    pub digest: Digest,
    /// Where they came from.
    pub source: String,
    /// The compiled module, handed to every serving thread with the change.
    pub compiled: Arc<dyn CompiledModule>,
    /// The sub-routes its `_routes` export declares.
    pub routes: SubRoutes,
}

/// The registry and where it publishes.
pub struct Registry {
    store: Box<dyn Store>,
    manifest: Manifest,
    /// Command line, config file and built-in services, by name.
    statics: BTreeMap<ServiceName, Static>,
    /// What is served, by name.
    services: BTreeMap<ServiceName, Service>,
    next_version: u64,
    base_limits: ServiceLimits,
    /// Server-wide environment values, under each service's own.
    env: EnvValues,
    workers: usize,
    /// Every serving thread, to publish changes to.
    threads: Vec<Mailbox<Publication>>,
    /// Whether the API's grants may reach public addresses only (the operator set no
    /// `outbound_allowed_hosts`).
    outbound_public_only: bool,
    /// Whether components' request bodies stream to them (`stream_request_bodies`).
    stream_bodies: bool,
    /// Who owns which name and route, and which stored services are served.
    catalog: Catalog,
}

/// Why the registry could not open.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Two of the node's own services share a route.
    #[error(transparent)]
    SharedRoute(#[from] SharedRoute),
}

impl Registry {
    /// Loads the manifest and joins it with the static services. A manifest entry whose
    /// module is missing or damaged is logged and not served (the manifest keeps it). Module
    /// files no entry names (left by a crash between writing a module and the manifest) are
    /// removed.
    pub fn open(
        store: Box<dyn Store>,
        statics: Vec<Static>,
        base_limits: ServiceLimits,
        env: EnvValues,
        workers: usize,
    ) -> Result<Self, OpenError> {
        let manifest = store.load()?;
        let catalog = Catalog::new(
            statics
                .iter()
                .map(|s| (s.service.name.clone(), s.service.origin, s.service.route())),
        )?;
        let mut this = Self {
            store,
            manifest,
            statics: BTreeMap::new(),
            services: BTreeMap::new(),
            next_version: 1,
            base_limits,
            env,
            workers,
            threads: Vec::new(),
            outbound_public_only: true,
            stream_bodies: true,
            catalog,
        };
        for mut s in statics {
            s.service.version = this.next_version();
            this.statics.insert(s.service.name.clone(), s);
        }
        for (name, s) in &this.statics {
            this.services.insert(name.clone(), s.service.clone());
        }
        let entries: Vec<(String, Entry)> = this.manifest.services.clone().into_iter().collect();
        for (name, entry) in entries {
            match this.load_entry(&name, &entry) {
                Ok(service) => {
                    if this.place(&service) {
                        this.services.insert(service.name.clone(), service);
                    }
                }
                Err(e) => {
                    error!(service = name, error = %e, "stored service not served");
                    if let Ok(name) = ServiceName::new(&name) {
                        this.catalog.kept(&name);
                    }
                }
            }
        }
        this.collect_garbage();
        Ok(this)
    }

    fn load_entry(&mut self, name: &str, entry: &Entry) -> anyhow::Result<Service> {
        let name = ServiceName::new(name)?;
        // A manifest written before the ceilings existed (or by hand) may hold a value
        // that would overflow the clock: the entry is refused, not clamped, so nothing
        // runs with limits other than the ones stored; the manifest keeps it for a PUT
        // or DELETE to fix.
        entry.limits.check()?;
        let digest = Digest::parse(&entry.digest)
            .ok_or_else(|| anyhow::anyhow!("bad digest `{}`", entry.digest))?;
        let wasm = self.store.get(digest)?;
        let routes = SubRoutes::parse(entry.routes.join("\n").as_bytes())?;
        Ok(Service {
            limits: entry.limits.apply(self.base_limits),
            name,
            origin: Origin::Api,
            source: entry.source.clone(),
            digest,
            wasm,
            limits_set: entry.limits.clone(),
            env: entry.env.clone(),
            guest: entry.guest()?,
            volumes: Vec::new(),
            routes,
            outbound_in_flight: Arc::default(),
            version: self.next_version(),
            revision: entry.revision,
            updated_unix: entry.updated_unix,
        })
    }

    fn next_version(&mut self) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        v
    }

    /// Removes module files the manifest does not name.
    fn collect_garbage(&mut self) {
        let named: Vec<Digest> = self.api_digests();
        match self.store.list() {
            Ok(stored) => {
                for digest in stored.into_iter().filter(|d| !named.contains(d)) {
                    info!(%digest, "removing a module no service uses");
                    if let Err(e) = self.store.remove(digest) {
                        warn!(error = %e, "could not remove an unused module");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not list stored modules"),
        }
    }

    fn api_digests(&self) -> Vec<Digest> {
        self.manifest
            .services
            .values()
            .filter_map(|e| Digest::parse(&e.digest))
            .collect()
    }

    /// Digests of every module served: their compiled artifacts are worth keeping.
    pub fn digests(&self) -> Vec<Digest> {
        let mut all = self.api_digests();
        all.extend(self.statics.values().map(|s| s.service.digest));
        all
    }

    /// The compiled modules of the services that have one (those loaded at start), by
    /// the version serving threads know them by.
    pub fn compiled(&self) -> Vec<(ModuleKey, Arc<dyn CompiledModule>)> {
        self.statics
            .values()
            .filter(|s| {
                self.services.get(&s.service.name).map(|x| x.version) == Some(s.service.version)
            })
            .filter_map(|s| {
                let key = ModuleKey {
                    service: s.service.name.clone(),
                    version: s.service.version,
                };
                Some((key, s.compiled.clone()?))
            })
            .collect()
    }

    /// Whether components' request bodies stream to them, for every service published from
    /// now on (set before the serving threads attach).
    pub fn stream_request_bodies(&mut self, on: bool) {
        self.stream_bodies = on;
    }

    /// Holds the API's services to the operator's outbound `ceiling`: their calls reach
    /// public addresses only if it is unset, and stored services whose `allowed_hosts` it
    /// does not allow (it may have been set or tightened since they were granted) are not
    /// served. As with limits out of range, the manifest keeps such an entry for a `PUT`
    /// that names hosts within the ceiling, or a `DELETE`; a built-in service of the name
    /// comes back meanwhile. Called at start, before any thread is attached.
    pub fn apply_outbound_ceiling(&mut self, ceiling: &HostCeiling) {
        self.outbound_public_only = ceiling.public_only();
        let refused: Vec<(ServiceName, String)> = self
            .services
            .values()
            .filter(|s| s.origin == Origin::Api)
            .filter_map(|s| {
                let e = s.guest.check_within(ceiling).err()?;
                Some((s.name.clone(), e))
            })
            .collect();
        for (name, e) in refused {
            error!(service = %name, error = %e, "stored service not served");
            self.services.remove(&name);
            if let Some(s) = self.statics.get(&name) {
                self.services.insert(name, s.service.clone());
            }
        }
    }

    /// Lets go of the modules compiled at start, once every serving thread has been handed
    /// them: from then on a module lives only while some thread keeps its service warm, so
    /// an idle configured service is dropped from memory like any other (and loaded again,
    /// from the artifact cache where the engine has one, when a request comes).
    pub fn release_compiled(&mut self) {
        for s in self.statics.values_mut() {
            s.compiled = None;
        }
    }

    /// The serving threads to publish changes to, once they exist.
    pub fn attach(&mut self, threads: Vec<Mailbox<Publication>>) {
        self.threads = threads;
    }

    /// What gives a new serving thread the registry as it is.
    pub fn initial_publications(&self) -> Vec<Publication> {
        self.services
            .values()
            .map(|s| {
                let compiled = self
                    .statics
                    .get(&s.name)
                    .filter(|st| st.service.version == s.version)
                    .and_then(|st| st.compiled.clone());
                Publication {
                    change: self.put_change(s),
                    compiled,
                }
            })
            .collect()
    }

    /// Every service served, by name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The service named `name`.
    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.services.get(name)
    }

    /// Refuses a change to a service the API does not own.
    pub fn check_api_owned(&self, name: &ServiceName) -> Result<(), ChangeError> {
        Ok(self.catalog.may_change(name)?)
    }

    /// Records the API's stored `service` in the catalog and says whether it is served
    /// here; logs why not.
    fn place(&mut self, service: &Service) -> bool {
        let (name, route) = (&service.name, service.route());
        match self.catalog.stored(name, &route) {
            Placement::Served { beside } => {
                if let Some(other) = beside {
                    // Two nodes added these at once; every node serves the same one of the
                    // two where their paths meet until one is changed.
                    warn!(service = %name, %other, %route, "two services share a route");
                }
                true
            }
            Placement::HiddenByName { origin } => {
                warn!(service = %name, origin = origin.name(), "the API's service of this name is hidden by the one the {} defines", origin.place());
                false
            }
            Placement::HiddenByRoute { owner, origin } => {
                warn!(service = %name, %route, %owner, "the API's service is hidden: its route is one this node's {} gives another service", origin.place());
                false
            }
            _ => false,
        }
    }

    /// Adds a service or replaces its module. Limits given are set over the service's (a
    /// key not given keeps its value); an environment, entrypoint or argv template given
    /// replaces the service's. The module must export the entrypoint and sub-routes that
    /// result. Returns whether the service is new. (The management thread does this in
    /// two steps, so that in a cluster the shared registry takes the entry in between.)
    #[cfg(test)]
    pub fn put(
        &mut self,
        name: &ServiceName,
        module: NewModule,
        limits: Option<LimitsConfig>,
        env: Option<EnvValues>,
        guest: GuestConfig,
    ) -> Result<bool, ChangeError> {
        let patch = SettingsPatch {
            route: guest.route,
            limits,
            env,
            entrypoint: guest.entrypoint,
            argv: guest.argv,
            allowed_hosts: (!guest.allowed_hosts.is_empty()).then_some(guest.allowed_hosts),
            http_max_concurrency: guest.http_max_concurrency,
        };
        let entry = self.entry_for_put(name, &module, &patch)?;
        self.install(name, entry, module)
    }

    /// The entry [`Registry::put`] would store, checked, without storing it: `patch` over
    /// the service's stored settings, if it has any.
    pub fn entry_for_put(
        &self,
        name: &ServiceName,
        module: &NewModule,
        patch: &SettingsPatch,
    ) -> Result<Entry, ChangeError> {
        self.check_api_owned(name)?;
        let old = self.manifest.services.get(name.as_str());
        let old = old.map(Entry::settings).transpose()?.unwrap_or_default();
        let settings = patch.over(&old);
        let route = settings
            .route
            .clone()
            .unwrap_or_else(|| ServiceRoute::of_name(name));
        self.catalog.may_take(name, &route)?;
        check_entrypoints(&settings, module)?;
        // What is kept from an old entry is checked too (it may predate the ceilings).
        settings.check()?;
        let mut entry = Entry {
            digest: module.digest.to_string(),
            size: module.wasm.len(),
            source: module.source.clone(),
            origin: Origin::Api,
            limits: LimitsConfig::default(),
            env: EnvValues::new(),
            route: None,
            entrypoint: None,
            argv: None,
            allowed_hosts: Vec::new(),
            http_max_concurrency: None,
            routes: module
                .routes
                .routes()
                .iter()
                .map(|r| format!("{} {}", r.pattern, r.entrypoint))
                .collect(),
            revision: None,
            updated_unix: unix_now(),
        };
        entry.set_settings(settings);
        Ok(entry)
    }

    /// Checks that `module` exports what `entry` and the module's own sub-routes name (an
    /// entry another node wrote is held to this as a caller's is).
    pub fn check_module(&self, entry: &Entry, module: &NewModule) -> Result<(), ChangeError> {
        check_entrypoints(&entry.settings()?, module)
    }

    /// Stores `entry` for `name` with its module (module first, then the manifest) and
    /// publishes it. An entry another node wrote for a service this node's config file or
    /// command line defines is kept but not served. Returns whether the service is new.
    pub fn install(
        &mut self,
        name: &ServiceName,
        entry: Entry,
        module: NewModule,
    ) -> Result<bool, ChangeError> {
        // Entries from the shared registry come here without the API's checks.
        entry.limits.check()?;
        let guest = entry.guest()?;
        let old = self.manifest.services.get(name.as_str()).cloned();
        // The module is durable before a manifest names it.
        self.store.put(module.digest, &module.wasm)?;
        self.commit(name, Some(entry.clone()))?;
        if let Some(old) = &old {
            self.forget_module(&old.digest);
        }
        let service = Service {
            name: name.clone(),
            origin: Origin::Api,
            source: module.source,
            digest: module.digest,
            wasm: module.wasm,
            limits: entry.limits.apply(self.base_limits),
            limits_set: entry.limits.clone(),
            env: entry.env.clone(),
            guest,
            volumes: Vec::new(),
            routes: module.routes,
            outbound_in_flight: old_service_counter(&self.services, name),
            version: self.next_version(),
            revision: entry.revision,
            updated_unix: entry.updated_unix,
        };
        if !self.place(&service) {
            // Hidden by a name of the node's own files: their service is the one served.
            if self
                .services
                .get(name)
                .is_some_and(|s| s.origin == Origin::Api)
            {
                self.withdraw(name);
            }
            return Ok(false);
        }
        self.publish_put(&service, Some(module.compiled));
        Ok(self.services.insert(name.clone(), service).is_none())
    }

    /// The API's stored entry for `name`.
    #[cfg(test)]
    pub fn entry(&self, name: &ServiceName) -> Option<&Entry> {
        self.manifest.services.get(name.as_str())
    }

    /// What the control plane knows at start: every entry the API stored, with its revision.
    pub fn stored(&self) -> Vec<(ServiceName, Known)> {
        self.manifest
            .services
            .iter()
            .filter_map(|(name, e)| {
                let known = Known {
                    revision: e.revision,
                    present: true,
                };
                Some((ServiceName::new(name).ok()?, known))
            })
            .collect()
    }

    /// Changes a service's limits (the keys given) or environment (all of it), keeping its
    /// module; `compiled` is that module if the caller holds it (threads stay warm), else
    /// they load it again.
    #[cfg(test)]
    pub fn configure(
        &mut self,
        name: &ServiceName,
        limits: Option<LimitsConfig>,
        env: Option<EnvValues>,
        compiled: Option<Arc<dyn CompiledModule>>,
    ) -> Result<(), ChangeError> {
        let patch = SettingsPatch {
            limits,
            env,
            ..SettingsPatch::default()
        };
        let entry = self.entry_for_configure(name, &patch)?;
        self.install_configured(name, entry, compiled)
    }

    /// The entry [`Registry::configure`] would store, without storing it.
    pub fn entry_for_configure(
        &self,
        name: &ServiceName,
        patch: &SettingsPatch,
    ) -> Result<Entry, ChangeError> {
        self.check_api_owned(name)?;
        let Some(mut entry) = self.manifest.services.get(name.as_str()).cloned() else {
            return Err(Refusal::NotFound(name.clone()).into());
        };
        let settings = patch.over(&entry.settings()?);
        settings.limits.check()?;
        entry.set_settings(settings);
        entry.updated_unix = unix_now();
        Ok(entry)
    }

    /// Stores a changed entry whose module is the service's current one, and publishes it.
    pub fn install_configured(
        &mut self,
        name: &ServiceName,
        entry: Entry,
        compiled: Option<Arc<dyn CompiledModule>>,
    ) -> Result<(), ChangeError> {
        entry.limits.check()?;
        self.commit(name, Some(entry.clone()))?;
        let version = self.next_version();
        let base = self.base_limits;
        let Some(service) = self.services.get_mut(name) else {
            return Err(Refusal::NotFound(name.clone()).into());
        };
        service.limits = entry.limits.apply(base);
        service.limits_set = entry.limits;
        service.env = entry.env;
        service.version = version;
        service.revision = entry.revision;
        service.updated_unix = entry.updated_unix;
        let service = service.clone();
        self.publish_put(&service, compiled);
        Ok(())
    }

    /// Removes a service: requests in flight finish, then its prefix answers 404 (or the
    /// built-in it hid comes back).
    #[cfg(test)]
    pub fn remove(&mut self, name: &ServiceName) -> Result<(), ChangeError> {
        self.check_remove(name)?;
        self.uninstall(name)
    }

    /// Checks that the API may remove `name` and that it exists.
    pub fn check_remove(&self, name: &ServiceName) -> Result<(), ChangeError> {
        Ok(self.catalog.may_remove(name)?)
    }

    /// Drops the API's entry for `name` from the store and from every thread.
    pub fn uninstall(&mut self, name: &ServiceName) -> Result<(), ChangeError> {
        let Some(old) = self.manifest.services.get(name.as_str()).cloned() else {
            return Err(Refusal::NotFound(name.clone()).into());
        };
        self.commit(name, None)?;
        self.forget_module(&old.digest);
        if self.catalog.removed(name) {
            self.withdraw(name);
        }
        Ok(())
    }

    /// Stops serving the API's `name` on every thread (the built-in it hid comes back).
    fn withdraw(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_none() {
            return;
        }
        match self.statics.get(name).map(|s| s.service.clone()) {
            Some(mut builtin) => {
                builtin.version = self.next_version();
                self.publish_put(&builtin, None);
                self.services.insert(name.clone(), builtin);
            }
            None => self.publish(|| Publication {
                change: RegistryChange::Remove {
                    service: name.clone(),
                },
                compiled: None,
            }),
        }
    }

    /// Writes the manifest with `name` set to `entry` (or removed); on failure nothing changes.
    fn commit(&mut self, name: &ServiceName, entry: Option<Entry>) -> Result<(), StoreError> {
        let mut next = self.manifest.clone();
        match entry {
            Some(entry) => next.services.insert(name.to_string(), entry),
            None => next.services.remove(name.as_str()),
        };
        self.store.commit(&next)?;
        self.manifest = next;
        Ok(())
    }

    /// Deletes a module file once no service names it (after the manifest stopped naming it).
    fn forget_module(&mut self, digest: &str) {
        let still_used = self.manifest.services.values().any(|e| e.digest == digest);
        if let (false, Some(digest)) = (still_used, Digest::parse(digest))
            && let Err(e) = self.store.remove(digest)
        {
            warn!(error = %e, "could not remove an unused module");
        }
    }

    /// The change that gives one serving thread `s`. Each thread gets its own copy of the
    /// setup (and of each volume's descriptor), so no reference count on the request path
    /// is shared between cores; the outbound counter is, as it is a server-wide limit.
    fn put_change(&self, s: &Service) -> RegistryChange {
        let mut merged = self.env.clone();
        merged.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let volumes = s
            .volumes
            .iter()
            .map(|v| Volume {
                guest_path: v.guest_path.clone(),
                dir: v.dir.try_clone().map(Arc::new).unwrap_or_else(|e| {
                    warn!(service = %s.name, error = %e, "volume descriptor shared between threads");
                    v.dir.clone()
                }),
            })
            .collect();
        let grants = Grants {
            volumes,
            outbound: s.guest.outbound(
                &s.outbound_in_flight,
                s.origin == Origin::Api && self.outbound_public_only,
            ),
        };
        let mut setup = s
            .guest
            .setup(merged.into_iter().collect(), s.routes.clone(), grants);
        setup.name = s.name.to_string();
        // Components read their body as it arrives; WAGI guests take it whole on stdin.
        setup.body_streams = self.stream_bodies && frenezulo_engines::is_component(&s.wasm);
        RegistryChange::Put {
            module: ModuleKey {
                service: s.name.clone(),
                version: s.version,
            },
            wasm: s.wasm.clone(),
            limits: s.limits.per_thread(self.workers),
            setup: Arc::new(setup),
        }
    }

    fn publish_put(&self, s: &Service, compiled: Option<Arc<dyn CompiledModule>>) {
        self.publish(|| Publication {
            change: self.put_change(s),
            compiled: compiled.clone(),
        });
    }

    /// Sends every serving thread its own copy of a change.
    fn publish(&self, make: impl Fn() -> Publication) {
        for thread in &self.threads {
            // A thread that is gone (the process is stopping) needs no news.
            thread.send(make());
        }
    }
}

/// The outbound counter of the service being replaced, so calls still in flight on the
/// old version count against the new one's limit.
/// Whether `module` exports the entrypoint `settings` name and its sub-routes' exports.
fn check_entrypoints(settings: &ServiceSettings, module: &NewModule) -> Result<(), ChangeError> {
    let setup = settings
        .guest()
        .setup(Vec::new(), module.routes.clone(), Grants::default());
    frenezulo_engines::check_entrypoints(module.compiled.as_ref(), &setup)
        .map_err(ChangeError::Entrypoint)
}

fn old_service_counter(
    services: &BTreeMap<ServiceName, Service>,
    name: &ServiceName,
) -> Arc<AtomicUsize> {
    services
        .get(name)
        .map(|s| s.outbound_in_flight.clone())
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use frenezulo_core::{GuestRequest, RunLimits};
    use frenezulo_engines::GuestTask;
    use store::LocalStore;

    struct NoModule;
    impl CompiledModule for NoModule {
        fn start(&self, _: &GuestRequest, _: &RunLimits) -> Box<dyn GuestTask> {
            unreachable!("these tests run nothing")
        }

        fn entrypoints(&self) -> &[String] {
            static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
            NAMES.get_or_init(|| vec!["_start".to_owned(), "hello".to_owned()])
        }
    }

    fn service(name: &str, origin: Origin, bytes: &'static [u8]) -> Static {
        Static {
            service: Service {
                name: ServiceName::new(name).unwrap(),
                origin,
                source: "test".to_owned(),
                digest: Digest::of(bytes),
                wasm: Bytes::from_static(bytes),
                limits_set: LimitsConfig::default(),
                limits: ServiceLimits::default(),
                env: EnvValues::new(),
                guest: GuestConfig::default(),
                volumes: Vec::new(),
                routes: SubRoutes::default(),
                outbound_in_flight: Arc::default(),
                version: 0,
                revision: None,
                updated_unix: 0,
            },
            compiled: Some(Arc::new(NoModule)),
        }
    }

    fn module(bytes: &'static [u8]) -> NewModule {
        NewModule {
            wasm: Bytes::from_static(bytes),
            digest: Digest::of(bytes),
            source: "upload".to_owned(),
            compiled: Arc::new(NoModule),
            routes: SubRoutes::default(),
        }
    }

    fn open(dir: &std::path::Path) -> Registry {
        let statics = vec![
            service("fixed", Origin::Config, b"fixed"),
            service("hello", Origin::BuiltIn, b"builtin"),
        ];
        let store = Box::new(LocalStore::open(dir).unwrap());
        Registry::open(
            store,
            statics,
            ServiceLimits::default(),
            EnvValues::new(),
            2,
        )
        .unwrap()
    }

    fn names(r: &Registry) -> Vec<(String, Origin)> {
        r.services()
            .map(|s| (s.name.to_string(), s.origin))
            .collect()
    }

    #[test]
    fn changes_are_durable_owned_and_versioned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut r = open(&dir);
        let shop = ServiceName::new("shop").unwrap();
        let hello = ServiceName::new("hello").unwrap();
        let fixed = ServiceName::new("fixed").unwrap();
        assert!(
            r.put(&shop, module(b"v1"), None, None, GuestConfig::default())
                .unwrap(),
            "new"
        );
        let v1 = r.service(&shop).unwrap().version;
        let env = EnvValues::from([("A".to_owned(), "1".to_owned())]);
        assert!(
            !r.put(
                &shop,
                module(b"v2"),
                None,
                Some(env.clone()),
                GuestConfig::default()
            )
            .unwrap(),
            "replaced"
        );
        assert!(
            r.service(&shop).unwrap().version > v1,
            "versions move forward"
        );
        r.configure(&shop, None, None, None).unwrap();
        assert_eq!(r.service(&shop).unwrap().env, env, "kept when not given");
        // An entrypoint the module does not export is refused; one it does is kept, with
        // the module's sub-routes, across a replace that does not name it.
        let nope = GuestConfig {
            entrypoint: Some("nope".to_owned()),
            ..Default::default()
        };
        assert!(matches!(
            r.put(&shop, module(b"v3"), None, None, nope),
            Err(ChangeError::Entrypoint(_))
        ));
        let entry = GuestConfig {
            entrypoint: Some("hello".to_owned()),
            ..Default::default()
        };
        let mut routed = module(b"v3");
        routed.routes = SubRoutes::parse(b"/hi hello").unwrap();
        r.put(&shop, routed, None, None, entry).unwrap();
        r.put(&shop, module(b"v4"), None, None, GuestConfig::default())
            .unwrap();
        assert_eq!(
            r.service(&shop).unwrap().guest.entrypoint.as_deref(),
            Some("hello")
        );
        let mut routed = module(b"v5");
        routed.routes = SubRoutes::parse(b"/hi hello\n/all/... _start").unwrap();
        r.put(&shop, routed, None, None, GuestConfig::default())
            .unwrap();
        // The API's hello takes the built-in's place; removing it brings the built-in back.
        r.put(&hello, module(b"mine"), None, None, GuestConfig::default())
            .unwrap();
        assert!(matches!(
            r.put(&fixed, module(b"x"), None, None, GuestConfig::default()),
            Err(ChangeError::Refused(Refusal::NotApiDefined {
                origin: Origin::Config,
                ..
            }))
        ));
        assert!(matches!(
            r.remove(&fixed),
            Err(ChangeError::Refused(Refusal::NotApiDefined { .. }))
        ));
        assert!(matches!(
            r.remove(&ServiceName::new("nope").unwrap()),
            Err(ChangeError::Refused(Refusal::NotFound(_)))
        ));
        let before: Vec<_> = r
            .services()
            .map(|s| (s.name.clone(), s.digest, s.env.clone()))
            .collect();
        drop(r);

        let mut r = open(&dir);
        let after: Vec<_> = r
            .services()
            .map(|s| (s.name.clone(), s.digest, s.env.clone()))
            .collect();
        assert_eq!(before, after, "a restart brings back what was there");
        assert_eq!(
            r.service(&shop).unwrap().routes,
            SubRoutes::parse(b"/hi hello\n/all/... _start").unwrap(),
            "sub-routes are kept, so a restart serves them before compiling"
        );
        assert_eq!(
            r.service(&shop).unwrap().guest.entrypoint.as_deref(),
            Some("hello")
        );
        assert_eq!(r.service(&hello).unwrap().origin, Origin::Api);
        r.remove(&hello).unwrap();
        assert_eq!(r.service(&hello).unwrap().origin, Origin::BuiltIn);
        r.remove(&shop).unwrap();
        assert_eq!(
            names(&r),
            [
                ("fixed".to_owned(), Origin::Config),
                ("hello".to_owned(), Origin::BuiltIn)
            ]
        );
        // Module files follow the manifest: the replaced and removed ones are gone.
        let stored = std::fs::read_dir(dir.join("modules")).unwrap().count();
        assert_eq!(stored, 0);
    }

    #[test]
    fn limits_out_of_range_are_refused_on_every_way_in() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let huge: LimitsConfig =
            serde_json::from_value(serde_json::json!({ "deadline": "500000000000s" })).unwrap();
        let mut r = open(&dir);
        let shop = ServiceName::new("shop").unwrap();
        // Through the API's two steps.
        assert!(matches!(
            r.put(
                &shop,
                module(b"v1"),
                Some(huge.clone()),
                None,
                GuestConfig::default()
            ),
            Err(ChangeError::Limits(_))
        ));
        r.put(&shop, module(b"v1"), None, None, GuestConfig::default())
            .unwrap();
        assert!(matches!(
            r.configure(&shop, Some(huge.clone()), None, None),
            Err(ChangeError::Limits(_))
        ));
        // An entry from the shared registry, which skips the API's checks.
        let mut entry = r.entry(&shop).unwrap().clone();
        entry.limits = huge.clone();
        assert!(matches!(
            r.install(&shop, entry, module(b"v2")),
            Err(ChangeError::Limits(_))
        ));
        assert_eq!(r.service(&shop).unwrap().digest, Digest::of(b"v1"));
        drop(r);
        // A manifest already holding such a value: the entry is not served, and kept.
        let path = dir.join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        manifest["services"]["shop"]["limits"] =
            serde_json::json!({ "deadline": "18446744073709551615s" });
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let r = open(&dir);
        assert!(r.service(&shop).is_none());
        assert!(r.entry(&shop).is_some());
    }

    #[test]
    fn stored_grants_beyond_the_ceiling_are_withheld_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = open(tmp.path());
        let grant = |hosts: &[&str]| GuestConfig {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..GuestConfig::default()
        };
        let metadata = ServiceName::new("metadata").unwrap();
        let public = ServiceName::new("public").unwrap();
        let hello = ServiceName::new("hello").unwrap();
        for (name, hosts) in [
            (&metadata, &["http://169.254.169.254"][..]),
            (&public, &["https://api.example.com"]),
            (&hello, &[crate::guest::ALLOW_ALL]),
        ] {
            r.put(name, module(b"m"), None, None, grant(hosts)).unwrap();
        }
        r.apply_outbound_ceiling(&HostCeiling::unset("outbound_allowed_hosts"));
        assert!(r.service(&metadata).is_none(), "not served");
        assert!(r.entry(&metadata).is_some(), "kept");
        assert_eq!(r.service(&public).unwrap().origin, Origin::Api);
        assert_eq!(
            r.service(&hello).unwrap().origin,
            Origin::BuiltIn,
            "the built-in comes back"
        );
    }

    #[test]
    fn routes_are_owned_once_and_kept_across_a_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let mut r = open(tmp.path());
        let at = |route: &str| GuestConfig {
            route: Some(ServiceRoute::prefix(route).unwrap()),
            ..GuestConfig::default()
        };
        let users = ServiceName::new("users").unwrap();
        let other = ServiceName::new("other").unwrap();
        r.put(&users, module(b"u"), None, None, at("/api/users"))
            .unwrap();
        // The same base, however written, is taken; a longer or shorter one is not.
        for (name, route, by) in [
            (&other, "/api/users/", "users"),
            (&other, "/fixed", "fixed"),
            (&other, "/hello", "hello"),
        ] {
            match r.put(name, module(b"o"), None, None, at(route)) {
                Err(ChangeError::Refused(Refusal::RouteTaken { by: b, .. })) => {
                    assert_eq!(b.as_str(), by, "{route}")
                }
                other => panic!("{route}: {:?}", other.map(|_| ())),
            }
        }
        r.put(&other, module(b"o"), None, None, at("/api")).unwrap();
        // A service's own route is no conflict, and a replace keeps it.
        r.put(&users, module(b"u2"), None, None, GuestConfig::default())
            .unwrap();
        assert_eq!(
            r.service(&users).unwrap().route().to_string(),
            "/api/users/..."
        );
        assert_eq!(
            r.entry(&users).unwrap().route.as_deref(),
            Some("/api/users/...")
        );
        // A stored entry another node wrote at a route this node's config file gives
        // another service is kept and not served.
        let mut entry = r.entry(&users).unwrap().clone();
        entry.route = Some("/fixed/...".to_owned());
        r.install(&users, entry, module(b"u3")).unwrap();
        assert!(r.service(&users).is_none(), "hidden");
        assert!(r.entry(&users).is_some(), "kept");
        drop(r);
        let r = open(tmp.path());
        assert!(r.service(&users).is_none(), "hidden after a restart too");
    }
}
