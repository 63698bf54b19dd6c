//! Settings: the TOML config file, the command line over it, and the defaults under both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use frenezulo_core::control::catalog::Catalog;
use frenezulo_core::{FramingLimits, ServerConfig, ServiceLimits, ServiceName, ServiceRoute};
use frenezulo_engines::EngineKind;

use crate::cluster::ClusterConfig;
use crate::guest::{GuestConfig, HostCeiling};
use crate::outbound::OutboundLimits;
use crate::settings::ServiceSettings;
use crate::spec::{
    EnvValues, LimitsConfig, Origin, ServiceSpec, Size, Span, ceiling, check_env, check_size,
    check_timeout,
};
use serde::Deserialize;

/// Everything the server runs with, after merging file, flags and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Engine to run guests on.
    pub engine: EngineKind,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Listen backlog of each serving thread's socket: connections the kernel queues
    /// before `accept`.
    pub backlog: u32,
    /// Serving threads: each accepts, parses, runs guests and answers on its own.
    pub workers: usize,
    /// Open connections at most; past it, accepting pauses.
    pub max_connections: usize,
    /// Whether `max_connections` was set (not the default): a default that does not fit
    /// the open-file limit is lowered, a set one is refused.
    pub max_connections_set: bool,
    /// How long a connection's output may wait without a byte of it written before the
    /// connection is dropped (counted from the last write that made progress).
    pub write_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// The state machine's settings, server-wide: [`Settings::per_thread`] divides them.
    pub server: ServerConfig,
    /// Services to register at start.
    pub services: Vec<ServiceSpec>,
    /// Limits of a service that sets none: `[limits]` over the defaults.
    pub base_limits: ServiceLimits,
    /// Where the registry, its modules and the compiled artifacts live.
    pub data_dir: PathBuf,
    /// The management API's bearer token, if given (otherwise one is kept in `data_dir`).
    pub admin_token: Option<String>,
    /// Largest module the management API takes, uploaded or fetched.
    pub max_module_bytes: usize,
    /// How long fetching a module by URL may take, in all.
    pub fetch_timeout: Duration,
    /// Directories `file://` sources may name; none by default.
    pub module_dirs: Vec<PathBuf>,
    /// What `allowed_hosts` the management API (and NATS entries) may grant.
    pub outbound_allowed_hosts: HostCeiling,
    /// Which http(s) origins `POST /services/add` may fetch from, redirects included.
    pub fetch_allowed_hosts: HostCeiling,
    /// One log line per request, at `info` under the `access` target.
    pub access_log: bool,
    /// Components read a request body as it arrives (their request starts at its head);
    /// off, every request starts once its whole body is in, as WAGI's do.
    pub stream_request_bodies: bool,
    /// Environment values for every service's guests, under each service's own.
    pub env: EnvValues,
    /// How guests' outbound HTTP calls are made.
    pub outbound: OutboundLimits,
    /// The shared registry of a cluster, if this node is part of one.
    pub cluster: Option<ClusterConfig>,
}

/// Refuses two services whose routes share a base (`/a`, `/a/` and `/a/...`): which one
/// answers would depend on the order they were read.
fn check_routes(services: &[ServiceSpec]) -> anyhow::Result<()> {
    let own = services.iter().filter_map(|s| {
        // A bad name is reported with the service's other checks, at load.
        let name = ServiceName::new(&s.name).ok()?;
        let route = s
            .guest
            .route
            .clone()
            .unwrap_or_else(|| ServiceRoute::of_name(&name));
        Some((name, s.origin, route))
    });
    Catalog::new(own)?;
    Ok(())
}

