//! Limits the README promises, against the real binary: fetching modules by URL
//! (redirects, time, size), guests' outbound calls (no redirects followed, 16 responses
//! open), `max_connections` and `write_timeout`.

#[macro_use]
mod support;

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{ConfigFile, DEFAULT_ENGINE, Frenezulo, PATIENCE, Reply, Upstream, repo, sample};

per_engine! {
    guests_get_redirects_as_they_are_and_hold_16_responses_at_most => outbound_limits,
}

/// Add-by-URL: three redirects are followed, a fourth is refused; a source that does not
/// answer within `fetch_timeout` fails the add; a module over `max_module_size` gets 413.
/// None of them changes what is served.
#[test]
fn fetching_a_module_by_url_follows_three_redirects_within_time_and_size() {
    let hello = std::fs::read(repo("examples/hello.wat")).unwrap();
    let big = vec![b' '; 100 << 10];
    let upstream = Upstream::start(move |a| match a.path.as_str() {
        "/m.wasm" => Reply::ok(hello.clone()),
        "/big.wasm" => Reply::ok(big.clone()),
        "/hold.wasm" => Reply::ok(hello.clone()).held(),
        // `/rN` is N redirects away from the module.
        "/r1" => Reply::redirect("/m.wasm"),
        "/r2" => Reply::redirect("/r1"),
        "/r3" => Reply::redirect("/r2"),
        "/r4" => Reply::redirect("/r3"),
        _ => Reply::status(404),
    });
    let config = ConfigFile::new(
        "fetch",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\nfetch_timeout = \"3s\"\nmax_module_size = \"64KiB\"\nfetch_allowed_hosts = [{:?}]\n",
            upstream.url(""),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let add = |prefix: &str, path: &str| {
        let body = format!(
            r#"{{"prefix": "{prefix}", "source": "{}"}}"#,
            upstream.url(path)
        );
        server.admin("POST", "/services/add", body.as_bytes())
    };

    let r = add("three", "/r3");
    assert_eq!(r.status, 201, "three redirects are followed: {}", r.text());
    assert_eq!(server.get("/three").text(), "Hello from frenezulo!\n");

    let (status, why) = add("four", "/r4").error();
    assert_eq!(status, 502, "{why}");
    assert!(why.contains("redirect"), "four redirects: {why}");

    // Held forever upstream: the fetch gives up after fetch_timeout.
    let (status, why) = add("slow", "/hold.wasm").error();
    assert_eq!(status, 502, "{why}");
    assert!(why.contains("fetching the source failed"), "{why}");
    assert!(
        why.to_lowercase().contains("timeout") || why.contains("timed out"),
        "{why}"
    );

    let (status, why) = add("big", "/big.wasm").error();
    assert_eq!(status, 413, "{why}");
    assert!(why.contains("larger than the limit"), "{why}");

    for refused in ["four", "slow", "big"] {
        assert_eq!(server.get(&format!("/{refused}")).status, 404, "{refused}");
        assert_eq!(
            server
                .admin("GET", &format!("/services/{refused}"), b"")
                .status,
            404,
            "{refused}"
        );
    }
    assert_eq!(server.get("/three").status, 200);
    upstream.open_gate();
}

/// A guest's outbound call meets a redirect: it gets the 3xx itself, and its target is not
/// called. An instance holds 16 responses open at most: the 17th call is refused with
/// `TOO_MANY_SESSIONS` (13), and a call after closing one succeeds again.
fn outbound_limits(engine: &str) {
    let targets = Arc::new(AtomicUsize::new(0));
    let seen = targets.clone();
    let upstream = Upstream::start(move |a| match a.path.as_str() {
        "/moved" => Reply::redirect("/target").with_body("moved"),
        "/target" => {
            seen.fetch_add(1, Ordering::SeqCst);
            Reply::ok("target")
        }
        _ => Reply::ok("ok"),
    });
    let config = ConfigFile::new(
        "outbound-limits",
        &format!(
            r#"
            engine = "{engine}"
            [services.call]
            module = "{outbound}"
            allowed_hosts = ["{allowed}"]
            [services.many]
            module = "{many}"
            allowed_hosts = ["{allowed}"]
            "#,
            outbound = repo("engines/tests/guests/outbound.wat"),
            many = repo("engines/tests/guests/many-calls.wat"),
            allowed = upstream.url(""),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);

    let r = server.admin("POST", "/call", upstream.url("/moved").as_bytes());
    assert_eq!(r.status, 200, "{engine}: {}", r.text());
    assert_eq!(r.body[0], 0, "{engine}: the call succeeded: {:?}", r.body);
    assert_eq!(
        u16::from_le_bytes([r.body[1], r.body[2]]),
        302,
        "{engine}: the guest sees the redirect"
    );
    assert_eq!(&r.body[3..], b"moved", "{engine}: and its body");
    assert_eq!(
        targets.load(Ordering::SeqCst),
        0,
        "{engine}: the redirect was not followed"
    );
    // The target is allowed: a guest may follow the redirect itself.
    let r = server.admin("POST", "/call", upstream.url("/target").as_bytes());
    assert_eq!((r.body[0], &r.body[3..]), (0, &b"target"[..]), "{engine}");
    assert_eq!(targets.load(Ordering::SeqCst), 1);

    let r = server.admin("POST", "/many", upstream.url("/ok").as_bytes());
    assert_eq!(r.status, 200, "{engine}: {}", r.text());
    let mut expected = vec![0u8; 16];
    expected.extend([13, 0]);
    assert_eq!(
        r.body, expected,
        "{engine}: 16 open responses, the 17th refused, one more after a close"
    );
}

/// Past `max_connections` (here 2, on one serving thread) accepting pauses: a third
/// connection is not served while the two stay open, and is served once one closes.
#[test]
fn past_max_connections_accepting_pauses_until_one_closes() {
    let config = ConfigFile::new(
        "max-connections",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\nworkers = 1\nmax_connections = 2\nkeep_alive_timeout = \"1h\"\nrequest_timeout = \"1h\"\n"
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let hello = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut open = [server.connect(), server.connect()];
    for c in &mut open {
        c.send(hello);
        assert_eq!(c.response().status, 200);
    }
    // The kernel completes the third handshake; the server does not take it.
    let mut third = server.connect();
    third.send(hello);
    // The two are served meanwhile.
    for c in &mut open {
        c.send(hello);
        assert_eq!(c.response().status, 200);
    }
    third.read_timeout(Duration::from_millis(500));
    let mut byte = [0u8; 1];
    match third.stream.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the third connection was served or closed: {other:?}"),
    }
    // One closes: the third is accepted and answered.
    let [first, mut second] = open;
    drop(first);
    third.read_timeout(PATIENCE);
    let r = third.response();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "Hello from frenezulo!\n")
    );
    second.send(hello);
    assert_eq!(second.response().status, 200);
}

