//! The hardening issue's cases against the real binary: responses that must carry no
//! body, strict chunked framing, ceilings on limits, and the management API's secrets.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use support::{ConfigFile, Frenezulo, TOKEN, TempDir, repo};

/// What `examples/hello.wat` answers.
const HELLO: &str = "Hello from frenezulo!\n";

/// A guest that answers `Status: {status}` and then bytes that look like a whole second
/// response, which a client must never see.
fn splitter(status: u16) -> String {
    let output = format!(
        "Status: {status}\n\nHTTP/1.1 200 OK\r\nX-Forged: 1\r\nContent-Length: 7\r\n\r\nforged\n"
    );
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "{}")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const {}))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        output
            .bytes()
            .map(|b| format!("\\{b:02x}"))
            .collect::<String>(),
        output.len()
    )
}

/// A server with `hello`, and `split204` and `split304` answering [`splitter`]'s output.
fn split_server(engine: &str) -> (Frenezulo, ConfigFile, TempDir) {
    let guests = TempDir::new("split-guests");
    let mut config = format!(
        "engine = {engine:?}\nworkers = 1\n[services.hello]\nmodule = {:?}\n",
        repo("examples/hello.wat")
    );
    for status in [204, 304] {
        let path = guests.path().join(format!("split{status}.wat"));
        std::fs::write(&path, splitter(status)).unwrap();
        config.push_str(&format!(
            "[services.split{status}]\nmodule = {:?}\n",
            path.display().to_string()
        ));
    }
    let file = ConfigFile::new(&format!("hardening-split-{engine}"), &config);
    (Frenezulo::start(&["--config", file.path()]), file, guests)
}

