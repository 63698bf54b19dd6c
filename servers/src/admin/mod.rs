//! The management API under `/services`, answered on a thread of its own.
//!
//! Serving threads hand each call over through a bounded channel (a full one answers 503
//! at once) and get the response back through their inbox, so nothing a management call
//! does (fetching a module, compiling it, an fsync) ever runs on a serving loop. This
//! thread owns the [`Registry`]; fetching and compiling a new module happen on a short-lived
//! worker thread each (a few at once), so the API keeps answering meanwhile.
//!
//! | Call | What it does |
//! |---|---|
//! | `GET /services/health` | liveness, no token |
//! | `GET /services` | every service, with state and counters |
//! | `GET /services/metrics` | Prometheus text format |
//! | `POST /services/add` | `{"prefix", "source", "limits"?, "env"?}`: fetch and add or replace |
//! | `PUT /services/{prefix}` | the module as the body; limits and `env=KEY=VALUE` in the query |
//! | `GET /services/{prefix}` | one service (`?show_env=true` shows environment values) |
//! | `PATCH /services/{prefix}` | `{"limits"?, "env"?}`: change without uploading again |
//! | `DELETE /services/{prefix}` | remove; requests in flight finish |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use bytes::Bytes;
use frenezulo_core::control::catalog::Refusal;
use frenezulo_core::control::{Ask, Control, ControlConfig, Input};
use frenezulo_core::{
    JobId, ManagementCall, ModuleKey, Response, ServiceLimits, ServiceName, ServiceRoute,
};
use frenezulo_engines::EngineKind;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tracing::{error, info, warn};

use crate::api::{
    AddRequest, ConfigureRequest, Counters, EnvView, ErrorBody, Loads, ServiceList, ServiceView,
    SubRouteView,
};
use crate::artifacts::Artifacts;
use crate::cluster::{Cluster, ClusterEvent, WriteError};
use crate::compile::CompilePool;
use crate::guest::HostCeiling;
use crate::metrics::{self, ThreadSnapshot};
use crate::registry::manifest::Entry;
use crate::registry::{ChangeError, Registry, Service};
use crate::serve::{Inbox, ManagementRequest, Message};
use crate::settings::SettingsPatch;
use crate::spec::LimitsConfig;

mod changes;
pub mod fetch;
pub mod token;

pub use changes::Prepared;
use changes::{Job, Plane, Ready};
use fetch::FetchLimits;

/// Calls waiting for this thread, all serving threads together; past it, 503.
pub const QUEUE: usize = 64;
/// Modules fetched and compiled at once; past it, 503.
pub const MAX_PREPARING: usize = 4;
/// How long a listing or the metrics wait for a busy serving thread's snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(1);

/// What the management thread takes.
pub enum Event {
    /// A management request from serving thread `thread`.
    Call(ManagementRequest),
    /// A module finished fetching and compiling on a worker thread.
    Prepared(Box<Prepared>),
    /// News from the shared registry's thread.
    Cluster(Box<ClusterEvent>),
}

/// Who asked, so the answer can find them and the log say who it was.
#[derive(Clone)]
struct CallOrigin {
    thread: usize,
    call: JobId,
    remote: SocketAddr,
    method: String,
    path: String,
    started: Instant,
}

/// What the management thread runs with.
pub struct Setup {
    /// The registry it owns.
    pub registry: Registry,
    /// The bearer token every call but health must carry.
    pub token: String,
    /// Where modules are compiled (and their artifacts kept).
    pub artifacts: Arc<Artifacts>,
    /// The compile pool, told about modules compiled here.
    pub compile: CompilePool,
    /// Limits on fetching and uploads.
    pub fetch: FetchLimits,
    /// What `allowed_hosts` the API and NATS entries may grant.
    pub outbound_ceiling: HostCeiling,
    /// The engine, for health.
    pub engine: EngineKind,
    /// Limits of a service that sets none, for checking the ones a call sets.
    pub base_limits: ServiceLimits,
    /// The largest memory limit the engine was sized for.
    pub max_memory_bytes: usize,
    /// Every serving thread's inbox, by index.
    pub inboxes: Vec<Inbox>,
    /// The shared registry, when this node is part of a cluster.
    pub cluster: Option<Cluster>,
}

