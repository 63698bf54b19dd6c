//! The management API's bodies, typed once for both ends: the server parses requests and
//! writes views with these, and `frenezulo services` builds requests and reads views with
//! the same types. A leaf beside [`crate::spec`]: it names no thread, store or socket.

use std::collections::BTreeMap;
use std::path::PathBuf;

use frenezulo_core::{RouteError, ServiceRoute};
use serde::{Deserialize, Serialize};

use crate::settings::SettingsPatch;
use crate::spec::{EnvValues, LimitsConfig, Origin};

/// `POST /services/add`: a service whose module is fetched from `source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// The service's name, which is its prefix.
    pub prefix: String,
    /// Where to fetch its module: `https://`, `http://` or `file://`.
    pub source: String,
    /// The paths it owns, in WAGI's notation; `/PREFIX/...` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Its limits; unset keys follow the server's `[limits]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsConfig>,
    /// Environment values for its guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvValues>,
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
}

impl AddRequest {
    /// What a caller is told a body should look like when it is not one.
    pub const EXAMPLE: &str = r#"{"prefix": "shop", "source": "https://host/shop.wasm"}"#;

    /// The settings it asks for (what it leaves out, a service being replaced keeps).
    pub fn patch(&self) -> Result<SettingsPatch, RouteError> {
        Ok(SettingsPatch {
            route: self
                .route
                .as_deref()
                .map(ServiceRoute::prefix)
                .transpose()?,
            limits: self.limits.clone(),
            env: self.env.clone(),
            entrypoint: self.entrypoint.clone(),
            argv: self.argv.clone(),
            allowed_hosts: (!self.allowed_hosts.is_empty()).then(|| self.allowed_hosts.clone()),
            http_max_concurrency: self.http_max_concurrency,
        })
    }
}

/// `PATCH /services/NAME`: new limits or environment for a service, its module kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigureRequest {
    /// Limits to set (replacing those set before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsConfig>,
    /// Environment values to set (replacing all of them; empty clears them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvValues>,
}

impl ConfigureRequest {
    /// What a caller is told a body should look like when it is not one.
    pub const EXAMPLE: &str = r#"{"limits": {"memory": "32MiB"}, "env": {"KEY": "value"}}"#;

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.limits.is_none() && self.env.is_none()
    }

    /// The settings it asks for.
    pub fn patch(self) -> SettingsPatch {
        SettingsPatch {
            limits: self.limits,
            env: self.env,
            ..SettingsPatch::default()
        }
    }
}

/// A service as `GET /services/NAME`, the list and every change's answer show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Its name, which is its prefix.
    pub prefix: String,
    /// The paths it owns, in WAGI's notation.
    pub route: String,
    /// Who defined it.
    pub origin: Origin,
    /// Whether the API may change it (the command line's and config file's services are
    /// read-only here).
    pub changeable_by_api: bool,
    /// Where its module came from: a URL, `upload` or a file path.
    pub source: String,
    /// `sha256:<hex>` of its module.
    pub digest: String,
    /// Its module's size in bytes.
    pub size: usize,
    /// How its guest speaks HTTP: `wagi` (a WASI preview-1 module answering in CGI) or
    /// `wasi-http` (a `wasi:http/proxy` component), read from the binary.
    pub kind: String,
    /// The version serving threads know it by.
    pub version: u64,
    /// Its revision in the shared registry, in a cluster.
    pub revision: Option<u64>,
    /// When it last changed, in seconds since the Unix epoch.
    pub updated_unix: u64,
    /// The limits it runs with, every key set.
    pub limits: LimitsConfig,
    /// The limits set for it; the rest follow the server's `[limits]`.
    pub limits_set: LimitsConfig,
    /// Its environment: names only, unless asked for with `show_env=true`.
    pub env: EnvView,
    /// The export run for its own route.
    pub entrypoint: String,
    /// Its argv template.
    pub argv: String,
    /// The sub-routes its module declares, joined to its route.
    pub routes: Vec<SubRouteView>,
    /// Its volumes: guest path to host path.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Origins its guests may call over HTTP.
    pub allowed_hosts: Vec<String>,
    /// Its outbound calls in flight at once, at most, when it may make any.
    pub http_max_concurrency: Option<usize>,
    /// Its lifecycle state across the serving threads (`cold`, `warm`, ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// What it served, when the serving threads answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    /// How its module was loaded, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loads: Option<Loads>,
}

/// A service's environment as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EnvView {
    /// Names and values (`show_env=true`).
    Values(EnvValues),
    /// Names only.
    Names(Vec<String>),
}

/// One sub-route a module declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRouteView {
    /// The paths, joined to the service's route.
    pub route: String,
    /// The export that answers them.
    pub entrypoint: String,
}

/// What a service served, over every serving thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Responses.
    pub requests: u64,
    /// Responses by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Guests running now.
    pub running: usize,
    /// Requests waiting for a guest.
    pub queued: usize,
    /// Times its module was loaded on a serving thread.
    pub cold_starts: u64,
}

/// How a service's module was loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loads {
    /// Times it was compiled.
    pub compiled: u64,
    /// Times it came from the artifact cache.
    pub artifact: u64,
    /// Seconds spent loading it.
    pub seconds: f64,
}

/// `GET /services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    /// Every service, by prefix.
    pub services: Vec<ServiceView>,
}

/// `DELETE /services/NAME`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The service removed.
    pub removed: String,
}

/// Every error's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_request_reads_as_written() {
        let request = AddRequest {
            prefix: "shop".to_owned(),
            source: "https://host/shop.wasm".to_owned(),
            route: Some("/api/...".to_owned()),
            limits: Some(LimitsConfig::from_pairs([("memory", "32MiB"), ("queue", "4")]).unwrap()),
            env: Some([("MODE".to_owned(), "prod".to_owned())].into()),
            ..AddRequest::default()
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(serde_json::from_str::<AddRequest>(&text).unwrap(), request);
        assert!(
            !text.contains("entrypoint"),
            "unset keys are left out: {text}"
        );
        let example: AddRequest = serde_json::from_str(AddRequest::EXAMPLE).unwrap();
        assert_eq!(example.prefix, "shop");
        assert!(
            serde_json::from_str::<AddRequest>(r#"{"prefix": "a", "source": "b", "colour": 1}"#)
                .is_err()
        );
    }

    #[test]
    fn the_configure_example_is_one() {
        let c: ConfigureRequest = serde_json::from_str(ConfigureRequest::EXAMPLE).unwrap();
        assert!(!c.is_empty());
        assert!(ConfigureRequest::default().is_empty());
    }

    #[test]
    fn environment_shows_as_names_or_values() {
        let names: EnvView = serde_json::from_str(r#"["A", "B"]"#).unwrap();
        assert_eq!(names, EnvView::Names(vec!["A".to_owned(), "B".to_owned()]));
        let values: EnvView = serde_json::from_str(r#"{"A": "1"}"#).unwrap();
        assert_eq!(
            values,
            EnvView::Values([("A".to_owned(), "1".to_owned())].into())
        );
    }
}
