//! `frenezulo`: an HTTP server for microservices compiled to WebAssembly.
//!
//! Each service is a WAGI module (a WASI preview-1 command) that owns a URL prefix; every
//! request runs in a fresh instance. See README.md for the guest ABI and the config file.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use frenezulo_core::{ModuleKey, RegistryChange, ServiceLimits, ServiceName};
use frenezulo_engines::{CompiledModule, Engine, EngineConfig, EngineKind};
use tracing::{error, info, warn};

mod compile;
mod config;
mod serve;

use compile::CompilePool;
use config::{Overrides, Settings};
use serve::{Inbox, Message, Setup};

/// The module served as `hello` when no service is configured.
const BUILTIN_HELLO: &str = include_str!("../../examples/hello.wat");

/// Serve microservices compiled to WebAssembly over HTTP/1.1.
///
/// Each service is a WAGI module (a WASI preview-1 command: CGI environment in, CGI
/// headers and body out) that owns a URL prefix: `--service shop=shop.wasm` answers
/// `/shop`, `/shop/` and everything below. Every request runs in a fresh instance.
/// With no service configured, a built-in `hello` service answers `/hello`.
///
/// Logs go to stderr; set RUST_LOG (e.g. `RUST_LOG=debug`) for more or less detail.
/// SIGINT or SIGTERM stops accepting and finishes requests in flight.
#[derive(Debug, Parser)]
#[command(name = "frenezulo", version, about, long_about, verbatim_doc_comment)]
struct Cli {
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
    /// Flags given on the command line win over the file.
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
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    idle_timeout: Option<std::time::Duration>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("frenezulo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        engine: cli.engine,
        listen: cli.listen,
        backlog: cli.backlog,
        workers: cli.workers,
        max_running: cli.max_running,
        idle_timeout: cli.idle_timeout,
        services: cli.services,
    };
    let settings = Settings::load(cli.config.as_deref(), overrides)?;
    let per_thread = settings.per_thread();
    let max_memory = settings
        .services
        .iter()
        .map(|s| s.limits.memory_bytes)
        .chain([ServiceLimits::default().memory_bytes])
        .max()
        .unwrap_or_default();
    let engine_config = EngineConfig {
        // Every thread's running tasks; slack covers a compile that instantiates nothing.
        max_instances: u32::try_from(per_thread.max_running * settings.workers + 2)
            .unwrap_or(u32::MAX),
        max_memory_bytes: max_memory,
    };
    let engine = frenezulo_engines::create(settings.engine, &engine_config)?;
    let services = load_services(&settings, engine.as_ref())?;
    let listeners = serve::bind(settings.listen, settings.backlog, settings.workers)
        .with_context(|| format!("listening on {}", settings.listen))?;
    let local = listeners[0].local_addr()?;
    let compile = CompilePool::start(engine.clone(), settings.workers.div_ceil(4))?;
    for s in &services {
        compile.insert(s.module.clone(), &s.compiled);
    }
    let (events_tx, events) = mpsc::channel();
    watch_signals(events_tx.clone())?;
    let mut inboxes = Vec::new();
    for (id, listener) in listeners.into_iter().enumerate() {
        let initial = services
            .iter()
            .map(|s| Message::Registry {
                change: RegistryChange::Put {
                    module: s.module.clone(),
                    wasm: s.wasm.clone(),
                    limits: settings.per_thread_limits(s.limits),
                },
                compiled: Some(s.compiled.clone()),
            })
            .collect();
        let exited = events_tx.clone();
        inboxes.push(serve::spawn(Setup {
            id,
            listener,
            core: per_thread.clone(),
            max_connections: config::share(settings.max_connections, settings.workers),
            write_timeout: settings.write_timeout,
            compile: compile.clone(),
            initial,
            on_exit: Box::new(move |clean| {
                let _ = exited.send(Event::Exited { id, clean });
            }),
        })?);
    }
    drop(services);
    info!(engine = %settings.engine, workers = settings.workers, backlog = settings.backlog, "listening on http://{local}");
    // A machine-readable line on stdout, for scripts and tests that pick a free port.
    println!("frenezulo listening on http://{local}");
    std::io::stdout().flush()?;
    supervise(&events, &inboxes, settings.drain_timeout)
}

/// What the main thread waits for.
enum Event {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// A serving thread ended; `clean` is false if it panicked.
    Exited { id: usize, clean: bool },
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
    /// Threads were told to stop now.
    Stopping,
}

/// Waits for a signal, then drains: every serving thread stops accepting and finishes
/// what is in flight; a second signal or `drain_timeout` stops them at once. A serving
/// thread that ends by itself is a bug: then all stop, and the process exits with an
/// error so that its supervisor restarts it rather than it serving on fewer cores.
fn supervise(
    events: &mpsc::Receiver<Event>,
    inboxes: &[Inbox],
    drain_timeout: Duration,
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
                        phase = Phase::Stopping;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            Phase::Serving | Phase::Stopping => match events.recv() {
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
                phase = Phase::Stopping;
            }
            (Event::Signal(_), Phase::Stopping) => {}
            (Event::Exited { id, clean }, _) => {
                running -= 1;
                if !clean || matches!(phase, Phase::Serving) {
                    error!(thread = id, "serving thread ended unexpectedly; stopping");
                    failed = true;
                    broadcast(|| Message::Stop);
                    phase = Phase::Stopping;
                }
            }
        }
    }
    if failed {
        anyhow::bail!("a serving thread failed");
    }
    Ok(())
}

/// A service validated and compiled at start.
struct Loaded {
    module: ModuleKey,
    wasm: Bytes,
    limits: ServiceLimits,
    compiled: Arc<dyn CompiledModule>,
}

/// Reads, validates and compiles every configured service (or the built-in hello), so a
/// bad module stops start-up with a reason instead of failing its first request.
fn load_services(settings: &Settings, engine: &dyn Engine) -> anyhow::Result<Vec<Loaded>> {
    let mut specs = Vec::new();
    if settings.services.is_empty() {
        let wasm = wat::parse_str(BUILTIN_HELLO).context("built-in hello module")?;
        specs.push((
            "hello".to_owned(),
            wasm,
            ServiceLimits::default(),
            "built-in".to_owned(),
        ));
    }
    for spec in &settings.services {
        let wasm = load_module(&spec.module)?;
        specs.push((
            spec.name.clone(),
            wasm,
            spec.limits,
            spec.module.display().to_string(),
        ));
    }
    let mut loaded = Vec::new();
    for (version, (name, wasm, limits, origin)) in (1u64..).zip(specs) {
        let started = Instant::now();
        let compiled = engine
            .compile(&wasm)
            .with_context(|| format!("service `{name}` ({origin})"))?;
        let service = ServiceName::new(&name).with_context(|| format!("service `{name}`"))?;
        info!(service = %service, module = origin, compile_ms = started.elapsed().as_secs_f64() * 1e3, "service registered at /{name}");
        loaded.push(Loaded {
            module: ModuleKey { service, version },
            wasm: wasm.into(),
            limits,
            compiled,
        });
    }
    Ok(loaded)
}

/// Reads a `.wasm` or `.wat` module (text is recognised by content, not by extension).
fn load_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    let wasm =
        wat::parse_bytes(&bytes).with_context(|| format!("parsing module {}", path.display()))?;
    Ok(wasm.into_owned())
}