/// Starts the management thread; `on_exit` runs when it ends.
pub fn spawn(
    mut setup: Setup,
    events: Receiver<Event>,
    sender: SyncSender<Event>,
    on_exit: Box<dyn FnOnce() + Send>,
) -> std::io::Result<()> {
    let threads = setup.inboxes.iter().map(|i| i.mailbox(Message::Registry));
    setup.registry.attach(threads.collect());
    let mut admin = Admin::new(setup, sender);
    std::thread::Builder::new()
        .name("admin".to_owned())
        .spawn(move || {
            struct Exit(Option<Box<dyn FnOnce() + Send>>);
            impl Drop for Exit {
                fn drop(&mut self) {
                    if let Some(f) = self.0.take() {
                        f();
                    }
                }
            }
            let _exit = Exit(Some(on_exit));
            while let Ok(event) = events.recv() {
                match event {
                    Event::Call(ManagementRequest { thread, call }) => admin.on_call(thread, *call),
                    Event::Prepared(prepared) => admin.on_prepared(*prepared),
                    Event::Cluster(event) => admin.on_cluster(*event),
                }
            }
        })?;
    Ok(())
}

struct Admin {
    setup: Setup,
    /// SHA-256 of the token: compared in constant time, whatever the length given.
    token: [u8; 32],
    sender: SyncSender<Event>,
    /// The order of changes: preparing slots, revisions, shared writes in flight.
    control: Control<Plane>,
    started: Instant,
}

/// A response now, or later (the control plane answers once the change is done).
enum Reply {
    Now(Response),
    Later,
}

impl Admin {
    fn new(setup: Setup, sender: SyncSender<Event>) -> Self {
        let config = ControlConfig {
            shared: setup.cluster.is_some(),
            max_preparing: MAX_PREPARING,
        };
        let control = Control::new(config, setup.registry.stored());
        let mut admin = Admin {
            token: Sha256::digest(setup.token.as_bytes()).into(),
            setup,
            sender,
            control,
            started: Instant::now(),
        };
        admin.sync_shared();
        admin
    }

    fn on_call(&mut self, thread: usize, call: ManagementCall) {
        self.sync_shared();
        let origin = CallOrigin {
            thread,
            call: call.call,
            remote: call.remote,
            method: call.request.method.clone(),
            path: format!("/services{}", call.path_info),
            started: Instant::now(),
        };
        match self.route(&origin, &call) {
            Reply::Now(response) => self.answer(&origin, response),
            Reply::Later => {}
        }
    }

    fn route(&mut self, origin: &CallOrigin, call: &ManagementCall) -> Reply {
        let method = call.request.method.as_str();
        let tail = call.path_info.trim_start_matches('/');
        if tail == "health" && method == "GET" {
            return Reply::Now(self.health());
        }
        if !self.authorized(call) {
            return Reply::Now(
                error(
                    401,
                    "missing or wrong token: send `Authorization: Bearer <token>`",
                )
                .with_header("WWW-Authenticate", "Bearer"),
            );
        }
        let query = call.request.query();
        match (method, tail) {
            ("GET", "") => Reply::Now(self.list()),
            ("GET", "metrics") => Reply::Now(self.metrics()),
            // In a cluster, a write while NATS is away changes nothing: refused at once.
            (_, _) if method != "GET" && !self.control.writable() => {
                Reply::Now(unavailable(self.setup.cluster.as_ref()))
            }
            ("POST", "add") => self.add(origin, &call.request.body),
            (_, "" | "metrics" | "health" | "add") => Reply::Now(method_not_allowed(tail)),
            (_, name) if name.contains('/') => {
                Reply::Now(error(404, "no such management resource"))
            }
            (method, name) => {
                let name = match ServiceName::new(name) {
                    Ok(name) => name,
                    Err(e) => return Reply::Now(error(400, &format!("prefix `{name}`: {e}"))),
                };
                let if_match = match if_match(call) {
                    Ok(revision) => revision,
                    Err(response) => return Reply::Now(response),
                };
                match method {
                    "GET" => Reply::Now(self.show(&name, query)),
                    "PUT" => self.upload(origin, name, query, &call.request.body, if_match),
                    "PATCH" => self.configure(origin, &name, &call.request.body, if_match),
                    "DELETE" => self.remove(origin, &name, if_match),
                    _ => Reply::Now(
                        error(405, "use GET, PUT, PATCH or DELETE on a service")
                            .with_header("Allow", "GET, PUT, PATCH, DELETE"),
                    ),
                }
            }
        }
    }

