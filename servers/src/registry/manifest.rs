//! The manifest: the services the management API added, as stored. Services from the
//! command line and the config file are not in it: those files are their record.

use std::collections::BTreeMap;

use frenezulo_core::{RouteError, ServiceRoute};
use serde::{Deserialize, Serialize};

use crate::guest::GuestConfig;
use crate::settings::ServiceSettings;
use crate::spec::{LimitsConfig, Origin};

/// Format version written into every manifest.
pub const FORMAT: u32 = 1;

/// Every service the API added, by prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// The services, by prefix.
    pub services: BTreeMap<String, Entry>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            format: FORMAT,
            services: BTreeMap::new(),
        }
    }
}

/// One service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `sha256:<hex>` of the module, which names it in the blob store.
    pub digest: String,
    /// Size of the module in bytes.
    pub size: usize,
    /// Where the module came from: a URL, or `upload`.
    pub source: String,
    /// Who defined the service.
    pub origin: Origin,
    /// The limits set for this service; unset keys follow the server's `[limits]`.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Environment values for its guests.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The paths it owns, in WAGI's notation (`/api/...`); `/NAME/...` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The export run for its own route; `_start` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Its argv template; WAGI's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<String>,
    /// Origins its guests may call over HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Its outbound calls in flight at once, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_concurrency: Option<usize>,
    /// The sub-routes its module's `_routes` export declared when it was added, as
    /// `PATH EXPORT` lines, so a restart serves them before the module is compiled again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Its revision in the shared registry (NATS), when the node is part of a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// When it last changed, in seconds since the Unix epoch.
    pub updated_unix: u64,
}

impl Entry {
    /// An entry for `wasm` uploaded through the API, with nothing else set: what tests
    /// write by hand before changing the one field they are about.
    #[cfg(test)]
    pub fn uploaded(wasm: &[u8]) -> Self {
        Entry {
            digest: crate::registry::store::Digest::of(wasm).to_string(),
            size: wasm.len(),
            source: "upload".to_owned(),
            origin: Origin::Api,
            limits: Default::default(),
            env: Default::default(),
            route: None,
            entrypoint: None,
            argv: None,
            allowed_hosts: Vec::new(),
            http_max_concurrency: None,
            routes: Vec::new(),
            revision: None,
            updated_unix: 1,
        }
    }

    /// The settings stored; refused if the stored route is not one (written by hand, or
    /// by another node's newer version).
    pub fn settings(&self) -> Result<ServiceSettings, RouteError> {
        Ok(ServiceSettings {
            route: self.route.as_deref().map(ServiceRoute::parse).transpose()?,
            limits: self.limits.clone(),
            env: self.env.clone(),
            entrypoint: self.entrypoint.clone(),
            argv: self.argv.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            http_max_concurrency: self.http_max_concurrency,
        })
    }

    /// Stores `settings` in place of those the entry has.
    pub fn set_settings(&mut self, settings: ServiceSettings) {
        let ServiceSettings {
            route,
            limits,
            env,
            entrypoint,
            argv,
            allowed_hosts,
            http_max_concurrency,
        } = settings;
        self.route = route.map(|r| r.to_string());
        self.limits = limits;
        self.env = env;
        self.entrypoint = entrypoint;
        self.argv = argv;
        self.allowed_hosts = allowed_hosts;
        self.http_max_concurrency = http_max_concurrency;
    }

    /// The route, entrypoint, argv template and outbound grant stored (the API sets no
    /// volumes); refused as [`Entry::settings`] is.
    pub fn guest(&self) -> Result<GuestConfig, RouteError> {
        Ok(self.settings()?.guest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest as frenezulo wrote it before services had routes (format 1, every field
    /// of the time set) still loads, means the same, and is written back unchanged.
    #[test]
    fn a_manifest_from_before_routes_loads_as_it_was() {
        let before = r#"{
  "format": 1,
  "services": {
    "shop": {
      "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
      "size": 42,
      "source": "https://example.com/shop.wasm",
      "origin": "api",
      "limits": {
        "memory": 33554432,
        "deadline": "2s",
        "cpu_weight": 2
      },
      "env": {
        "MODE": "prod"
      },
      "entrypoint": "main",
      "argv": "${SCRIPT_NAME} ${ARGS}",
      "allowed_hosts": [
        "https://api.example.com"
      ],
      "http_max_concurrency": 4,
      "routes": [
        "/hello hello"
      ],
      "revision": 7,
      "updated_unix": 1700000000
    }
  }
}"#;
        let manifest: Manifest = serde_json::from_str(before).unwrap();
        let shop = &manifest.services["shop"];
        assert_eq!(shop.route, None, "served at /shop, as before");
        let guest = shop.guest().unwrap();
        assert_eq!(guest.entrypoint.as_deref(), Some("main"));
        assert_eq!(guest.allowed_hosts, ["https://api.example.com"]);
        assert_eq!(serde_json::to_string_pretty(&manifest).unwrap(), before);
    }

    #[test]
    fn a_stored_route_that_is_no_route_is_refused() {
        let mut entry = Entry::uploaded(b"m");
        entry.route = Some("/services/x".to_owned());
        assert!(entry.guest().is_err());
        entry.route = Some("/api/...".to_owned());
        assert_eq!(
            entry.guest().unwrap().route.unwrap().to_string(),
            "/api/..."
        );
    }
}
