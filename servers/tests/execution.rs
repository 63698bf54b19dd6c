//! End-to-end tests of the execution model: serving loops per core, guests that run
//! inline and yield, cancellation at the deadline, connections spread over threads.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::thread;

use support::{ConfigFile, Frenezulo, repo, wait_for_counter};

per_engine! {
    hello_answers_while_looping_guests_hold_every_thread => loops_hold_every_thread,
    a_guest_cancelled_at_its_deadline_frees_its_slot => cancelled_at_deadline,
    many_connections_spread_over_threads_get_every_response_in_order => spread_in_order,
    many_hello_requests_complete_while_hogs_run_on_the_same_thread => hellos_beside_hogs,
    a_client_that_leaves_cancels_its_guest_and_shutdown_does_not_wait_for_it => client_leaves,
    a_wagi_guest_that_writes_then_runs_on_is_answered_in_chunks => drip_in_chunks,
    a_wagi_guest_that_sleeps_leaves_its_thread_idle => wagi_sleeper,
}

/// A WAGI guest asleep in `poll_oneoff` (as `std::thread::sleep` on wasm32-wasip1 is)
/// waits without its serving thread: the thread answers others and spends next to no
/// time meanwhile (a sleep that spun would cost it the whole 1.5 s); what the guest wrote
/// before it slept is sent first, chunked. Past its deadline a sleeper is a 504.
fn wagi_sleeper(engine: &str) {
    let file = ConfigFile::new(
        &format!("sleeper-{engine}"),
        &format!(
            "engine = {engine:?}
workers = 1
[services]
hello = {:?}
[services.sleep]
module = {:?}
deadline = \"30s\"
[services.nap]
module = {:?}
deadline = \"300ms\"
",
            repo("examples/hello.wat"),
            repo("engines/tests/guests/sleep.wat"),
            repo("engines/tests/guests/sleep.wat"),
        ),
    );
    let server = Frenezulo::start(&["--config", file.path()]);
    let post = |path: &str, ms: u32| {
        let mut raw =
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n").into_bytes();
        raw.extend_from_slice(&ms.to_le_bytes());
        raw
    };
    let before = server.thread_cpu("serve-0");
    let mut sleeper = server.connect();
    sleeper.send(&post("/sleep", 1500));
    wait_for_counter(&server, "sleep", "running", 1);
    assert_eq!(server.get("/hello").status, 200, "{engine}");
    let r = sleeper.response();
    assert_eq!(r.status, 200, "{engine}");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"), "{engine}");
    assert_eq!(r.text(), "before\nslept\n", "{engine}");
    let used = server.thread_cpu("serve-0") - before;
    assert!(
        used < std::time::Duration::from_millis(750),
        "{engine}: the serving thread used {used:?} while its guest slept 1.5 s"
    );

    // Its head went out before it slept, so its deadline cuts the answer short: what
    // was sent, then the connection's end.
    let mut napper = std::net::TcpStream::connect(server.addr).unwrap();
    napper.set_read_timeout(Some(support::PATIENCE)).unwrap();
    napper.write_all(&post("/nap", 60_000)).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = napper.read(&mut chunk) {
        got.extend_from_slice(&chunk[..n]);
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{engine}: {got:?}");
    assert!(
        got.contains("before\n") && !got.contains("slept"),
        "{engine}: {got:?}"
    );
    wait_for_counter(&server, "nap", "running", 0);
    assert_eq!(server.get("/hello").status, 200, "{engine}");
}

/// A WAGI guest that writes its head and 64 KiB, then spins for several slices, has
/// what it wrote sent before it ends: the answer is chunked, whole, and the connection
/// goes on.
fn drip_in_chunks(engine: &str) {
    let drip = format!("drip={}", repo("engines/tests/guests/drip.wat"));
    let server = Frenezulo::start(&["--engine", engine, "--service", &drip]);
    let count: u32 = if engine == "wasmtime" {
        400_000_000
    } else {
        12_000_000
    };
    let mut c = server.connect();
    let mut raw = b"POST /drip HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n".to_vec();
    raw.extend_from_slice(&count.to_le_bytes());
    c.send(&raw);
    let r = c.response();
    assert_eq!(r.status, 200, "{engine}");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"), "{engine}");
    assert_eq!(r.header("Content-Type"), Some("text/plain"), "{engine}");
    assert_eq!(r.body.len(), 65536 + 4, "{engine}");
    assert!(r.body.ends_with(b"aaaaend\n"), "{engine}");
    c.send(b"POST /drip HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n\0\0\0\0");
    let r = c.response();
    assert_eq!(
        (r.status, r.body.len()),
        (200, 65536 + 4),
        "{engine}: kept alive"
    );
}

/// `/hello` gets its 200 while guests that loop forever hold every serving thread, three
/// per thread, with default settings: the loops yield between time slices.
fn loops_hold_every_thread(engine: &str) {
    let file = ConfigFile::new(
        &format!("loops-{engine}"),
        &format!(
            "engine = {engine:?}\n[services]\nhello = {:?}\n[services.loop]\nmodule = {:?}\ndeadline = \"600s\"\n",
            repo("examples/hello.wat"),
            repo("engines/tests/guests/loop.wat"),
        ),
    );
    let server = Frenezulo::start(&["--config", file.path()]);
    let workers = thread::available_parallelism().map_or(2, |n| n.get());
    let loops = 3 * workers as u64;
    let mut clients: Vec<_> = (0..loops).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.send(b"GET /loop HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    wait_for_counter(&server, "loop", "running", loops);
    for _ in 0..5 {
        let r = server.get("/hello");
        assert_eq!(r.status, 200, "{engine}");
    }
    // The loops (deadline 600 s) were running all along: /hello was answered beside them.
    wait_for_counter(&server, "loop", "running", loops);
}

/// A guest stopped at its deadline gives its slot back at once: with one slot and no
/// queue, the next request runs instead of being shed.
fn cancelled_at_deadline(engine: &str) {
    let file = ConfigFile::new(
        &format!("cancel-{engine}"),
        &format!(
            "engine = {engine:?}\nworkers = 1\n[services.spin]\nmodule = {:?}\nconcurrency = 1\nqueue = 0\ndeadline = \"300ms\"\n",
            repo("engines/tests/guests/spin.wat"),
        ),
    );
    let server = Frenezulo::start(&["--config", file.path()]);
    let spin = |count: u32| {
        let mut c = server.connect();
        let mut raw = b"POST /spin HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n".to_vec();
        raw.extend_from_slice(&count.to_le_bytes());
        c.send(&raw);
        c.response().status
    };
    assert_eq!(spin(u32::MAX), 504, "{engine}: spins far past its deadline");
    assert_eq!(spin(1000), 200, "{engine}: the slot was freed");
    assert_eq!(spin(u32::MAX), 504, "{engine}");
    assert_eq!(spin(1000), 200, "{engine}");
}

/// Many connections, each with pipelined requests, land on every serving thread and each
/// gets every response once, in order.
fn spread_in_order(engine: &str) {
    // 640 requests arrive at once: more than the default queue (128 waiting) holds, so
    // some would be shed with 503 by design. This test is about order and spread.
    let file = ConfigFile::new(
        &format!("spread-{engine}"),
        &format!(
            "engine = {engine:?}\nworkers = 2\n[services.echo]\nmodule = {:?}\nqueue = 1024\n",
            repo("examples/echo.wat"),
        ),
    );
    let server = Frenezulo::start_with_env(
        &["--config", file.path()],
        &[("RUST_LOG", "info,frenezulo::serve=debug")],
    );
    thread::scope(|s| {
        for conn in 0..32 {
            let server = &server;
            s.spawn(move || {
                let mut c = server.connect();
                let mut batch = Vec::new();
                for i in 0..20 {
                    batch.extend_from_slice(
                        format!("GET /echo/{conn}/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
                    );
                }
                c.send(&batch);
                for i in 0..20 {
                    let r = c.response();
                    assert_eq!(r.status, 200, "{engine}");
                    let want = format!("PATH_INFO=/{conn}/{i}\n");
                    assert!(r.text().contains(&want), "{engine}: {want:?} out of order");
                }
            });
        }
    });
    // Each serving thread writes its log in batches: wait for both threads' lines.
    server.eventually(
        &format!("{engine}: requests logged as run on both threads"),
        || {
            let log = server.log();
            let threads: BTreeSet<&str> = log
                .lines()
                .filter(|l| l.contains(" ran "))
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("thread=")))
                .collect();
            (threads.len() == 2).then_some(())
        },
    );
}

/// Two hogs (guests that never end) of another service share the one serving thread with
/// many `/hello` requests: every one of those completes while the hogs still run.
fn hellos_beside_hogs(engine: &str) {
    let file = ConfigFile::new(
        &format!("hogs-{engine}"),
        &format!(
            "engine = {engine:?}\nworkers = 1\n[services]\nhello = {:?}\n[services.hog]\nmodule = {:?}\ndeadline = \"600s\"\n",
            repo("examples/hello.wat"),
            repo("engines/tests/guests/loop.wat"),
        ),
    );
    let server = Frenezulo::start(&["--config", file.path()]);
    let mut hogs: Vec<_> = (0..2).map(|_| server.connect()).collect();
    for c in &mut hogs {
        c.send(b"GET /hog HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    wait_for_counter(&server, "hog", "running", 2);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = server.connect();
                for _ in 0..50 {
                    c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
                    assert_eq!(c.response().status, 200, "{engine}");
                }
            });
        }
    });
    wait_for_counter(&server, "hog", "running", 2);
}