    /// Whether `limits` ask for no more memory than the engine's pool was sized for.
    fn within_pool(&self, limits: &LimitsConfig) -> Result<(), String> {
        let memory = limits.apply(self.setup.base_limits).memory_bytes;
        if memory > self.setup.max_memory_bytes {
            return Err(format!(
                "memory limit {memory} bytes is above the {} this server was started for; raise [limits] memory in its config",
                self.setup.max_memory_bytes
            ));
        }
        Ok(())
    }

    /// Whether what `entry` grants is within the operator's ceiling, as it is now.
    fn within_ceiling(&self, entry: &Entry) -> Result<(), String> {
        let guest = entry.guest().map_err(|e| e.to_string())?;
        guest.check_within(&self.setup.outbound_ceiling)
    }

    fn authorized(&self, call: &ManagementCall) -> bool {
        let Some(value) = call.request.header("authorization") else {
            return false;
        };
        let given = value.strip_prefix(b"Bearer ").unwrap_or(b"");
        let given: [u8; 32] = Sha256::digest(given).into();
        // Constant time: every byte is compared whatever the first difference.
        given
            .iter()
            .zip(self.token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn answer(&self, origin: &CallOrigin, response: Response) {
        info!(
            target: "admin",
            remote = %origin.remote,
            method = origin.method,
            path = origin.path,
            status = response.status,
            ms = origin.started.elapsed().as_secs_f64() * 1e3,
            "management call"
        );
        if let Some(inbox) = self.setup.inboxes.get(origin.thread) {
            inbox.send(Message::Managed {
                call: origin.call,
                response,
            });
        }
    }

    fn health(&self) -> Response {
        json_response(
            200,
            &json!({
                "status": "ok",
                "engine": self.setup.engine.name(),
                "workers": self.setup.inboxes.len(),
                "services": self.setup.registry.services().count(),
                "uptime_seconds": self.started.elapsed().as_secs(),
                "registry": match &self.setup.cluster {
                    None => json!({ "kind": "local", "available": true }),
                    Some(c) => json!({
                        "kind": "nats",
                        "url": c.url,
                        "available": c.available(),
                        "note": if c.available() {
                            "changes are shared with every node"
                        } else {
                            "the shared registry is unavailable: serving the last known services, changes refused"
                        },
                    }),
                },
            }),
        )
    }

    /// Every serving thread's snapshot; a thread that does not answer in time is left out.
    fn snapshots(&self) -> Vec<ThreadSnapshot> {
        let (tx, rx) = std::sync::mpsc::channel();
        for inbox in &self.setup.inboxes {
            inbox.send(Message::Snapshot(tx.clone()));
        }
        drop(tx);
        let deadline = Instant::now() + SNAPSHOT_WAIT;
        let mut snapshots = Vec::new();
        while snapshots.len() < self.setup.inboxes.len() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(s) => snapshots.push(s),
                Err(_) => {
                    warn!("a serving thread did not send its snapshot in time");
                    break;
                }
            }
        }
        snapshots.sort_by_key(|s| s.thread);
        snapshots
    }

