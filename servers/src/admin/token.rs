//! The management API's bearer token: given by the operator, or generated on first start
//! and kept in the data directory (mode 0600).

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use tracing::{info, warn};

/// File in the data directory that holds a generated token.
pub const FILE: &str = "admin-token";

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--admin-token`, `FRENEZULO_ADMIN_TOKEN` or the config file.
    Given,
    /// The data directory, generated on an earlier start.
    Stored,
    /// Generated now (and stored).
    Generated,
}

/// The token to use: `given` if set, otherwise the one stored in `data_dir`, otherwise a
/// new random one, stored there and printed once in the log.
pub fn resolve(given: Option<String>, data_dir: &Path) -> anyhow::Result<(String, Source)> {
    if let Some(token) = given {
        if token.len() < 16 {
            warn!(
                "the admin token is shorter than 16 characters; anyone who can reach the server may guess it"
            );
        }
        anyhow::ensure!(!token.is_empty(), "the admin token is empty");
        return Ok((token, Source::Given));
    }
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            info!(path = %path.display(), "management API token read from the data directory");
            return Ok((text.trim().to_owned(), Source::Stored));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?
    };
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    info!(path = %path.display(), "generated a management API token (shown once; it is kept in that file): {token}");
    Ok((token, Source::Generated))
}
