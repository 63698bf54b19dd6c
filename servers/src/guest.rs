//! How a service is reached and what an operator grants its guests beyond their module and
//! limits: its route, which export runs, the argv it gets, the host directories it may
//! read and the hosts it may call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::AtomicUsize;

use frenezulo_core::ServiceRoute;
use frenezulo_engines::{Grants, OutboundGrant, Volume};

use crate::resolver::is_local_host;

/// Most volumes one service may have.
pub const MAX_VOLUMES: usize = 16;

/// Longest entrypoint name, argv template or guest path, in bytes.
pub const MAX_TEXT: usize = 4096;

/// How a service is reached and what its guests get beyond their module and limits: its
/// route, entrypoint, argv template, volumes and outbound grant, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestConfig {
    /// The paths it owns; `/NAME` and everything below when unset.
    pub route: Option<ServiceRoute>,
    /// WAGI's `default_host`: `SERVER_NAME` for a request without a `Host` header.
    pub default_host: Option<String>,
    /// The export run for the service's own route; `_start` when unset.
    pub entrypoint: Option<String>,
    /// The argv template; WAGI's `${SCRIPT_NAME} ${ARGS}` when unset.
    pub argv: Option<String>,
    /// Read-only directories: guest path to host directory.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Origins outbound calls may go to (`https://api.example.com`, `http://10.0.0.5:8080`),
    /// or [`ALLOW_ALL`]; none by default.
    pub allowed_hosts: Vec<String>,
    /// Outbound calls of the service in flight at once, server-wide.
    pub http_max_concurrency: Option<usize>,
}

/// WAGI's spelling of "any origin".
pub const ALLOW_ALL: &str = "insecure:allow-all";

/// The most outbound calls of one service in flight at once that anyone may set: calls
/// also wait for the `outbound_workers`, so more only lengthens a queue.
pub const MAX_HTTP_CONCURRENCY: usize = 4096;

/// Outbound calls of one service in flight at once when `http_max_concurrency` is unset.
pub const DEFAULT_HTTP_MAX_CONCURRENCY: usize = 32;

/// Most entries in `allowed_hosts`.
pub const MAX_ALLOWED_HOSTS: usize = 64;

impl GuestConfig {
    /// Checks the names, template and guest paths (not whether host directories exist:
    /// [`GuestConfig::open_volumes`] does).
    pub fn check(&self) -> Result<(), GuestError> {
        if let Some(h) = &self.default_host
            && (h.is_empty() || h.len() > MAX_TEXT || !h.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(GuestError::DefaultHost(h.clone()));
        }
        if let Some(e) = &self.entrypoint
            && (e.is_empty() || e.len() > MAX_TEXT || e.contains(char::is_whitespace))
        {
            return Err(GuestError::Entrypoint(e.clone()));
        }
        if let Some(a) = &self.argv
            && (a.len() > MAX_TEXT || a.contains('\0'))
        {
            return Err(GuestError::Argv);
        }
        if self.volumes.len() > MAX_VOLUMES {
            return Err(GuestError::TooManyVolumes);
        }
        for guest in self.volumes.keys() {
            check_guest_path(guest)?;
        }
        if self.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
            return Err(GuestError::TooManyHosts);
        }
        for host in &self.allowed_hosts {
            if host != ALLOW_ALL && frenezulo_engines::outbound::origin_of(host).is_none() {
                return Err(GuestError::Host(host.clone()));
            }
        }
        match self.http_max_concurrency {
            Some(n) if n == 0 || n > MAX_HTTP_CONCURRENCY => Err(GuestError::HttpConcurrency(n)),
            _ => Ok(()),
        }
    }

    /// Checks `allowed_hosts` against the operator's ceiling, for services the management
    /// API or a cluster's NATS entries define.
    pub fn check_within(&self, ceiling: &HostCeiling) -> Result<(), String> {
        ceiling.check_all(&self.allowed_hosts)
    }

    /// The outbound grant, if any host is allowed; `in_flight` is the service's counter,
    /// shared by every serving thread's copy; `public_only` when the grant was allowed as
    /// public hosts only ([`HostCeiling::public_only`]).
    pub fn outbound(
        &self,
        in_flight: &Arc<AtomicUsize>,
        public_only: bool,
    ) -> Option<OutboundGrant> {
        if self.allowed_hosts.is_empty() {
            return None;
        }
        let allowed = (!self.allowed_hosts.iter().any(|h| h == ALLOW_ALL)).then(|| {
            self.allowed_hosts
                .iter()
                .filter_map(|h| frenezulo_engines::outbound::origin_of(h))
                .collect()
        });
        Some(OutboundGrant {
            allowed,
            max_in_flight: self
                .http_max_concurrency
                .unwrap_or(DEFAULT_HTTP_MAX_CONCURRENCY),
            in_flight: in_flight.clone(),
            public_only,
        })
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

    /// The core's view, with the module's sub-routes, environment merged, and the grants
    /// (volumes opened, the outbound grant) for the engine.
    pub fn setup(
        &self,
        env: Vec<(String, String)>,
        routes: frenezulo_core::subroute::SubRoutes,
        grants: Grants,
    ) -> frenezulo_core::GuestSetup {
        let defaults = frenezulo_core::GuestSetup::default();
        frenezulo_core::GuestSetup {
            name: String::new(),
            route: self.route.clone(),
            default_host: self.default_host.as_deref().map(Into::into),
            host: grants.into_host(),
            env,
            entrypoint: self
                .entrypoint
                .as_deref()
                .map_or(defaults.entrypoint, Into::into),
            argv: self.argv.clone().unwrap_or(defaults.argv),
            routes,
            // The registry sets it from the module's kind.
            body_streams: false,
        }
    }
}