    fn list(&self) -> Response {
        let snapshots = self.snapshots();
        let loads = self.setup.compile.load_stats();
        let services = self
            .setup
            .registry
            .services()
            .map(|s| service_view(s, &snapshots, &loads, false))
            .collect();
        json_response(200, &ServiceList { services })
    }

    fn metrics(&self) -> Response {
        let text = metrics::render(&self.snapshots(), &self.setup.compile.load_stats());
        Response {
            status: 200,
            headers: vec![(
                "Content-Type".to_owned(),
                Bytes::from_static(b"text/plain; version=0.0.4; charset=utf-8"),
            )],
            body: text.into(),
        }
    }

    fn show(&self, name: &ServiceName, query: &str) -> Response {
        let Some(service) = self.setup.registry.service(name) else {
            return error(404, &format!("no service named `{name}`"));
        };
        let show_env = query_pairs(query).any(|(k, v)| k == "show_env" && v == "true");
        let snapshots = self.snapshots();
        let loads = self.setup.compile.load_stats();
        json_response(200, &service_view(service, &snapshots, &loads, show_env))
    }

    fn add(&mut self, origin: &CallOrigin, body: &[u8]) -> Reply {
        let add: AddRequest = match serde_json::from_slice(body) {
            Ok(add) => add,
            Err(e) => {
                return Reply::Now(error(
                    400,
                    &format!("body must be JSON like {}: {e}", AddRequest::EXAMPLE),
                ));
            }
        };
        let patch = match add.patch() {
            Ok(patch) => patch,
            Err(e) => return Reply::Now(error(400, &e.to_string())),
        };
        let name = match self.check_change(&add.prefix, &patch) {
            Ok(name) => name,
            Err(response) => return Reply::Now(response),
        };
        let fetch = self.setup.fetch.clone();
        let source = add.source;
        let job = Job::Asked {
            get: Box::new(move || Ok((fetch::fetch(&source, &fetch)?, source))),
            // What a fetch brings back is never quoted in an answer.
            quote: false,
            settings: Box::new(patch),
        };
        self.ask(origin, name, None, Ask::Prepare(job))
    }

    fn upload(
        &mut self,
        origin: &CallOrigin,
        name: ServiceName,
        query: &str,
        body: &Bytes,
        if_match: Option<u64>,
    ) -> Reply {
        let patch = match patch_from_query(query) {
            Ok(patch) => patch,
            Err(e) => return Reply::Now(error(400, &e)),
        };
        if let Err(response) = self.check_change(name.as_str(), &patch) {
            return Reply::Now(response);
        }
        let body = body.clone();
        let job = Job::Asked {
            get: Box::new(move || Ok((body.to_vec(), "upload".to_owned()))),
            quote: true,
            settings: Box::new(patch),
        };
        self.ask(origin, name, if_match, Ask::Prepare(job))
    }

    /// Checks what a change asks for before any work is done: the name, the settings
    /// given, the memory this server was started for, the operator's outbound ceiling and
    /// who owns the service.
    fn check_change(&self, prefix: &str, patch: &SettingsPatch) -> Result<ServiceName, Response> {
        let name =
            ServiceName::new(prefix).map_err(|e| error(400, &format!("prefix `{prefix}`: {e}")))?;
        patch.check().map_err(|e| error(400, &e.to_string()))?;
        if let Some(limits) = &patch.limits {
            self.within_pool(limits).map_err(|e| error(400, &e))?;
        }
        if let Some(hosts) = &patch.allowed_hosts {
            self.setup
                .outbound_ceiling
                .check_all(hosts)
                .map_err(|e| error(400, &e))?;
        }
        self.setup
            .registry
            .check_api_owned(&name)
            .map_err(|e| change_error(&e))?;
        Ok(name)
    }

