//! The shared registry of a cluster: NATS JetStream, reached from a side thread of its own.
//!
//! Every node keeps the services in a key-value bucket (one key per service, the value its
//! manifest entry as JSON) and the module bytes in an object store bucket, named by their
//! SHA-256. async-nats needs tokio: it runs on this module's thread, on a current-thread
//! runtime, and talks to the management thread through channels only. Nothing on the
//! request path waits on NATS: serving threads only ever see registry changes the
//! management thread publishes, as in a single-node setup.
//!
//! - Writes ([`Command`]) store the module first, then write the entry with compare-and-set
//!   on its revision (create when the writer saw none), so two nodes changing one service
//!   at once cannot both win; the loser hears [`WriteError::Conflict`].
//! - Reads: the thread watches every key of the bucket from its last values on, fetches
//!   each changed entry's module, checks it against its digest and hands both to the
//!   management thread ([`ClusterEvent::Changed`]), which compiles it before any serving
//!   thread sees it. After an outage the watch is started again: current values come
//!   again, and the management thread ignores the revisions it already has.
//! - Availability is the client's connection state, checked twice a second; while NATS is
//!   away writes fail at once with [`WriteError::Unavailable`] and the node serves what it
//!   has (its data directory keeps a copy, so a restart serves it too).
//! - Module objects no entry names are deleted once they are older than [`GC_GRACE`], so
//!   an upload whose entry another node has not written yet is left alone: when a node
//!   connects, and every [`GC_GRACE`] while it stays connected.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures_util::StreamExt as _;
use thiserror::Error;
use tokio::io::AsyncReadExt as _;
use tracing::{error, info, warn};

use crate::mailbox::Mailbox;
use crate::registry::manifest::Entry;
use crate::registry::store::Digest;

/// How long one NATS operation may take before the write fails as unavailable.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the connection state is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How old an unreferenced module object must be before it is deleted.
pub const GC_GRACE: Duration = Duration::from_secs(600);

/// Writes waiting for the NATS thread; past it, a write fails as unavailable.
const COMMANDS: usize = 64;

/// Largest module object read back.
const MAX_OBJECT: usize = 64 << 20;

/// How to reach the shared registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT` (or `tls://`), comma-separated for several servers.
    pub url: String,
    /// The key-value bucket of service entries.
    pub kv_bucket: String,
    /// The object store bucket of module bytes.
    pub object_bucket: String,
    /// A token to authenticate with.
    pub token: Option<String>,
    /// A `.creds` file to authenticate with (JWT and NKey).
    pub credentials: Option<PathBuf>,
    /// Require TLS.
    pub require_tls: bool,
    /// A PEM file of CA certificates to trust, beyond the system's.
    pub root_certificates: Option<PathBuf>,
}

impl ClusterConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: String) -> Self {
        Self {
            url,
            kv_bucket: "frenezulo-registry".to_owned(),
            object_bucket: "frenezulo-modules".to_owned(),
            token: None,
            credentials: None,
            require_tls: false,
            root_certificates: None,
        }
    }
}

/// A write, from the management thread.
#[derive(Debug)]
pub enum Command {
    /// Stores `wasm` (if given) as the object `digest`, then writes `entry` under `name`
    /// if its revision is still `expected` (`None`: only if the service does not exist).
    Put {
        /// Names the answer.
        token: u64,
        /// The service.
        name: String,
        /// Its entry.
        entry: Box<Entry>,
        /// The module bytes, when they may not be stored yet.
        wasm: Option<Bytes>,
        /// The revision the writer saw.
        expected: Option<u64>,
    },
    /// Deletes `name` if its revision is still `expected`.
    Delete {
        /// Names the answer.
        token: u64,
        /// The service.
        name: String,
        /// The revision the writer saw.
        expected: u64,
    },
}

/// Why a write to the shared registry failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Another write changed the service first.
    #[error("service `{0}` was changed by another write at the same time; read it again and retry")]
    Conflict(String),
    /// NATS cannot be reached; nothing was written.
    #[error("the shared registry (NATS) is unavailable: {0}")]
    Unavailable(String),
}

