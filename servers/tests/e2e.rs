//! End-to-end: the real binary on a free loopback port, spoken to over real sockets.

#[macro_use]
mod support;

use support::{
    ConfigFile, DEFAULT_ENGINE, ENGINES, Frenezulo, PATIENCE, Reply, Upstream, held_call, post,
    repo, run_once, wait_for_counter,
};

fn examples(engine: &str) -> Frenezulo {
    let services = [
        format!("hello={}", repo("examples/hello.wat")),
        format!("echo={}", repo("examples/echo.wat")),
        format!("teapot={}", repo("examples/status.wat")),
        format!("go={}", repo("examples/redirect.wat")),
        format!("trap={}", repo("engines/tests/guests/trap.wat")),
        format!("bad={}", repo("engines/tests/guests/bad-output.wat")),
        format!("stderr={}", repo("engines/tests/guests/stderr.wat")),
    ];
    let mut args = vec!["--engine", engine];
    for s in &services {
        args.extend(["--service", s.as_str()]);
    }
    Frenezulo::start(&args)
}

#[test]
fn bare_start_serves_the_builtin_hello() {
    let server = Frenezulo::start(&[]);
    let r = server.get("/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from frenezulo!\n");
    assert_eq!(r.header("Server"), Some("frenezulo"));
    assert!(r.header("Date").is_some_and(|d| d.ends_with("GMT")));
}

#[test]
fn every_route_shape() {
    let server = examples(DEFAULT_ENGINE);
    for path in ["/echo", "/echo/", "/echo/a/b", "/echo?x=1", "/echo/a?x=1"] {
        let r = server.get(path);
        assert_eq!(r.status, 200, "{path}");
        let text = r.text();
        let (path_part, query) = path.split_once('?').unwrap_or((path, ""));
        let info = &path_part["/echo".len()..];
        assert!(
            text.contains(&format!("\nPATH_INFO={info}\n")),
            "{path}: {text}"
        );
        assert!(
            text.contains(&format!("\nQUERY_STRING={query}\n")),
            "{path}: {text}"
        );
    }
    for path in ["/", "/echoes", "/nothing/here", "/ECHO"] {
        assert_eq!(server.get(path).status, 404, "{path}");
    }
    assert_eq!(
        server.get("/services").status,
        401,
        "the management API wants a token"
    );
    assert_eq!(server.get("/teapot").status, 418);
    let r = server.get("/go");
    assert_eq!((r.status, r.header("Location")), (302, Some("/hello")));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = examples(DEFAULT_ENGINE);
    let mut c = server.connect();
    for i in 0..50 {
        c.send(format!("GET /echo/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200);
        assert!(r.text().contains(&format!("PATH_INFO=/{i}\n")));
        assert_eq!(r.header("Connection"), None);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = examples(DEFAULT_ENGINE);
    let mut c = server.connect();
    let mut batch = String::new();
    for i in 0..8 {
        let path = if i % 3 == 2 {
            "/missing".to_owned()
        } else {
            format!("/echo/{i}")
        };
        batch.push_str(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    c.send(batch.as_bytes());
    for i in 0..8 {
        let r = c.response();
        if i % 3 == 2 {
            assert_eq!(r.status, 404);
        } else {
            assert!(
                r.text().contains(&format!("PATH_INFO=/{i}\n")),
                "response {i} out of order"
            );
        }
    }
}

#[test]
fn chunked_upload_is_echoed() {
    let server = examples(DEFAULT_ENGINE);
    let mut c = server.connect();
    // Two writes: the server may see the body in two reads or one; either must work.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    c.send(b"7\r\n, world\r\n0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("\nCONTENT_LENGTH=12\n"), "{text}");
    assert!(text.ends_with("\n\nhello, world"), "{text}");
}

#[test]
fn head_has_no_body_and_the_connection_stays_usable() {
    let server = examples(DEFAULT_ENGINE);
    let mut c = server.connect();
    c.send(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("22"));
    c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().text(), "Hello from frenezulo!\n");
}

#[test]
fn expect_continue_gets_100_first() {
    let server = examples(DEFAULT_ENGINE);
    let mut c = server.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(c.response().status, 100);
    c.send(b"ping");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("ping"));
}

#[test]
fn malformed_input_gets_the_right_status_and_a_close() {
    let server = examples(DEFAULT_ENGINE);
    let huge_header = format!(
        "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let too_many = format!(
        "GET /hello HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"NONSENSE\r\n\r\n".to_vec(), 400),
        (b"GET /hello HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n".to_vec(), 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400),
        (huge_header.into_bytes(), 431),
        (too_many.into_bytes(), 431),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n".to_vec(), 413),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501),
        (b"GET /hello HTTP/3.0\r\nHost: t\r\n\r\n".to_vec(), 505),
    ];
    for (input, status) in cases {
        let mut c = server.connect();
        c.send(&input);
        let r = c.response();
        assert_eq!(
            r.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&input[..40.min(input.len())])
        );
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(c.is_closed(), "connection stays open after {status}");
    }
    assert_eq!(
        server.get("/hello").status,
        200,
        "the server is fine afterwards"
    );
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let server = examples(DEFAULT_ENGINE);
    let mut c = server.connect();
    c.send(b"GET /hello HTTP/1.0\r\n\r\n");
    assert_eq!(c.response().status, 200);
    assert!(c.is_closed());
    let mut c = server.connect();
    c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response().status, 200);
    c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response().status, 200);
}

