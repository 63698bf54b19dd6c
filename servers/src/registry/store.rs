//! Where the registry lives: a manifest store (which services exist, and how each is set
//! up) and a content-addressed blob store (module bytes, named by SHA-256). The local data
//! directory is the embedded default; a store several nodes share plugs in behind the
//! same two traits.
//!
//! Crash safety comes from the order of writes: a module's bytes are durable before a
//! manifest names them, and the manifest is replaced atomically (temporary file, fsync,
//! rename, fsync of the directory). A crash at any point leaves the old manifest or the
//! new one, and whichever it is names only modules that exist.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::manifest::{FORMAT, Manifest};

/// A module's SHA-256, which names it in the blob store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, without the `sha256:` prefix: the blob's file name.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses `sha256:<64 hex digits>` (the prefix is optional).
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A stored file is not what it should be (a manifest that does not parse, a blob whose
    /// bytes do not match its digest).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The manifest names a module the blob store does not have.
    #[error("module {0} is not in the store")]
    Missing(Digest),
    /// Another process holds the data directory.
    #[error("{0} is in use by another frenezulo process")]
    Locked(PathBuf),
    /// A directory whose files the server trusts (compiled code is loaded from it) is owned
    /// by another user or writable by others.
    #[error(
        "{path}: {reason}; compiled code is loaded from the data directory, so it must be owned by \
         the server's user and not writable by group or others (fix: chown it to this user and \
         `chmod 700` it, or pick another --data-dir)"
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Who owns it or what mode it has.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The manifest: read whole at start, replaced whole on every change.
pub trait ManifestStore: Send {
    /// The manifest as last committed (empty if none was ever committed).
    fn load(&self) -> Result<Manifest, StoreError>;
    /// Replaces the manifest; once this returns, a crash keeps the new one.
    fn commit(&mut self, manifest: &Manifest) -> Result<(), StoreError>;
}

/// Module bytes by digest.
pub trait BlobStore: Send {
    /// Stores `bytes` under their digest; once this returns, a crash keeps them.
    fn put(&mut self, digest: Digest, bytes: &[u8]) -> Result<(), StoreError>;
    /// The bytes stored under `digest`, checked against it.
    fn get(&self, digest: Digest) -> Result<Bytes, StoreError>;
    /// Deletes a blob no manifest names any more; a missing one is not an error.
    fn remove(&mut self, digest: Digest) -> Result<(), StoreError>;
    /// Every stored digest.
    fn list(&self) -> Result<Vec<Digest>, StoreError>;
}

/// The data directory: `manifest.json`, `modules/<sha256>.wasm`, and (for the artifact
/// cache, which keeps its own files) `artifacts/`. Held with an exclusive lock, so two
/// servers never write one directory.
pub struct LocalStore {
    dir: PathBuf,
    modules: PathBuf,
    /// Holds the lock for as long as the store lives.
    _lock: File,
}

const MANIFEST: &str = "manifest.json";

impl LocalStore {
    /// Opens (creating if needed, mode 0700) the data directory and locks it.
    /// A directory that already existed must be owned by this user and not writable by
    /// group or others ([`check_private_dir`]); it is refused, not tightened, because
    /// another user may already have written into it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir)?;
        check_private_dir(dir)?;
        let modules = dir.join("modules");
        create_private_dir(&modules)?;
        check_private_dir(&modules)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        // Left by a crash mid-write; the lock says no other process is writing them.
        remove_temporaries(dir);
        remove_temporaries(&modules);
        Ok(Self {
            dir: dir.to_owned(),
            modules,
            _lock: lock,
        })
    }

    fn blob_path(&self, digest: Digest) -> PathBuf {
        self.modules.join(format!("{}.wasm", digest.hex()))
    }
}

