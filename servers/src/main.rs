//! `frenezulo`: an HTTP server for microservices compiled to WebAssembly.
//!
//! Each service is a WAGI module (a WASI preview-1 command) or, on wasmtime, a `wasi:http`
//! component, and owns a URL prefix; every request runs in a fresh instance. See README.md
//! for the guest ABIs and the config file.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use frenezulo_core::{ServiceLimits, ServiceName, ServiceRoute};
use frenezulo_engines::{EngineConfig, EngineKind};
use tracing::{error, info, warn};

mod admin;
mod api;
mod artifacts;
mod client;
mod cluster;
mod compile;
mod config;
mod fds;
mod guest;
mod logbuf;
mod mailbox;
mod memory;
mod metrics;
mod outbound;
mod registry;
mod resolver;
mod serve;
mod settings;
mod spec;
mod wagi_config;

use artifacts::{Artifacts, Loaded};
use compile::CompilePool;
use config::{Overrides, Settings};
use guest::GuestConfig;
use mailbox::Mailbox;
use registry::store::{Digest, LocalStore};
use registry::{Registry, Service, Static};
use serve::{Inbox, Message, Setup};
use spec::Origin;

/// The module served as `hello` when no service is configured.
const BUILTIN_HELLO: &str = include_str!("../../examples/hello.wat");

/// Serve microservices compiled to WebAssembly over HTTP/1.1.
///
/// Each service is a WAGI module (a WASI preview-1 command: CGI environment in, CGI
/// headers and body out) or, on the wasmtime engine, a `wasi:http/proxy` component (WASI
/// 0.2, as `cargo build --target wasm32-wasip2`, Spin's SDKs or componentize-py build it;
/// the kind is read from the binary). Each owns a URL prefix: `--service shop=shop.wasm`
/// answers `/shop`, `/shop/` and everything below. Every request runs in a fresh instance.
/// With no service configured, a built-in `hello` service answers `/hello`.
///
/// Logs go to stderr; set RUST_LOG (e.g. `RUST_LOG=debug`) for more or less detail.
/// SIGINT or SIGTERM stops accepting and finishes requests in flight.
///
/// Services can also be added, replaced and removed while the server runs, through the
/// management API under /services (a bearer token guards it); they are kept in the data
/// directory and come back on restart. `frenezulo services ...` is its client.
#[derive(Debug, Parser)]
#[command(
    name = "frenezulo",
    version,
    about,
    long_about,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Lists, shows, adds, changes and removes the services of a running server, through
    /// its management API.
    Services(client::ServicesArgs),
}

