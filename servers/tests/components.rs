//! wasi:http components end to end: the real binary serves the committed component
//! fixtures from the command line and from the management API, shows their kind, and the
//! interpreter refuses them with a 400 that says why.

#[macro_use]
mod support;

#[cfg_attr(not(feature = "wasmtime"), allow(unused_imports))]
use support::{ConfigFile, Frenezulo, Reply, TempDir, Upstream, json, repo, wait_for_counter};

#[cfg(feature = "wasmtime")]
#[test]
fn components_from_the_command_line_answer_under_their_prefix() {
    let hello = format!("hello={}", repo("examples/components/rust-hello.wasm"));
    let echo = format!("echo={}", repo("examples/components/rust-echo.wasm"));
    let spin = format!("spin={}", repo("examples/components/spin-hello.wasm"));
    let server = Frenezulo::start(&[
        "--engine",
        "wasmtime",
        "--service",
        &hello,
        "--service",
        &echo,
        "--service",
        &spin,
    ]);
    let r = server.get("/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from a wasi:http component\n");
    assert_eq!(r.header("Content-Type"), Some("text/plain"));

    let r = server.get("/spin/deeper/path");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from Spin's SDK at /spin/deeper/path\n");

    let r = server.get("/echo/x/y?status=201");
    assert_eq!(r.status, 201);
    let text = r.text();
    assert!(text.contains("path: /echo/x/y?status=201\n"), "{text}");
    assert!(
        text.contains("script-name: /echo\npath-info: /x/y\n"),
        "{text}"
    );

    // A guest that panics is a 500 with its stderr in the log, tagged with the service.
    let r = server.get("/echo?trap");
    assert_eq!(r.status, 500);
    let line = server.wait_for_log_line("asked to trap");
    assert!(line.contains("service=echo"), "{line}");

    let view = json(&server.admin("GET", "/services/hello", b""));
    assert_eq!(view["kind"], "wasi-http");
}

