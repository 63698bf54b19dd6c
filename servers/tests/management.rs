//! End-to-end tests of the management API, the durable registry and the client, against
//! the real binary.

#[macro_use]
mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    ConfigFile, DEFAULT_ENGINE, Frenezulo, Reply, TOKEN, TempDir, Upstream, json, repo, run_once,
    slow_request, versioned,
};

per_engine! {
    add_list_show_call_configure_and_remove => lifecycle,
    replace_while_a_request_runs_finishes_it_on_the_old_version => replace_in_flight,
    the_registry_survives_a_restart => restart,
}

/// A loopback HTTP server that answers `/m.wasm` with `module`, `/moved` with a redirect
/// to it, and 404 otherwise.
fn module_server(module: Vec<u8>) -> Upstream {
    Upstream::start(move |a| match a.path.as_str() {
        "/m.wasm" => Reply::ok(module.clone()),
        "/moved" => Reply::redirect("/m.wasm"),
        _ => Reply::status(404),
    })
}

fn lifecycle(engine: &str) {
    let hello = std::fs::read(repo("examples/hello.wat")).unwrap();
    let origin = module_server(hello);
    let origin = origin.url("");
    // A loopback source: the operator allows fetching from it.
    let config = fetch_from(&origin);
    let server = Frenezulo::start(&[
        "--engine",
        engine,
        "--workers",
        "2",
        "--config",
        config.path(),
    ]);

    // Add by URL, through a redirect.
    let add = format!(r#"{{"prefix": "greet", "source": "{origin}/moved"}}"#);
    let r = server.admin("POST", "/services/add", add.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(json(&r)["source"], format!("{origin}/moved"));
    assert_eq!(server.get("/greet").text(), "Hello from frenezulo!\n");
    for _ in 0..8 {
        assert_eq!(
            server.get("/greet/x").status,
            200,
            "every serving thread has it"
        );
    }

    // Add by upload (WAT text), with limits and environment in the query.
    let echo = std::fs::read(repo("examples/echo.wat")).unwrap();
    let r = server.admin(
        "PUT",
        "/services/echo?memory=32MiB&env=GREETING%3Dhi",
        &echo,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let text = server.get("/echo").text();
    assert!(text.lines().any(|l| l == "GREETING=hi"), "{text}");

    // List and show.
    let list = json(&server.admin("GET", "/services", b""));
    let names: Vec<&str> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "greet", "hello"]);
    let hello = &list["services"][2];
    assert_eq!(hello["origin"], "built-in");
    assert_eq!(hello["changeable_by_api"], true);
    let greet = json(&server.admin("GET", "/services/greet", b""));
    assert_eq!(greet["origin"], "api");
    assert!(greet["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(greet["state"], "warm");
    assert_eq!(greet["counters"]["requests"], 9);
    let echo_info = json(&server.admin("GET", "/services/echo", b""));
    assert_eq!(
        echo_info["env"],
        serde_json::json!(["GREETING"]),
        "values hidden by default"
    );
    assert_eq!(echo_info["limits"]["memory"], 32 << 20);
    let shown = json(&server.admin("GET", "/services/echo?show_env=true", b""));
    assert_eq!(shown["env"]["GREETING"], "hi");

    // Change limits and environment without uploading again.
    let r = server.admin(
        "PATCH",
        "/services/echo",
        br#"{"limits": {"deadline": "2s"}, "env": {"GREETING": "bye"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let changed = json(&r);
    assert_eq!(changed["limits"]["deadline"], "2s");
    assert_eq!(
        changed["limits"]["memory"],
        32 << 20,
        "limits not given are kept"
    );
    assert_eq!(changed["digest"], echo_info["digest"]);
    let text = server.get("/echo").text();
    assert!(text.lines().any(|l| l == "GREETING=bye"), "{text}");
    let after = json(&server.admin("GET", "/services/echo", b""));
    assert_eq!(after["state"], "warm");
    assert_eq!(
        after["loads"], echo_info["loads"],
        "the module was not loaded again"
    );

    // Remove.
    let r = server.admin("DELETE", "/services/greet", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.get("/greet").status, 404);
    assert_eq!(server.admin("DELETE", "/services/greet", b"").status, 404);
    assert_eq!(server.admin("GET", "/services/greet", b"").status, 404);

    // Every call was logged, with its result.
    let log = server.wait_for_log("path=\"/services/greet\" status=404");
    assert!(
        log.contains("method=\"POST\" path=\"/services/add\" status=201"),
        "{log}"
    );
}

/// A config file that lets `POST /services/add` fetch from `origin` (a loopback upstream).
fn fetch_from(origin: &str) -> ConfigFile {
    ConfigFile::new("fetch", &format!("fetch_allowed_hosts = [{origin:?}]\n"))
}

#[test]
fn bad_requests_get_reasons_and_change_nothing() {
    let hello = std::fs::read(repo("examples/hello.wat")).unwrap();
    let missing = module_server(hello.clone());
    let config = fetch_from(&missing.url(""));
    let server = Frenezulo::start(&[
        "--engine",
        DEFAULT_ENGINE,
        "--config",
        config.path(),
        "--service",
        &format!("fixed={}", repo("examples/hello.wat")),
    ]);
    assert_eq!(server.admin("PUT", "/services/ok", &hello).status, 201);

    // No token, a wrong one: 401 with nothing done.
    let r = server.admin_with("PUT", "/services/ok", b"garbage", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    assert_eq!(
        server
            .admin_with("GET", "/services", b"", Some("wrong"))
            .status,
        401
    );
    assert_eq!(
        server
            .admin_with("GET", "/services/metrics", b"", Some(""))
            .status,
        401
    );
    // Health needs none.
    let health = server.admin_with("GET", "/services/health", b"", None);
    assert_eq!(
        (health.status, json(&health)["status"].as_str()),
        (200, Some("ok"))
    );

    let error = |r: support::HttpResponse| r.error();
    let (status, why) = error(server.admin("PUT", "/services/ok", b"garbage"));
    assert_eq!(status, 400);
    assert!(why.contains("not a WebAssembly module"), "{why}");
    let import = br#"(module (import "env" "f" (func)) (memory (export "memory") 1) (func (export "_start")))"#;
    let (status, why) = error(server.admin("PUT", "/services/ok", import));
    assert_eq!(status, 400);
    assert!(why.contains("unsupported import `env::f`"), "{why}");
    let (status, why) = error(server.admin(
        "POST",
        "/services/add",
        br#"{"prefix": "services", "source": "http://127.0.0.1:1/x"}"#,
    ));
    assert_eq!(status, 400);
    assert!(why.contains("reserved"), "{why}");
    let (status, _) = error(server.admin(
        "POST",
        "/services/add",
        br#"{"prefix": "Bad!", "source": "http://127.0.0.1:1/x"}"#,
    ));
    assert_eq!(status, 400);
    assert_eq!(error(server.admin("PUT", "/services/Bad!", &hello)).0, 400);
    assert_eq!(
        error(server.admin("POST", "/services/add", b"{not json")).0,
        400
    );
    let (status, why) = error(server.admin(
        "POST",
        "/services/add",
        br#"{"prefix": "x", "source": "gopher://x"}"#,
    ));
    assert_eq!(status, 400);
    assert!(why.contains("http://, https:// or file://"), "{why}");
    let (status, why) = error(server.admin(
        "POST",
        "/services/add",
        br#"{"prefix": "x", "source": "file:///etc/passwd"}"#,
    ));
    assert_eq!(status, 400);
    assert!(why.contains("module_dirs"), "{why}");
    let (status, why) = error(server.admin(
        "POST",
        "/services/add",
        format!(r#"{{"prefix": "x", "source": "{}"}}"#, missing.url("/nope")).as_bytes(),
    ));
    assert_eq!(status, 502);
    assert!(why.contains("404"), "{why}");
    let (status, why) =
        error(server.admin("PUT", "/services/ok?env=REQUEST_METHOD%3DPOST", &hello));
    assert_eq!(status, 400);
    assert!(why.contains("CGI variable"), "{why}");
    // The config file's service is not the API's to change.
    let (status, why) = error(server.admin("DELETE", "/services/fixed", b""));
    assert_eq!(status, 409);
    assert!(why.contains("command line"), "{why}");
    assert_eq!(server.admin("PUT", "/services/fixed", &hello).status, 409);
    // Too large for the request framing (past max_body and max_module_size both): 413.
    let huge = vec![0u8; 6 << 20];
    assert_eq!(server.admin("PUT", "/services/ok", &huge).status, 413);
    assert_eq!(server.admin("DELETE", "/services", b"").status, 405);

    // The version already serving kept serving through all of it.
    assert_eq!(server.get("/ok").text(), "Hello from frenezulo!\n");
    assert_eq!(server.get("/fixed").status, 200);
}

/// `max_module_size` is its own limit: a module under the request body limit but over it
/// is refused by the module check, with the limit named.
#[test]
fn a_module_over_max_module_size_is_refused_with_413() {
    let config = ConfigFile::new("module-size", "max_module_size = \"64KiB\"\n");
    let server = Frenezulo::start(&["--engine", DEFAULT_ENGINE, "--config", config.path()]);
    // Checked before the bytes are parsed, so any 100 KiB will do: within max_body (4 MiB).
    let wasm = vec![0u8; 100 << 10];
    let r = server.admin("PUT", "/services/big", &wasm);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("larger than the limit of 65536 bytes"),
        "{}",
        r.text()
    );
    assert_eq!(server.get("/big").status, 404);
}

/// Sends `/slow` a request that spins `spins` times, on a thread of its own; returns once
/// the server reports it running.
fn replace_in_flight(engine: &str) {
    let server = Frenezulo::start(&["--engine", engine, "--workers", "2"]);
    let r = server.admin("PUT", "/services/slow", versioned("v1").as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    // About a second of spinning on either engine.
    let spins: u32 = if engine == "wasmi" {
        150_000_000
    } else {
        1_000_000_000
    };
    let slow = slow_request(&server, spins);
    let r = server.admin("PUT", "/services/slow", versioned("v2").as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        server.get("/slow").text(),
        "v2",
        "new requests run the new version"
    );
    let old = slow.join().unwrap();
    assert_eq!(
        (old.status, old.text()),
        (200, "v1".to_owned()),
        "the request in flight finished on the old version"
    );

    // Removing lets a request in flight finish too.
    let slow = slow_request(&server, spins);
    assert_eq!(server.admin("DELETE", "/services/slow", b"").status, 200);
    assert_eq!(server.get("/slow").status, 404);
    let old = slow.join().unwrap();
    assert_eq!((old.status, old.text()), (200, "v2".to_owned()));
}

fn restart(engine: &str) {
    let data = TempDir::new("restart");
    let args = ["--engine", engine, "--data-dir", data.arg()];
    let mut server = Frenezulo::start(&args);
    let echo = std::fs::read(repo("examples/echo.wat")).unwrap();
    assert_eq!(
        server
            .admin("PUT", "/services/echo?queue=7&env=A%3D1", &echo)
            .status,
        201
    );
    assert_eq!(server.admin("PUT", "/services/gone", &echo).status, 201);
    assert_eq!(server.admin("DELETE", "/services/gone", b"").status, 200);
    let before = json(&server.admin("GET", "/services/echo?show_env=true", b""));
    server.kill();

    let server = Frenezulo::start(&args);
    let after = json(&server.admin("GET", "/services/echo?show_env=true", b""));
    for key in [
        "digest",
        "size",
        "source",
        "origin",
        "limits",
        "limits_set",
        "env",
        "updated_unix",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(server.admin("GET", "/services/gone", b"").status, 404);
    let text = server.get("/echo").text();
    assert!(text.lines().any(|l| l == "A=1"), "{text}");
    let metrics = server.metrics();
    let loads = |from: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "frenezulo_module_loads_total{{service=\"echo\",from=\"{from}\"}}"
                ))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    if engine == "wasmtime" {
        assert_eq!(loads("artifact").as_deref(), Some("1"), "{metrics}");
        assert_eq!(
            loads("compiled").as_deref(),
            Some("0"),
            "no compile after the restart:\n{metrics}"
        );
    } else {
        assert_eq!(loads("compiled").as_deref(), Some("1"), "{metrics}");
    }
    let modules = std::fs::read_dir(data.path().join("modules"))
        .unwrap()
        .count();
    assert_eq!(modules, 1, "the removed service's module was deleted");
}

/// `kill -9` at random moments while the registry is written; after each restart the
/// service answers with the version last acknowledged or the one being written, never
/// anything else, and the server always starts. The kill delays are drawn around the time
/// a write takes on this machine, and the test goes on until kills have landed both before
/// and after a write's acknowledgement. `FRENEZULO_TEST_SEED=N` repeats a run.
#[test]
fn a_crash_at_any_moment_leaves_the_old_registry_or_the_new() {
    let data = TempDir::new("crash");
    let args = [
        "--engine",
        DEFAULT_ENGINE,
        "--data-dir",
        data.arg(),
        "--no-access-log",
    ];
    let seed = support::seed();
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let put = |addr, version: u32| {
        let module = versioned(&format!("v{version}"));
        move || {
            // The server may be killed before this thread connects: no answer either.
            let mut c = support::Client::try_connect_to(addr).ok()?;
            let head = format!(
                "PUT /services/svc HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
                module.len()
            );
            // The server may die mid-upload: a failed write is an answer too.
            let sent = c
                .stream
                .write_all(head.as_bytes())
                .and_then(|()| c.stream.write_all(module.as_bytes()));
            sent.ok().and_then(|()| c.try_response()).map(|r| r.status)
        }
    };
    // How long one write takes here, acknowledged: the kills are spread over twice that.
    let server = Frenezulo::start(&args);
    let mut took = Vec::new();
    for version in 0..3 {
        let started = Instant::now();
        let want = if version == 0 { 201 } else { 200 };
        assert_eq!(put(server.addr, version)(), Some(want));
        took.push(started.elapsed());
    }
    drop(server);
    took.sort();
    let spread = (took[1] * 2).as_micros().max(1) as u64;
    // The version last acknowledged with a 200 or 201, and the one being written at the kill.
    let mut durable: Option<u32> = Some(2);
    let mut in_flight: Option<u32> = None;
    // How the kills landed: before the write was acknowledged and it was lost, before it
    // was acknowledged yet it was durable, or after.
    let (mut lost, mut unacknowledged_but_kept, mut after) = (0, 0, 0);
    let mut round = 0;
    loop {
        let mut server = Frenezulo::start(&args);
        let served = server.get("/svc");
        let now = (served.status != 404).then(|| {
            let text = served.text();
            text.strip_prefix('v')
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("round {round}: served {text:?} (seed {seed})"))
        });
        assert!(
            now == durable || (now.is_some() && now == in_flight),
            "round {round}: serves {now:?}; acknowledged {durable:?}, in flight {in_flight:?} (seed {seed})"
        );
        if in_flight.is_some() {
            match (now == in_flight, now == durable) {
                (true, true) => {}
                (true, false) => unacknowledged_but_kept += 1,
                _ => lost += 1,
            }
        }
        durable = now;
        if round >= 12 && lost + unacknowledged_but_kept >= 3 && after >= 3 {
            break;
        }
        assert!(
            round < 200,
            "in {round} kills, {lost} lost, {unacknowledged_but_kept} kept unacknowledged, {after} \
             after the acknowledgement: the kills did not land on both sides (seed {seed})"
        );
        let version = durable.map_or(0, |v| v + 1);
        let writer = std::thread::spawn(put(server.addr, version));
        std::thread::sleep(Duration::from_micros(next() % spread));
        server.kill();
        in_flight = Some(version);
        if matches!(writer.join().unwrap(), Some(200 | 201)) {
            durable = Some(version);
            after += 1;
        }
        round += 1;
    }
    eprintln!(
        "crash test (seed {seed}): {round} kills during registry writes, every restart consistent; \
         write lost {lost}, kept unacknowledged {unacknowledged_but_kept}, acknowledged before the kill {after}"
    );
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let server = Frenezulo::start(&["--engine", DEFAULT_ENGINE, "--workers", "2"]);
    for _ in 0..5 {
        assert_eq!(server.get("/hello").status, 200);
    }
    assert_eq!(server.get("/nothing").status, 404);
    let r = server.admin("GET", "/services/metrics", b"");
    assert_eq!(r.status, 200);
    assert!(
        r.header("Content-Type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| s.value.clone())
    };
    let value = |v: Option<prometheus_parse::Value>| match v {
        Some(
            prometheus_parse::Value::Counter(n)
            | prometheus_parse::Value::Gauge(n)
            | prometheus_parse::Value::Untyped(n),
        ) => n,
        other => panic!("not a number: {other:?}\n{text}"),
    };
    assert_eq!(
        value(sample(
            "frenezulo_requests_total",
            &[("service", "hello"), ("status", "200")]
        )),
        5.0
    );
    assert_eq!(
        value(sample(
            "frenezulo_requests_total",
            &[("service", ""), ("status", "404")]
        )),
        1.0
    );
    match sample(
        "frenezulo_request_duration_seconds",
        &[("service", "hello")],
    ) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            assert_eq!(buckets.last().unwrap().count, 5.0, "{text}");
        }
        other => panic!("no histogram: {other:?}\n{text}"),
    }
    for thread in ["0", "1"] {
        assert!(
            sample("frenezulo_instances_running", &[("thread", thread)]).is_some(),
            "{text}"
        );
        assert!(
            sample("frenezulo_rejected_total", &[("thread", thread)]).is_some(),
            "{text}"
        );
    }
    assert!(
        text.contains("frenezulo_module_loads_total{service=\"hello\""),
        "{text}"
    );
}

#[test]
fn the_access_log_has_a_line_per_request_and_can_be_turned_off() {
    let server = Frenezulo::start(&["--engine", DEFAULT_ENGINE]);
    assert_eq!(server.get("/hello").status, 200);
    assert_eq!(server.get("/nope").status, 404);
    server.wait_for_log("status=404");
    let log = server.wait_for_log("service=\"hello\" status=200");
    // Serving threads write their lines in batches: in order within a thread, not across.
    let access: Vec<&str> = log.lines().filter(|l| l.contains(" access:")).collect();
    assert_eq!(access.len(), 2, "{log}");
    let hello = access
        .iter()
        .find(|l| l.contains("service=\"hello\""))
        .expect("hello's line");
    assert!(hello.contains("status=200 bytes="), "{log}");
    assert!(hello.contains("guest_us="), "{log}");
    // The shape `tracing`'s formatter gives every other line: an RFC 3339 time in UTC with
    // microseconds, two spaces, the level, the target.
    let (stamp, rest) = hello.split_once("  ").expect("a timestamp first");
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let shape: Vec<&str> = stamp.split(['-', 'T', ':', '.', 'Z']).collect();
    assert!(
        stamp.len() == 27 && shape.len() == 8 && shape[..7].iter().all(|p| digits(p)),
        "{hello}"
    );
    assert!(
        rest.starts_with("INFO access: service=\"hello\" status=200 bytes="),
        "{hello}"
    );
    assert!(
        access.iter().any(|l| l.contains("service=\"\" status=404")),
        "{log}"
    );
    // One serving thread writes its lines in order: once the guest's stderr line of a
    // later request is in the log, an access line for /hello would be too.
    let stderr = format!("stderr={}", repo("engines/tests/guests/stderr.wat"));
    let quiet = Frenezulo::start(&[
        "--engine",
        DEFAULT_ENGINE,
        "--no-access-log",
        "--workers",
        "1",
        "--service",
        &format!("hello={}", repo("examples/hello.wat")),
        "--service",
        &stderr,
    ]);
    assert_eq!(quiet.get("/hello").status, 200);
    assert_eq!(quiet.get("/stderr").status, 200);
    let log = quiet.wait_for_log("guest says hi on stderr");
    assert!(!log.contains(" access:"), "{log}");
    // The log filter turns it off too.
    let filtered = Frenezulo::start_with_env(
        &[
            "--engine",
            DEFAULT_ENGINE,
            "--workers",
            "1",
            "--service",
            &stderr,
        ],
        &[("RUST_LOG", "info,access=off")],
    );
    assert_eq!(filtered.get("/stderr").status, 200);
    let log = filtered.wait_for_log("guest says hi on stderr");
    assert!(!log.contains(" access:"), "{log}");
}

#[test]
fn a_generated_token_is_kept_private_and_printed_once() {
    let data = TempDir::new("token");
    let args = ["--engine", DEFAULT_ENGINE, "--data-dir", data.arg()];
    let server = Frenezulo::start_with_env(&args, &[("FRENEZULO_ADMIN_TOKEN", "")]);
    let path = data.path().join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap();
    assert_eq!(token.len(), 64);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(server.log().contains(&token), "printed at first start");
    assert_eq!(
        server
            .admin_with("GET", "/services", b"", Some(&token))
            .status,
        200
    );
    assert_eq!(
        server.admin("GET", "/services", b"").status,
        401,
        "the test token is not it"
    );
    drop(server);
    let server = Frenezulo::start_with_env(&args, &[("FRENEZULO_ADMIN_TOKEN", "")]);
    assert_eq!(
        server
            .admin_with("GET", "/services", b"", Some(&token))
            .status,
        200
    );
    assert!(!server.log().contains(&token), "not printed again");
}

#[test]
fn the_binary_is_also_the_client() {
    let server = Frenezulo::start(&["--engine", DEFAULT_ENGINE]);
    let url = format!("http://{}", server.addr);
    let client = |args: &[&str]| {
        let mut all = vec!["services"];
        all.extend_from_slice(args);
        all.extend(["--server", &url]);
        let out = run_once(&all, &[]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = client(&[
        "add",
        "echo",
        &repo("examples/echo.wat"),
        "--route",
        "/tools/echo",
        "--env",
        "COLOUR=blue",
        "--limit",
        "memory=16MiB",
    ]);
    assert!(ok, "{out}");
    assert!(out.starts_with("echo: sha256:"), "{out}");
    assert!(
        server
            .get("/tools/echo")
            .text()
            .lines()
            .any(|l| l == "COLOUR=blue")
    );
    let (ok, out) = client(&["list"]);
    assert!(ok, "{out}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("PREFIX"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("echo ")
            && l.contains(" /tools/echo/... ")
            && l.contains(" api ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("hello ") && l.contains("built-in")),
        "{out}"
    );
    let (ok, out) = client(&["list", "--json"]);
    assert!(ok, "{out}");
    let parsed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed["services"].as_array().unwrap().len(), 2);
    let (ok, out) = client(&["set", "echo", "--env", "COLOUR=red"]);
    assert!(ok, "{out}");
    assert!(
        server
            .get("/tools/echo")
            .text()
            .lines()
            .any(|l| l == "COLOUR=red")
    );
    let (ok, out) = client(&["show", "echo"]);
    assert!(ok && out.contains("memory=16777216"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("env") && l.ends_with(" COLOUR")),
        "names only: {out}"
    );
    // Limits are checked with the server's own parser before anything is sent.
    let (ok, out) = client(&["set", "echo", "--limit", "colour=blue"]);
    assert!(!ok && out.contains("unknown limit `colour`"), "{out}");
    let (ok, out) = client(&["metrics"]);
    assert!(ok && out.contains("frenezulo_requests_total"), "{out}");
    let (ok, out) = client(&["rm", "echo"]);
    assert!(ok, "{out}");
    assert_eq!(server.get("/tools/echo").status, 404);
    let (ok, out) = client(&["rm", "echo"]);
    assert!(
        !ok && out.contains("no service named `echo` (HTTP 404)"),
        "{out}"
    );
    let (ok, out) = client(&["list", "--token", "wrong"]);
    assert!(!ok && out.contains("HTTP 401"), "{out}");
}