/// How to serve.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// WebAssembly engine: `wasmtime` (JIT compiler) or `wasmi` (interpreter, for platforms
    /// that forbid JIT). Default: wasmtime when compiled in.
    #[arg(long, value_name = "ENGINE")]
    engine: Option<EngineKind>,

    /// Address and port to listen on. Default: 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,

    /// A service to serve, as NAME=PATH to a `.wasm` or `.wat` module. Repeatable. NAME
    /// must match [a-z0-9][a-z0-9_-]* and is the URL prefix; `services` is reserved.
    #[arg(long = "service", value_name = "NAME=PATH", value_parser = parse_service)]
    services: Vec<(String, PathBuf)>,

    /// TOML config file with the same settings and per-service limits (see README.md).
    /// Flags given on the command line win over the file. Only the file sets the ceilings
    /// on what the management API may grant: `outbound_allowed_hosts` (origins services
    /// added through the API or NATS may call) and `fetch_allowed_hosts` (origins
    /// `POST /services/add` may fetch from); unset, both allow public hosts only, never
    /// loopback, private or link-local addresses.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Listen backlog: connections the kernel queues before they are accepted, for each
    /// serving thread (each has its own listening socket). Default: 1024.
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,

    /// Serving threads. Each accepts its share of the connections and parses, routes, runs
    /// and answers their requests itself; guests run inline, a time slice at a time.
    /// Default: one per CPU core.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// Guest instances running at once, all serving threads together (each thread gets
    /// its share). Default: 64 per serving thread.
    #[arg(long, value_name = "N")]
    max_running: Option<usize>,

    /// How long a service stays compiled in memory with no requests (e.g. 60s, 500ms).
    /// Default: 60s.
    #[arg(long, value_name = "DURATION", value_parser = spec::parse_duration)]
    idle_timeout: Option<std::time::Duration>,

    /// Directory for the registry of services added through the management API, their
    /// modules and compiled artifacts. Default: $XDG_DATA_HOME/frenezulo, else
    /// ~/.local/share/frenezulo. Created with mode 0700; one that exists must be owned by
    /// the server's user and not writable by group or others, or the server does not start
    /// (compiled machine code is loaded from it).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Bearer token for the management API under /services. Default: generated on first
    /// start, kept in the data directory (file `admin-token`) and printed once in the log.
    #[arg(
        long,
        env = "FRENEZULO_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,

    /// Do not log a line per request (the access log, target `access`, at info level).
    #[arg(long)]
    no_access_log: bool,

    /// An environment value for every service's guests, as KEY=VALUE. Repeatable. A
    /// service's own values win over these; CGI variables cannot be set.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// A file of KEY=VALUE lines (# comments) for every service's guests, under `--env`.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,

    /// The registry of services added through the management API: `local` (the data
    /// directory, the default) or `nats://HOST:PORT` for a cluster of nodes sharing one in
    /// NATS JetStream (bucket names, credentials and TLS under [nats] in the config file).
    /// In a cluster the data directory keeps each node's copy, served while NATS is away.
    #[arg(long, value_name = "local|nats://HOST:PORT")]
    registry: Option<String>,

    /// WAGI's modules.toml, served as WAGI serves it: each [[module]] at its route (/x
    /// exactly, /x/... and below, / the root; any depth) with its entrypoint, argv,
    /// volumes, environment and outbound grant. As in WAGI, relative module and volume
    /// paths are relative to the working directory, not to the file. bindle: and oci:
    /// modules are refused, each named with the reason.
    #[arg(long, value_name = "FILE")]
    wagi_config: Option<PathBuf>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    spec::check_env_name(key).map_err(|e| e.to_string())?;
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_service(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=PATH"))?;
    frenezulo_core::ServiceName::new(name).map_err(|e| format!("`{name}`: {e}"))?;
    if path.is_empty() {
        return Err(format!("`{s}`: empty module path"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Services(args)) = cli.command {
        return client::run(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(logbuf::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli.serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("frenezulo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        engine: cli.engine,
        listen: cli.listen,
        backlog: cli.backlog,
        workers: cli.workers,
        max_running: cli.max_running,
        idle_timeout: cli.idle_timeout,
        services: cli.services,
        data_dir: cli.data_dir,
        admin_token: cli.admin_token,
        no_access_log: cli.no_access_log,
        env: cli.env,
        env_file: cli.env_file,
        wagi_config: cli.wagi_config,
        registry: cli.registry,
    };
    let mut settings = Settings::load(cli.config.as_deref(), overrides)?;
    let per_thread = settings.per_thread();
    fit_open_files(&mut settings, &per_thread)?;
    let store = LocalStore::open(&settings.data_dir).context("opening the data directory")?;
    info!(dir = %settings.data_dir.display(), "data directory");
    let (token, _) = admin::token::resolve(settings.admin_token.clone(), &settings.data_dir)?;
    let engine_config = engine_config(&settings, &per_thread);
    let engine = frenezulo_engines::create(settings.engine, &engine_config)?;
    let artifacts = Arc::new(Artifacts::open(engine, &settings.data_dir));
    let statics = load_services(&settings, &artifacts)?;
    let loads: Vec<(ServiceName, Loaded, Duration)> = statics
        .iter()
        .map(|(s, loaded, elapsed)| (s.service.name.clone(), *loaded, *elapsed))
        .collect();
    let mut registry = Registry::open(
        Box::new(store),
        statics.into_iter().map(|(s, _, _)| s).collect(),
        settings.base_limits,
        settings.env.clone(),
        settings.workers,
    )
    .context("loading the registry")?;
    registry.apply_outbound_ceiling(&settings.outbound_allowed_hosts);
    registry.stream_request_bodies(settings.stream_request_bodies);
    artifacts.retain(&registry.digests());
    let listeners = serve::bind(settings.listen, settings.backlog, settings.workers)
        .with_context(|| format!("listening on {}", settings.listen))?;
    let local = listeners[0].local_addr()?;
    let compile = CompilePool::start(artifacts.clone(), settings.workers.div_ceil(4))?;
    for (service, loaded, elapsed) in &loads {
        compile.record(service, *loaded, *elapsed);
    }
    for (module, compiled) in registry.compiled() {
        compile.insert(module, &compiled);
    }
    let outbound = outbound::OutboundPool::start(settings.outbound)?;
    let (events_tx, events) = mpsc::channel();
    watch_signals(events_tx.clone())?;
    let (admin_tx, admin_rx) = mpsc::sync_channel(admin::QUEUE);
    let mut inboxes = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let exited = events_tx.clone();
        inboxes.push(serve::spawn(Setup {
            id,
            listener,
            core: per_thread.clone(),
            max_connections: frenezulo_core::share(settings.max_connections, settings.workers),
            write_timeout: settings.write_timeout,
            compile: compile.clone(),
            outbound: outbound.clone(),
            initial: registry.initial_publications(),
            admin: {
                let tx = admin_tx.clone();
                Mailbox::new(move |r| tx.try_send(admin::Event::Call(r)).is_ok())
            },
            access_log: settings.access_log,
            on_exit: Box::new(move |clean| {
                let _ = exited.send(Event::Exited { id, clean });
            }),
        })?);
    }
    registry.release_compiled();
    let cluster = start_cluster(&settings, &admin_tx)?;
    let admin_exited = events_tx.clone();
    admin::spawn(
        admin::Setup {
            registry,
            token,
            artifacts,
            compile,
            fetch: admin::fetch::FetchLimits {
                max_bytes: settings.max_module_bytes,
                timeout: settings.fetch_timeout,
                module_dirs: settings.module_dirs.clone(),
                allowed: settings.fetch_allowed_hosts.clone(),
            },
            outbound_ceiling: settings.outbound_allowed_hosts.clone(),
            engine: settings.engine,
            base_limits: settings.base_limits,
            max_memory_bytes: engine_config.max_memory_bytes,
            inboxes: inboxes.clone(),
            cluster,
        },
        admin_rx,
        admin_tx,
        Box::new(move || {
            let _ = admin_exited.send(Event::AdminExited);
        }),
    )?;
    info!(engine = %settings.engine, workers = settings.workers, backlog = settings.backlog, "listening on http://{local}");
    // A machine-readable line on stdout, for scripts and tests that pick a free port.
    println!("frenezulo listening on http://{local}");
    std::io::stdout().flush()?;
    supervise(&events, &inboxes, settings.drain_timeout, STOP_GRACE)
}

/// Raises the open-file limit and fits the server in it: guests get what is left after
/// the server's own descriptors; a default `max_connections` that does not fit is lowered,
/// one the operator set is refused.
fn fit_open_files(
    settings: &mut Settings,
    per_thread: &frenezulo_core::ServerConfig,
) -> anyhow::Result<()> {
    let nofile = fds::raise_limit();
    let mut demand = fds::Demand {
        workers: settings.workers,
        max_connections: settings.max_connections,
        max_running: per_thread.max_running * settings.workers,
        outbound_workers: settings.outbound.workers,
        volumes: settings
            .services
            .iter()
            .any(|s| !s.guest.volumes.is_empty()),
    };
    let budget = match fds::budget(nofile, demand) {
        Ok(budget) => budget,
        // The default that does not fit is lowered; a number the operator set is refused.
        Err(e) => match fds::connections_that_fit(nofile, demand) {
            Some(fit) if !settings.max_connections_set => {
                warn!(
                    limit = nofile,
                    max_connections = fit,
                    "the default max_connections ({}) does not fit the open-file limit; lowered",
                    config::DEFAULT_MAX_CONNECTIONS
                );
                settings.max_connections = fit;
                demand.max_connections = fit;
                fds::budget(nofile, demand).map_err(anyhow::Error::msg)?
            }
            _ => anyhow::bail!(e),
        },
    };
    frenezulo_engines::wasi::files::limit_open_files(budget.guest_files);
    info!(
        limit = nofile,
        guest_files = budget.guest_files,
        spare = budget.spare,
        "open-file limit"
    );
    if demand.volumes && budget.guest_files < frenezulo_engines::wasi::files::MAX_OPEN {
        warn!(
            guest_files = budget.guest_files,
            "guests may open fewer files than usual so that every running guest fits the \
             open-file limit; raise the limit for the full {}",
            frenezulo_engines::wasi::files::MAX_OPEN
        );
    }
    Ok(())
}

/// The engine's limits: room for every thread's running tasks, and memory for the largest
/// limit any service may be given.
fn engine_config(settings: &Settings, per_thread: &frenezulo_core::ServerConfig) -> EngineConfig {
    EngineConfig {
        // Every thread's running tasks; slack covers a compile that instantiates nothing.
        max_instances: u32::try_from(per_thread.max_running * settings.workers + 2)
            .unwrap_or(u32::MAX),
        // Services added later may ask for up to the largest limit configured.
        max_memory_bytes: settings
            .services
            .iter()
            .map(|s| s.limits.memory_bytes)
            .chain([
                settings.base_limits.memory_bytes,
                ServiceLimits::default().memory_bytes,
            ])
            .max()
            .unwrap_or_default(),
    }
}

/// The NATS thread of a cluster, reporting to the management thread, if this node is in
/// one.
fn start_cluster(
    settings: &Settings,
    admin_tx: &mpsc::SyncSender<admin::Event>,
) -> anyhow::Result<Option<cluster::Cluster>> {
    Ok(match &settings.cluster {
        Some(config) => {
            let shown = cluster::redact_url(&config.url);
            info!(
                url = shown,
                "services added through the API are shared through NATS JetStream"
            );
            let tx = admin_tx.clone();
            let events = Mailbox::new(move |e| tx.send(admin::Event::Cluster(Box::new(e))).is_ok());
            let mut cluster = cluster::Cluster::start(config.clone(), events)?;
            // `url` is what health, errors and logs show; the connection keeps the real one.
            cluster.url = shown;
            Some(cluster)
        }
        None => None,
    })
}

/// What the main thread waits for.
enum Event {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// A serving thread ended; `clean` is false if it panicked.
    Exited { id: usize, clean: bool },
    /// The management thread ended, which it does only if it failed.
    AdminExited,
}

fn watch_signals(events: mpsc::Sender<Event>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Where the process is in its life, for [`supervise`].
enum Phase {
    Serving,
    /// Shutdown asked for: threads finish what is in flight until then.
    Draining(Instant),
    /// Threads were told to stop now, and must have by then.
    Stopping(Instant),
}

/// How long serving threads get to stop once told to: a thread stuck past it (in a call
/// that does not return) does not keep the process alive.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Waits for a signal, then drains: every serving thread stops accepting and finishes
/// what is in flight; a second signal or `drain_timeout` stops them at once. A serving
/// thread that ends by itself is a bug: then all stop, and the process exits with an
/// error so that its supervisor restarts it rather than it serving on fewer cores.
fn supervise(
    events: &mpsc::Receiver<Event>,
    inboxes: &[Inbox],
    drain_timeout: Duration,
    stop_grace: Duration,
) -> anyhow::Result<()> {
    let broadcast = |make: fn() -> Message| inboxes.iter().for_each(|i| i.send(make()));
    let mut running = inboxes.len();
    let mut failed = false;
    let mut phase = Phase::Serving;
    while running > 0 {
        let event = match phase {
            Phase::Draining(until) => {
                match events.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(event) => event,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        warn!("drain timeout passed; stopping anyway");
                        broadcast(|| Message::Stop);
                        phase = Phase::Stopping(Instant::now() + stop_grace);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            Phase::Stopping(until) => {
                match events.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(event) => event,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // Returning ends the process, stuck threads with it.
                        anyhow::bail!(
                            "{running} serving thread(s) did not stop within {stop_grace:?}; exiting without them"
                        );
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            Phase::Serving => match events.recv() {
                Ok(event) => event,
                Err(_) => break,
            },
        };
        match (event, &phase) {
            (Event::Signal(signal), Phase::Serving) => {
                info!(
                    signal,
                    "shutting down: no new connections, finishing requests in flight"
                );
                broadcast(|| Message::Shutdown);
                phase = Phase::Draining(Instant::now() + drain_timeout);
            }
            (Event::Signal(_), Phase::Draining(_)) => {
                warn!("second signal: stopping now");
                broadcast(|| Message::Stop);
                phase = Phase::Stopping(Instant::now() + stop_grace);
            }
            (Event::Signal(_), Phase::Stopping(_)) => {}
            (Event::AdminExited, _) => {
                error!("the management thread ended unexpectedly; stopping");
                failed = true;
                broadcast(|| Message::Stop);
                phase = Phase::Stopping(Instant::now() + stop_grace);
            }
            (Event::Exited { id, clean }, _) => {
                running -= 1;
                if !clean || matches!(phase, Phase::Serving) {
                    error!(thread = id, "serving thread ended unexpectedly; stopping");
                    failed = true;
                    broadcast(|| Message::Stop);
                    phase = Phase::Stopping(Instant::now() + stop_grace);
                }
            }
        }
    }
    if failed {
        anyhow::bail!("a serving thread failed");
    }
    Ok(())
}

/// Reads, validates and compiles every configured service (or the built-in hello), so a
/// bad module stops start-up with a reason instead of failing its first request.
/// Returns each with how it was made ready, for the metrics.
fn load_services(
    settings: &Settings,
    artifacts: &Artifacts,
) -> anyhow::Result<Vec<(Static, Loaded, Duration)>> {
    let mut specs = Vec::new();
    if settings.services.is_empty() {
        let wasm = wat::parse_str(BUILTIN_HELLO).context("built-in hello module")?;
        let spec = (
            wasm,
            "built-in".to_owned(),
            Origin::BuiltIn,
            Default::default(),
            GuestConfig::default(),
        );
        specs.push(("hello".to_owned(), settings.base_limits, spec));
    }
    for s in &settings.services {
        let wasm = load_module(&s.module)?;
        let spec = (
            wasm,
            s.module.display().to_string(),
            s.origin,
            s.env.clone(),
            s.guest.clone(),
        );
        specs.push((s.name.clone(), s.limits, spec));
    }
    let mut statics = Vec::new();
    for (name, limits, (wasm, source, origin, env, guest)) in specs {
        let context = || format!("service `{name}` ({source})");
        let (compiled, loaded, elapsed) = artifacts.load(&wasm).with_context(context)?;
        let routes = frenezulo_engines::discover_routes(compiled.as_ref(), &limits.run_limits())
            .with_context(context)?;
        let volumes = guest
            .open_volumes(Path::new(""))
            .map_err(anyhow::Error::msg)
            .with_context(context)?;
        frenezulo_engines::check_entrypoints(
            compiled.as_ref(),
            &guest.setup(Vec::new(), routes.clone(), Default::default()),
        )
        .map_err(anyhow::Error::msg)
        .with_context(context)?;
        let service = ServiceName::new(&name).with_context(|| format!("service `{name}`"))?;
        let rule = match origin {
            Origin::BuiltIn => "the API may add a service of this name in its place",
            _ => "the API may not change it",
        };
        let route = guest
            .route
            .clone()
            .unwrap_or_else(|| ServiceRoute::of_name(&service));
        info!(service = %service, module = source, origin = origin.name(), ms = elapsed.as_secs_f64() * 1e3, from = loaded.name(), sub_routes = routes.routes().len(), volumes = volumes.len(), "service registered at {route} ({rule})");
        let service = Static {
            service: Service {
                name: service,
                origin,
                source,
                digest: Digest::of(&wasm),
                wasm: wasm.into(),
                limits_set: Default::default(),
                limits,
                env,
                guest,
                volumes,
                routes,
                outbound_in_flight: Default::default(),
                version: 0,
                revision: None,
                updated_unix: 0,
            },
            compiled: Some(compiled),
        };
        statics.push((service, loaded, elapsed));
    }
    Ok(statics)
}

/// Reads a `.wasm` or `.wat` module (text is recognised by content, not by extension).
fn load_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    let wasm =
        wat::parse_bytes(&bytes).with_context(|| format!("parsing module {}", path.display()))?;
    Ok(wasm.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shutdown_with(exits: &[Event]) -> (anyhow::Result<()>, Vec<&'static str>) {
        let (inbox, messages, _poll) = Inbox::unattended().unwrap();
        let (tx, events) = mpsc::channel();
        tx.send(Event::Signal(15)).unwrap();
        for e in exits {
            tx.send(match e {
                Event::Exited { id, clean } => Event::Exited {
                    id: *id,
                    clean: *clean,
                },
                _ => unreachable!(),
            })
            .unwrap();
        }
        let short = Duration::from_millis(20);
        // `tx` lives on: only the deadlines can end this.
        let result = supervise(&events, &[inbox], short, short);
        drop(tx);
        let sent = messages
            .try_iter()
            .map(|m| match m {
                Message::Shutdown => "shutdown",
                Message::Stop => "stop",
                _ => "other",
            })
            .collect();
        (result, sent)
    }

    #[test]
    fn shutdown_ends_even_if_a_serving_thread_never_does() {
        let (result, sent) = shutdown_with(&[]);
        let e = result.unwrap_err().to_string();
        assert!(e.contains("1 serving thread(s) did not stop"), "{e}");
        assert_eq!(sent, ["shutdown", "stop"], "drained, then told to stop");
    }

    #[test]
    fn a_thread_that_drains_ends_the_process_cleanly() {
        let (result, sent) = shutdown_with(&[Event::Exited { id: 0, clean: true }]);
        result.unwrap();
        assert_eq!(sent, ["shutdown"]);
    }
}