#[cfg(feature = "wasmtime")]
#[test]
fn a_large_answer_is_streamed_in_chunks_and_the_connection_goes_on() {
    let echo = format!("echo={}", repo("examples/components/rust-echo.wasm"));
    let server = Frenezulo::start(&["--engine", "wasmtime", "--service", &echo]);
    let mut client = server.connect();
    // 3 MiB, more than the guest may write ahead of the socket: it goes out as written.
    let big = 3 << 20;
    client.send(format!("GET /echo?big={big} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let r = client.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.header("Content-Length"), None);
    assert!(r.text().starts_with("method: GET\n"));
    assert_eq!(r.body.iter().filter(|b| **b == b'.').count(), big);
    // Kept alive after the last chunk; a HEAD gets the head alone.
    client.send(format!("HEAD /echo?big={big} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let r = client.head_response();
    assert_eq!(r.status, 200);
    client.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = client.response();
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("method: GET\n"));
    // An HTTP/1.0 client reads the body to the close.
    let mut client = server.connect();
    client.send(format!("GET /echo?big={big} HTTP/1.0\r\n\r\n").as_bytes());
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut client.stream, &mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &raw[..80]);
    assert!(raw.contains("Connection: close\r\n") && !raw.contains("chunked"));
    let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.starts_with("method: GET\n"));
    assert_eq!(body.matches('.').count(), big);
}

/// A client that does not read holds up its own guest, not the server's memory: the
/// guest waits once its connection has about a megabyte unwritten, and writes on as the
/// client reads.
#[cfg(feature = "wasmtime")]
#[test]
fn a_slow_reader_makes_the_guest_wait() {
    let config = ConfigFile::new(
        "slow-reader",
        &format!(
            "engine = \"wasmtime\"\n[services.echo]\nmodule = {:?}\nstdout = \"64MiB\"\ndeadline = \"120s\"\n",
            repo("examples/components/rust-echo.wasm")
        ),
    );
    let server = Frenezulo::start_with_env(
        &["--config", config.path()],
        &[("RUST_LOG", "info,frenezulo=debug")],
    );
    let mut client = server.connect();
    // Far more than the kernel's socket buffers and the server's bound together.
    let big = 24 << 20;
    client.send(format!("GET /echo?big={big} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    server.wait_for_log("connection held");
    // Held, not finished: had the server taken the whole body, the guest would be done.
    wait_for_counter(&server, "echo", "running", 1);
    let r = client.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.iter().filter(|b| **b == b'.').count(), big);
    wait_for_counter(&server, "echo", "running", 0);
}

/// A component that sleeps waits without its thread: the serving thread runs no slice of
/// it meanwhile (it used to poll it on every turn, a core's worth of time) and answers
/// others; the sleeper answers once its timer fires, and lines it writes between sleeps
/// go out as it writes them.
#[cfg(feature = "wasmtime")]
#[test]
fn a_sleeping_component_leaves_its_thread_idle() {
    let echo = format!("echo={}", repo("examples/components/rust-echo.wasm"));
    let server = Frenezulo::start(&["--engine", "wasmtime", "--workers", "1", "--service", &echo]);
    let before = server.thread_cpu("serve-0");
    let mut sleeper = server.connect();
    sleeper.send(b"GET /echo?sleep=1500 HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_for_counter(&server, "echo", "running", 1);
    let r = server.get("/echo/beside");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("path: /echo/beside\n"));
    let r = sleeper.response();
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .starts_with("method: GET\npath: /echo?sleep=1500\n")
    );
    let used = server.thread_cpu("serve-0") - before;
    assert!(
        used < std::time::Duration::from_millis(750),
        "the serving thread used {used:?} while its guest slept 1.5 s"
    );

    let mut client = server.connect();
    client.send(b"GET /echo?tick=3 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = client.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.text(), "tick 0\ntick 1\ntick 2\n");
}

/// A component's request starts before its body is all in: the guest runs (counted
/// running) while the client still holds half the body back, reads the rest as it comes,
/// chunked or with a length, and the connection goes on after it.
#[cfg(feature = "wasmtime")]
#[test]
fn a_component_reads_its_request_body_as_it_arrives() {
    let echo = format!("echo={}", repo("examples/components/rust-echo.wasm"));
    let server = Frenezulo::start(&["--engine", "wasmtime", "--workers", "1", "--service", &echo]);
    let mut client = server.connect();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello ");
    wait_for_counter(&server, "echo", "running", 1);
    client.send(b"world");
    let r = client.response();
    assert_eq!(r.status, 200);
    assert!(
        r.text().ends_with("GREETING: \nhello world"),
        "{}",
        r.text()
    );
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    wait_for_counter(&server, "echo", "running", 1);
    client.send(b"4\r\ndefg\r\n0\r\n\r\n");
    let r = client.response();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("GREETING: \nabcdefg"), "{}", r.text());
    wait_for_counter(&server, "echo", "running", 0);
}

/// A client that stops sending its body holds its component's task no longer than the
/// service's deadline: 504, the slot freed for the next request. With one slot and no
/// queue, the next request is served only if the slot came back.
#[cfg(feature = "wasmtime")]
#[test]
fn a_stalled_upload_to_a_component_ends_at_its_deadline() {
    let config = ConfigFile::new(
        "stalled-upload",
        &format!(
            "engine = \"wasmtime\"\nworkers = 1\n[services.echo]\nmodule = {:?}\ndeadline = \"300ms\"\nconcurrency = 1\nqueue = 0\n",
            repo("examples/components/rust-echo.wasm")
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let mut stalled = server.connect();
    stalled.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\npart");
    let r = stalled.response();
    assert_eq!(r.status, 504);
    wait_for_counter(&server, "echo", "running", 0);
    let r = server.get("/echo/next");
    assert_eq!(r.status, 200);
}

/// With `stream_request_bodies = false` a component's request waits for its whole body,
/// as a WAGI guest's does: a stalled upload is a 408 at `request_timeout`, never started
/// (with its body streaming it would have run to its 60 s deadline instead).
#[cfg(feature = "wasmtime")]
#[test]
fn bodies_can_be_received_whole_first() {
    let config = ConfigFile::new(
        "whole-bodies",
        &format!(
            "engine = \"wasmtime\"\nstream_request_bodies = false\nrequest_timeout = \"300ms\"\n[services.echo]\nmodule = {:?}\ndeadline = \"60s\"\n",
            repo("examples/components/rust-echo.wasm")
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let mut stalled = server.connect();
    stalled.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\npart");
    assert_eq!(stalled.response().status, 408);
    let mut whole = server.connect();
    whole.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab");
    whole.send(b"cd");
    let r = whole.response();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("GREETING: \nabcd"), "{}", r.text());
}

/// A sleeper's deadline still holds while it is parked: 504, and its instance dropped.
#[cfg(feature = "wasmtime")]
#[test]
fn a_component_asleep_past_its_deadline_is_answered_504() {
    let config = ConfigFile::new(
        "sleep-deadline",
        &format!(
            "engine = \"wasmtime\"\n[services.echo]\nmodule = {:?}\ndeadline = \"300ms\"\n",
            repo("examples/components/rust-echo.wasm")
        ),
    );
    let server = Frenezulo::start(&["--config", config.path(), "--workers", "1"]);
    let r = server.get("/echo?sleep=1000");
    assert_eq!(r.status, 504);
    wait_for_counter(&server, "echo", "running", 0);
    let r = server.get("/echo?sleep=1");
    assert_eq!(r.status, 200);
}

#[cfg(feature = "wasmtime")]
#[test]
fn a_component_is_added_through_the_api_and_shown_as_one() {
    let server = Frenezulo::start(&["--engine", "wasmtime"]);
    let wasm = std::fs::read(repo("examples/components/rust-echo.wasm")).unwrap();
    let r = server.admin("PUT", "/services/echo?env=GREETING%3Dhello", &wasm);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.get("/echo/a");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("GREETING: hello\n"), "{}", r.text());
    let view = json(&server.admin("GET", "/services/echo", b""));
    assert_eq!(view["kind"], "wasi-http");
    let hello = json(&server.admin("GET", "/services/hello", b""));
    assert_eq!(hello["kind"], "wagi");
}

/// A component added through the API survives a restart, and comes back from the artifact
/// cache rather than being compiled again.
#[cfg(feature = "wasmtime")]
#[test]
fn a_component_survives_a_restart_from_its_artifact() {
    let data = TempDir::new("component-restart");
    let args = ["--engine", "wasmtime", "--data-dir", data.arg()];
    let mut server = Frenezulo::start(&args);
    let wasm = std::fs::read(repo("examples/components/rust-hello.wasm")).unwrap();
    let r = server.admin("PUT", "/services/c", &wasm);
    assert_eq!(r.status, 201, "{}", r.text());
    server.kill();
    let server = Frenezulo::start(&args);
    let r = server.get("/c/anything");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from a wasi:http component\n");
    let metrics = server.metrics();
    assert!(
        metrics.contains(r#"frenezulo_module_loads_total{service="c",from="artifact"} 1"#),
        "{metrics}"
    );
}

#[cfg(feature = "wasmi")]
#[test]
fn the_interpreter_refuses_a_component_with_a_400_that_says_why() {
    let server = Frenezulo::start(&["--engine", "wasmi"]);
    let wasm = std::fs::read(repo("examples/components/rust-hello.wasm")).unwrap();
    let r = server.admin("PUT", "/services/c", &wasm);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("components need the wasmtime engine"),
        "{}",
        r.text()
    );
    assert_eq!(server.get("/c").status, 404);
}

/// A component's outbound call goes through the service's grant and frenezulo's client,
/// and the one serving thread answers other requests while the call is held upstream.
#[cfg(feature = "wasmtime")]
#[test]
fn a_component_calls_out_within_its_grant() {
    let upstream = Upstream::start(|a| match a.path.as_str() {
        "/hold" => Reply::ok("held").held(),
        _ => Reply::ok("upstream says hi"),
    });
    let config = ConfigFile::new(
        "component-outbound",
        &format!(
            r#"
            engine = "wasmtime"
            workers = 1
            [services.echo]
            module = "{echo}"
            allowed_hosts = ["{allowed}"]
            [services.hello]
            module = "{hello}"
            "#,
            echo = repo("examples/components/rust-echo.wasm"),
            hello = repo("examples/hello.wat"),
            allowed = upstream.url(""),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let r = server.get(&format!("/echo?fetch={}", upstream.url("/data")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream 200\nupstream says hi");

    let other = format!("http://127.0.0.1:{}/", upstream.addr.port().wrapping_add(1));
    let r = server.get(&format!("/echo?fetch={other}"));
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "fetch failed: ErrorCode::HttpRequestDenied\n");
    server.wait_for_log("origin not in allowed_hosts");

    // A call held upstream does not hold the serving thread.
    let held_url = format!("/echo?fetch={}", upstream.url("/hold"));
    let addr = server.addr;
    let held = std::thread::spawn(move || {
        let mut c = support::Client::connect_to(addr);
        c.send(format!("GET {held_url} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        c.response()
    });
    upstream.wait_for("/hold");
    assert_eq!(server.get("/hello").status, 200);
    upstream.open_gate();
    let r = held.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "upstream 200\nheld");
}
