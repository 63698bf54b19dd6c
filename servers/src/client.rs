//! `frenezulo services ...`: the management API's client, for people (tables) and scripts
//! (`--json`).

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{AddRequest, ConfigureRequest, EnvView, ErrorBody, ServiceList, ServiceView};
use crate::config;
use crate::spec::LimitsConfig;

/// Talk to a running server's management API.
#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    /// The server's address.
    #[arg(
        long,
        global = true,
        env = "FRENEZULO_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,

    /// The management API token. Default: the one a local server generated, read from its
    /// data directory (`--data-dir`).
    #[arg(
        long,
        global = true,
        env = "FRENEZULO_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// Data directory to read a generated token from. Default: the server's default.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,

    /// Print the server's JSON as it is, for scripts.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List the services, with their state and counters.
    List,
    /// Show one service.
    Show {
        /// The service's prefix.
        name: String,
        /// Show environment values, not just their names.
        #[arg(long)]
        show_env: bool,
    },
    /// Add a service, or replace its module. SOURCE is a local `.wasm`/`.wat` file
    /// (uploaded) or an http://, https:// or file:// URL (fetched by the server).
    Add {
        /// The service's prefix.
        name: String,
        /// The module: a local file or a URL.
        source: String,
        /// The paths it answers: `/api/users` is that path and everything below, `/` every
        /// path no other service claims. Default: /NAME (or, on replacing, the route it
        /// has).
        #[arg(long, value_name = "PATH")]
        route: Option<String>,
        /// A limit, as in the config file's [limits]: memory=32MiB, deadline=2s,
        /// stdout=1MiB, body=1MiB, concurrency=8, queue=16. Repeatable.
        #[arg(long = "limit", value_name = "KEY=VALUE")]
        limits: Vec<String>,
        /// An environment value for the guest. Repeatable; replaces all of them.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// Change a service's limits or environment without uploading its module again.
    Set {
        /// The service's prefix.
        name: String,
        /// A limit to change (see `add`). Repeatable; other limits stay.
        #[arg(long = "limit", value_name = "KEY=VALUE")]
        limits: Vec<String>,
        /// An environment value. Repeatable; replaces all of them.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Remove every environment value.
        #[arg(long, conflicts_with = "env")]
        clear_env: bool,
    },
    /// Remove a service; requests in flight finish first.
    Rm {
        /// The service's prefix.
        name: String,
    },
    /// Print the server's metrics (Prometheus text format).
    Metrics,
}

/// Runs a client command; prints what it got and returns the exit status.
pub fn run(args: ServicesArgs) -> ExitCode {
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("frenezulo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: &ServicesArgs) -> anyhow::Result<()> {
    let api = Api::new(args)?;
    match &args.action {
        Action::List => {
            let body = api.call("GET", "", None)?;
            if args.json {
                return print_json(&body);
            }
            print_table(&typed::<ServiceList>(body)?.services);
        }
        Action::Show { name, show_env } => {
            let query = if *show_env { "?show_env=true" } else { "" };
            let body = api.call("GET", &format!("/{name}{query}"), None)?;
            if args.json {
                return print_json(&body);
            }
            print_service(&typed(body)?);
        }
        Action::Add {
            name,
            source,
            route,
            limits,
            env,
        } => {
            let limit_pairs = pairs(limits, "--limit")?;
            let env = pairs(env, "--env")?;
            let is_url = ["http://", "https://", "file://"]
                .iter()
                .any(|s| source.starts_with(s));
            let body = if is_url {
                let request = AddRequest {
                    prefix: name.clone(),
                    source: source.clone(),
                    route: route.clone(),
                    limits: limits_of(&limit_pairs)?,
                    env: (!env.is_empty()).then_some(env),
                    ..AddRequest::default()
                };
                api.call(
                    "POST",
                    "/add",
                    Some(Body::Json(serde_json::to_value(request)?)),
                )?
            } else {
                // Checked here, with the server's own parser, before the module is sent.
                limits_of(&limit_pairs)?;
                let limits = limit_pairs;
                let module =
                    std::fs::read(source).map_err(|e| anyhow::anyhow!("reading {source}: {e}"))?;
                let query: Vec<String> = route
                    .iter()
                    .map(|r| format!("route={}", encode(r)))
                    .chain(
                        limits
                            .iter()
                            .map(|(k, v)| format!("{}={}", encode(k), encode(v))),
                    )
                    .chain(
                        env.iter()
                            .map(|(k, v)| format!("env={}", encode(&format!("{k}={v}")))),
                    )
                    .collect();
                let path = if query.is_empty() {
                    format!("/{name}")
                } else {
                    format!("/{name}?{}", query.join("&"))
                };
                api.call("PUT", &path, Some(Body::Module(module)))?
            };
            if args.json {
                return print_json(&body);
            }
            let view: ServiceView = typed(body)?;
            println!(
                "{name}: {} ({} bytes, {})",
                view.digest, view.size, view.source
            );
        }
        Action::Set {
            name,
            limits,
            env,
            clear_env,
        } => {
            let env = pairs(env, "--env")?;
            let request = ConfigureRequest {
                limits: limits_of(&pairs(limits, "--limit")?)?,
                env: (!env.is_empty() || *clear_env).then_some(env),
            };
            anyhow::ensure!(
                !request.is_empty(),
                "nothing to change: give --limit, --env or --clear-env"
            );
            let request = serde_json::to_value(request)?;
            let body = api.call("PATCH", &format!("/{name}"), Some(Body::Json(request)))?;
            if args.json {
                return print_json(&body);
            }
            print_service(&typed(body)?);
        }
        Action::Rm { name } => {
            let body = api.call("DELETE", &format!("/{name}"), None)?;
            if args.json {
                return print_json(&body);
            }
            println!("{name}: removed");
        }
        Action::Metrics => print!("{}", api.text("/metrics")?),
    }
    Ok(())
}

enum Body {
    Json(Value),
    Module(Vec<u8>),
}

struct Api {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Api {
    fn new(args: &ServicesArgs) -> anyhow::Result<Self> {
        // An empty token (FRENEZULO_ADMIN_TOKEN="") is none, as it is to the server.
        let token = match args.token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => t.to_owned(),
            None => {
                let dir = args
                    .data_dir
                    .clone()
                    .unwrap_or_else(config::default_data_dir);
                let path = dir.join(crate::admin::token::FILE);
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "no token: give --token or FRENEZULO_ADMIN_TOKEN (reading {}: {e})",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(120)))
            .build()
            .into();
        Ok(Self {
            agent,
            base: format!("{}/services", args.server.trim_end_matches('/')),
            token,
        })
    }

    fn send(&self, method: &str, path: &str, body: Option<Body>) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", auth);
        let result = match body {
            None => self.agent.run(request.body(())?),
            Some(Body::Json(v)) => self.agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(serde_json::to_vec(&v)?)?,
            ),
            Some(Body::Module(bytes)) => self.agent.run(
                request
                    .header("Content-Type", "application/wasm")
                    .body(bytes)?,
            ),
        };
        let mut response =
            result.map_err(|e| anyhow::anyhow!("cannot reach the server at {url}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((status, text))
    }

    /// A call whose answer is JSON; an error status becomes an error with the server's message.
    fn call(&self, method: &str, path: &str, body: Option<Body>) -> anyhow::Result<Value> {
        let (status, text) = self.send(method, path, body)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map_or_else(|_| text.trim().to_owned(), |body| body.error);
            anyhow::bail!("{message} (HTTP {status})");
        }
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the server's answer is not JSON ({e}): {text}"))
    }

    fn text(&self, path: &str) -> anyhow::Result<String> {
        let (status, text) = self.send("GET", path, None)?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "HTTP {status}: {}",
            text.trim()
        );
        Ok(text)
    }
}

