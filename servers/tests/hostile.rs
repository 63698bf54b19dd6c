//! Hostile guests against the real binary: each gets its clean error status, good requests
//! running at the same time all succeed, and the server's memory stays bounded.

#[macro_use]
mod support;

use std::thread;

use support::{ConfigFile, Frenezulo, Reply, Upstream, post, repo, wait_for_counter};

/// Hostile services, the status each must get, and limits set in the config file.
const HOSTILE: &[(&str, &str, u16)] = &[
    ("loop", "engines/tests/guests/loop.wat", 504),
    ("hostloop", "engines/tests/guests/host-loop.wat", 504),
    ("grow", "engines/tests/guests/grow.wat", 500),
    ("recurse", "engines/tests/guests/recurse.wat", 500),
    ("flood", "engines/tests/guests/flood.wat", 502),
    ("trap", "engines/tests/guests/trap.wat", 500),
    ("exit", "engines/tests/guests/exit.wat", 500),
    ("bad", "engines/tests/guests/bad-output.wat", 502),
];

fn start(engine: &str) -> (Frenezulo, ConfigFile) {
    let mut config = format!(
        "engine = {engine:?}\nworkers = 2\n[limits]\ndeadline = \"10s\"\nmemory = \"4MiB\"\nstdout = \"1MiB\"\nconcurrency = 1\n\
         [services.hello]\nmodule = {:?}\ndeadline = \"20s\"\nconcurrency = 2\nqueue = 256\n\
         [services.caps]\nmodule = {:?}\n",
        repo("examples/hello.wat"),
        repo("engines/tests/guests/capabilities.wat"),
    );
    for (name, path, status) in HOSTILE {
        config.push_str(&format!("[services.{name}]\nmodule = {:?}\n", repo(path)));
        if *status == 504 {
            // The deadline runs from arrival, queueing included: only the loops get a short one.
            config.push_str("deadline = \"300ms\"\n");
        }
    }
    let file = ConfigFile::new(&format!("hostile-{engine}"), &config);
    (Frenezulo::start(&["--config", file.path()]), file)
}

fn hostile_guests_fail_cleanly_while_good_requests_succeed(engine: &str) {
    let (server, _config) = start(engine);
    let rss_before = server.rss_kib();
    thread::scope(|s| {
        let good: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut c = server.connect();
                    for _ in 0..40 {
                        c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
                        let r = c.response();
                        assert_eq!(
                            r.status,
                            200,
                            "{engine}: a good request failed: {}",
                            r.text()
                        );
                    }
                })
            })
            .collect();
        let bad: Vec<_> = HOSTILE
            .iter()
            .map(|(name, _, status)| {
                let server = &server;
                s.spawn(move || {
                    let mut c = server.connect();
                    for _ in 0..3 {
                        let q = if *name == "exit" { "?1" } else { "" };
                        c.send(format!("GET /{name}{q} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                        let r = c.response();
                        assert_eq!(r.status, *status, "{engine} /{name}: {}", r.text());
                        // "service failed: ..." once running, "service did not start in time"
                        // when the deadline passed in the queue; never engine internals.
                        assert!(r.text().starts_with("service "), "{}", r.text());
                    }
                })
            })
            .collect();
        for t in good.into_iter().chain(bad) {
            t.join().unwrap();
        }
    });
    let r = server.get("/caps");
    assert_eq!(
        r.body,
        [8, 8, 76, 8, 8],
        "{engine}: files and sockets are refused"
    );
    assert_eq!(server.get("/hello").status, 200);
    // Every instance was capped at 4 MiB of memory and 1 MiB of output; two run at a time.
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(grown < 256 * 1024, "{engine}: server grew by {grown} KiB");
    let log = server.wait_for_log(&format!("service={}", HOSTILE[HOSTILE.len() - 1].0));
    for (name, _, _) in HOSTILE {
        assert!(
            log.contains(&format!("service={name}")),
            "{engine}: /{name} not logged"
        );
    }
}

#[cfg(feature = "wasmtime")]
#[test]
fn hostile_guests_on_wasmtime() {
    hostile_guests_fail_cleanly_while_good_requests_succeed("wasmtime");
}

#[cfg(feature = "wasmi")]
#[test]
fn hostile_guests_on_wasmi() {
    hostile_guests_fail_cleanly_while_good_requests_succeed("wasmi");
}

per_engine! {
    overload_is_shed_with_a_fast_503 => shed,
}

/// With one slot and one queue place taken (a call held upstream, so for as long as the
/// test wants), every further request is shed at once with 503 and `Retry-After`; the two
/// admitted ones then succeed.
fn shed(engine: &str) {
    let upstream = Upstream::start(|_| Reply::ok("held").held());
    let file = ConfigFile::new(
        "shed",
        &format!(
            // Each serving thread enforces its share of a limit (README, "Limits across
            // serving threads"); one thread makes the share the whole limit.
            "engine = {engine:?}\nworkers = 1\n[services.call]\nmodule = {:?}\nallowed_hosts = [{:?}]\nconcurrency = 1\nqueue = 1\ndeadline = \"120s\"\n",
            repo("engines/tests/guests/outbound.wat"),
            upstream.url(""),
        ),
    );
    let server = Frenezulo::start(&["--config", file.path()]);
    let url = upstream.url("/hold");
    let mut running = post(&server, "/call", url.as_bytes());
    upstream.wait_for("/hold");
    wait_for_counter(&server, "call", "running", 1);
    let mut queued = post(&server, "/call", url.as_bytes());
    wait_for_counter(&server, "call", "queued", 1);
    for _ in 0..4 {
        let r = post(&server, "/call", url.as_bytes()).response();
        assert_eq!(r.status, 503, "{engine}: {}", r.text());
        assert_eq!(r.header("Retry-After"), Some("1"));
    }
    upstream.open_gate();
    for c in [&mut running, &mut queued] {
        let r = c.response();
        assert_eq!((r.status, &r.body[3..]), (200, &b"held"[..]), "{engine}");
    }
}