#[test]
fn failing_guests_get_clean_statuses_and_harm_no_one() {
    for engine in ENGINES {
        let server = examples(engine);
        let mut c = server.connect();
        for (path, status) in [
            ("/trap", 500),
            ("/hello", 200),
            ("/bad", 502),
            ("/hello", 200),
        ] {
            c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let r = c.response();
            assert_eq!(r.status, status, "{engine} {path}");
            if status >= 500 {
                let text = r.text();
                assert!(text.starts_with("service failed"), "{text}");
                assert!(
                    !text.contains('/') || text.contains("CGI"),
                    "no host paths: {text}"
                );
            }
        }
        // Serving threads write their log in batches: wait for the line itself (start-up
        // lines name the service too).
        server.eventually("the trap in the log", || {
            let log = server.log();
            log.lines()
                .any(|l| l.contains("guest failed") && l.contains("service=trap"))
                .then_some(())
        });
    }
}

#[test]
fn guest_stderr_goes_to_the_log_tagged_with_the_service() {
    let server = examples(ENGINES[ENGINES.len() - 1]);
    let r = server.get("/stderr");
    assert_eq!(r.text(), "ok\n");
    let line = server.wait_for_log_line("guest says hi on stderr");
    assert!(line.contains("service=stderr"), "{line}");
}

#[test]
fn the_host_environment_stays_out_of_guests() {
    let echo = format!("echo={}", repo("examples/echo.wat"));
    let server = Frenezulo::start_with_env(
        &["--service", &echo],
        &[("FRENEZULO_PLANTED_SECRET", "hunter2")],
    );
    let text = server.get("/echo").text();
    assert!(!text.contains("hunter2"));
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("HOME=") || l.starts_with("PATH="))
    );
}

#[test]
fn config_file_sets_services_and_the_command_line_wins() {
    let other = if DEFAULT_ENGINE == "wasmi" {
        "wasmtime"
    } else {
        "wasmi"
    };
    let config = ConfigFile::new(
        "e2e",
        &format!(
            "engine = {other:?}\nbacklog = 16\n[services]\nhi = {:?}\n[services.tea]\nmodule = {:?}\nmemory = \"8MiB\"\n",
            repo("examples/hello.wat"),
            repo("examples/status.wat"),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path(), "--engine", DEFAULT_ENGINE]);
    assert_eq!(server.get("/hi").status, 200);
    assert_eq!(server.get("/tea").status, 418);
    assert_eq!(
        server.get("/hello").status,
        404,
        "no built-in when services are configured"
    );
    let wanted = format!("engine={DEFAULT_ENGINE}");
    let log = server.wait_for_log(&wanted);
    assert!(log.contains(&wanted), "the flag wins over the file: {log}");
}

