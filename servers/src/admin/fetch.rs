//! Fetching a module named by URL for `POST /services/add`: `http://` and `https://`
//! (rustls) through ureq, with a connect timeout, a total timeout, at most a few redirects
//! and a size cap; only from origins within the operator's `fetch_allowed_hosts` (the
//! source and every redirect's target, each connecting to public addresses only unless the
//! operator listed it); `file://` only under the directories the operator allows.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::guest::HostCeiling;
use crate::resolver::CallResolver;

/// Redirects followed at most.
pub const MAX_REDIRECTS: u32 = 3;

/// What fetching may do.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// Largest module, in bytes.
    pub max_bytes: usize,
    /// Time for the whole fetch, redirects included.
    pub timeout: Duration,
    /// Directories `file://` sources may name.
    pub module_dirs: Vec<PathBuf>,
    /// Origins http(s) sources (and their redirects) may point at.
    pub allowed: HostCeiling,
}

/// Why a module could not be fetched.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The source is not an `http`, `https` or `file` URL.
    #[error("source must be an http://, https:// or file:// URL, not `{0}`")]
    Scheme(String),
    /// A `file://` source outside the allowed directories (or none are allowed).
    #[error("file:// sources are allowed only under the directories listed in `module_dirs` ({0})")]
    FileNotAllowed(String),
    /// The module is larger than the cap.
    #[error("module is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The source, or a redirect's target, is outside `fetch_allowed_hosts`.
    #[error("source refused: {0}")]
    NotAllowed(String),
    /// The server answered with an error status.
    #[error("source answered HTTP {0}")]
    Status(u16),
    /// Connecting, TLS, a timeout, too many redirects, or reading failed.
    #[error("fetching the source failed: {0}")]
    Transfer(String),
}

/// Fetches `source` within `limits`.
pub fn fetch(source: &str, limits: &FetchLimits) -> Result<Vec<u8>, FetchError> {
    if let Some(path) = source.strip_prefix("file://") {
        return read_file(Path::new(path), limits);
    }
    if !is_http(source) {
        return Err(FetchError::Scheme(source.to_owned()));
    }
    let deadline = Instant::now() + limits.timeout;
    let mut url = source.to_owned();
    // Redirects are followed here, not by ureq, so that every target is checked.
    let mut redirects = 0;
    let mut response = loop {
        limits.allowed.check(&url).map_err(FetchError::NotAllowed)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(left))
            .timeout_connect(Some(left.min(Duration::from_secs(10))))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("frenezulo/", env!("CARGO_PKG_VERSION")))
            .build();
        // A host allowed as a public one must resolve to public addresses.
        let resolver = if limits.allowed.public_only() {
            CallResolver::public_only(limits.allowed.key())
        } else {
            CallResolver::any()
        };
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            resolver,
        );
        let response = agent
            .get(&url)
            .call()
            .map_err(|e| FetchError::Transfer(e.to_string()))?;
        let status = response.status().as_u16();
        if !matches!(status, 301 | 302 | 303 | 307 | 308) {
            break response;
        }
        if redirects == MAX_REDIRECTS {
            return Err(FetchError::Transfer(format!(
                "more than {MAX_REDIRECTS} redirects"
            )));
        }
        redirects += 1;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| FetchError::Transfer(format!("HTTP {status} without a Location")))?;
        url = resolve(&url, location)
            .ok_or_else(|| FetchError::Scheme(format!("redirect to {location}")))?;
    };
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(FetchError::Status(status));
    }
    match response
        .body_mut()
        .with_config()
        .limit(limits.max_bytes as u64)
        .read_to_vec()
    {
        Ok(bytes) => Ok(bytes),
        Err(ureq::Error::BodyExceedsLimit(_)) => Err(FetchError::TooLarge(limits.max_bytes)),
        Err(e) => Err(FetchError::Transfer(e.to_string())),
    }
}

fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// A redirect's `location` made absolute against `base`; `None` for another scheme.
fn resolve(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    let (scheme, rest) = base.split_once("://")?;
    if let Some(r) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{r}"));
    }
    let has_scheme = location.split_once(':').is_some_and(|(s, _)| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    if has_scheme {
        return is_http(location).then(|| location.to_owned());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    if location.starts_with('?') || location.is_empty() {
        let path = if path.is_empty() { "/" } else { path };
        return Some(format!("{scheme}://{authority}{path}{location}"));
    }
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    Some(format!("{scheme}://{authority}{dir}{location}"))
}

fn read_file(path: &Path, limits: &FetchLimits) -> Result<Vec<u8>, FetchError> {
    let shown = path.display().to_string();
    // Symlinks and `..` are resolved before the check, so neither leads outside.
    let real = path
        .canonicalize()
        .map_err(|e| FetchError::Transfer(format!("{shown}: {e}")))?;
    let allowed = limits
        .module_dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(d));
    if !allowed {
        return Err(FetchError::FileNotAllowed(shown));
    }
    let file =
        std::fs::File::open(&real).map_err(|e| FetchError::Transfer(format!("{shown}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(limits.max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FetchError::Transfer(format!("{shown}: {e}")))?;
    if bytes.len() > limits.max_bytes {
        return Err(FetchError::TooLarge(limits.max_bytes));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_only_under_allowed_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let allowed = dir.join("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::write(allowed.join("m.wasm"), b"module").unwrap();
        std::fs::write(dir.join("secret"), b"secret").unwrap();
        let limits = FetchLimits {
            max_bytes: 100,
            timeout: Duration::from_secs(1),
            module_dirs: vec![allowed.clone()],
            allowed: HostCeiling::unset("fetch_allowed_hosts"),
        };
        let url = |p: &Path| format!("file://{}", p.display());
        assert_eq!(
            fetch(&url(&allowed.join("m.wasm")), &limits).unwrap(),
            b"module"
        );
        assert!(matches!(
            fetch(&url(&allowed.join("../secret")), &limits),
            Err(FetchError::FileNotAllowed(_))
        ));
        std::os::unix::fs::symlink(dir.join("secret"), allowed.join("link")).unwrap();
        assert!(matches!(
            fetch(&url(&allowed.join("link")), &limits),
            Err(FetchError::FileNotAllowed(_))
        ));
        let small = FetchLimits {
            max_bytes: 3,
            ..limits.clone()
        };
        assert!(matches!(
            fetch(&url(&allowed.join("m.wasm")), &small),
            Err(FetchError::TooLarge(3))
        ));
        let none = FetchLimits {
            module_dirs: vec![],
            ..limits
        };
        assert!(matches!(
            fetch(&url(&allowed.join("m.wasm")), &none),
            Err(FetchError::FileNotAllowed(_))
        ));
        assert!(matches!(
            fetch("ftp://x/y", &none),
            Err(FetchError::Scheme(_))
        ));
    }

    #[test]
    fn redirect_targets_are_made_absolute() {
        let base = "http://a.example:8080/dir/m.wasm?x=1";
        for (location, want) in [
            ("/r", "http://a.example:8080/r"),
            ("other.wasm", "http://a.example:8080/dir/other.wasm"),
            ("?y=2", "http://a.example:8080/dir/m.wasm?y=2"),
            ("//b.example/x", "http://b.example/x"),
            ("https://c.example/y", "https://c.example/y"),
            ("HTTP://127.0.0.1:1/", "HTTP://127.0.0.1:1/"),
        ] {
            assert_eq!(resolve(base, location).as_deref(), Some(want), "{location}");
        }
        assert_eq!(resolve("http://h", "x").as_deref(), Some("http://h/x"));
        for other in ["file:///etc/passwd", "ftp://x/y", "gopher:x"] {
            assert_eq!(resolve(base, other), None, "{other}");
        }
    }

    #[test]
    fn sources_outside_the_ceiling_are_refused_before_any_connection() {
        let limits = FetchLimits {
            max_bytes: 100,
            timeout: Duration::from_secs(1),
            module_dirs: vec![],
            allowed: HostCeiling::unset("fetch_allowed_hosts"),
        };
        for source in [
            "http://127.0.0.1:1/m.wasm",
            "http://169.254.169.254/latest",
            "http://localhost:1/",
            "http://[::1]:1/",
            "http://u:p@example.com/",
        ] {
            match fetch(source, &limits) {
                Err(FetchError::NotAllowed(why)) => {
                    assert!(
                        why.contains("fetch_allowed_hosts") || why.contains("user info"),
                        "{why}"
                    )
                }
                other => panic!("{source}: {other:?}"),
            }
        }
    }
}