    fn configure(
        &mut self,
        origin: &CallOrigin,
        name: &ServiceName,
        body: &[u8],
        if_match: Option<u64>,
    ) -> Reply {
        let c: ConfigureRequest = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => {
                return Reply::Now(error(
                    400,
                    &format!("body must be JSON like {}: {e}", ConfigureRequest::EXAMPLE),
                ));
            }
        };
        let patch = c.patch();
        if let Err(response) = self.check_change(name.as_str(), &patch) {
            return Reply::Now(response);
        }
        let registry = &self.setup.registry;
        let entry = match registry.entry_for_configure(name, &patch) {
            Ok(entry) => entry,
            Err(e) => return Reply::Now(change_error(&e)),
        };
        if let Err(e) = self.within_ceiling(&entry) {
            return Reply::Now(error(400, &e));
        }
        // The module stays: hand over the compiled one if a thread holds it, so no thread
        // has to load it again.
        let compiled = registry.service(name).and_then(|s| {
            self.setup.compile.cached(&ModuleKey {
                service: name.clone(),
                version: s.version,
            })
        });
        let ask = Ask::Put(Ready::Settings {
            entry: Box::new(entry),
            compiled,
        });
        self.ask(origin, name.clone(), if_match, ask)
    }

    fn remove(&mut self, origin: &CallOrigin, name: &ServiceName, if_match: Option<u64>) -> Reply {
        if let Err(e) = self.setup.registry.check_remove(name) {
            return Reply::Now(change_error(&e));
        }
        self.ask(origin, name.clone(), if_match, Ask::Remove)
    }

    /// Hands a caller's change to the control plane; the answer follows from it.
    fn ask(
        &mut self,
        origin: &CallOrigin,
        name: ServiceName,
        if_match: Option<u64>,
        ask: Ask<Plane>,
    ) -> Reply {
        self.drive(Input::Call {
            caller: origin.clone(),
            name,
            if_match,
            ask,
        });
        Reply::Later
    }
}

/// The revision an `If-Match: N` header names, if the call has one.
fn if_match(call: &ManagementCall) -> Result<Option<u64>, Response> {
    let Some(value) = call.request.header("if-match") else {
        return Ok(None);
    };
    std::str::from_utf8(value)
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| error(400, "If-Match must be a revision number, as `GET` shows it"))
}

/// The answer to a write the shared registry refused or could not take.
fn write_error(e: &WriteError) -> Response {
    match e {
        WriteError::Conflict(_) => error(409, &e.to_string()),
        _ => error(503, &e.to_string()).with_header("Retry-After", "1"),
    }
}

/// The answer to a write while the shared registry is away.
fn unavailable(cluster: Option<&Cluster>) -> Response {
    let url = cluster.map_or("", |c| c.url.as_str());
    error(
        503,
        &format!(
            "the shared registry (NATS at {url}) is unavailable: changes are refused until it is back; every node keeps serving the services it has"
        ),
    )
    .with_header("Retry-After", "1")
}

/// Limits (`memory=32MiB&deadline=2s&...`), environment values (`env=KEY=VALUE`,
/// repeatable), `route`, `entrypoint`, `argv`, `allowed_host` (repeatable) and
/// `http_max_concurrency` from an upload's query string.
fn patch_from_query(query: &str) -> Result<SettingsPatch, String> {
    let mut limits = Vec::new();
    let mut patch = SettingsPatch::default();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "route" => {
                patch.route = Some(ServiceRoute::prefix(&value).map_err(|e| e.to_string())?);
            }
            "entrypoint" => patch.entrypoint = Some(value),
            "argv" => patch.argv = Some(value),
            "allowed_host" => patch.allowed_hosts.get_or_insert_default().push(value),
            "http_max_concurrency" => {
                let n = value.parse().map_err(|_| {
                    format!("`http_max_concurrency` must be a whole number, not `{value}`")
                })?;
                patch.http_max_concurrency = Some(n);
            }
            "env" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("`env={value}` is not env=KEY=VALUE"))?;
                patch
                    .env
                    .get_or_insert_default()
                    .insert(k.to_owned(), v.to_owned());
            }
            _ => limits.push((key, value)),
        }
    }
    if !limits.is_empty() {
        patch.limits = Some(LimitsConfig::from_pairs(limits)?);
    }
    patch.check().map_err(|e| e.to_string())?;
    Ok(patch)
}