#[test]
fn bad_modules_and_bad_flags_stop_startup_with_a_reason() {
    let dir = support::TempDir::new("bad");
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm garbage").unwrap();
    let cases = [
        (
            vec!["--service".to_owned(), format!("x={}", bad.display())],
            "not a valid WebAssembly module",
        ),
        (
            vec!["--service".to_owned(), "x=/no/such/file.wasm".to_owned()],
            "reading module",
        ),
        (
            vec![
                "--service".to_owned(),
                format!("services={}", repo("examples/hello.wat")),
            ],
            "reserved",
        ),
        (
            vec!["--service".to_owned(), "Bad=x.wat".to_owned()],
            "must match",
        ),
        (
            vec!["--engine".to_owned(), "v8".to_owned()],
            "unknown engine",
        ),
    ];
    for (args, reason) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_once(&args, &[]);
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

/// Serving threads share the port with `SO_REUSEPORT`; a second server must still be told
/// the address is taken rather than quietly share it.
#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let first = Frenezulo::start(&[]);
    let out = run_once(&["--listen", &first.addr.to_string()], &[]);
    assert!(!out.status.success(), "a second server started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    assert_eq!(first.get("/hello").status, 200);
}

#[test]
fn help_explains_itself() {
    let out = run_once(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--engine",
        "--listen",
        "--service",
        "--config",
        "--backlog",
        "--workers",
        "--idle-timeout",
        "WAGI",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

per_engine! {
    sigterm_finishes_requests_in_flight_then_exits => sigterm_drains,
}

fn sigterm_drains(engine: &str) {
    let (mut server, upstream, _config) = held_call(engine, "");
    let mut c = post(&server, "/call", upstream.url("/hold").as_bytes());
    upstream.wait_for("/hold");
    wait_for_counter(&server, "call", "running", 1);
    server.terminate();
    // Every serving thread has taken the shutdown once none accepts any more.
    server.eventually("the listeners to close", || {
        std::net::TcpStream::connect(server.addr)
            .is_err()
            .then_some(())
    });
    upstream.open_gate();
    let r = c.response();
    assert_eq!(r.status, 200, "{engine}");
    assert_eq!(&r.body[3..], b"held", "{engine}");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(server.wait(PATIENCE), "{engine}: clean exit");
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "no longer listening"
    );
}

#[cfg(not(feature = "wasmtime"))]
#[test]
fn a_jit_free_build_says_wasmtime_is_not_compiled_in() {
    let out = run_once(&["--engine", "wasmtime"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("engine `wasmtime` is not compiled into this build (built with: wasmi)"),
        "{stderr}"
    );
    let server = Frenezulo::start(&["--engine", "wasmi"]);
    assert_eq!(server.get("/hello").status, 200);
}

#[test]
fn environment_values_reach_guests_with_service_values_on_top() {
    let dir = support::TempDir::new("envfile");
    let vars = dir.path().join("vars.env");
    std::fs::write(&vars, "# shared by every service\nREGION=eu\nTIER=file\n").unwrap();
    let echo = repo("examples/echo.wat");
    let config = ConfigFile::new(
        "env",
        &format!(
            "[services.echo]\nmodule = {echo:?}\nenv = {{ TIER = \"service\" }}\n[services.plain]\nmodule = {echo:?}\n"
        ),
    );
    let vars_arg = vars.to_str().unwrap();
    let server = Frenezulo::start(&[
        "--engine",
        DEFAULT_ENGINE,
        "--config",
        config.path(),
        "--env-file",
        vars_arg,
        "--env",
        "REGION=us",
    ]);
    let lines = |path: &str| {
        server
            .get(path)
            .text()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let echo = lines("/echo");
    assert!(
        echo.contains(&"REGION=us".to_owned()) && echo.contains(&"TIER=service".to_owned()),
        "{echo:?}"
    );
    let plain = lines("/plain");
    assert!(
        plain.contains(&"REGION=us".to_owned()) && plain.contains(&"TIER=file".to_owned()),
        "{plain:?}"
    );
    // Start-up is logged in full before the server listens (see `Frenezulo::start`).
    assert!(
        !server.log().contains("REGION=us"),
        "values stay out of the log"
    );
    // A CGI variable is the request's: it cannot be configured.
    let out = run_once(&["--env", "REQUEST_METHOD=POST"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CGI variable"));
}

/// WAGI's modules.toml: sub-routes from `_routes`, an entrypoint, a read-only volume and
/// environment values, on each engine; and sub-routes of a module added through the API.
#[test]
fn a_wagi_module_map_serves_routes_entrypoints_and_volumes() {
    let dir = support::TempDir::new("wagi");
    let volume = dir.path().join("static");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("page.html"), "<p>from a volume</p>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    let map = format!(
        r#"
        [[module]]
        route = "/routed/..."
        module = "{routes}"

        [[module]]
        route = "/entry"
        module = "{routes}"
        entrypoint = "hello"

        [[module]]
        route = "/files"
        module = "{volume}"
        volumes = {{ "/static" = "static" }}

        [[module]]
        route = "/echo"
        module = "file://{echo}"
        environment = {{ GREETING = "hi" }}
        argv = "echo ${{ARGS}}"
        "#,
        routes = repo("engines/tests/guests/routes.wat"),
        volume = repo("engines/tests/guests/volume.wat"),
        echo = repo("examples/echo.wat"),
    );
    let path = dir.path().join("modules.toml");
    std::fs::write(&path, map).unwrap();
    for engine in ENGINES {
        // The volume's `static` is relative to the working directory, as in WAGI.
        let server = Frenezulo::start_in(
            dir.path(),
            &["--engine", engine, "--wagi-config", path.to_str().unwrap()],
        );
        for (target, body) in [
            ("/routed", "start"),
            ("/routed/hello", "hello"),
            ("/routed/hello/x", "start"),
            ("/routed/files", "files"),
            ("/routed/files/a/b", "files"),
            ("/entry", "hello"),
            ("/entry/files/x", "files"),
        ] {
            let r = server.get(target);
            assert_eq!(
                (r.status, r.text()),
                (200, body.to_owned()),
                "{engine} {target}"
            );
        }
        // An exact route serves its path and its sub-routes only.
        assert_eq!(server.get("/entry/other").status, 404, "{engine}");
        let page = server.admin("POST", "/files", b"page.html");
        assert_eq!(page.body[0], 0, "{engine}");
        assert_eq!(&page.body[1..], b"<p>from a volume</p>");
        let escape = server.admin("POST", "/files", b"../secret.txt");
        assert_eq!(&escape.body[..], [76], "{engine}: ENOTCAPABLE");
        let echo = server.get("/echo?a=1").text();
        for line in [
            "GREETING=hi",
            "ARG=echo",
            "ARG=a=1",
            "X_MATCHED_ROUTE=/echo",
        ] {
            assert!(
                echo.lines().any(|l| l == line),
                "{engine}: {line} in\n{echo}"
            );
        }
        // A module added through the API gets its sub-routes too, and lists them.
        let wat = std::fs::read(repo("engines/tests/guests/routes.wat")).unwrap();
        let put = server.admin("PUT", "/services/api?entrypoint=files", &wat);
        assert_eq!(put.status, 201, "{}", put.text());
        assert_eq!(server.get("/api/hello").text(), "hello");
        assert_eq!(server.get("/api").text(), "files");
        let shown = server.admin("GET", "/services/api", b"").text();
        assert!(shown.contains(r#""route": "/api/files/...""#), "{shown}");
        let refused = server.admin("PUT", "/services/api2?entrypoint=missing", &wat);
        assert_eq!(refused.status, 400, "{}", refused.text());
        assert!(refused.text().contains("`missing`"), "{}", refused.text());
    }
    // A route that cannot be served stops the server with the module named.
    std::fs::write(
        &path,
        "[[module]]\nroute = \"/services/...\"\nmodule = \"x.wasm\"\n",
    )
    .unwrap();
    let out = run_once(&["--wagi-config", path.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`x.wasm` at route `/services/...`"),
        "{stderr}"
    );
}

/// Outbound HTTP on each engine: an allowed call, a refused origin, the size cap, the
/// timeout and the concurrency limit; and calls held open upstream do not stop `/hello`
/// on the same (single) serving thread.
#[test]
fn guests_call_out_over_http_within_their_grant() {
    for engine in ENGINES {
        // An upstream per engine, so no call of one run can be taken for the next's.
        let upstream = Upstream::start(|a| match a.path.as_str() {
            "/hold" => Reply::ok("held").held(),
            "/big" => Reply::ok("x".repeat(2048)),
            _ => Reply::ok(format!(
                "x-test: {}",
                a.header("x-test").unwrap_or_default()
            )),
        });
        let config = |timeout: &str| {
            format!(
                r#"
                engine = "{engine}"
                workers = 1
                outbound_timeout = "{timeout}"
                outbound_max_response = "1KiB"
                [services.call]
                module = "{outbound}"
                allowed_hosts = ["{allowed}"]
                http_max_concurrency = 2
                [services.hello]
                module = "{hello}"
                "#,
                outbound = repo("engines/tests/guests/outbound.wat"),
                hello = repo("examples/hello.wat"),
                allowed = upstream.url(""),
            )
        };
        let long = ConfigFile::new("outbound-long", &config("30s"));
        let server = Frenezulo::start(&["--config", long.path()]);
        let r = server.admin("POST", "/call", upstream.url("/echo").as_bytes());
        assert_eq!(r.body[0], 0, "{engine}: {:?}", r.text());
        assert_eq!(u16::from_le_bytes([r.body[1], r.body[2]]), 200);
        assert_eq!(
            &r.body[3..],
            b"x-test: 1",
            "{engine}: the guest's header went out"
        );
        let other = format!("http://127.0.0.1:{}/", upstream.addr.port().wrapping_add(1));
        let r = server.admin("POST", "/call", other.as_bytes());
        assert_eq!(r.body[..], [7], "{engine}: another origin is refused");
        server.wait_for_log("origin not in allowed_hosts");
        let r = server.admin("POST", "/call", upstream.url("/big").as_bytes());
        assert_eq!(r.body[..], [11], "{engine}: past the size cap");
        // Two calls held upstream take the service's two slots; the one serving thread
        // answers /hello meanwhile, and a third call is refused at once.
        let mut held = [
            post(&server, "/call", upstream.url("/hold").as_bytes()),
            post(&server, "/call", upstream.url("/hold").as_bytes()),
        ];
        upstream.wait_for("/hold");
        upstream.wait_for("/hold");
        let hello = server.get("/hello");
        assert_eq!(
            (hello.status, hello.text()),
            (200, "Hello from frenezulo!\n".to_owned())
        );
        let r = server.admin("POST", "/call", upstream.url("/echo").as_bytes());
        assert_eq!(r.body[..], [13], "{engine}: over http_max_concurrency");
        upstream.open_gate();
        for c in &mut held {
            let r = c.response();
            assert_eq!((r.body[0], &r.body[3..]), (0, &b"held"[..]), "{engine}");
        }
        upstream.close_gate();
        let metrics = server.metrics();
        assert!(
            metrics.contains("frenezulo_outbound_calls_total{service=\"call\"} 4"),
            "{metrics}"
        );
        drop(server);
        let short = ConfigFile::new("outbound-short", &config("300ms"));
        let server = Frenezulo::start(&["--config", short.path()]);
        let r = server.admin("POST", "/call", upstream.url("/hold").as_bytes());
        assert_eq!(r.body[..], [11], "{engine}: past the timeout");
        upstream.open_gate();
    }
}