/// A client that goes away while its guest runs cancels the guest at the next slice
/// boundary (counted as abandoned), and shutdown then has nothing to wait for.
fn client_leaves(engine: &str) {
    let file = ConfigFile::new(
        &format!("leaves-{engine}"),
        &format!(
            // A drain far longer than the test's patience: only a cancelled guest lets the
            // process exit in time.
            "engine = {engine:?}\nworkers = 1\ndrain_timeout = \"3600s\"\n[services.hog]\nmodule = {:?}\ndeadline = \"3600s\"\n",
            repo("engines/tests/guests/loop.wat"),
        ),
    );
    let mut server = Frenezulo::start(&["--config", file.path()]);
    let mut c = server.connect();
    c.send(b"GET /hog HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_for_counter(&server, "hog", "running", 1);
    drop(c);
    wait_for_counter(&server, "hog", "running", 0);
    let metrics = server.metrics();
    assert_eq!(
        support::sample(&metrics, "frenezulo_abandoned_total{thread=\"0\"}"),
        Some(1.0),
        "{engine}: {metrics}"
    );
    server.terminate();
    assert!(server.wait(support::PATIENCE), "{engine}: clean exit");
}

/// `cpu_weight` reaches the service through the config file and the API, and is shown.
#[test]
fn cpu_weight_is_set_by_the_config_file_and_the_api() {
    let file = ConfigFile::new(
        "weight",
        &format!(
            "[services.heavy]\nmodule = {:?}\ncpu_weight = 3\n",
            repo("examples/hello.wat")
        ),
    );
    let server = Frenezulo::start(&["--config", file.path()]);
    let shown = support::json(&server.admin("GET", "/services/heavy", b""));
    assert_eq!(shown["limits"]["cpu_weight"], 3, "{shown}");
    let hello = std::fs::read(repo("examples/hello.wat")).unwrap();
    let r = server.admin("PUT", "/services/light?cpu_weight=2", &hello);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(support::json(&r)["limits"]["cpu_weight"], 2);
    let r = server.admin("PUT", "/services/light?cpu_weight=101", &hello);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().1.contains("cpu_weight"), "{}", r.text());
}