/// The operator's ceiling on the origins the management API (and a cluster's NATS
/// entries) may name, for guests' calls (`outbound_allowed_hosts`) or for fetching modules
/// (`fetch_allowed_hosts`). The config file's and the command line's own services are the
/// operator's and are not held to it.
///
/// Set, it allows exactly the origins it lists (compared as [`origin_of`] normalises
/// them), or any origin if it holds [`ALLOW_ALL`]. Not set, it allows any origin whose host
/// is public: not `insecure:allow-all`, and not a loopback, private, link-local,
/// shared (CGNAT) or unspecified address, nor `localhost`; and the calls made for such
/// grants connect to public addresses only, whatever a name resolves to
/// ([`HostCeiling::public_only`], [`crate::resolver`]).
///
/// [`origin_of`]: frenezulo_engines::outbound::origin_of
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCeiling {
    /// The setting, for messages.
    key: &'static str,
    /// The origins listed, normalised; `None` when the operator set none.
    origins: Option<Vec<String>>,
    /// Whether the list holds [`ALLOW_ALL`].
    any: bool,
}

impl HostCeiling {
    /// The ceiling named `key` from the operator's list, if one was set. Every entry must
    /// be an http(s) URL or [`ALLOW_ALL`].
    pub fn new(key: &'static str, list: Option<&[String]>) -> Result<Self, String> {
        let Some(list) = list else {
            return Ok(Self::unset(key));
        };
        let mut origins = Vec::with_capacity(list.len());
        let mut any = false;
        for entry in list {
            if entry == ALLOW_ALL {
                any = true;
                continue;
            }
            let origin = frenezulo_engines::outbound::origin_of(entry).ok_or_else(|| {
                format!(
                    "{key} entry `{entry}` is not an http:// or https:// URL (or `{ALLOW_ALL}`)"
                )
            })?;
            origins.push(origin);
        }
        Ok(Self {
            key,
            origins: Some(origins),
            any,
        })
    }

    /// No list set: public hosts only.
    pub fn unset(key: &'static str) -> Self {
        Self {
            key,
            origins: None,
            any: false,
        }
    }

    /// Whether calls within this ceiling must connect to public addresses only: it is
    /// unset, so it allowed names as public hosts, and they must resolve to such.
    pub fn public_only(&self) -> bool {
        self.origins.is_none() && !self.any
    }