fn split_stream(engine: &str) {
    let (server, _config, _guests) = split_server(engine);
    for status in [204, 304] {
        let mut c = server.connect();
        // Pipelined: the guest's extra bytes, were they sent, would answer the second.
        c.send(
            format!(
                "GET /split{status} HTTP/1.1\r\nHost: t\r\n\r\n\
                 HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n\
                 GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .as_bytes(),
        );
        // A 204 or 304 ends at its blank line, like an answer to HEAD (RFC 9112 6.3).
        let first = c.head_response();
        assert_eq!(first.status, status, "{engine}");
        assert_eq!(first.header("content-length"), None, "{engine} {status}");
        let head = c.head_response();
        assert_eq!(head.status, 200, "{engine} {status}: HEAD /hello");
        assert_eq!(head.header("x-forged"), None, "{engine} {status}");
        assert_eq!(
            head.header("content-length"),
            Some(HELLO.len().to_string().as_str()),
            "a HEAD answer keeps the length a GET would carry"
        );
        let second = c.response();
        assert_eq!(second.status, 200, "{engine} {status}");
        assert_eq!(second.header("x-forged"), None, "{engine} {status}");
        assert_eq!(second.text(), HELLO, "{engine} {status}");
    }
}

per_engine! {
    bodiless_statuses_cannot_split_the_response_stream => split_stream,
}

/// Sends `raw` on a new connection; returns the status and whether the server then
/// closed the connection.
fn answer_and_close(server: &Frenezulo, raw: &[u8]) -> (u16, bool) {
    let mut c = server.connect();
    c.send(raw);
    let r = c.response();
    let closed = c.try_response().is_none();
    (r.status, closed)
}

#[test]
fn lenient_chunked_framing_is_refused_and_the_connection_closed() {
    let file = ConfigFile::new(
        "hardening-chunked",
        &format!(
            "workers = 1\n[services.hello]\nmodule = {:?}\n",
            repo("examples/hello.wat")
        ),
    );
    let server = Frenezulo::start(&["--config", file.path()]);
    let chunked = |body: &str| {
        format!("POST /hello HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    };
    // Well-formed, as a control: the route takes a chunked body.
    let mut c = server.connect();
    c.send(chunked("2;a=b\r\nXX\r\n0\r\n\r\n").as_bytes());
    assert_eq!(c.response().status, 200);
    for (what, raw) in [
        (
            "bare LF in a chunk extension",
            chunked("2;a\nXX\r\n0\r\n\r\n"),
        ),
        ("empty chunk-size line", chunked("\r\n2\r\nXX\r\n0\r\n\r\n")),
        ("bare LF after chunk data", chunked("2\r\nXX\n0\r\n\r\n")),
        (
            "Transfer-Encoding on HTTP/1.0",
            "POST /hello HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_owned(),
        ),
    ] {
        // A smuggled request follows: it must never be answered.
        let raw = format!("{raw}GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            answer_and_close(&server, raw.as_bytes()),
            (400, true),
            "{what}"
        );
    }
}

/// A server with the API on and a data directory the test keeps.
fn api_server(data: &TempDir) -> Frenezulo {
    Frenezulo::start(&["--data-dir", data.arg()])
}

#[test]
fn limits_above_their_ceiling_are_refused_by_the_api() {
    let data = TempDir::new("hardening-limits");
    let server = api_server(&data);
    let module = std::fs::read(repo("examples/hello.wat")).unwrap();
    for query in [
        "deadline=18446744073709551615",
        "deadline=500000000000s",
        "deadline=2h",
        "stdout=2GiB",
        "memory=8GiB",
        "body=2GiB",
        "concurrency=100000",
        "queue=99999999",
    ] {
        let r = server.admin("PUT", &format!("/services/big?{query}"), &module);
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        let key = query.split('=').next().unwrap();
        assert!(
            r.text().contains(&format!("`{key}`")) && r.text().contains("at most"),
            "{query}: the reason names the key and its ceiling: {}",
            r.text()
        );
    }
    let r = server.admin("PUT", "/services/big?deadline=2s", &module);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.admin(
        "PATCH",
        "/services/big",
        br#"{"limits": {"deadline": 18446744073709551615}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = server.get("/big");
    assert_eq!(r.status, 200, "the service kept its limits: {}", r.text());
    assert_eq!(r.text(), HELLO);
}

#[test]
fn a_stored_limit_out_of_range_does_not_kill_the_server() {
    let data = TempDir::new("hardening-manifest");
    let module = std::fs::read(repo("examples/hello.wat")).unwrap();
    {
        let mut server = api_server(&data);
        let r = server.admin("PUT", "/services/big", &module);
        assert_eq!(r.status, 201, "{}", r.text());
        server.kill();
    }
    // As an older version (which had no ceilings) or a hand edit would leave it.
    let path = data.path().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["services"]["big"]["limits"] = serde_json::json!({ "deadline": "18446744073709551615s", "stdout": 18446744073709551615u64 });
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();

    let server = api_server(&data);
    let log = server.wait_for_log("stored service not served");
    assert!(
        log.contains("stored service not served") && log.contains("deadline"),
        "the refusal is logged with its reason:\n{log}"
    );
    for _ in 0..3 {
        let r = server.get("/big");
        assert_eq!(r.status, 404, "refused, not clamped: {}", r.text());
    }
    assert_eq!(
        server
            .admin_with("GET", "/services/health", b"", None)
            .status,
        200,
        "still serving"
    );
    // The entry is kept for the operator to fix: a replace with limits in range works.
    let r = server.admin("PUT", "/services/big?deadline=2s&stdout=1MiB", &module);
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    assert_eq!(server.get("/big").text(), HELLO);
}

#[test]
fn an_out_of_range_limit_in_the_config_file_stops_the_start_with_a_reason() {
    let file = ConfigFile::new(
        "hardening-config-limits",
        &format!(
            "[services.big]\nmodule = {:?}\ndeadline = \"500000000000s\"\n",
            repo("examples/hello.wat")
        ),
    );
    let data = TempDir::new("hardening-config-data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_frenezulo"))
        .args(["--config", file.path(), "--data-dir", data.arg()])
        .args(["--listen", "127.0.0.1:0"])
        .env("FRENEZULO_ADMIN_TOKEN", TOKEN)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run frenezulo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`deadline`") && stderr.contains("at most"),
        "{stderr}"
    );
}

/// Polls `f` until it holds, for up to `limit`.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_generated_token_file_is_private_even_when_it_existed() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = TempDir::new("hardening-token");
    let token = data.path().join("admin-token");
    std::fs::write(&token, "").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Frenezulo::start_with_env(
        &["--data-dir", data.arg()],
        &[("FRENEZULO_ADMIN_TOKEN", "")],
    );
    assert!(eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(&token).is_ok_and(|t| !t.trim().is_empty())
    }));
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    drop(server);
}