/// The config file, as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    engine: Option<String>,
    listen: Option<SocketAddr>,
    backlog: Option<u32>,
    workers: Option<usize>,
    max_running: Option<usize>,
    max_connections: Option<usize>,
    max_queued: Option<usize>,
    max_queued_bytes: Option<Size>,
    max_pipelined: Option<usize>,
    max_header_bytes: Option<Size>,
    max_body: Option<Size>,
    idle_timeout: Option<Span>,
    keep_alive_timeout: Option<Span>,
    request_timeout: Option<Span>,
    write_timeout: Option<Span>,
    drain_timeout: Option<Span>,
    data_dir: Option<PathBuf>,
    admin_token: Option<String>,
    max_module_size: Option<Size>,
    fetch_timeout: Option<Span>,
    #[serde(default)]
    module_dirs: Vec<PathBuf>,
    outbound_allowed_hosts: Option<Vec<String>>,
    fetch_allowed_hosts: Option<Vec<String>>,
    access_log: Option<bool>,
    stream_request_bodies: Option<bool>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    env_file: Option<PathBuf>,
    wagi_config: Option<PathBuf>,
    outbound_timeout: Option<Span>,
    outbound_max_response: Option<Size>,
    outbound_workers: Option<usize>,
    registry: Option<String>,
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    services: BTreeMap<String, ServiceEntry>,
}

/// `[nats]`: how to reach the shared registry named by `registry = "nats://..."`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsConfig {
    kv_bucket: Option<String>,
    object_bucket: Option<String>,
    token: Option<String>,
    credentials: Option<PathBuf>,
    #[serde(default)]
    require_tls: bool,
    root_certificates: Option<PathBuf>,
}

// Read once at start: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceEntry {
    /// `name = "path/to/module.wasm"`
    Path(PathBuf),
    /// `[services.name]` with `module = "..."`, `route = "/api/users"`, any limit keys,
    /// `env = { KEY = "value" }`, `entrypoint`, `argv`,
    /// `volumes = { "/guest/path" = "host/dir" }`, `allowed_hosts` and
    /// `http_max_concurrency`.
    Table {
        module: PathBuf,
        #[serde(default)]
        route: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        entrypoint: Option<String>,
        #[serde(default)]
        argv: Option<String>,
        #[serde(default)]
        volumes: BTreeMap<String, PathBuf>,
        #[serde(default)]
        allowed_hosts: Vec<String>,
        #[serde(default)]
        http_max_concurrency: Option<usize>,
        #[serde(flatten)]
        limits: LimitsConfig,
    },
}

/// What the command line can set; `None` leaves the file's value or the default.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--engine`
    pub engine: Option<EngineKind>,
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--backlog`
    pub backlog: Option<u32>,
    /// `--workers`
    pub workers: Option<usize>,
    /// `--max-running`
    pub max_running: Option<usize>,
    /// `--idle-timeout`
    pub idle_timeout: Option<Duration>,
    /// `--service NAME=PATH`, in order; a name here replaces the file's service of that name.
    pub services: Vec<(String, PathBuf)>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--admin-token` or `FRENEZULO_ADMIN_TOKEN`
    pub admin_token: Option<String>,
    /// `--no-access-log`
    pub no_access_log: bool,
    /// `--env KEY=VALUE`, in order.
    pub env: Vec<(String, String)>,
    /// `--wagi-config FILE`
    pub wagi_config: Option<PathBuf>,
    /// `--registry nats://HOST:PORT`
    pub registry: Option<String>,
    /// `--env-file FILE`
    pub env_file: Option<PathBuf>,
}

/// Reads an environment file as WAGI takes it: `KEY=VALUE` lines; blank lines and lines
/// starting with `#` are skipped; the value is the rest of the line, as written.
pub fn read_env_file(path: &Path) -> anyhow::Result<EnvValues> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading environment file {}", path.display()))?;
    let mut env = EnvValues::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .with_context(|| format!("{}:{}: expected KEY=VALUE", path.display(), n + 1))?;
        env.insert(key.trim_end().to_owned(), value.to_owned());
    }
    Ok(env)
}