    /// The setting's name, for messages.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// Whether `entry` (an http(s) URL or [`ALLOW_ALL`]) is within the ceiling; the error
    /// names the origin and the setting.
    pub fn check(&self, entry: &str) -> Result<(), String> {
        let key = self.key;
        if self.any {
            return Ok(());
        }
        if entry == ALLOW_ALL {
            return Err(format!(
                "`{ALLOW_ALL}` is allowed only if the server's `{key}` contains it"
            ));
        }
        let Some(origin) = frenezulo_engines::outbound::origin_of(entry) else {
            return Err(format!(
                "`{entry}` is not an http:// or https:// URL without user info"
            ));
        };
        match &self.origins {
            Some(list) if list.contains(&origin) => Ok(()),
            Some(_) => Err(format!("`{origin}` is not in the server's `{key}`")),
            None if is_local_host(host_of(&origin)) => Err(format!(
                "`{origin}` is a loopback, private, link-local or otherwise local address; the server's `{key}` must list it"
            )),
            None => Ok(()),
        }
    }

    /// Checks every entry of `hosts`.
    pub fn check_all(&self, hosts: &[String]) -> Result<(), String> {
        hosts.iter().try_for_each(|h| {
            self.check(h)
                .map_err(|e| format!("allowed_hosts entry refused: {e}"))
        })
    }
}