/// `key=value` pairs of a query string, percent-decoded (`+` is a space).
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        String::from_utf8_lossy(&frenezulo_engines::wagi::percent_decode(spaced.as_bytes()))
            .into_owned()
    };
    query.split('&').filter(|p| !p.is_empty()).map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k), decode(v))
    })
}

fn service_view(
    s: &Service,
    snapshots: &[ThreadSnapshot],
    loads: &BTreeMap<ServiceName, crate::compile::LoadStats>,
    show_env: bool,
) -> ServiceView {
    let env = if show_env {
        EnvView::Values(s.env.clone())
    } else {
        EnvView::Names(s.env.keys().cloned().collect())
    };
    let route = s.route();
    let mut view = ServiceView {
        prefix: s.name.as_str().to_owned(),
        route: route.to_string(),
        origin: s.origin,
        changeable_by_api: s.origin.api_may_change(),
        source: s.source.clone(),
        digest: s.digest.to_string(),
        size: s.wasm.len(),
        kind: frenezulo_engines::ModuleKind::of(&s.wasm).name().to_owned(),
        version: s.version,
        revision: s.revision,
        updated_unix: s.updated_unix,
        limits: LimitsConfig::of(&s.limits),
        limits_set: s.limits_set.clone(),
        env,
        entrypoint: s
            .guest
            .entrypoint
            .as_deref()
            .unwrap_or(frenezulo_core::DEFAULT_ENTRYPOINT)
            .to_owned(),
        argv: s
            .guest
            .argv
            .as_deref()
            .unwrap_or(frenezulo_core::DEFAULT_ARGV)
            .to_owned(),
        routes: s
            .routes
            .routes()
            .iter()
            .map(|r| SubRouteView {
                route: route.join(&r.pattern).to_string(),
                entrypoint: r.entrypoint.to_string(),
            })
            .collect(),
        volumes: s.guest.volumes.clone(),
        allowed_hosts: s.guest.allowed_hosts.clone(),
        http_max_concurrency: s
            .guest
            .outbound(&s.outbound_in_flight, false)
            .map(|g| g.max_in_flight),
        state: None,
        counters: None,
        loads: None,
    };
    if !snapshots.is_empty() {
        let totals = metrics::service_totals(snapshots, &s.name);
        let infos = || {
            snapshots
                .iter()
                .flat_map(|t| &t.services)
                .filter(|i| i.module.service == s.name)
        };
        view.state = metrics::service_state(snapshots, &s.name)
            .map(|state| metrics::state_name(state).to_owned());
        view.counters = Some(Counters {
            requests: totals.count(),
            by_status: totals.by_status.clone(),
            running: infos().map(|i| i.running).sum(),
            queued: infos().map(|i| i.queued).sum(),
            cold_starts: totals.cold_starts,
        });
    }
    if let Some(l) = loads.get(&s.name) {
        view.loads = Some(Loads {
            compiled: l.compiled,
            artifact: l.from_artifact,
            seconds: l.seconds,
        });
    }
    view
}

fn change_error(e: &ChangeError) -> Response {
    let status = match e {
        ChangeError::Refused(Refusal::NotApiDefined { .. } | Refusal::RouteTaken { .. }) => 409,
        ChangeError::Refused(Refusal::NotFound(_)) => 404,
        ChangeError::Entrypoint(_)
        | ChangeError::Limits(_)
        | ChangeError::Route(_)
        | ChangeError::Settings(_) => 400,
        _ => 500,
    };
    if status == 500 {
        warn!(target: "admin", error = %e, "registry change failed");
    }
    error(status, &e.to_string())
}

fn method_not_allowed(tail: &str) -> Response {
    let allow = match tail {
        "add" => "POST",
        _ => "GET",
    };
    error(405, &format!("use {allow} on /services/{tail}")).with_header("Allow", allow)
}

fn json_response(status: u16, value: &impl Serialize) -> Response {
    let mut body = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    body.push(b'\n');
    Response {
        status,
        headers: vec![(
            "Content-Type".to_owned(),
            Bytes::from_static(b"application/json"),
        )],
        body: body.into(),
    }
}