/// The data directory when none is given: `$XDG_DATA_HOME/frenezulo`, else
/// `$HOME/.local/share/frenezulo`, else `frenezulo-data` in the working directory.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_DATA_HOME")
        .map(|d| d.join("frenezulo"))
        .or_else(|| non_empty("HOME").map(|h| h.join(".local/share/frenezulo")))
        .unwrap_or_else(|| PathBuf::from("frenezulo-data"))
}

/// Largest module the management API takes, by default (as the seed had it).
pub const DEFAULT_MAX_MODULE_BYTES: usize = 5 << 20;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Guest instances running at once per serving thread, by default.
pub const DEFAULT_RUNNING_PER_WORKER: usize = 64;

/// `max_connections` when the config file sets none.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Settings {
    /// One serving thread's core settings.
    pub fn per_thread(&self) -> ServerConfig {
        self.server.per_thread(self.workers)
    }

    /// Merges the config file at `path` (if any) with command-line overrides.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> anyhow::Result<Self> {
        let (file, base) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                let file: FileConfig = toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", p.display()))?;
                (file, p.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        Self::merge(file, &base, overrides)
    }

    /// Merges a parsed file (whose relative paths are under `base`) with overrides.
    pub fn merge(mut file: FileConfig, base: &Path, overrides: Overrides) -> anyhow::Result<Self> {
        let engine = match (overrides.engine, &file.engine) {
            (Some(e), _) => e,
            (None, Some(name)) => name.parse().map_err(anyhow::Error::msg)?,
            (None, None) => EngineKind::compiled_in()
                .next()
                .context("no engine compiled in")?,
        };
        let workers = overrides
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if workers == 0 {
            bail!("workers must be at least 1");
        }
        check_server_bounds(&file, &overrides)?;
        let max_module_bytes = file
            .max_module_size
            .map_or(DEFAULT_MAX_MODULE_BYTES, |s| s.0);
        let server = server_config(&file, &overrides, workers, max_module_bytes);
        file.limits
            .check()
            .map_err(|e| anyhow::anyhow!("[limits]: {e}"))?;
        let base_limits = file.limits.apply(ServiceLimits {
            // Each service's requests: the configured `max_body`, not the module cap.
            body_bytes: file
                .max_body
                .map_or(ServerConfig::default().framing.max_body_bytes, |s| s.0),
            ..ServiceLimits::default()
        });
        let services = services(&mut file, base, &overrides, base_limits)?;
        let env = guest_env(&file, base, &overrides)?;
        let outbound_allowed_hosts = HostCeiling::new(
            "outbound_allowed_hosts",
            file.outbound_allowed_hosts.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        let fetch_allowed_hosts =
            HostCeiling::new("fetch_allowed_hosts", file.fetch_allowed_hosts.as_deref())
                .map_err(anyhow::Error::msg)?;
        let cluster = cluster_config(&mut file, base, overrides.registry.clone())?;
        let outbound = outbound_limits(&file);
        Ok(Settings {
            engine,
            listen: overrides
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            backlog: overrides.backlog.or(file.backlog).unwrap_or(1024),
            workers,
            max_connections: file
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS)
                .max(1),
            max_connections_set: file.max_connections.is_some(),
            write_timeout: file.write_timeout.map_or(Duration::from_secs(30), |s| s.0),
            drain_timeout: file.drain_timeout.map_or(Duration::from_secs(30), |s| s.0),
            server,
            services,
            base_limits,
            data_dir: overrides
                .data_dir
                .or(file.data_dir.map(|d| base.join(d)))
                .unwrap_or_else(default_data_dir),
            admin_token: overrides
                .admin_token
                .or(file.admin_token)
                .filter(|t| !t.is_empty()),
            max_module_bytes,
            fetch_timeout: file.fetch_timeout.map_or(Duration::from_secs(30), |s| s.0),
            module_dirs: file.module_dirs.iter().map(|d| base.join(d)).collect(),
            outbound_allowed_hosts,
            fetch_allowed_hosts,
            access_log: !overrides.no_access_log && file.access_log.unwrap_or(true),
            stream_request_bodies: file.stream_request_bodies.unwrap_or(true),
            env,
            cluster,
            outbound,
        })
    }
}