/// The host of a normalised origin (`scheme://host:port`), IPv6 brackets removed.
fn host_of(origin: &str) -> &str {
    let rest = origin.split_once("://").map_or(origin, |(_, r)| r);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A guest path must be absolute and plain: `/static`, `/data/templates`; not `/`, and no
/// `.` or `..` components (WASI resolves paths below it, never above).
fn check_guest_path(path: &str) -> Result<(), GuestError> {
    let bad = || Err(GuestError::GuestPath(path.to_owned()));
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

/// Why a service's guest settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// `default_host` is not a host name with an optional port.
    #[error("default_host `{0}` must be a host name and optional port, no spaces")]
    DefaultHost(String),
    /// The entrypoint is not an export name.
    #[error("entrypoint `{0}` must be an export name: not empty, no spaces")]
    Entrypoint(String),
    /// The argv template is too long or holds a NUL.
    #[error("argv template must be at most {MAX_TEXT} bytes without NUL")]
    Argv,
    /// More volumes than a service may have.
    #[error("at most {MAX_VOLUMES} volumes per service")]
    TooManyVolumes,
    /// A volume's guest path is not a plain absolute path.
    #[error("volume guest path `{0}` must be absolute, not `/`, without `.` or `..`")]
    GuestPath(String),
    /// More `allowed_hosts` entries than a service may have.
    #[error("at most {MAX_ALLOWED_HOSTS} allowed_hosts")]
    TooManyHosts,
    /// An `allowed_hosts` entry is not an http(s) origin.
    #[error("allowed_hosts entry `{0}` is not an http:// or https:// URL (or `{ALLOW_ALL}`)")]
    Host(String),
    /// `http_max_concurrency` is out of its range.
    #[error(
        "http_max_concurrency is {0}; it must be at least 1 and at most {MAX_HTTP_CONCURRENCY}"
    )]
    HttpConcurrency(usize),
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
        assert!(g.check().unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn allowed_hosts_become_origins() {
        let counter = Arc::new(AtomicUsize::new(0));
        let mut g = GuestConfig::default();
        assert!(
            g.outbound(&counter, false).is_none(),
            "nothing allowed by default"
        );
        g.allowed_hosts = vec![
            "https://API.example.com/v1".into(),
            "http://10.0.0.5:8080".into(),
        ];
        assert!(g.check().is_ok());
        let grant = g.outbound(&counter, false).unwrap();
        assert_eq!(
            grant.allowed.as_deref().unwrap(),
            ["https://api.example.com:443", "http://10.0.0.5:8080"]
        );
        assert_eq!(grant.max_in_flight, DEFAULT_HTTP_MAX_CONCURRENCY);
        g.allowed_hosts.push(ALLOW_ALL.into());
        assert_eq!(g.outbound(&counter, false).unwrap().allowed, None);
        g.allowed_hosts = vec!["api.example.com".into()];
        assert!(
            g.check()
                .unwrap_err()
                .to_string()
                .contains("api.example.com")
        );
        g.allowed_hosts = vec![ALLOW_ALL.into()];
        g.http_max_concurrency = Some(0);
        assert!(g.check().is_err());
        g.http_max_concurrency = Some(MAX_HTTP_CONCURRENCY + 1);
        assert!(g.check().unwrap_err().to_string().contains("at most"));
        g.http_max_concurrency = Some(MAX_HTTP_CONCURRENCY);
        assert!(g.check().is_ok());
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

    #[test]
    fn without_a_ceiling_only_public_hosts_are_granted() {
        let none = HostCeiling::unset("outbound_allowed_hosts");
        for ok in [
            "https://api.example.com",
            "http://93.184.216.34:8080/x",
            "http://[2606:4700::1]/",
            "http://172.32.0.1",
            "http://100.128.0.1",
        ] {
            assert!(none.check(ok).is_ok(), "{ok}");
        }
        for local in [
            ALLOW_ALL,
            "http://127.0.0.1:1",
            "http://127.8.9.10",
            "http://169.254.169.254",
            "http://10.0.0.5:8080",
            "http://172.16.0.1",
            "http://172.31.255.255",
            "http://192.168.1.1",
            "http://100.64.0.1",
            "http://0.0.0.0:80",
            "http://255.255.255.255",
            "http://localhost:8080",
            "http://LOCALHOST.",
            "http://metadata.localhost",
            "http://[::1]:81",
            "http://[::]",
            "http://[::ffff:127.0.0.1]",
            "http://[::ffff:a9fe:a9fe]",
            "http://[::127.0.0.1]",
            "http://[64:ff9b::10.0.0.1]",
            "http://[fd00::1]",
            "http://[fc00::1]",
            "http://[fe80::1]",
            "http://127.1",
            "http://2130706433",
            "http://0x7f000001",
            "http://localhost:80:80",
            "http://example.com:80:80",
            "http://u:p@example.com",
        ] {
            let why = none.check(local).unwrap_err();
            assert!(
                why.contains("outbound_allowed_hosts") || why.contains("user info"),
                "{local}: {why}"
            );
        }
        let mut g = GuestConfig {
            allowed_hosts: vec![
                "https://api.example.com".into(),
                "http://127.0.0.1:1".into(),
            ],
            ..Default::default()
        };
        let why = g.check_within(&none).unwrap_err();
        assert!(
            why.contains("http://127.0.0.1:1") && why.contains("outbound_allowed_hosts"),
            "{why}"
        );
        g.allowed_hosts.pop();
        assert!(g.check_within(&none).is_ok());
    }

    #[test]
    fn a_ceiling_allows_exactly_what_it_lists() {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = HostCeiling::new(
            "outbound_allowed_hosts",
            Some(&list(&[
                "http://127.0.0.1:9000/",
                "HTTPS://Api.Example.com",
            ])),
        )
        .unwrap();
        assert!(c.check("http://127.0.0.1:9000").is_ok());
        assert!(
            c.check("https://api.example.com:443/v1").is_ok(),
            "normalised"
        );
        assert!(c.check("http://127.0.0.1:9001").is_err(), "another port");
        assert!(
            c.check("https://other.example.com").is_err(),
            "not listed, though public"
        );
        assert!(c.check(ALLOW_ALL).is_err());
        let all = HostCeiling::new("outbound_allowed_hosts", Some(&list(&[ALLOW_ALL]))).unwrap();
        assert!(all.check(ALLOW_ALL).is_ok());
        assert!(all.check("http://169.254.169.254").is_ok());
        let empty = HostCeiling::new("outbound_allowed_hosts", Some(&[])).unwrap();
        assert!(
            empty.check("https://api.example.com").is_err(),
            "set empty: nothing"
        );
        let err =
            HostCeiling::new("fetch_allowed_hosts", Some(&list(&["example.com"]))).unwrap_err();
        assert!(
            err.contains("fetch_allowed_hosts") && err.contains("example.com"),
            "{err}"
        );
    }
}
