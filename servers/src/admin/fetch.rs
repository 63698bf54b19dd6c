//! Fetching a module named by URL for `POST /services/add`: `http://` and `https://`
//! (rustls) through ureq, with a connect timeout, a total timeout, at most a few redirects
//! and a size cap; `file://` only under the directories the operator allows.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

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
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return Err(FetchError::Scheme(source.to_owned()));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .timeout_connect(Some(limits.timeout.min(Duration::from_secs(10))))
        .max_redirects(MAX_REDIRECTS)
        .http_status_as_error(false)
        .user_agent(concat!("frenezulo/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent
        .get(source)
        .call()
        .map_err(|e| FetchError::Transfer(e.to_string()))?;
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
}