impl ManifestStore for LocalStore {
    fn load(&self) -> Result<Manifest, StoreError> {
        let path = self.dir.join(MANIFEST);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => return Err(io_error(&path)(e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if manifest.format > FORMAT {
            return Err(StoreError::Corrupt {
                path,
                reason: format!(
                    "written by a newer frenezulo (format {}; this one reads up to {FORMAT})",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }

    fn commit(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        let text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
        write_atomic(&self.dir.join(MANIFEST), &text)
    }
}

impl BlobStore for LocalStore {
    fn put(&mut self, digest: Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        if path.exists() && self.get(digest).is_ok() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    fn get(&self, digest: Digest) -> Result<Bytes, StoreError> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(digest));
            }
            Err(e) => return Err(io_error(&path)(e)),
        };
        if Digest::of(&bytes) != digest {
            return Err(StoreError::Corrupt {
                path,
                reason: "contents do not match the digest in the name".to_owned(),
            });
        }
        Ok(bytes.into())
    }

    fn remove(&mut self, digest: Digest) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    fn list(&self) -> Result<Vec<Digest>, StoreError> {
        let entries = fs::read_dir(&self.modules).map_err(io_error(&self.modules))?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                Digest::parse(name.to_str()?.strip_suffix(".wasm")?)
            })
            .collect())
    }
}

/// Creates `dir` (and its parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))
}

/// Refuses a directory that another user owns, or that group or others may write: files
/// in it could then be replaced by someone other than the server's user.
pub fn check_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(dir).map_err(io_error(dir))?;
    let me = rustix::process::geteuid().as_raw();
    let reason = if meta.uid() != me {
        format!("owned by uid {}, not this user (uid {me})", meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "mode {:o} lets group or others write it",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(StoreError::NotPrivate {
        path: dir.to_owned(),
        reason,
    })
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one: a
/// temporary file beside it, fsync, rename over, fsync of the directory. Temporary files a
/// crash left behind start with `.tmp-` and are removed by [`remove_temporaries`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Unique per write: two threads may write the same file (one artifact for two services).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{name}-{}-{n}", std::process::id()));
    let write = || -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(path)(e)
    })
}

/// Removes temporary files an interrupted [`write_atomic`] left in `dir`.
pub fn remove_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::manifest::Entry;

    #[test]
    fn digests_print_and_parse() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert_eq!(Digest::parse(&d.hex()), Some(d));
        assert_eq!(Digest::parse("sha256:zz"), None);
    }

    #[test]
    fn blobs_and_manifest_survive_reopening_and_corruption_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut store = LocalStore::open(&dir).unwrap();
        assert!(
            matches!(LocalStore::open(&dir), Err(StoreError::Locked(_))),
            "a second server on the same directory is refused"
        );
        let d = Digest::of(b"module");
        store.put(d, b"module").unwrap();
        let mut manifest = Manifest::default();
        manifest
            .services
            .insert("shop".to_owned(), Entry::uploaded(b"module"));
        store.commit(&manifest).unwrap();
        drop(store);
        let mut store = LocalStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), manifest);
        assert_eq!(&store.get(d).unwrap()[..], b"module");
        assert_eq!(store.list().unwrap(), vec![d]);
        fs::write(store.blob_path(d), b"tampered").unwrap();
        assert!(matches!(store.get(d), Err(StoreError::Corrupt { .. })));
        store.remove(d).unwrap();
        assert!(matches!(store.get(d), Err(StoreError::Missing(_))));
        store.remove(d).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        for (mode, refused) in [(0o777, true), (0o770, true), (0o702, true), (0o755, false)] {
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).unwrap();
            let opened = LocalStore::open(tmp.path());
            assert_eq!(
                matches!(opened, Err(StoreError::NotPrivate { .. })),
                refused,
                "mode {mode:o}"
            );
            drop(opened);
        }
        // A subdirectory counts too.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(
            tmp.path().join("modules"),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert!(matches!(
            LocalStore::open(tmp.path()),
            Err(StoreError::NotPrivate { .. })
        ));
    }

    #[test]
    fn a_manifest_from_a_newer_version_is_not_read_as_this_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let newer = r#"{"format": 99, "services": {}}"#;
        std::fs::write(dir.path().join(MANIFEST), newer).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("written by a newer frenezulo (format 99"), "{e}");
    }
}
