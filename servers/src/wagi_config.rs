//! WAGI's `modules.toml`, served as it is: every `[[module]]` becomes a service with its
//! route (exact `/x`, wildcard `/x/...`, the root `/`, any depth), entrypoint, argv, volumes,
//! environment, `allowed_hosts` and `http_max_concurrency`.
//!
//! As WAGI reads it: relative module and volume paths are relative to the working
//! directory, not to the file; keys WAGI does not use are ignored (each named once in a
//! warning); a top-level `default_host` is the `SERVER_NAME` of a request without a `Host`
//! header; a module's `bindle_server` is ignored. A module WAGI would fetch from a bindle
//! server or an OCI registry (`bindle:`, `oci:`) is refused: frenezulo serves files. Every
//! module that cannot be served is named in the error, not only the first.
//!
//! Each service is named after its route (`/api/users/...` is `api-users`, `/` is
//! `root`), so the management API and the metrics can tell them apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use frenezulo_core::route::MAX_NAME_LEN;
use frenezulo_core::{ServiceLimits, ServiceName, ServiceRoute};
use serde::Deserialize;
use tracing::warn;

use crate::guest::GuestConfig;
use crate::spec::{Origin, ServiceSpec, check_env};

/// The file as WAGI writes it.
#[derive(Debug, Deserialize)]
struct ModuleMap {
    #[serde(default)]
    module: Vec<ModuleEntry>,
    default_host: Option<String>,
    /// Keys WAGI does not use either.
    #[serde(flatten)]
    ignored: BTreeMap<String, toml::Value>,
}

/// One `[[module]]`.
#[derive(Debug, Deserialize)]
struct ModuleEntry {
    route: String,
    module: String,
    entrypoint: Option<String>,
    argv: Option<String>,
    #[serde(default)]
    volumes: BTreeMap<String, PathBuf>,
    #[serde(default, alias = "env")]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    http_max_concurrency: Option<u32>,
    bindle_server: Option<String>,
    #[serde(flatten)]
    ignored: BTreeMap<String, toml::Value>,
}

/// Reads `path` as WAGI's module map. `taken` are the names other services already have;
/// each module's service gets a name of its own.
pub fn read(
    path: &Path,
    limits: ServiceLimits,
    taken: &BTreeSet<String>,
) -> anyhow::Result<Vec<ServiceSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading WAGI module map {}", path.display()))?;
    let map: ModuleMap = toml::from_str(&text)
        .with_context(|| format!("parsing WAGI module map {}", path.display()))?;
    let shown = path.display();
    for key in map.ignored.keys() {
        warn!(file = %shown, key, "WAGI module map: key `{key}` is not used (WAGI ignores it too)");
    }
    if let Some(host) = &map.default_host {
        tracing::info!(file = %shown, host, "WAGI module map: `default_host` is SERVER_NAME for requests without a Host header");
    }
    let mut taken = taken.clone();
    let mut specs: Vec<ServiceSpec> = Vec::new();
    let mut problems = Vec::new();
    for entry in map.module {
        let label = format!("module `{}` at route `{}`", entry.module, entry.route);
        for key in entry.ignored.keys() {
            warn!(file = %shown, module = entry.module, "WAGI module map: key `{key}` is not used (WAGI ignores it too)");
        }
        if entry.bindle_server.is_some() {
            warn!(file = %shown, module = entry.module, "WAGI module map: `bindle_server` is ignored; the module is read from its path");
        }
        match service(&entry, map.default_host.as_deref(), limits, &taken) {
            Ok(spec) => {
                taken.insert(spec.name.clone());
                specs.push(spec);
            }
            Err(why) => problems.push(format!("{label}: {why}")),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} cannot be served as it is:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
    Ok(specs)
}

fn service(
    entry: &ModuleEntry,
    default_host: Option<&str>,
    limits: ServiceLimits,
    taken: &BTreeSet<String>,
) -> Result<ServiceSpec, String> {
    let route = ServiceRoute::parse(&entry.route).map_err(|e| e.to_string())?;
    if entry.module.starts_with("bindle:") {
        return Err("bindle modules are not supported; give a file path".to_owned());
    }
    if entry.module.starts_with("oci:") {
        return Err("OCI modules are not supported; give a file path".to_owned());
    }
    let module = entry
        .module
        .strip_prefix("file://")
        .unwrap_or(&entry.module);
    let guest = GuestConfig {
        route: Some(route.clone()),
        default_host: default_host.map(str::to_owned),
        entrypoint: entry.entrypoint.clone(),
        argv: entry.argv.clone(),
        volumes: entry
            .volumes
            .iter()
            .map(|(g, h)| (g.clone(), from_working_dir(h)))
            .collect(),
        allowed_hosts: entry.allowed_hosts.clone(),
        http_max_concurrency: entry.http_max_concurrency.map(|n| n as usize),
    };
    guest.check().map_err(|e| e.to_string())?;
    check_env(&entry.environment).map_err(|e| e.to_string())?;
    Ok(ServiceSpec {
        name: name_for(&route, taken),
        module: from_working_dir(Path::new(module)),
        limits,
        env: entry.environment.clone(),
        guest,
        origin: Origin::Config,
    })
}