#[test]
fn a_data_directory_others_may_write_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let data = TempDir::new("hardening-loose-data");
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = support::run_once(&["--data-dir", data.arg()], &[]);
    assert!(
        !out.status.success(),
        "a world-writable data directory is refused"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not writable by group or others") && stderr.contains(data.arg()),
        "the error says which directory and why: {stderr}"
    );
    // Nothing was written into it.
    assert!(!data.path().join("modules").exists());
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let server = Frenezulo::start(&["--data-dir", data.arg()]);
    assert_eq!(server.get("/hello").text(), HELLO, "a private one serves");
}

#[test]
fn a_configuration_beyond_the_open_file_limit_is_refused_at_start() {
    // More connections than any RLIMIT_NOFILE allows (Linux caps it at fs.nr_open).
    let file = ConfigFile::new("hardening-nofile", "max_connections = 100000000\n");
    let out = support::run_once(&["--config", file.path()], &[]);
    assert!(!out.status.success(), "refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RLIMIT_NOFILE") && stderr.contains("max_connections 100000000"),
        "the error gives the limit and what does not fit: {stderr}"
    );
    // An ordinary start logs the limit it raised to and the guests' file cap.
    let server = Frenezulo::start(&[]);
    let log = server.wait_for_log("open-file limit");
    assert!(log.contains("guest_files="), "{log}");
}

/// Answers 256 KiB of body (4 writes of 64 KiB).
const QUARTER_MIB: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "Content-Type: application/octet-stream\n\n")
  (func (export "_start")
    (local $i i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 40))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (block $done (loop $again
      (br_if $done (i32.ge_u (local.get $i) (i32.const 4)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $again)))))"#;

/// The server's peak resident memory so far, in KiB.
fn peak_rss_kib(server: &Frenezulo) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn a_client_that_never_reads(engine: &str) {
    let guests = TempDir::new("hardening-unread");
    let big = guests.path().join("big.wat");
    std::fs::write(&big, QUARTER_MIB).unwrap();
    let file = ConfigFile::new(
        &format!("hardening-unread-{engine}"),
        &format!(
            "engine = {engine:?}\nworkers = 1\nwrite_timeout = \"3s\"\n\
             [services.hello]\nmodule = {:?}\n[services.big]\nmodule = {:?}\n",
            repo("examples/hello.wat"),
            big.display().to_string()
        ),
    );
    let server = Frenezulo::start_with_env(
        &["--config", file.path(), "--no-access-log"],
        &[("RUST_LOG", "info,frenezulo::serve=debug")],
    );
    let warm = server.get("/big");
    assert_eq!(warm.status, 200);
    assert_eq!(warm.body.len(), 256 * 1024);
    // A client that reads gets every answer it pipelined, past the bound too: the
    // connection is held while its answers wait and let go as they are written.
    let mut reader = server.connect();
    reader.send("GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(40).as_bytes());
    // 10 MiB asked for: more than the sockets hold, so answers wait in the server.
    server.wait_for_log("connection held");
    for i in 0..40 {
        let r = reader.response();
        assert_eq!(
            (r.status, r.body.len()),
            (200, 256 * 1024),
            "{engine}: answer {i}"
        );
    }
    server.wait_for_log("connection let go");
    drop(reader);
    let before = peak_rss_kib(&server);

    // 400 answers of 256 KiB (100 MiB), asked for at once and never read.
    let mut greedy = server.connect();
    greedy.send(
        "GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
            .repeat(400)
            .as_bytes(),
    );
    // Others are served meanwhile.
    let r = server.get("/hello");
    assert_eq!((r.status, r.text().as_str()), (200, HELLO));

    // Nothing written for write_timeout: the server gives the connection up.
    server.wait_for_log("write timed out");
    let grown = peak_rss_kib(&server).saturating_sub(before);
    eprintln!("{engine}: peak resident memory grew by {grown} KiB");
    assert!(
        grown < 48 * 1024,
        "{engine}: the unread answers were held to a bound, not queued whole: the peak grew by {grown} KiB"
    );
    // The connection is closed: what was in flight arrives, then EOF or a reset.
    greedy.read_timeout(support::PATIENCE);
    let mut buf = vec![0; 1 << 16];
    let closed = loop {
        use std::io::Read as _;
        match greedy.stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) => break matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    };
    assert!(closed, "{engine}: closed after the write timeout");
    let r = server.get("/hello");
    assert_eq!(r.status, 200, "{engine}: still serving");
}

