//! What an operator grants a service's guests beyond their module and limits: which export
//! runs, the argv it gets, and the host directories it may read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::AtomicUsize;

use frenezulo_core::{OutboundGrant, Volume};
use serde::{Deserialize, Serialize};

/// Most volumes one service may have.
pub const MAX_VOLUMES: usize = 16;

/// Longest entrypoint name, argv template or guest path, in bytes.
pub const MAX_TEXT: usize = 4096;

/// A service's entrypoint, argv template and volumes, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// The export run for the service's own route; `_start` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// The argv template; WAGI's `${SCRIPT_NAME} ${ARGS}` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<String>,
    /// Read-only directories: guest path to host directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, PathBuf>,
    /// Origins outbound calls may go to (`https://api.example.com`, `http://10.0.0.5:8080`),
    /// or [`ALLOW_ALL`]; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Outbound calls of the service in flight at once, server-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_max_concurrency: Option<usize>,
}

/// WAGI's spelling of "any origin".
pub const ALLOW_ALL: &str = "insecure:allow-all";

/// Outbound calls of one service in flight at once when `http_max_concurrency` is unset.
pub const DEFAULT_HTTP_MAX_CONCURRENCY: usize = 32;

/// Most entries in `allowed_hosts`.
pub const MAX_ALLOWED_HOSTS: usize = 64;

impl GuestConfig {
    /// Checks the names, template and guest paths (not whether host directories exist:
    /// [`GuestConfig::open_volumes`] does).
    pub fn check(&self) -> Result<(), String> {
        if let Some(e) = &self.entrypoint
            && (e.is_empty() || e.len() > MAX_TEXT || e.contains(char::is_whitespace))
        {
            return Err(format!(
                "entrypoint `{e}` must be an export name: not empty, no spaces"
            ));
        }
        if let Some(a) = &self.argv
            && (a.len() > MAX_TEXT || a.contains('\0'))
        {
            return Err(format!(
                "argv template must be at most {MAX_TEXT} bytes without NUL"
            ));
        }
        if self.volumes.len() > MAX_VOLUMES {
            return Err(format!("at most {MAX_VOLUMES} volumes per service"));
        }
        for guest in self.volumes.keys() {
            check_guest_path(guest)?;
        }
        if self.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
            return Err(format!("at most {MAX_ALLOWED_HOSTS} allowed_hosts"));
        }
        for host in &self.allowed_hosts {
            if host != ALLOW_ALL && frenezulo_engines::outbound::origin_of(host).is_none() {
                return Err(format!(
                    "allowed_hosts entry `{host}` is not an http:// or https:// URL (or `{ALLOW_ALL}`)"
                ));
            }
        }
        if self.http_max_concurrency == Some(0) {
            return Err("http_max_concurrency must be at least 1".to_owned());
        }
        Ok(())
    }

    /// The outbound grant, if any host is allowed; `in_flight` is the service's counter,
    /// shared by every serving thread's copy.
    pub fn outbound(&self, in_flight: &Arc<AtomicUsize>) -> Option<Arc<OutboundGrant>> {
        if self.allowed_hosts.is_empty() {
            return None;
        }
        let allowed = (!self.allowed_hosts.iter().any(|h| h == ALLOW_ALL)).then(|| {
            self.allowed_hosts
                .iter()
                .filter_map(|h| frenezulo_engines::outbound::origin_of(h))
                .collect()
        });
        Some(Arc::new(OutboundGrant {
            allowed,
            max_in_flight: self
                .http_max_concurrency
                .unwrap_or(DEFAULT_HTTP_MAX_CONCURRENCY),
            in_flight: in_flight.clone(),
        }))
    }

    /// Opens every volume's host directory, read-only, relative to `base`.
    pub fn open_volumes(&self, base: &Path) -> Result<Vec<Volume>, String> {
        self.volumes
            .iter()
            .map(|(guest, host)| {
                let host = base.join(host);
                let dir = std::fs::File::open(&host)
                    .map_err(|e| format!("volume `{guest}`: {}: {e}", host.display()))?;
                let is_dir = dir.metadata().map(|m| m.is_dir()).unwrap_or(false);
                if !is_dir {
                    return Err(format!(
                        "volume `{guest}`: {} is not a directory",
                        host.display()
                    ));
                }
                Ok(Volume {
                    guest_path: guest.clone(),
                    dir: Arc::new(dir),
                })
            })
            .collect()
    }

    /// The core's view, with the module's sub-routes, volumes opened, environment merged
    /// and the outbound grant.
    pub fn setup(
        &self,
        env: Vec<(String, String)>,
        routes: frenezulo_core::subroute::SubRoutes,
        volumes: Vec<Volume>,
        outbound: Option<Arc<OutboundGrant>>,
    ) -> frenezulo_core::GuestSetup {
        let defaults = frenezulo_core::GuestSetup::default();
        frenezulo_core::GuestSetup {
            name: String::new(),
            outbound,
            env,
            entrypoint: self
                .entrypoint
                .as_deref()
                .map_or(defaults.entrypoint, Into::into),
            argv: self.argv.clone().unwrap_or(defaults.argv),
            routes,
            volumes,
        }
    }
}

