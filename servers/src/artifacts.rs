//! The artifact cache on disk: machine code wasmtime compiled, kept in the data directory
//! so that a cold start after a restart (or after a service idled out) deserializes in a
//! millisecond instead of compiling for a hundred.
//!
//! Files live under `artifacts/<engine fingerprint>/<module sha256>.cwasm`, so that a new
//! wasmtime version or other settings never meet old code. Each file is the code followed
//! by a magic line and the code's CRC-32, so that a core module's file is mapped as it is
//! (nothing copied: a cold start from it takes no fresh pages for the code); a file whose
//! checksum does not match is deleted and the module compiled again, because deserializing
//! is the one step that trusts its input. The checksum catches damage (a torn write, a
//! flipped bit), not a hostile writer, who could write a matching checksum of any strength
//! beside their code; so the directories must be the server user's own and closed to
//! others (checked at open: a directory that is not is not used), and an artifact is
//! opened with `O_NOFOLLOW`, so a symbolic link planted in its place is never loaded.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use frenezulo_engines::{CompileError, CompiledModule, Engine};
use tracing::{debug, info, warn};

use crate::registry::store::{
    Digest, check_private_dir, create_private_dir, remove_temporaries, write_atomic,
};

/// The format's marker. Version 1 put a SHA-256 in front of the code (0.15 ms per 180 KB
/// artifact, most of a cold start's reading, and the code had to be copied out of the file);
/// version 2 puts this and a CRC-32 after it. Files of version 1 are refused as damaged,
/// deleted and recompiled once.
const MAGIC: &[u8; 8] = b"FRZART2\n";

/// The magic line and the code's CRC-32, little-endian, after the code.
const TRAILER: usize = MAGIC.len() + 4;

/// How a module came to be ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Compiled from its bytes.
    Compiled,
    /// Deserialized from the artifact cache.
    FromArtifact,
}

impl Loaded {
    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Loaded::Compiled => "compiled",
            Loaded::FromArtifact => "artifact",
        }
    }
}

/// Compiles modules through the artifact cache. Shared by the compile pool and the
/// management API's validation.
pub struct Artifacts {
    engine: Arc<dyn Engine>,
    /// `None` when the engine keeps no artifacts (wasmi).
    dir: Option<PathBuf>,
}

impl Artifacts {
    /// The cache under `data_dir/artifacts` for this engine. Directories of other engine
    /// fingerprints (an older wasmtime) are removed.
    pub fn open(engine: Arc<dyn Engine>, data_dir: &Path) -> Self {
        let Some(fingerprint) = engine.artifact_fingerprint() else {
            return Self { engine, dir: None };
        };
        let root = data_dir.join("artifacts");
        let dir = root.join(&fingerprint);
        let private = create_private_dir(&dir)
            .and_then(|()| check_private_dir(&root))
            .and_then(|()| check_private_dir(&dir));
        if let Err(e) = private {
            warn!(error = %e, "artifact cache unavailable; modules are compiled on every cold start");
            return Self { engine, dir: None };
        }
        remove_temporaries(&dir);
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_name() != fingerprint.as_str() {
                    info!(dir = %entry.path().display(), "removing artifacts of another engine version");
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Self {
            engine,
            dir: Some(dir),
        }
    }

    fn path(&self, digest: Digest) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{}.cwasm", digest.hex())))
    }

    /// The module for `wasm`: from its artifact when there is a sound one, otherwise
    /// compiled (and its artifact written for next time).
    pub fn load(
        &self,
        wasm: &[u8],
    ) -> Result<(Arc<dyn CompiledModule>, Loaded, Duration), CompileError> {
        let started = Instant::now();
        let path = self.path(Digest::of(wasm));
        if let Some(path) = &path
            && let Some((file, len)) = open_checked(path)
        {
            // SAFETY: the file's first `len` bytes are byte for byte what
            // `compile_to_artifact` serialized on an engine with this fingerprint (the
            // directory's name), in the server's own private directory: their checksum was
            // written after them and matches. Files there are only ever replaced by a
            // rename, never changed in place.
            #[allow(unsafe_code)]
            let loaded = if frenezulo_engines::is_component(wasm) {
                read_code(file, len).and_then(|code| unsafe { self.engine.load_artifact(&code) })
            } else {
                unsafe { self.engine.load_module_artifact_file(file, len) }
            };
            match loaded {
                Ok(module) => return Ok((module, Loaded::FromArtifact, started.elapsed())),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "artifact refused; compiling");
                    let _ = fs::remove_file(path);
                }
            }
        }
        let (module, code) = self.engine.compile_to_artifact(wasm)?;
        let elapsed = started.elapsed();
        if let (Some(path), Some(code)) = (path, code) {
            let mut file = code;
            let crc = crc32fast::hash(&file);
            file.extend_from_slice(MAGIC);
            file.extend_from_slice(&crc.to_le_bytes());
            if let Err(e) = write_atomic(&path, &file) {
                warn!(error = %e, "could not keep the compiled artifact");
            }
        }
        Ok((module, Loaded::Compiled, elapsed))
    }

    /// Deletes the artifacts of modules not in `keep`.
    pub fn retain(&self, keep: &[Digest]) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let digest = name
                .to_str()
                .and_then(|n| n.strip_suffix(".cwasm"))
                .and_then(Digest::parse);
            if digest.is_none_or(|d| !keep.contains(&d)) {
                debug!(path = %entry.path().display(), "removing unused artifact");
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// An artifact file and the length of its code, if it is a regular file (not a symbolic
/// link: opened with `O_NOFOLLOW`), whole, and its checksum matches; anything else is
/// deleted. The code is read through a small buffer to check it, not kept.
fn open_checked(path: &Path) -> Option<(fs::File, u64)> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path);
    let discard = |why: &str| {
        warn!(path = %path.display(), "artifact {why}; deleting it and compiling");
        let _ = fs::remove_file(path);
        None
    };
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return discard(&format!("not opened ({e}; a symbolic link?)")),
    };
    let size = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        _ => return discard("is not a regular file"),
    };
    let Some(len) = size.checked_sub(TRAILER as u64) else {
        return discard("is cut short");
    };
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match file.read(&mut buf[..want]) {
            Ok(0) => return discard("is cut short"),
            Ok(n) => {
                crc.update(&buf[..n]);
                left -= n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let mut trailer = [0u8; TRAILER];
    match file.read_exact(&mut trailer) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return discard("is cut short"),
        Err(_) => return None,
    }
    if !trailer.starts_with(MAGIC) {
        return discard("is of another format or damaged");
    }
    if crc.finalize().to_le_bytes()[..] != trailer[MAGIC.len()..] {
        return discard("checksum does not match");
    }
    Some((file, len))
}

