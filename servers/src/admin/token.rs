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
/// Shortest token accepted.
pub const MIN_LEN: usize = 16;

/// Placeholders of examples and templates: a token containing one is refused.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "changeit",
    "replace-me",
    "replaceme",
    "your-token",
    "yourtoken",
    "example",
];

/// Why `token` is too weak to guard the management API, if it is.
pub fn weakness(token: &str) -> Option<String> {
    if token.chars().count() < MIN_LEN {
        return Some(format!("it is shorter than {MIN_LEN} characters"));
    }
    let lower = token.to_ascii_lowercase();
    if let Some(p) = PLACEHOLDERS.iter().find(|p| lower.contains(*p)) {
        return Some(format!("it contains the placeholder `{p}`"));
    }
    None
}

/// Refuses a weak token, saying where it came from and how to make a good one.
fn check(token: &str, whence: &str) -> anyhow::Result<()> {
    match weakness(token) {
        None => Ok(()),
        Some(why) => anyhow::bail!(
            "the management API token {whence} is too weak: {why}; anyone who can reach the \
             server could guess it. Use a random one (e.g. `openssl rand -hex 32`), or give \
             none and one is generated"
        ),
    }
}

/// A given token that is empty counts as none; one that is weak ([`weakness`]), given or
/// stored, is an error.
pub fn resolve(given: Option<String>, data_dir: &Path) -> anyhow::Result<(String, Source)> {
    if let Some(token) = given {
        anyhow::ensure!(!token.is_empty(), "the admin token is empty");
        check(
            &token,
            "(from --admin-token, FRENEZULO_ADMIN_TOKEN or admin_token)",
        )?;
        return Ok((token, Source::Given));
    }
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode());
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{mode:o}"), "the token file is readable by others; chmod 600 it");
            }
            let token = text.trim().to_owned();
            check(&token, &format!("in {}", path.display()))?;
            info!(path = %path.display(), "management API token read from the data directory");
            return Ok((token, Source::Stored));
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
        // The data directory is locked: no other process writes here. An empty file left by
        // an interrupted start is written over.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?
    };
    // `mode` above applies only when the file is created: an empty file left behind (or
    // put there) keeps its mode, so it is set on the open descriptor before the token is
    // written.
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    info!(path = %path.display(), "generated a management API token (shown once; it is kept in that file): {token}");
    Ok((token, Source::Generated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_read_back_and_an_empty_file_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), "").unwrap();
        let (token, source) = resolve(None, &dir).unwrap();
        assert_eq!((token.len(), source), (64, Source::Generated));
        assert_eq!(
            resolve(None, &dir).unwrap(),
            (token.clone(), Source::Stored)
        );
        let given = "given-token-0123456789".to_owned();
        assert_eq!(
            resolve(Some(given.clone()), &dir).unwrap(),
            (given, Source::Given)
        );
    }

    #[test]
    fn weak_tokens_are_refused_given_or_stored() {
        let tmp = tempfile::tempdir().unwrap();
        for weak in [
            "change-me",
            "short",
            "0123456789abcde",
            "CHANGE-ME-0123456789",
            "my-example-token-123",
        ] {
            let e = resolve(Some(weak.to_owned()), tmp.path()).unwrap_err();
            assert!(e.to_string().contains("too weak"), "{weak}: {e}");
        }
        assert_eq!(weakness("0123456789abcdef"), None);
        std::fs::write(tmp.path().join(FILE), "change-me\n").unwrap();
        let e = resolve(None, tmp.path()).unwrap_err();
        assert!(e.to_string().contains(FILE), "{e}");
    }

    #[test]
    fn an_existing_empty_file_is_made_private_before_the_token_is_written() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE);
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, source) = resolve(None, &dir).unwrap();
        assert_eq!(source, Source::Generated);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
}