fn error(status: u16, message: &str) -> Response {
    let body = ErrorBody {
        error: message.to_owned(),
    };
    json_response(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin of a node without serving threads, on a temporary data directory; the
    /// receiver gets what its workers send back.
    fn admin(dir: &std::path::Path) -> (Admin, Receiver<Event>) {
        let kind = EngineKind::compiled_in().next().unwrap();
        let engine =
            frenezulo_engines::create(kind, &frenezulo_engines::EngineConfig::default()).unwrap();
        let artifacts = Arc::new(Artifacts::open(engine, dir));
        let store = crate::registry::store::LocalStore::open(dir).unwrap();
        let registry = Registry::open(
            Box::new(store),
            Vec::new(),
            ServiceLimits::default(),
            Default::default(),
            1,
        )
        .unwrap();
        let (sender, events) = std::sync::mpsc::sync_channel(QUEUE);
        let setup = Setup {
            registry,
            token: "t".repeat(32),
            compile: CompilePool::start(artifacts.clone(), 1).unwrap(),
            artifacts,
            fetch: FetchLimits {
                max_bytes: 1 << 20,
                timeout: Duration::from_secs(30),
                module_dirs: Vec::new(),
                allowed: HostCeiling::unset("fetch_allowed_hosts"),
            },
            outbound_ceiling: HostCeiling::unset("outbound_allowed_hosts"),
            engine: kind,
            base_limits: ServiceLimits::default(),
            max_memory_bytes: 1 << 30,
            inboxes: Vec::new(),
            cluster: None,
        };
        (Admin::new(setup, sender), events)
    }

    #[test]
    fn a_node_catching_up_prepares_a_few_changes_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut admin, events) = admin(tmp.path());
        let wasm = wat::parse_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/hello.wat"
        ))
        .unwrap();
        let entry = Entry::uploaded(&wasm);
        let count = 3 * MAX_PREPARING;
        for i in 0..count {
            admin.on_cluster(ClusterEvent::Changed {
                name: format!("s{i}"),
                revision: i as u64 + 1,
                entry: Box::new(entry.clone()),
                wasm: Bytes::from(wasm.clone()),
            });
            assert!(
                admin.control.preparing() <= MAX_PREPARING,
                "{} at once",
                admin.control.preparing()
            );
        }
        // Removed before its turn: never prepared.
        admin.on_cluster(ClusterEvent::Removed {
            name: format!("s{}", count - 1),
            revision: count as u64 + 1,
        });
        while admin.control.preparing() > 0 {
            let Event::Prepared(prepared) = events.recv().unwrap() else {
                panic!("only preparations come back");
            };
            admin.on_prepared(*prepared);
            assert!(
                admin.control.preparing() <= MAX_PREPARING,
                "{} at once",
                admin.control.preparing()
            );
        }
        assert_eq!(admin.control.waiting(), 0);
        for i in 0..count - 1 {
            let name = ServiceName::new(&format!("s{i}")).unwrap();
            assert_eq!(
                admin.setup.registry.entry(&name).and_then(|e| e.revision),
                Some(i as u64 + 1),
                "s{i}"
            );
        }
        let removed = ServiceName::new(&format!("s{}", count - 1)).unwrap();
        assert!(admin.setup.registry.service(&removed).is_none());
    }

    #[test]
    fn shared_entries_are_held_to_the_outbound_ceiling() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut admin, events) = admin(tmp.path());
        let wasm = wat::parse_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/hello.wat"
        ))
        .unwrap();
        let entry = |hosts: &[&str]| Entry {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Entry::uploaded(&wasm)
        };
        let changed = |revision, hosts: &[&str]| ClusterEvent::Changed {
            name: "s".to_owned(),
            revision,
            entry: Box::new(entry(hosts)),
            wasm: Bytes::from(wasm.clone()),
        };
        for hosts in [
            &[crate::guest::ALLOW_ALL][..],
            &["http://169.254.169.254"],
            &["https://api.example.com", "http://10.0.0.5:8080"],
        ] {
            admin.on_cluster(changed(1, hosts));
            assert_eq!(
                admin.control.preparing(),
                0,
                "{hosts:?} refused before any work"
            );
        }
        admin.setup.outbound_ceiling = HostCeiling::new(
            "outbound_allowed_hosts",
            Some(&[crate::guest::ALLOW_ALL.to_owned()]),
        )
        .unwrap();
        admin.on_cluster(changed(2, &["http://169.254.169.254"]));
        assert_eq!(
            admin.control.preparing(),
            1,
            "within the operator's ceiling"
        );
        let Event::Prepared(prepared) = events.recv().unwrap() else {
            panic!("only preparations come back");
        };
        admin.on_prepared(*prepared);
        let name = ServiceName::new("s").unwrap();
        assert_eq!(
            admin.setup.registry.entry(&name).and_then(|e| e.revision),
            Some(2)
        );
    }

    #[test]
    fn shared_entries_are_held_to_the_memory_pool_and_their_modules_exports() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut admin, events) = admin(tmp.path());
        let wasm = wat::parse_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/hello.wat"
        ))
        .unwrap();
        let changed = |revision, entry: Entry| ClusterEvent::Changed {
            name: "s".to_owned(),
            revision,
            entry: Box::new(entry),
            wasm: Bytes::from(wasm.clone()),
        };
        // More memory than this node's engine pool holds (the test admin's is 1 GiB).
        let big = LimitsConfig::from_pairs([("memory", "2GiB")]).unwrap();
        admin.on_cluster(changed(
            1,
            Entry {
                limits: big,
                ..Entry::uploaded(&wasm)
            },
        ));
        assert_eq!(admin.control.preparing(), 0, "refused before any work");
        // An entrypoint the module does not export: refused once the module is prepared.
        admin.on_cluster(changed(
            2,
            Entry {
                entrypoint: Some("missing".to_owned()),
                ..Entry::uploaded(&wasm)
            },
        ));
        assert_eq!(admin.control.preparing(), 1);
        let Event::Prepared(prepared) = events.recv().unwrap() else {
            panic!("only preparations come back");
        };
        admin.on_prepared(*prepared);
        let name = ServiceName::new("s").unwrap();
        assert!(
            admin.setup.registry.entry(&name).is_none(),
            "not stored, not served"
        );
        assert_eq!(admin.control.preparing(), 0);
    }

    #[test]
    fn query_strings_give_limits_and_environment() {
        let patch = patch_from_query(
            "memory=32MiB&deadline=250ms&queue=3&env=DB%3Durl=x&env=FLAG=&entrypoint=main&argv=a+%24%7BARGS%7D&allowed_host=https://a.example",
        )
        .unwrap();
        assert_eq!(patch.entrypoint.as_deref(), Some("main"));
        assert_eq!(patch.argv.as_deref(), Some("a ${ARGS}"));
        assert_eq!(patch.allowed_hosts.unwrap(), ["https://a.example"]);
        let limits = patch.limits.unwrap();
        let applied = limits.apply(frenezulo_core::ServiceLimits::default());
        assert_eq!(applied.memory_bytes, 32 << 20);
        assert_eq!(applied.deadline, Duration::from_millis(250));
        assert_eq!(applied.max_queued, 3);
        let env = patch.env.unwrap();
        assert_eq!(env["DB"], "url=x");
        assert_eq!(env["FLAG"], "");
        assert_eq!(patch_from_query("").unwrap(), SettingsPatch::default());
        assert!(patch_from_query("entrypoint=").is_err());
        assert!(patch_from_query("queue=many").is_err());
        assert!(patch_from_query("colour=blue").is_err());
        assert!(patch_from_query("env=NOEQUALS").is_err());
        assert!(patch_from_query("env=QUERY_STRING=x").is_err());
        assert!(patch_from_query("memory=8GiB").is_err());
    }
}