/// The server's own timeouts and sizes, each within its ceiling: from the operator, but a
/// typo must be a clear error at start, not an overflow on the first request.
fn check_server_bounds(file: &FileConfig, overrides: &Overrides) -> anyhow::Result<()> {
    for (key, value) in [
        (
            "idle_timeout",
            overrides.idle_timeout.or(file.idle_timeout.map(|s| s.0)),
        ),
        ("keep_alive_timeout", file.keep_alive_timeout.map(|s| s.0)),
        ("request_timeout", file.request_timeout.map(|s| s.0)),
        ("write_timeout", file.write_timeout.map(|s| s.0)),
        ("drain_timeout", file.drain_timeout.map(|s| s.0)),
        ("fetch_timeout", file.fetch_timeout.map(|s| s.0)),
        ("outbound_timeout", file.outbound_timeout.map(|s| s.0)),
    ] {
        if let Some(v) = value {
            check_timeout(key, v)?;
        }
    }
    for (key, value) in [
        ("max_body", file.max_body),
        ("max_module_size", file.max_module_size),
    ] {
        if let Some(Size(v)) = value {
            check_size(key, v, 0, ceiling::BODY_BYTES)?;
        }
    }
    Ok(())
}

/// What each serving thread's core runs with. Uploads come through the same framing as
/// requests, so it lets a module of `max_module_bytes` through; each service's own body
/// limit still applies to its requests.
fn server_config(
    file: &FileConfig,
    overrides: &Overrides,
    workers: usize,
    max_module_bytes: usize,
) -> ServerConfig {
    let defaults = ServerConfig::default();
    let max_body = file
        .max_body
        .map_or(defaults.framing.max_body_bytes, |s| s.0);
    ServerConfig {
        framing: FramingLimits {
            max_head_bytes: file
                .max_header_bytes
                .map_or(defaults.framing.max_head_bytes, |s| s.0),
            max_headers: defaults.framing.max_headers,
            max_body_bytes: max_body.max(max_module_bytes),
        },
        keep_alive_timeout: file
            .keep_alive_timeout
            .map_or(defaults.keep_alive_timeout, |s| s.0),
        request_timeout: file
            .request_timeout
            .map_or(defaults.request_timeout, |s| s.0),
        max_pipelined: file.max_pipelined.unwrap_or(defaults.max_pipelined).max(1),
        max_running: overrides
            .max_running
            .or(file.max_running)
            .unwrap_or(DEFAULT_RUNNING_PER_WORKER * workers)
            .max(1),
        max_queued: file.max_queued.unwrap_or(defaults.max_queued),
        max_queued_bytes: file
            .max_queued_bytes
            .map_or(defaults.max_queued_bytes, |s| s.0),
        idle_timeout: overrides
            .idle_timeout
            .or(file.idle_timeout.map(|s| s.0))
            .unwrap_or(defaults.idle_timeout),
    }
}

/// The services to load at start: the config file's (its paths under `base`), then the
/// module map's, then `--service` over both; no two on one route.
fn services(
    file: &mut FileConfig,
    base: &Path,
    overrides: &Overrides,
    base_limits: ServiceLimits,
) -> anyhow::Result<Vec<ServiceSpec>> {
    let mut services = Vec::new();
    for (name, entry) in std::mem::take(&mut file.services) {
        services.push(file_service(name, entry, base, base_limits)?);
    }
    let wagi_config = overrides
        .wagi_config
        .clone()
        .or(file.wagi_config.as_ref().map(|f| base.join(f)));
    if let Some(path) = wagi_config {
        let taken = services.iter().map(|s| s.name.clone()).collect();
        services.extend(crate::wagi_config::read(&path, base_limits, &taken)?);
    }
    for (name, module) in &overrides.services {
        services.retain(|s| s.name != *name);
        services.push(ServiceSpec {
            name: name.clone(),
            module: module.clone(),
            limits: base_limits,
            env: BTreeMap::new(),
            guest: GuestConfig::default(),
            origin: Origin::Cli,
        });
    }
    check_routes(&services)?;
    Ok(services)
}