/// `path` as WAGI opens it: relative to the working directory. Made absolute here so the
/// log and the management API show where the file is.
fn from_working_dir(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A service name from a route: its segments joined by `-` (`/api/v1/...` is `api-v1`),
/// other characters as `-`, `root` for the root; `-2`, `-3`, ... if that name is taken.
fn name_for(route: &ServiceRoute, taken: &BTreeSet<String>) -> String {
    let mut name: String = route
        .base()
        .trim_start_matches('/')
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '-',
        })
        .collect();
    name = name.trim_start_matches(['-', '_']).to_owned();
    name.truncate(MAX_NAME_LEN - 4);
    if ServiceName::new(&name).is_err() {
        name = format!("root{name}");
        name.truncate(MAX_NAME_LEN - 4);
    }
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate) || ServiceName::new(&candidate).is_err() {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> anyhow::Result<Vec<ServiceSpec>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modules.toml");
        std::fs::write(&path, text).unwrap();
        read(&path, ServiceLimits::default(), &BTreeSet::new())
    }

    fn route(spec: &ServiceSpec) -> String {
        spec.guest.route.as_ref().unwrap().to_string()
    }

    #[test]
    fn modules_become_services_at_their_routes() {
        let specs = read_text(
            r#"
            default_host = "localhost:3000"

            [[module]]
            route = "/"
            module = "examples/hello.wat"

            [[module]]
            route = "/files/..."
            module = "file:///abs/fileserver.wasm"
            entrypoint = "serve"
            argv = "${SCRIPT_NAME} -v ${ARGS}"
            volumes = { "/static" = "static" }
            environment = { MODE = "prod" }
            allowed_hosts = ["https://api.example.com"]
            http_max_concurrency = 4

            [[module]]
            route = "/api/v1/users/"
            module = "users.wasm"
            bindle_server = "http://localhost:8080/v1"
            "#,
        )
        .unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["root", "files", "api-v1-users"]);
        assert_eq!(route(&specs[0]), "/");
        assert_eq!(route(&specs[1]), "/files/...");
        assert_eq!(route(&specs[2]), "/api/v1/users/");
        // Relative to the working directory, as WAGI reads them.
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(specs[0].module, cwd.join("examples/hello.wat"));
        assert_eq!(
            specs[0].guest.default_host.as_deref(),
            Some("localhost:3000")
        );
        let files = &specs[1];
        assert_eq!(files.module, PathBuf::from("/abs/fileserver.wasm"));
        assert_eq!(files.guest.entrypoint.as_deref(), Some("serve"));
        assert_eq!(files.guest.volumes["/static"], cwd.join("static"));
        assert_eq!(files.env["MODE"], "prod");
        assert_eq!(files.origin, Origin::Config);
    }

    #[test]
    fn modules_that_cannot_be_served_are_each_named() {
        let err = read_text(
            r#"
            [[module]]
            route = "/services/..."
            module = "admin.wasm"
            [[module]]
            route = "/ok"
            module = "ok.wasm"
            [[module]]
            route = "/oci"
            module = "oci:registry/x:1"
            [[module]]
            route = "/b"
            module = "bindle:example.com/x/1.0.0"
            [[module]]
            route = "no-slash"
            module = "n.wasm"
            "#,
        )
        .unwrap_err()
        .to_string();
        for part in [
            "`admin.wasm` at route `/services/...`: route `/services/...` is reserved",
            "OCI modules are not supported",
            "bindle modules are not supported",
            "`n.wasm` at route `no-slash`: route `no-slash` must start with `/`",
        ] {
            assert!(err.contains(part), "missing {part:?} in:\n{err}");
        }
        assert!(
            !err.contains("ok.wasm`"),
            "the good module is not reported:\n{err}"
        );
    }

    #[test]
    fn keys_wagi_ignores_are_ignored() {
        let specs = read_text(
            "colour = \"blue\"\n[[module]]\nroute = \"/a\"\nmodule = \"a.wasm\"\nsize = 3",
        )
        .unwrap();
        assert_eq!(specs[0].name, "a");
    }

    #[test]
    fn names_follow_routes_and_never_collide() {
        let taken: BTreeSet<String> = ["shop".to_owned()].into();
        let name =
            |r: &str, taken: &BTreeSet<String>| name_for(&ServiceRoute::parse(r).unwrap(), taken);
        assert_eq!(name("/shop/...", &taken), "shop-2");
        assert_eq!(name("/", &taken), "root");
        assert_eq!(name("/...", &taken), "root");
        assert_eq!(name("/API/v1.2/x_y", &taken), "api-v1-2-x_y");
        assert_eq!(name("/-x", &taken), "x");
        assert_eq!(name("/_", &taken), "root");
        assert_eq!(name("/services-x", &taken), "services-x");
        let long = format!("/{}", "a".repeat(200));
        assert!(ServiceName::new(&name(&long, &taken)).is_ok());
    }
}