/// What the NATS thread tells the management thread.
#[derive(Debug)]
pub enum ClusterEvent {
    /// A service's current entry and module (checked against its digest).
    Changed {
        /// The service.
        name: String,
        /// The entry's revision in the bucket.
        revision: u64,
        /// The entry.
        entry: Box<Entry>,
        /// The module bytes.
        wasm: Bytes,
    },
    /// A service was removed.
    Removed {
        /// The service.
        name: String,
        /// The removal's revision in the bucket.
        revision: u64,
    },
    /// A write finished: the entry's new revision, or why not.
    Written {
        /// The command's token.
        token: u64,
        /// The revision written.
        result: Result<u64, WriteError>,
    },
}

/// The management thread's handle on the NATS thread.
pub struct Cluster {
    commands: tokio::sync::mpsc::Sender<Command>,
    available: Arc<AtomicBool>,
    /// Where the shared registry is, for health and logs.
    pub url: String,
}

impl Cluster {
    /// Starts the NATS thread. It connects in the background and keeps trying.
    /// What it learns goes to `events` (which may block while the receiver is busy:
    /// the NATS thread then waits, and NATS keeps what it has not read).
    pub fn start(config: ClusterConfig, events: Mailbox<ClusterEvent>) -> std::io::Result<Self> {
        let (commands, rx) = tokio::sync::mpsc::channel(COMMANDS);
        let available = Arc::new(AtomicBool::new(false));
        let flag = available.clone();
        let url = config.url.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("nats".to_owned())
            .spawn(move || runtime.block_on(run(config, rx, events, flag)))?;
        Ok(Self {
            commands,
            available,
            url,
        })
    }

    /// Whether NATS was reachable at the last look.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Hands a write to the NATS thread; the answer comes as [`ClusterEvent::Written`].
    pub fn send(&self, command: Command) -> Result<(), WriteError> {
        if !self.available() {
            return Err(WriteError::Unavailable(format!(
                "not connected to {}",
                self.url
            )));
        }
        self.commands
            .try_send(command)
            .map_err(|_| WriteError::Unavailable("too many writes in progress".to_owned()))
    }
}

/// The buckets, once reached.
struct Buckets {
    kv: kv::Store,
    objects: object_store::ObjectStore,
}

async fn run(
    config: ClusterConfig,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    events: Mailbox<ClusterEvent>,
    available: Arc<AtomicBool>,
) {
    let client = match connect(&config).await {
        Ok(client) => client,
        Err(e) => {
            error!(target: "cluster", url = %redact_url(&config.url), error = %e, "cannot use the shared registry");
            return;
        }
    };
    let emit = |event: ClusterEvent| {
        events.send(event);
    };
    let mut was_available = false;
    loop {
        // (Re)start: reach the buckets and watch every key from its current value on.
        let started = async {
            let buckets = buckets(&client, &config).await?;
            let watch = buckets
                .kv
                .watch_with_history(">")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((buckets, watch))
        };
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let (buckets, mut watch) = match tokio::time::timeout(OP_TIMEOUT, started).await {
            Ok(Ok(started)) if connected => started,
            failed => {
                if was_available {
                    let why = match failed {
                        Ok(Err(e)) => e,
                        _ => "not connected".to_owned(),
                    };
                    warn!(target: "cluster", url = %redact_url(&config.url), reason = why, "shared registry unavailable; serving the last known services");
                }
                was_available = false;
                available.store(false, Ordering::Release);
                refuse_pending(&mut commands, &emit);
                tokio::time::sleep(CHECK_EVERY).await;
                continue;
            }
        };
        info!(target: "cluster", url = %redact_url(&config.url), kv = config.kv_bucket, objects = config.object_bucket, "shared registry available");
        was_available = true;
        available.store(true, Ordering::Release);
        collect_garbage(&buckets).await;
        let mut check = tokio::time::interval(CHECK_EVERY);
        // Again every grace period, so a node that runs for weeks collects too.
        let mut gc = tokio::time::interval_at(tokio::time::Instant::now() + GC_GRACE, GC_GRACE);
        loop {
            tokio::select! {
                _ = gc.tick() => collect_garbage(&buckets).await,
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let event = write(&buckets, command).await;
                    emit(event);
                }
                entry = watch.next() => {
                    match entry {
                        Some(Ok(entry)) => {
                            if let Some(event) = read(&buckets, entry).await {
                                emit(event);
                            }
                        }
                        Some(Err(e)) => {
                            warn!(target: "cluster", error = %e, "watch of the shared registry failed; starting it again");
                            break;
                        }
                        None => break,
                    }
                }
                _ = check.tick() => {
                    if client.connection_state() != async_nats::connection::State::Connected {
                        break;
                    }
                }
            }
        }
        available.store(false, Ordering::Release);
    }
}