/// One `[services]` entry, checked.
fn file_service(
    name: String,
    entry: ServiceEntry,
    base: &Path,
    base_limits: ServiceLimits,
) -> anyhow::Result<ServiceSpec> {
    let (module, limits, env, guest) = match entry {
        ServiceEntry::Path(module) => {
            (module, base_limits, BTreeMap::new(), GuestConfig::default())
        }
        ServiceEntry::Table {
            module,
            route,
            env,
            entrypoint,
            argv,
            volumes,
            allowed_hosts,
            http_max_concurrency,
            limits,
        } => {
            let route = route
                .as_deref()
                .map(ServiceRoute::prefix)
                .transpose()
                .map_err(|e| anyhow::anyhow!("service `{name}`: {e}"))?;
            let settings = ServiceSettings {
                route,
                limits,
                env,
                entrypoint,
                argv,
                allowed_hosts,
                http_max_concurrency,
            };
            let guest = GuestConfig {
                volumes: volumes
                    .into_iter()
                    .map(|(g, h)| (g, base.join(h)))
                    .collect(),
                ..settings.guest()
            };
            settings
                .check()
                .map_err(|e| e.to_string())
                .and_then(|()| guest.check().map_err(|e| e.to_string()))
                .map_err(|e| anyhow::anyhow!("service `{name}`: {e}"))?;
            let ServiceSettings { limits, env, .. } = settings;
            (module, limits.apply(base_limits), env, guest)
        }
    };
    Ok(ServiceSpec {
        name,
        module: base.join(module),
        limits,
        env,
        guest,
        origin: Origin::Config,
    })
}

/// Every guest's environment, lowest first: the environment file (the command line's,
/// else the config file's), then the config file's `env`, then `--env`.
fn guest_env(file: &FileConfig, base: &Path, overrides: &Overrides) -> anyhow::Result<EnvValues> {
    let env_file = overrides
        .env_file
        .clone()
        .or(file.env_file.as_ref().map(|f| base.join(f)));
    let mut env = match &env_file {
        Some(path) => read_env_file(path)?,
        None => EnvValues::new(),
    };
    env.extend(file.env.clone());
    env.extend(overrides.env.iter().cloned());
    check_env(&env).map_err(|e| anyhow::anyhow!("server-wide environment: {e}"))?;
    Ok(env)
}

/// The shared registry, if `registry` (the command line's, else the file's) names NATS.
fn cluster_config(
    file: &mut FileConfig,
    base: &Path,
    registry: Option<String>,
) -> anyhow::Result<Option<ClusterConfig>> {
    let url = match registry.or(file.registry.take()) {
        None => return Ok(None),
        Some(url) if url == "local" => return Ok(None),
        Some(url) => url,
    };
    if !["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        bail!("registry `{url}` must be `local` or a nats:// URL");
    }
    let mut c = ClusterConfig::new(url);
    let n = std::mem::take(&mut file.nats);
    c.kv_bucket = n.kv_bucket.unwrap_or(c.kv_bucket);
    c.object_bucket = n.object_bucket.unwrap_or(c.object_bucket);
    c.token = n.token;
    c.credentials = n.credentials.map(|p| base.join(p));
    c.require_tls = n.require_tls;
    c.root_certificates = n.root_certificates.map(|p| base.join(p));
    Ok(Some(c))
}