/// The first `len` bytes of `file`: a component's artifact, which wasmtime takes as bytes.
fn read_code(mut file: fs::File, len: u64) -> Result<Vec<u8>, CompileError> {
    use std::io::{Read as _, Seek as _};
    let mut code = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.rewind()
        .and_then(|()| file.take(len).read_to_end(&mut code))
        .map_err(|e| CompileError::Engine(format!("artifact not read: {e}")))?;
    Ok(code)
}

#[cfg(all(test, feature = "wasmtime"))]
mod tests {
    use super::*;
    use frenezulo_engines::{EngineConfig, EngineKind};

    /// A wasmtime engine and the hello example's bytes.
    fn wasmtime_and_hello() -> (Arc<dyn Engine>, Vec<u8>) {
        let engine =
            frenezulo_engines::create(EngineKind::Wasmtime, &EngineConfig::default()).unwrap();
        let wasm = wat::parse_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/hello.wat"
        ))
        .unwrap();
        (engine, wasm)
    }

    #[test]
    fn artifacts_are_reused_and_damaged_ones_recompiled() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (engine, wasm) = wasmtime_and_hello();
        let artifacts = Artifacts::open(engine.clone(), &dir);
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::Compiled);
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::FromArtifact);
        // A flipped bit in the code: the checksum catches it, the module is compiled again.
        let path = artifacts.path(Digest::of(&wasm)).unwrap();
        let mut file = fs::read(&path).unwrap();
        let middle = file.len() / 2;
        file[middle] ^= 1;
        fs::write(&path, &file).unwrap();
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::Compiled);
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::FromArtifact);
        artifacts.retain(&[]);
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::Compiled);
    }

    #[test]
    fn artifacts_cut_short_or_of_the_first_format_are_recompiled() {
        let tmp = tempfile::tempdir().unwrap();
        let (engine, wasm) = wasmtime_and_hello();
        let artifacts = Artifacts::open(engine, tmp.path());
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::Compiled);
        let path = artifacts.path(Digest::of(&wasm)).unwrap();
        let sound = fs::read(&path).unwrap();
        let code = &sound[..sound.len() - TRAILER];
        let first_format = [b"FRZART1\n".as_slice(), &Digest::of(code).0, code].concat();
        for damaged in [
            sound[..TRAILER - 1].to_vec(),
            sound[..sound.len() - 1].to_vec(),
            sound[1..].to_vec(),
            first_format,
        ] {
            fs::write(&path, &damaged).unwrap();
            assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::Compiled);
            assert_eq!(fs::read(&path).unwrap(), sound, "written again whole");
            assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::FromArtifact);
        }
    }

    #[test]
    fn a_symlinked_artifact_is_not_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let (engine, wasm) = wasmtime_and_hello();
        let artifacts = Artifacts::open(engine.clone(), tmp.path());
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::Compiled);
        // A sound artifact moved elsewhere, and a link to it in its place.
        let path = artifacts.path(Digest::of(&wasm)).unwrap();
        let elsewhere = tmp.path().join("planted.cwasm");
        fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_eq!(
            artifacts.load(&wasm).unwrap().1,
            Loaded::Compiled,
            "the link is not followed"
        );
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link was replaced by a fresh artifact"
        );
        assert_eq!(artifacts.load(&wasm).unwrap().1, Loaded::FromArtifact);
    }

    #[test]
    fn an_artifact_directory_others_may_write_is_not_used() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let engine =
            frenezulo_engines::create(EngineKind::Wasmtime, &EngineConfig::default()).unwrap();
        let root = tmp.path().join("artifacts");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Artifacts::open(engine.clone(), tmp.path()).dir.is_none());
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(Artifacts::open(engine, tmp.path()).dir.is_some());
    }
}