/// A client that asks for a large response and never reads it is dropped after
/// `write_timeout`: the server logs it, stops counting the connection (and cancels the
/// guest, if it was held while its answer waited to be written), and the client finds its
/// connection ended with the response cut short.
#[test]
fn a_client_that_never_reads_is_dropped_after_write_timeout() {
    const BODY: usize = 16 << 20;
    let config = ConfigFile::new(
        "write-timeout",
        &format!(
            r#"
            engine = {DEFAULT_ENGINE:?}
            workers = 1
            write_timeout = "1s"
            keep_alive_timeout = "1h"
            request_timeout = "1h"
            [services.big]
            module = "{big}"
            stdout = "32MiB"
            "#,
            big = repo("engines/tests/guests/big.wat"),
        ),
    );
    let server = Frenezulo::start_with_env(
        &["--config", config.path()],
        &[("RUST_LOG", "info,frenezulo::serve=debug")],
    );
    // A small receive buffer, set before connecting so the window stays small.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stuck: std::net::TcpStream = socket.into();
    stuck
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let connections = |server: &Frenezulo| {
        let m = server.metrics();
        sample(&m, "frenezulo_connections{thread=\"0\"}")
    };
    // The answer went out whole (a guest that finished within its first slice) or in
    // pieces (its guest held while they waited, then cut short): either way it is
    // counted once, as a 200.
    server.wait_for_log("write timed out");
    server.eventually("the response to be counted", || {
        let m = server.metrics();
        sample(
            &m,
            "frenezulo_requests_total{service=\"big\",status=\"200\"}",
        )
        .filter(|n| *n == 1.0)
    });
    // Only the connection asking is left.
    server.eventually("the stuck connection to be dropped", || {
        connections(&server).filter(|n| *n == 1.0)
    });
    // The client reads what had reached it, then the end: EOF or a reset, not a stall.
    stuck.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let end = loop {
        match stuck.read(&mut chunk) {
            Ok(0) => break "EOF".to_owned(),
            Ok(n) => got += n,
            Err(e) => break format!("{e}"),
        }
    };
    assert!(
        !end.contains("timed out") && !end.contains("temporarily unavailable"),
        "the connection stayed open: {end}"
    );
    assert!(
        got < BODY,
        "the whole response arrived ({got} bytes, then {end})"
    );
}