/// How guests' outbound calls are made.
fn outbound_limits(file: &FileConfig) -> OutboundLimits {
    let d = OutboundLimits::default();
    OutboundLimits {
        workers: file.outbound_workers.unwrap_or(d.workers).clamp(1, 1024),
        timeout: file.outbound_timeout.map_or(d.timeout, |s| s.0),
        max_response_bytes: file
            .outbound_max_response
            .map_or(d.max_response_bytes, |s| s.0),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, overrides: Overrides) -> anyhow::Result<Settings> {
        let file: FileConfig = toml::from_str(text)?;
        Settings::merge(file, Path::new("/etc/frenezulo"), overrides)
    }

    #[test]
    fn file_values_limits_and_service_forms() {
        let s = parse(
            r#"
            engine = "wasmi"
            listen = "0.0.0.0:9000"
            backlog = 64
            workers = 3
            idle_timeout = "250ms"
            [limits]
            memory = "8MiB"
            deadline = "2s"
            [services]
            hello = "hello.wat"
            [services.shop]
            module = "/srv/shop.wasm"
            memory = "32MiB"
            queue = 5
            "#,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.engine, EngineKind::Wasmi);
        assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(s.backlog, 64);
        assert_eq!(s.server.max_running, 3 * DEFAULT_RUNNING_PER_WORKER);
        let one = s.per_thread();
        assert_eq!(one.max_running, DEFAULT_RUNNING_PER_WORKER);
        assert_eq!(one.max_queued, 342, "1024 over 3 threads, rounded up");
        let shop = s.services[1].limits.per_thread(s.workers);
        assert_eq!((shop.max_queued, shop.max_concurrency), (2, 22));
        assert_eq!(s.server.idle_timeout, Duration::from_millis(250));
        assert_eq!(s.services.len(), 2);
        let hello = &s.services[0];
        assert_eq!(hello.module, Path::new("/etc/frenezulo/hello.wat"));
        assert_eq!(hello.limits.memory_bytes, 8 << 20);
        assert_eq!(hello.limits.deadline, Duration::from_secs(2));
        let shop = &s.services[1];
        assert_eq!(shop.module, Path::new("/srv/shop.wasm"));
        assert_eq!(shop.limits.memory_bytes, 32 << 20);
        assert_eq!(shop.limits.max_queued, 5);
        assert_eq!(shop.limits.deadline, Duration::from_secs(2));
    }

    #[test]
    fn command_line_wins() {
        let s = parse(
            "engine = \"wasmi\"\nbacklog = 5\n[services]\nhello = \"a.wat\"\n",
            Overrides {
                engine: Some(EngineKind::Wasmtime),
                backlog: Some(7),
                services: vec![("hello".into(), "b.wat".into())],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.engine, EngineKind::Wasmtime);
        assert_eq!(s.backlog, 7);
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.services[0].module, Path::new("b.wat"));
    }

    #[test]
    fn bad_values_are_reported() {
        assert!(parse("bogus = 1", Overrides::default()).is_err());
        assert!(parse("engine = \"v8\"", Overrides::default()).is_err());
        assert!(parse("[limits]\nmemory = \"12 parsecs\"", Overrides::default()).is_err());
        assert!(parse("workers = 0", Overrides::default()).is_err());
        assert!(parse("[limits]\nconcurrency = 0", Overrides::default()).is_err());
        let cgi = "[services.a]\nmodule = \"a.wat\"\nenv = { REQUEST_METHOD = \"GET\" }";
        assert!(
            parse(cgi, Overrides::default()).is_err(),
            "CGI variables cannot be configured"
        );
        assert!(
            parse(
                "[services.a]\nmodule = \"a.wat\"\nenv = { \"A-B\" = \"x\" }",
                Overrides::default()
            )
            .is_err()
        );
    }

    #[test]
    fn environment_values_layer_file_config_and_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vars.env");
        std::fs::write(&file, "# shared\nA=file\nB=file\n\n  C=x=y\n").unwrap();
        let text = format!(
            "env_file = {:?}\n[env]\nB = \"config\"\n",
            file.display().to_string()
        );
        let s = parse(
            &text,
            Overrides {
                env: vec![("A".into(), "cli".into())],
                ..Overrides::default()
            },
        )
        .unwrap();
        let want: EnvValues = [("A", "cli"), ("B", "config"), ("C", "x=y")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(s.env, want);
        std::fs::write(&file, "A=1\nNO_EQUALS\n").unwrap();
        let err = parse(&text, Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("vars.env:2"), "{err}");
        assert!(parse("[env]\nHTTP_HOST = \"x\"", Overrides::default()).is_err());
    }

    #[test]
    fn limits_above_their_ceiling_are_refused_with_a_reason() {
        let err = parse(
            "[limits]\ndeadline = 18446744073709551615",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`deadline`") && err.contains("at most"),
            "{err}"
        );
        for limits in [
            "deadline = \"500000000000s\"",
            "deadline = \"61m\"",
            "deadline = \"0ms\"",
            "memory = \"5GiB\"",
            "memory = \"1KiB\"",
            "stdout = \"2GiB\"",
            "body = \"2GiB\"",
            "concurrency = 65537",
            "queue = 1048577",
            "cpu_weight = 0",
            "cpu_weight = 101",
        ] {
            assert!(
                parse(&format!("[limits]\n{limits}"), Overrides::default()).is_err(),
                "[limits] {limits}"
            );
            let service = format!("[services.a]\nmodule = \"a.wat\"\n{limits}");
            assert!(parse(&service, Overrides::default()).is_err(), "{service}");
        }
        let top = "deadline = \"1h\"\nmemory = \"4GiB\"\nstdout = \"1GiB\"\nbody = \"1GiB\"\nconcurrency = 65536\nqueue = 1048576\ncpu_weight = 100";
        assert!(parse(&format!("[limits]\n{top}"), Overrides::default()).is_ok());
        for setting in [
            "idle_timeout = \"25h\"",
            "request_timeout = 18446744073709551615",
            "keep_alive_timeout = \"2000000000h\"",
            "max_body = \"2GiB\"",
        ] {
            assert!(parse(setting, Overrides::default()).is_err(), "{setting}");
        }
        let cli = Overrides {
            idle_timeout: Some(Duration::from_secs(u64::MAX)),
            ..Overrides::default()
        };
        assert!(parse("", cli).is_err());
    }

    #[test]
    fn outbound_and_fetch_ceilings() {
        let s = parse("", Overrides::default()).unwrap();
        assert_eq!(
            s.outbound_allowed_hosts,
            HostCeiling::unset("outbound_allowed_hosts")
        );
        assert_eq!(
            s.fetch_allowed_hosts,
            HostCeiling::unset("fetch_allowed_hosts")
        );
        let s = parse(
            "outbound_allowed_hosts = [\"insecure:allow-all\"]\nfetch_allowed_hosts = [\"http://127.0.0.1:8000\"]\n",
            Overrides::default(),
        )
        .unwrap();
        assert!(
            s.outbound_allowed_hosts
                .check("http://169.254.169.254")
                .is_ok()
        );
        assert!(
            s.fetch_allowed_hosts
                .check("http://127.0.0.1:8000/m.wasm")
                .is_ok()
        );
        assert!(
            s.fetch_allowed_hosts
                .check("http://127.0.0.1:8001/m.wasm")
                .is_err()
        );
        let err = parse(
            "fetch_allowed_hosts = [\"127.0.0.1\"]",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("fetch_allowed_hosts"), "{err}");
        // The config file's own services are not held to the ceiling.
        let s = parse(
            "[services.a]\nmodule = \"a.wat\"\nallowed_hosts = [\"http://127.0.0.1:1\"]\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.services[0].guest.allowed_hosts, ["http://127.0.0.1:1"]);
    }
}