/// A guest path must be absolute and plain: `/static`, `/data/templates`; not `/`, and no
/// `.` or `..` components (WASI resolves paths below it, never above).
fn check_guest_path(path: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "volume guest path `{path}` must be absolute, not `/`, without `.` or `..`"
        ))
    };
    let Some(rest) = path.strip_prefix('/') else {
        return bad();
    };
    let plain = rest
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    if path.len() > MAX_TEXT || path.contains('\0') || !plain {
        return bad();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_plain_and_absolute() {
        for ok in ["/static", "/a/b", "/with space"] {
            assert!(check_guest_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/", "static", "/a/../b", "/a/./b", "/a/", "//a", "/a\0"] {
            assert!(check_guest_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checks_names_and_limits() {
        let mut g = GuestConfig {
            entrypoint: Some("main".into()),
            argv: Some("${SCRIPT_NAME} -v ${ARGS}".into()),
            ..Default::default()
        };
        assert!(g.check().is_ok());
        g.entrypoint = Some("two words".into());
        assert!(g.check().is_err());
        g.entrypoint = None;
        g.volumes = (0..=MAX_VOLUMES)
            .map(|i| (format!("/v{i}"), PathBuf::from(".")))
            .collect();
        assert!(g.check().unwrap_err().contains("at most"));
    }

    #[test]
    fn allowed_hosts_become_origins() {
        let counter = Arc::new(AtomicUsize::new(0));
        let mut g = GuestConfig::default();
        assert!(g.outbound(&counter).is_none(), "nothing allowed by default");
        g.allowed_hosts = vec![
            "https://API.example.com/v1".into(),
            "http://10.0.0.5:8080".into(),
        ];
        assert!(g.check().is_ok());
        let grant = g.outbound(&counter).unwrap();
        assert_eq!(
            grant.allowed.as_deref().unwrap(),
            ["https://api.example.com:443", "http://10.0.0.5:8080"]
        );
        assert_eq!(grant.max_in_flight, DEFAULT_HTTP_MAX_CONCURRENCY);
        g.allowed_hosts.push(ALLOW_ALL.into());
        assert_eq!(g.outbound(&counter).unwrap().allowed, None);
        g.allowed_hosts = vec!["api.example.com".into()];
        assert!(g.check().unwrap_err().contains("api.example.com"));
        g.allowed_hosts = vec![ALLOW_ALL.into()];
        g.http_max_concurrency = Some(0);
        assert!(g.check().is_err());
    }

    #[test]
    fn volumes_open_directories_only() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut g = GuestConfig::default();
        g.volumes.insert("/src".into(), "src".into());
        let v = g.open_volumes(base).unwrap();
        assert_eq!(v[0].guest_path, "/src");
        g.volumes.insert("/file".into(), "Cargo.toml".into());
        assert!(
            g.open_volumes(base)
                .unwrap_err()
                .contains("not a directory")
        );
        g.volumes.remove("/file");
        g.volumes.insert("/gone".into(), "no-such-dir".into());
        assert!(g.open_volumes(base).unwrap_err().contains("no-such-dir"));
    }
}
