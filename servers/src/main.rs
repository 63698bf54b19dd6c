//! `frenezulo`: an HTTP server for microservices compiled to WebAssembly.
//!
//! Each service is a WAGI module (a WASI preview-1 command) that owns a URL prefix; every
//! request runs in a fresh instance. See README.md for the guest ABI and the config file.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use frenezulo_core::{ModuleKey, Server};
use frenezulo_engines::{CompiledModule, Engine, EngineConfig, EngineKind};
use tracing::info;

mod config;
mod driver;
mod workers;

use config::{Overrides, Settings};

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

    /// Listen backlog: connections the kernel queues before they are accepted. Default: 1024.
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,

    /// Worker threads that run guests. Default: one per CPU core.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

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
        idle_timeout: cli.idle_timeout,
        services: cli.services,
    };
    let settings = Settings::load(cli.config.as_deref(), overrides)?;
    let max_memory = settings
        .services
        .iter()
        .map(|s| s.limits.memory_bytes)
        .chain([frenezulo_core::ServiceLimits::default().memory_bytes])
        .max()
        .unwrap_or_default();
    let engine_config = EngineConfig {
        // A worker runs one guest at a time; slack covers a guest still unwinding.
        max_instances: u32::try_from(settings.workers * 2 + 2).unwrap_or(u32::MAX),
        max_memory_bytes: max_memory,
    };
    let engine = frenezulo_engines::create(settings.engine, &engine_config)?;
    let mut core = Server::new(settings.server.clone());
    let mut loaded = Vec::new();
    if settings.services.is_empty() {
        let wasm = wat::parse_str(BUILTIN_HELLO).context("built-in hello module")?;
        let limits = Default::default();
        loaded.push(add_service(
            &mut core,
            engine.as_ref(),
            "hello",
            wasm,
            limits,
            "built-in",
        )?);
    }
    for spec in &settings.services {
        let wasm = load_module(&spec.module)?;
        let origin = spec.module.display().to_string();
        loaded.push(add_service(
            &mut core,
            engine.as_ref(),
            &spec.name,
            wasm,
            spec.limits,
            &origin,
        )?);
    }
    let listener = driver::bind(settings.listen, settings.backlog)
        .with_context(|| format!("listening on {}", settings.listen))?;
    let local = listener.get_ref().local_addr()?;
    info!(engine = %settings.engine, workers = settings.workers, backlog = settings.backlog, "listening on http://{local}");
    // A machine-readable line on stdout, for scripts and tests that pick a free port.
    println!("frenezulo listening on http://{local}");
    std::io::stdout().flush()?;
    driver::run(settings, engine, core, loaded, listener)
}

/// Reads a `.wasm` or `.wat` module (text is recognised by content, not by extension).
fn load_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    let wasm =
        wat::parse_bytes(&bytes).with_context(|| format!("parsing module {}", path.display()))?;
    Ok(wasm.into_owned())
}

/// Validates a module by compiling it, then registers it. The compiled module serves the
/// first requests; the service goes cold like any other once idle.
fn add_service(
    core: &mut Server,
    engine: &dyn Engine,
    name: &str,
    wasm: Vec<u8>,
    limits: frenezulo_core::ServiceLimits,
    origin: &str,
) -> anyhow::Result<(ModuleKey, Arc<dyn CompiledModule>)> {
    let started = std::time::Instant::now();
    let compiled = engine
        .compile(&wasm)
        .with_context(|| format!("service `{name}` ({origin})"))?;
    let key = core
        .add_service(name, wasm.into(), limits)
        .with_context(|| format!("service `{name}`"))?;
    info!(service = %key.service, module = origin, compile_ms = started.elapsed().as_secs_f64() * 1e3, "service registered at /{name}");
    Ok((key, compiled))
}