/// Connects, retrying in the background if NATS is not up yet.
async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name("frenezulo")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .require_tls(config.require_tls);
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("credentials {}: {e}", path.display()))?;
    }
    if let Some(path) = &config.root_certificates {
        options = options.add_root_certificates(path.clone());
    }
    options
        .connect(config.url.as_str())
        .await
        .map_err(|e| e.to_string())
}

/// Gets the buckets, creating them on first use.
async fn buckets(client: &async_nats::Client, config: &ClusterConfig) -> Result<Buckets, String> {
    let js = jetstream::new(client.clone());
    let kv = match js.get_key_value(&config.kv_bucket).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: config.kv_bucket.clone(),
                description: "frenezulo services: one entry per prefix".to_owned(),
                history: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("key-value bucket {}: {e}", config.kv_bucket))?,
    };
    let objects = match js.get_object_store(&config.object_bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: config.object_bucket.clone(),
                description: Some("frenezulo modules, named by SHA-256".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("object store {}: {e}", config.object_bucket))?,
    };
    Ok(Buckets { kv, objects })
}

/// Fails the writes queued while NATS was away.
fn refuse_pending(
    commands: &mut tokio::sync::mpsc::Receiver<Command>,
    emit: &impl Fn(ClusterEvent),
) {
    while let Ok(command) = commands.try_recv() {
        let token = match command {
            Command::Put { token, .. } | Command::Delete { token, .. } => token,
        };
        emit(ClusterEvent::Written {
            token,
            result: Err(WriteError::Unavailable("NATS went away".to_owned())),
        });
    }
}

async fn write(buckets: &Buckets, command: Command) -> ClusterEvent {
    let (token, result) = match command {
        Command::Put {
            token,
            name,
            entry,
            wasm,
            expected,
        } => (token, put(buckets, &name, &entry, wasm, expected).await),
        Command::Delete {
            token,
            name,
            expected,
        } => {
            let deleted = tokio::time::timeout(
                OP_TIMEOUT,
                buckets.kv.delete_expect_revision(&name, Some(expected)),
            )
            .await;
            let result = match deleted {
                Ok(Ok(())) => Ok(expected),
                Ok(Err(e)) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => {
                    Err(WriteError::Conflict(name))
                }
                Ok(Err(e)) => Err(WriteError::Unavailable(e.to_string())),
                Err(_) => Err(WriteError::Unavailable("timed out".to_owned())),
            };
            (token, result)
        }
    };
    ClusterEvent::Written { token, result }
}

/// The module first, then the entry, compare-and-set on its revision.
async fn put(
    buckets: &Buckets,
    name: &str,
    entry: &Entry,
    wasm: Option<Bytes>,
    expected: Option<u64>,
) -> Result<u64, WriteError> {
    let unavailable = |e: String| WriteError::Unavailable(e);
    let object = object_name(&entry.digest).ok_or_else(|| unavailable("bad digest".to_owned()))?;
    if let Some(wasm) = wasm {
        let stored = tokio::time::timeout(OP_TIMEOUT, buckets.objects.info(&object)).await;
        if !matches!(stored, Ok(Ok(info)) if !info.deleted && info.size == wasm.len()) {
            let mut reader: &[u8] = &wasm;
            tokio::time::timeout(
                OP_TIMEOUT,
                buckets.objects.put(object.as_str(), &mut reader),
            )
            .await
            .map_err(|_| unavailable("storing the module timed out".to_owned()))?
            .map_err(|e| unavailable(format!("storing the module: {e}")))?;
        }
    }
    let value = Bytes::from(serde_json::to_vec(entry).expect("entries serialize"));
    // Each error as (whether the revision was not the one expected, what it says).
    let written = match expected {
        Some(revision) => {
            tokio::time::timeout(OP_TIMEOUT, buckets.kv.update(name, value, revision))
                .await
                .map(|r| {
                    r.map_err(|e| {
                        let conflict = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                        (conflict, e.to_string())
                    })
                })
        }
        None => tokio::time::timeout(OP_TIMEOUT, buckets.kv.create(name, value))
            .await
            .map(|r| {
                r.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                })
            }),
    };
    match written {
        Ok(Ok(revision)) => Ok(revision),
        Ok(Err((true, _))) => Err(WriteError::Conflict(name.to_owned())),
        Ok(Err((false, e))) => Err(unavailable(e)),
        Err(_) => Err(unavailable("writing the entry timed out".to_owned())),
    }
}