per_engine!(a_client_that_never_reads_is_bounded_and_dropped_after_the_write_timeout => a_client_that_never_reads);

fn a_cancelled_call_still_queued(engine: &str) {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let upstream = support::Upstream::start(move |a| {
        log.lock().unwrap().push(a.path.clone());
        match a.path.as_str() {
            "/hold" => support::Reply::ok("held").held(),
            _ => support::Reply::ok("done"),
        }
    });
    let config = ConfigFile::new(
        &format!("hardening-cancelled-call-{engine}"),
        &format!(
            "engine = {engine:?}\noutbound_workers = 1\n[services.call]\nmodule = {:?}\nallowed_hosts = [{:?}]\n",
            repo("engines/tests/guests/outbound.wat"),
            upstream.url(""),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    // The one worker is busy with a call that is held.
    let mut first = support::post(&server, "/call", upstream.url("/hold").as_bytes());
    upstream.wait_for("/hold");
    // A second call queues behind it; then its client leaves, which cancels its task.
    let second = support::post(&server, "/call", upstream.url("/second").as_bytes());
    support::wait_for_counter(&server, "call", "running", 2);
    drop(second);
    support::wait_for_counter(&server, "call", "running", 1);
    // A third queues after it: by the time it is made, the worker has passed the second.
    let mut third = support::post(&server, "/call", upstream.url("/third").as_bytes());
    support::wait_for_counter(&server, "call", "running", 2);
    upstream.open_gate();
    assert_eq!(first.response().status, 200, "{engine}");
    assert_eq!(third.response().status, 200, "{engine}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["/hold", "/third"],
        "{engine}: the cancelled call was not made"
    );
}

per_engine!(an_outbound_call_whose_task_is_gone_is_not_made => a_cancelled_call_still_queued);

#[test]
fn a_weak_admin_token_stops_the_start_with_a_reason() {
    for weak in ["change-me", "short-token"] {
        let out = support::run_once(&[], &[("FRENEZULO_ADMIN_TOKEN", weak)]);
        assert!(!out.status.success(), "{weak} refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("too weak"), "{weak}: {stderr}");
        assert!(!stderr.contains(weak), "the token is not echoed: {stderr}");
    }
}

#[test]
fn a_default_connection_count_beyond_the_open_file_limit_is_lowered() {
    use std::io::BufRead as _;
    let data = TempDir::new("hardening-nofile-default");
    // A hard limit of 1024, as many hosts have: the default 10000 connections cannot fit.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1024 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_frenezulo"))
        .args([
            "--data-dir",
            data.arg(),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .env("FRENEZULO_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start frenezulo under sh");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + support::PATIENCE;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.contains("does not fit the open-file limit; lowered") && log.contains("listening on"),
        "the default is lowered and the server starts:\n{log}"
    );
}