fn pairs(items: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("{flag} {item}: expected KEY=VALUE"))
        })
        .collect()
}

/// `--limit` pairs as the API takes them, checked with the server's own parser.
fn limits_of(pairs: &BTreeMap<String, String>) -> anyhow::Result<Option<LimitsConfig>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let limits = LimitsConfig::from_pairs(pairs).map_err(|e| anyhow::anyhow!("--limit: {e}"))?;
    limits
        .check()
        .map_err(|e| anyhow::anyhow!("--limit: {e}"))?;
    Ok(Some(limits))
}

/// An answer read as the type the API documents for it.
fn typed<T: DeserializeOwned>(body: Value) -> anyhow::Result<T> {
    serde_json::from_value(body)
        .map_err(|e| anyhow::anyhow!("the server's answer is not what this client expects: {e}"))
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_table(services: &[ServiceView]) {
    let rows: Vec<[String; 7]> = services
        .iter()
        .map(|s| {
            [
                s.prefix.clone(),
                s.route.clone(),
                s.origin.name().to_owned(),
                s.state.clone().unwrap_or_else(|| "-".to_owned()),
                s.counters
                    .as_ref()
                    .map_or("-".to_owned(), |c| c.requests.to_string()),
                s.size.to_string(),
                s.source.clone(),
            ]
        })
        .collect();
    let header = [
        "PREFIX", "ROUTE", "ORIGIN", "STATE", "REQUESTS", "BYTES", "SOURCE",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn print_service(s: &ServiceView) {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let fields = [
        ("prefix", s.prefix.clone()),
        ("route", s.route.clone()),
        ("origin", s.origin.name().to_owned()),
        ("state", or_dash(s.state.clone())),
        ("source", s.source.clone()),
        ("digest", s.digest.clone()),
        ("size", s.size.to_string()),
        ("version", s.version.to_string()),
    ];
    for (key, value) in fields {
        println!("{key:<10} {value}");
    }
    let limits = serde_json::to_value(&s.limits).unwrap_or_default();
    if let Some(limits) = limits.as_object() {
        let text: Vec<String> = limits
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => format!("{k}={v}"),
                other => format!("{k}={other}"),
            })
            .collect();
        println!("{:<10} {}", "limits", text.join(" "));
    }
    let env = match &s.env {
        EnvView::Names(names) => names.join(" "),
        EnvView::Values(values) => values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    println!(
        "{:<10} {}",
        "env",
        or_dash((!env.is_empty()).then_some(env))
    );
    if let Some(c) = &s.counters {
        println!(
            "{:<10} requests={} running={} queued={} cold_starts={} by_status={:?}",
            "counters", c.requests, c.running, c.queued, c.cold_starts, c.by_status
        );
    }
}