/// Turns a watched entry into an event: a removal, or the entry with its checked module.
async fn read(buckets: &Buckets, entry: kv::Entry) -> Option<ClusterEvent> {
    let name = entry.key.clone();
    if entry.operation != kv::Operation::Put {
        return Some(ClusterEvent::Removed {
            name,
            revision: entry.revision,
        });
    }
    let parsed: Entry = match serde_json::from_slice(&entry.value) {
        Ok(e) => e,
        Err(e) => {
            error!(target: "cluster", service = name, error = %e, "shared entry is not a frenezulo entry; ignored");
            return None;
        }
    };
    let wasm = match fetch(buckets, &parsed.digest).await {
        Ok(wasm) => wasm,
        Err(e) => {
            error!(target: "cluster", service = name, digest = parsed.digest, error = e, "module of a shared entry cannot be read; the node keeps the version it has");
            return None;
        }
    };
    Some(ClusterEvent::Changed {
        name,
        revision: entry.revision,
        entry: Box::new(parsed),
        wasm,
    })
}

/// Reads a module object and checks it against its digest.
async fn fetch(buckets: &Buckets, digest: &str) -> Result<Bytes, String> {
    let object = object_name(digest).ok_or("bad digest")?;
    let mut reader = tokio::time::timeout(OP_TIMEOUT, buckets.objects.get(&object))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut wasm = Vec::new();
    let read = async {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if wasm.len() + n > MAX_OBJECT {
                return Err(std::io::Error::other("module object too large"));
            }
            wasm.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(OP_TIMEOUT * 4, read)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if Digest::of(&wasm).to_string() != digest {
        return Err("module bytes do not match their digest".to_owned());
    }
    Ok(wasm.into())
}

/// `sha256:<hex>` names the object `<hex>`.
fn object_name(digest: &str) -> Option<String> {
    Digest::parse(digest).map(|d| d.hex())
}

/// Deletes module objects no entry names, older than [`GC_GRACE`].
async fn collect_garbage(buckets: &Buckets) {
    let gc = async {
        let mut named = BTreeSet::new();
        let mut keys = buckets.kv.keys().await.map_err(|e| e.to_string())?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Ok(Some(value)) = buckets.kv.get(&key).await
                && let Ok(entry) = serde_json::from_slice::<Entry>(&value)
                && let Some(object) = object_name(&entry.digest)
            {
                named.insert(object);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut list = buckets.objects.list().await.map_err(|e| e.to_string())?;
        let mut stale = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| e.to_string())?;
            let age = info.modified.map_or(0, |m| now - m.unix_timestamp());
            if !info.deleted && !named.contains(&info.name) && age >= GC_GRACE.as_secs() as i64 {
                stale.push(info.name);
            }
        }
        for name in stale {
            info!(target: "cluster", object = name, "removing a module object no service names");
            buckets
                .objects
                .delete(&name)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(OP_TIMEOUT * 4, gc).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(target: "cluster", error = e, "could not collect unused module objects")
        }
        Err(_) => warn!(target: "cluster", "collecting unused module objects timed out"),
    }
}

/// `url` with any `user:password@` taken out of each address (`nats://***@host:4222`),
/// for health answers and logs: the health call needs no token.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_owned();
            };
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://***{}", &rest[at..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_by_hex_digest() {
        let d = Digest::of(b"module").to_string();
        let name = object_name(&d).unwrap();
        assert_eq!(name.len(), 64);
        assert!(d.ends_with(&name));
        assert_eq!(object_name("md5:abc"), None);
    }

    #[test]
    fn urls_lose_their_userinfo() {
        assert_eq!(
            redact_url("nats://user:secret@nats.example:4222"),
            "nats://***@nats.example:4222"
        );
        assert_eq!(
            redact_url("tls://a:b@h1:4222,nats://h2:4222/x@y"),
            "tls://***@h1:4222,nats://h2:4222/x@y"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://p%40ss@h"), "nats://***@h");
    }
}
