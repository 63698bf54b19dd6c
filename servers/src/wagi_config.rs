//! WAGI's `modules.toml`, read as services: every `[[module]]` whose route is `/NAME` or
//! `/NAME/...` becomes service NAME with its entrypoint, argv, volumes, environment,
//! `allowed_hosts` and `http_max_concurrency`.
//!
//! frenezulo gives each service one prefix, so a route that is not one path segment (`/`,
//! `/...`, `/a/b`) cannot be mapped; each such module is reported by its route and module
//! with the reason, and the server does not start until the file is fixed. A module WAGI
//! would fetch from a bindle or OCI registry is reported the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use frenezulo_core::{ServiceLimits, ServiceName};
use serde::Deserialize;

use crate::config::{ServiceSpec, check_env};
use crate::guest::GuestConfig;
use crate::registry::manifest::Origin;

/// The file as WAGI writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleMap {
    #[serde(default)]
    module: Vec<ModuleEntry>,
}

/// One `[[module]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

/// Reads `path` as WAGI's module map. Paths in it are relative to its directory. Every
/// module that cannot be served is named in the error, not only the first.
pub fn read(path: &Path, limits: ServiceLimits) -> anyhow::Result<Vec<ServiceSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading WAGI module map {}", path.display()))?;
    let map: ModuleMap = toml::from_str(&text)
        .with_context(|| format!("parsing WAGI module map {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut specs: Vec<ServiceSpec> = Vec::new();
    let mut problems = Vec::new();
    for entry in map.module {
        let label = format!("module `{}` at route `{}`", entry.module, entry.route);
        match service(&entry, base, limits) {
            Ok(spec) if specs.iter().any(|s| s.name == spec.name) => problems.push(format!(
                "{label}: another module already maps to service `{}`",
                spec.name
            )),
            Ok(spec) => specs.push(spec),
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

fn service(entry: &ModuleEntry, base: &Path, limits: ServiceLimits) -> Result<ServiceSpec, String> {
    let name = service_name(&entry.route)?;
    if entry.bindle_server.is_some() || entry.module.starts_with("bindle:") {
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
        entrypoint: entry.entrypoint.clone(),
        argv: entry.argv.clone(),
        volumes: entry
            .volumes
            .iter()
            .map(|(g, h)| (g.clone(), base.join(h)))
            .collect(),
        allowed_hosts: entry.allowed_hosts.clone(),
        http_max_concurrency: entry.http_max_concurrency.map(|n| n as usize),
    };
    guest.check()?;
    check_env(&entry.environment)?;
    Ok(ServiceSpec {
        name,
        module: base.join(module),
        limits,
        env: entry.environment.clone(),
        guest,
        origin: Origin::Config,
    })
}

/// The service a WAGI route maps onto: `/NAME` and `/NAME/...` are service NAME.
fn service_name(route: &str) -> Result<String, String> {
    let path = route.strip_suffix("/...").unwrap_or(route);
    let Some(name) = path.strip_prefix('/') else {
        return Err("a route must start with `/`".to_owned());
    };
    if name.is_empty() {
        return Err(
            "the root route cannot be a service: each service owns one prefix `/NAME`".to_owned(),
        );
    }
    if name.contains('/') {
        return Err(format!(
            "a route of more than one segment cannot be a service (each owns `/NAME` and everything below); serve it as service `{}` and route inside the module with `_routes`",
            name.split('/').next().unwrap_or_default()
        ));
    }
    ServiceName::new(name)
        .map(|n| n.to_string())
        .map_err(|e| format!("`{name}` is not a service name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> anyhow::Result<Vec<ServiceSpec>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modules.toml");
        std::fs::write(&path, text).unwrap();
        read(&path, ServiceLimits::default())
    }

    #[test]
    fn modules_become_services() {
        let specs = read_text(
            r#"
            [[module]]
            route = "/hello"
            module = "hello.wasm"

            [[module]]
            route = "/files/..."
            module = "file:///abs/fileserver.wasm"
            entrypoint = "serve"
            argv = "${SCRIPT_NAME} -v ${ARGS}"
            volumes = { "/static" = "static" }
            environment = { MODE = "prod" }
            allowed_hosts = ["https://api.example.com"]
            http_max_concurrency = 4
            "#,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "hello");
        assert!(specs[0].module.ends_with("hello.wasm"));
        let files = &specs[1];
        assert_eq!(files.name, "files");
        assert_eq!(files.module, PathBuf::from("/abs/fileserver.wasm"));
        assert_eq!(files.guest.entrypoint.as_deref(), Some("serve"));
        assert!(files.guest.volumes["/static"].ends_with("static"));
        assert_eq!(files.env["MODE"], "prod");
        assert_eq!(files.origin, Origin::Config);
    }

    #[test]
    fn routes_that_cannot_map_are_each_named() {
        let err = read_text(
            r#"
            [[module]]
            route = "/"
            module = "root.wasm"
            [[module]]
            route = "/a/b"
            module = "deep.wasm"
            [[module]]
            route = "/ok"
            module = "ok.wasm"
            [[module]]
            route = "/ok/..."
            module = "again.wasm"
            [[module]]
            route = "/oci"
            module = "oci:registry/x:1"
            [[module]]
            route = "/Upper"
            module = "u.wasm"
            "#,
        )
        .unwrap_err()
        .to_string();
        for part in [
            "`root.wasm` at route `/`",
            "`deep.wasm` at route `/a/b`: a route of more than one segment",
            "serve it as service `a`",
            "`again.wasm` at route `/ok/...`: another module already maps to service `ok`",
            "OCI modules are not supported",
            "`Upper` is not a service name",
        ] {
            assert!(err.contains(part), "missing {part:?} in:\n{err}");
        }
        assert!(
            !err.contains("ok.wasm`"),
            "the good module is not reported:\n{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = read_text("[[module]]\nroute = \"/a\"\nmodule = \"a.wasm\"\ncolour = \"blue\"")
            .unwrap_err();
        assert!(format!("{err:#}").contains("colour"), "{err:#}");
    }
}
