//! The conformance suite: every WAGI case, error status and limit, written once and run
//! against every engine compiled in (`conformance!` makes one test per case per engine).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::{guest, outbound_setup, printer, repo, request};
use frenezulo_core::response::stream::Piece;
use frenezulo_core::{GuestFailure, GuestRequest, GuestSetup, Response, RunLimits};
use frenezulo_engines::outbound::{OutboundError, OutboundResponse, OutboundResult};
use frenezulo_engines::{
    CompileError, DiscoverRoutesError, Engine, EngineConfig, EngineKind, Grants, OutboundGrant,
    RunOutput, Slice, ThreadWaker, Volume, check_entrypoints, discover_routes, run_to_completion,
};

/// The engine most cases share (tests run in parallel, so its instance pool is shared too).
fn engine(kind: EngineKind) -> Arc<dyn Engine> {
    static WASMTIME: OnceLock<Arc<dyn Engine>> = OnceLock::new();
    static WASMI: OnceLock<Arc<dyn Engine>> = OnceLock::new();
    let cell = match kind {
        EngineKind::Wasmtime => &WASMTIME,
        _ => &WASMI,
    };
    cell.get_or_init(|| own_engine(kind)).clone()
}

/// An engine with a pool of its own, for cases that hold many instances at once: on the
/// shared one they could exhaust the pool under parallel cases.
fn own_engine(kind: EngineKind) -> Arc<dyn Engine> {
    let config = EngineConfig {
        max_instances: 16,
        max_memory_bytes: 64 << 20,
    };
    frenezulo_engines::create(kind, &config).expect("engine")
}

fn limits() -> RunLimits {
    RunLimits {
        memory_bytes: 4 << 20,
        stdout_bytes: 1 << 20,
    }
}

/// Long enough for every guest here that finishes at all.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn run_with(engine: &dyn Engine, wasm: &[u8], req: &GuestRequest, limits: RunLimits) -> RunOutput {
    let module = engine.compile(wasm).expect("compiles");
    run_to_completion(module.as_ref(), req, &limits, deadline())
}

fn run(engine: &dyn Engine, wasm: &[u8]) -> Result<Response, GuestFailure> {
    run_with(
        engine,
        wasm,
        &request("GET", "/svc", &[("Host", "example.com")], b""),
        limits(),
    )
    .result
}

fn ok(result: Result<Response, GuestFailure>) -> Response {
    result.unwrap_or_else(|e| panic!("expected a response, got {e:?}"))
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A setup that grants the directory `dir` as `/static`.
fn volume_setup(dir: &std::path::Path) -> Arc<GuestSetup> {
    let grants = Grants {
        volumes: vec![Volume {
            guest_path: "/static".to_owned(),
            dir: Arc::new(std::fs::File::open(dir).unwrap()),
        }],
        ..Grants::default()
    };
    Arc::new(GuestSetup {
        host: grants.into_host(),
        ..Default::default()
    })
}

fn outbound_grant(setup: &GuestSetup) -> &OutboundGrant {
    Grants::of(setup).and_then(|g| g.outbound.as_ref()).unwrap()
}

fn in_flight(setup: &GuestSetup) -> usize {
    outbound_grant(setup)
        .in_flight
        .load(std::sync::atomic::Ordering::Acquire)
}

/// A volume directory with a file, a subdirectory and two symlinks (one inside, one
/// leaving it), next to a file the guest must not reach; removed on drop.
struct Fixture(tempfile::TempDir);

impl Fixture {
    fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("frenezulo-volume-")
            .tempdir()
            .unwrap();
        let volume = root.path().join("volume");
        std::fs::create_dir_all(volume.join("sub")).unwrap();
        std::fs::write(volume.join("hello.txt"), "hello from a volume\n").unwrap();
        std::fs::write(volume.join("sub/inner.txt"), "inner").unwrap();
        std::fs::write(root.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink("hello.txt", volume.join("inside")).unwrap();
        std::os::unix::fs::symlink("..", volume.join("escape")).unwrap();
        Fixture(root)
    }

    fn volume(&self) -> std::path::PathBuf {
        self.0.path().join("volume")
    }
}

macro_rules! conformance {
    ($($(#[$meta:meta])* fn $name:ident($engine:ident) $body:block)*) => {
        #[cfg(feature = "wasmtime")]
        mod wasmtime {
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $engine = engine(EngineKind::Wasmtime); let $engine = $engine.as_ref(); $body } )*
        }
        #[cfg(feature = "wasmi")]
        mod wasmi {
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $engine = engine(EngineKind::Wasmi); let $engine = $engine.as_ref(); $body } )*
        }
    };
}

conformance! {
    fn hello_example_answers(e) {
        let r = ok(run(e, &guest("examples/hello.wat")));
        assert_eq!(r.status, 200);
        assert_eq!(body(&r), "Hello from frenezulo!\n");
    }

    fn cgi_environment_is_complete(e) {
        let req = request(
            "POST",
            "/svc/a%20b/c?x=1&y=two",
            &[("Host", "example.com:8080"), ("Content-Type", "text/plain"), ("X-Custom", "one"), ("x-custom", "two")],
            b"the body",
        );
        let r = ok(run_with(e, &guest("examples/echo.wat"), &req, limits()).result);
        let text = body(&r);
        for line in [
            "REQUEST_METHOD=POST",
            "SCRIPT_NAME=/svc",
            "PATH_INFO=/a b/c",
            "X_RAW_PATH_INFO=/a%20b/c",
            "QUERY_STRING=x=1&y=two",
            "X_MATCHED_ROUTE=/svc/...",
            "X_FULL_URL=http://example.com:8080/svc/a%20b/c?x=1&y=two",
            "SERVER_NAME=example.com",
            "SERVER_PORT=8080",
            "SERVER_PROTOCOL=HTTP/1.1",
            "GATEWAY_INTERFACE=CGI/1.1",
            "CONTENT_LENGTH=8",
            "CONTENT_TYPE=text/plain",
            "REMOTE_ADDR=10.1.2.3",
            "HTTP_HOST=example.com:8080",
            "HTTP_X_CUSTOM=one, two",
            "ARG=/svc",
            "ARG=x=1",
            "ARG=y=two",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("HTTP_CONTENT_TYPE"), "Content-Type has its own variable");
        assert!(text.ends_with("\n\nthe body"), "stdin is the body:\n{text}");
    }

    fn configured_environment_values_are_seen(e) {
        let mut req = request("GET", "/svc", &[], b"");
        req.setup = Arc::new(GuestSetup {
            env: vec![
                ("DATABASE_URL".to_owned(), "postgres://db/x".to_owned()),
                ("FLAG".to_owned(), String::new()),
            ],
            ..Default::default()
        });
        let text = body(&ok(run_with(e, &guest("examples/echo.wat"), &req, limits()).result));
        for line in ["DATABASE_URL=postgres://db/x", "FLAG=", "REQUEST_METHOD=GET"] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    fn argv_follows_the_template(e) {
        let mut req = request("GET", "/svc/x?a=1&b=2", &[], b"");
        req.setup = Arc::new(GuestSetup {
            argv: "tool --name ${SCRIPT_NAME} -- ${ARGS} end".to_owned(),
            ..Default::default()
        });
        let text = body(&ok(run_with(e, &guest("examples/echo.wat"), &req, limits()).result));
        let args: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("ARG=")).collect();
        assert_eq!(args, ["tool", "--name", "/svc", "--", "a=1", "b=2", "end"]);
    }

    fn an_exact_sub_route_is_named_as_matched(e) {
        let mut req = request("GET", "/svc/hello/x", &[], b"");
        req.script_name = "/svc/hello".to_owned();
        req.path_info = "/x".to_owned();
        req.wildcard = false;
        let text = body(&ok(run_with(e, &guest("examples/echo.wat"), &req, limits()).result));
        for line in ["SCRIPT_NAME=/svc/hello", "PATH_INFO=/x", "X_MATCHED_ROUTE=/svc/hello"] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    fn the_entrypoint_chosen_is_run(e) {
        let module = e.compile(&guest("engines/tests/guests/routes.wat")).unwrap();
        let mut names = module.entrypoints().to_vec();
        names.sort();
        assert_eq!(names, ["_routes", "_start", "files", "hello"]);
        for (entry, expected) in [("_start", "start"), ("hello", "hello"), ("files", "files")] {
            let mut req = request("GET", "/svc", &[], b"");
            req.entrypoint = entry.into();
            let out = run_to_completion(module.as_ref(), &req, &limits(), deadline());
            assert_eq!(body(&ok(out.result)), expected);
        }
        let mut req = request("GET", "/svc", &[], b"");
        req.entrypoint = "takes_one".into();
        let out = run_to_completion(module.as_ref(), &req, &limits(), deadline());
        assert!(matches!(out.result, Err(GuestFailure::Trap(_))), "{:?}", out.result);
    }

    fn routes_are_learned_from_the_routes_export(e) {
        let module = e.compile(&guest("engines/tests/guests/routes.wat")).unwrap();
        let routes = discover_routes(module.as_ref(), &limits()).unwrap();
        let text: Vec<String> = routes.routes().iter().map(|r| format!("{} {}", r.pattern, r.entrypoint)).collect();
        assert_eq!(text, ["/hello hello", "/files/... files"]);
        let setup = GuestSetup { routes, ..Default::default() };
        assert_eq!(check_entrypoints(module.as_ref(), &setup), Ok(()));
        let setup = GuestSetup { entrypoint: "nope".into(), ..Default::default() };
        assert!(check_entrypoints(module.as_ref(), &setup).unwrap_err().contains("`nope`"));
        let setup = GuestSetup { entrypoint: "_routes".into(), ..Default::default() };
        assert!(check_entrypoints(module.as_ref(), &setup).is_err(), "`_routes` answers no request");
        // A module without `_routes` has none; one whose `_routes` traps is refused.
        let plain = e.compile(&guest("examples/hello.wat")).unwrap();
        assert!(discover_routes(plain.as_ref(), &limits()).unwrap().is_empty());
        let bad = e.compile(&wat::parse_str(r#"(module (memory (export "memory") 1)
            (func (export "_start")) (func (export "_routes") unreachable))"#).unwrap()).unwrap();
        assert!(matches!(discover_routes(bad.as_ref(), &limits()), Err(DiscoverRoutesError::Failed(_))));
    }

    fn volumes_are_read_only_and_cannot_be_escaped(e) {
        let fixture = Fixture::new();
        let setup = volume_setup(&fixture.volume());
        let module = e.compile(&guest("engines/tests/guests/volume.wat")).unwrap();
        let open = |path: &str| {
            let mut req = request("POST", "/svc", &[], path.as_bytes());
            req.setup = setup.clone();
            let r = ok(run_to_completion(module.as_ref(), &req, &limits(), deadline()).result);
            (r.body[0], String::from_utf8_lossy(&r.body[1..]).into_owned())
        };
        assert_eq!(open("hello.txt"), (0, "hello from a volume\n".to_owned()));
        assert_eq!(open("sub/inner.txt").0, 0);
        assert_eq!(open("./sub/../hello.txt").0, 0, "`..` that stays inside is fine");
        assert_eq!(open("inside").0, 0, "a symlink that stays inside is followed");
        assert_eq!(open("missing").0, 44, "ENOENT");
        for escape in ["../secret.txt", "/etc/passwd", "sub/../../secret.txt", "escape/secret.txt", "escape"] {
            assert_eq!(open(escape), (76, String::new()), "{escape} must be ENOTCAPABLE");
        }
        // Without the volume, fd 3 does not exist.
        let mut req = request("POST", "/svc", &[], b"hello.txt");
        req.setup = Arc::new(GuestSetup::default());
        let r = ok(run_to_completion(module.as_ref(), &req, &limits(), deadline()).result);
        assert_eq!(r.body[0], 8, "EBADF");
    }

    fn special_files_in_a_volume_are_refused_without_blocking(e) {
        let fixture = Fixture::new();
        let fifo = fixture.volume().join("pipe");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
        assert!(status.success());
        let setup = volume_setup(&fixture.volume());
        let module = e.compile(&guest("engines/tests/guests/volume.wat")).unwrap();
        let mut req = request("POST", "/svc", &[], b"pipe");
        req.setup = setup;
        let (done, result) = std::sync::mpsc::channel();
        // A FIFO without a writer blocks an ordinary open in the kernel: run on a thread of
        // its own so that a regression fails here instead of hanging the suite.
        std::thread::spawn(move || {
            let out = run_to_completion(module.as_ref(), &req, &limits(), deadline());
            let _ = done.send(out.result.map(|r| r.body));
        });
        let body = result
            .recv_timeout(Duration::from_secs(60))
            .expect("the guest's path_open on a FIFO blocked")
            .expect("a response");
        assert_eq!(&body[..], &[58u8][..], "ENOTSUP, and nothing read");
    }

    fn an_outbound_call_waits_for_its_result(e) {
        let module = e.compile(&guest("engines/tests/guests/outbound.wat")).unwrap();
        let setup = outbound_setup(Some(&["http://127.0.0.1:9"]), 2);
        let mut req = request("POST", "/svc", &[], b"http://127.0.0.1:9/path?q=1");
        req.setup = setup.clone();
        let mut task = module.start(&req, &limits());
        let call = loop {
            match task.run_slice(std::task::Waker::noop()) {
                Slice::Streamed(piece) => panic!("this guest writes only at its end: {piece:?}"),
                Slice::Waiting(call) => break call,
                Slice::Yielded => continue,
                Slice::Finished(out) => panic!("finished without waiting: {:?}", out.result),
                Slice::Parked => panic!("drip.wat never sleeps"),
            }
        };
        assert_eq!((call.method.as_str(), call.url.as_str()), ("GET", "http://127.0.0.1:9/path?q=1"));
        assert_eq!(call.origin, "http://127.0.0.1:9");
        assert_eq!(call.headers, [("x-test".to_owned(), "1".to_owned())]);
        assert_eq!(in_flight(&setup), 1, "the call holds its permit while out");
        drop(call);
        task.deliver(Ok(OutboundResponse {
            status: 203,
            headers: vec![],
            body: Bytes::from_static(b"upstream says hi"),
        }));
        let body = loop {
            match task.run_slice(std::task::Waker::noop()) {
                Slice::Streamed(piece) => panic!("this guest writes only at its end: {piece:?}"),
                Slice::Finished(out) => break ok(out.result).body,
                Slice::Yielded => continue,
                Slice::Waiting(_) => panic!("waited twice"),
                Slice::Parked => panic!("drip.wat never sleeps"),
            }
        };
        assert_eq!(body[0], 0);
        assert_eq!(u16::from_le_bytes([body[1], body[2]]), 203);
        assert_eq!(&body[3..], b"upstream says hi");
        assert_eq!(in_flight(&setup), 0);
    }

    fn outbound_calls_are_refused_or_fail_with_the_modules_codes(e) {
        let module = e.compile(&guest("engines/tests/guests/outbound.wat")).unwrap();
        let code = |setup: &Arc<GuestSetup>, url: &str, result: Option<OutboundResult>| {
            let mut req = request("POST", "/svc", &[], url.as_bytes());
            req.setup = setup.clone();
            let mut task = module.start(&req, &limits());
            let mut result = result;
            loop {
                match task.run_slice(std::task::Waker::noop()) {
                    Slice::Streamed(piece) => panic!("this guest writes only at its end: {piece:?}"),
                    Slice::Finished(out) => return ok(out.result).body[0],
                    Slice::Yielded => {}
                    Slice::Waiting(_) => task.deliver(result.take().expect("a call was expected")),
                    Slice::Parked => panic!("drip.wat never sleeps"),
                }
            }
        };
        let none = Arc::new(GuestSetup::default());
        assert_eq!(code(&none, "http://127.0.0.1:9/", None), 7, "nothing granted");
        let only = outbound_setup(Some(&["http://127.0.0.1:9"]), 1);
        assert_eq!(code(&only, "http://127.0.0.1:10/", None), 7, "another origin");
        assert_eq!(code(&only, "ftp://127.0.0.1:9/", None), 10, "not an http URL");
        let timeout = Err(OutboundError { code: 11, reason: "timed out".into() });
        assert_eq!(code(&only, "http://127.0.0.1:9/", Some(timeout)), 11);
        // At the concurrency limit, a second call is refused at once.
        let busy = outbound_setup(None, 1);
        outbound_grant(&busy).in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        assert_eq!(code(&busy, "http://anywhere/", None), 13);
        // run_to_completion makes no calls: the guest hears the host could not.
        let mut req = request("POST", "/svc", &[], b"http://anywhere/");
        req.setup = outbound_setup(None, 1);
        let out = run_to_completion(module.as_ref(), &req, &limits(), deadline());
        assert_eq!(ok(out.result).body[0], 12);
    }

    fn host_environment_never_reaches_the_guest(e) {
        // SAFETY-free: tests in this binary only read their own variables.
        let secret = "FRENEZULO_TEST_SECRET";
        assert!(std::env::var_os("PATH").is_some(), "the test host has a PATH to leak");
        let text = body(&ok(run(e, &guest("examples/echo.wat"))));
        for name in ["PATH=", "HOME=", secret] {
            assert!(!text.lines().any(|l| l.starts_with(name)), "{name} leaked:\n{text}");
        }
    }

    fn status_location_and_repeated_headers(e) {
        let r = ok(run(e, &guest("examples/status.wat")));
        assert_eq!(r.status, 418);
        let r = ok(run(e, &guest("examples/redirect.wat")));
        assert_eq!(r.status, 302);
        assert_eq!(r.headers, vec![("Location".to_owned(), Bytes::from_static(b"/hello"))]);
        let r = ok(run(e, &printer(b"Status: 201 Created\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nmade")));
        assert_eq!(r.status, 201);
        let cookies: Vec<_> = r.headers.iter().filter(|(n, _)| n == "Set-Cookie").map(|(_, v)| v.clone()).collect();
        assert_eq!(cookies, vec![Bytes::from_static(b"a=1"), Bytes::from_static(b"b=2")]);
        assert_eq!(body(&r), "made");
    }

    fn bad_output_is_a_bad_gateway(e) {
        let err = run(e, &guest("engines/tests/guests/bad-output.wat")).unwrap_err();
        assert!(matches!(err, GuestFailure::BadOutput(_)), "{err:?}");
        assert_eq!(err.status(), 502);
        let err = run(e, &printer(b"")).unwrap_err();
        assert_eq!(err, GuestFailure::BadOutput("no output".to_owned()));
        let err = run(e, &printer(b"X-Only: 1\n\nbody")).unwrap_err();
        assert_eq!(err.status(), 502);
    }

    fn a_trap_is_500_even_after_valid_output(e) {
        let err = run(e, &guest("engines/tests/guests/trap.wat")).unwrap_err();
        assert!(matches!(err, GuestFailure::Trap(_)), "{err:?}");
        assert_eq!(err.status(), 500);
    }

    fn proc_exit_zero_keeps_the_response_nonzero_fails(e) {
        let wasm = guest("engines/tests/guests/exit.wat");
        let req = |q: &str| request("GET", &format!("/svc?{q}"), &[], b"");
        let r = ok(run_with(e, &wasm, &req("0"), limits()).result);
        assert_eq!(body(&r), "exiting\n");
        let err = run_with(e, &wasm, &req("1"), limits()).result.unwrap_err();
        assert_eq!(err, GuestFailure::Exit(1));
    }

    fn infinite_loops_are_preempted_at_the_deadline(e) {
        for path in ["engines/tests/guests/loop.wat", "engines/tests/guests/host-loop.wat"] {
            let started = Instant::now();
            let module = e.compile(&guest(path)).unwrap();
            let req = request("GET", "/svc", &[], b"");
            let err = run_to_completion(module.as_ref(), &req, &limits(), started + Duration::from_millis(200)).result.unwrap_err();
            assert_eq!(err, GuestFailure::Timeout, "{path}");
            // Not a performance check: a guest that is never preempted never gets here.
            assert!(started.elapsed() < Duration::from_secs(30), "{path}");
        }
    }

    fn memory_is_capped(e) {
        let mut l = limits();
        l.memory_bytes = 2 << 20;
        let err = run_with(e, &guest("engines/tests/guests/grow.wat"), &request("GET", "/svc", &[], b""), l).result.unwrap_err();
        assert_eq!(err, GuestFailure::OutOfMemory);
        assert_eq!(err.status(), 500);
        // A module whose initial memory is over the cap does not start.
        let big = wat::parse_str(r#"(module (memory (export "memory") 64) (func (export "_start")))"#).unwrap();
        let mut l = limits();
        l.memory_bytes = 1 << 20;
        let err = run_with(e, &big, &request("GET", "/svc", &[], b""), l).result.unwrap_err();
        assert_eq!(err, GuestFailure::OutOfMemory);
    }

    fn an_impossible_grow_then_a_trap_is_a_trap_not_out_of_memory(e) {
        // Found by the differential fuzzer: wasmtime asked the limiter about a grow past
        // 4 GiB and wasmi did not, so one engine reported out-of-memory and the other a trap.
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1)
              (func (export "_start")
                (drop (memory.grow (i32.const -268435456)))
                (drop (i64.load8_s (i32.const 2000000)))))"#,
        )
        .unwrap();
        assert!(matches!(run(e, &wasm), Err(GuestFailure::Trap(_))));
    }

    fn a_start_function_that_exits_ends_the_run(e) {
        // Found by the differential fuzzer: wasmtime called this a failure to instantiate,
        // wasmi an exit. It is an exit: the run ends there, with no output (502).
        let wasm = wat::parse_str(
            r#"(module
              (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
              (memory (export "memory") 1)
              (func $main (call $exit (i32.const 0)))
              (start $main)
              (func (export "_start") unreachable))"#,
        )
        .unwrap();
        assert_eq!(run(e, &wasm), Err(GuestFailure::BadOutput("no output".to_owned())));
    }

    fn stack_overflow_is_a_trap(e) {
        let err = run(e, &guest("engines/tests/guests/recurse.wat")).unwrap_err();
        assert!(matches!(err, GuestFailure::Trap(_)), "{err:?}");
    }

    fn stdout_is_capped(e) {
        let mut l = limits();
        l.stdout_bytes = 100_000;
        let err = run_with(e, &guest("engines/tests/guests/flood.wat"), &request("GET", "/svc", &[], b""), l).result.unwrap_err();
        assert_eq!(err, GuestFailure::OutputTooLarge);
        assert_eq!(err.status(), 502);
    }

    fn no_files_no_sockets_no_preopens(e) {
        let r = ok(run(e, &guest("engines/tests/guests/capabilities.wat")));
        // path_open on fd 3 is EBADF: with no volume granted there is no directory to
        // resolve a path beneath; nor can fd 3 be waited on.
        assert_eq!(&r.body[..], &[8, 8, 76, 8, 8]);
    }

    fn every_request_gets_a_fresh_instance(e) {
        let module = e.compile(&guest("engines/tests/guests/counter.wat")).unwrap();
        for _ in 0..3 {
            let r = ok(run_to_completion(module.as_ref(), &request("GET", "/svc", &[], b""), &limits(), deadline()).result);
            assert_eq!(&r.body[..], &[1, 1]);
        }
    }

    fn stderr_is_captured_for_the_log(e) {
        let out = run_with(e, &guest("engines/tests/guests/stderr.wat"), &request("GET", "/svc", &[], b""), limits());
        assert_eq!(body(&ok(out.result)), "ok\n");
        assert_eq!(out.stderr, b"guest says hi on stderr\n");
    }

    fn rust_guest_runs(e) {
        let wasm = std::fs::read(repo("examples/rust-hello.wasm")).unwrap();
        let req = request("POST", "/svc/x?name=Ada", &[], b"12345");
        let r = ok(run_with(e, &wasm, &req, limits()).result);
        assert_eq!(body(&r), "Hello, Ada! (from Rust)\nmethod: POST\npath: \"/x\"\nbody bytes: 5\n");
    }

    fn modules_are_checked_at_compile_time(e) {
        let compile = |wat: &str| e.compile(&wat::parse_str(wat).unwrap()).err();
        assert!(matches!(e.compile(b"not wasm").err(), Some(CompileError::Invalid(_))));
        assert_eq!(compile(r#"(module (memory (export "memory") 1))"#), Some(CompileError::MissingStart));
        assert_eq!(
            compile(r#"(module (memory (export "memory") 1) (func (export "_start") (param i32)))"#),
            Some(CompileError::MissingStart)
        );
        assert_eq!(compile(r#"(module (func (export "_start")))"#), Some(CompileError::MissingMemory));
        assert!(matches!(
            compile(r#"(module (import "env" "f" (func)) (memory (export "memory") 1) (func (export "_start")))"#),
            Some(CompileError::UnsupportedImport { .. })
        ));
        assert!(matches!(
            compile(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32))) (memory (export "memory") 1) (func (export "_start")))"#),
            Some(CompileError::ImportSignature(_))
        ));
        // An unimplemented WASI function is linked to a stub that answers with an errno.
        assert_eq!(
            compile(r#"(module (import "wasi_snapshot_preview1" "fd_advise" (func (param i32 i64 i64 i32) (result i32))) (memory (export "memory") 1) (func (export "_start")))"#),
            None
        );
    }

    fn clocks_and_random_work(e) {
        let wat = r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
          (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "Content-Type: x\n\n")
          (func (export "_start")
            (i32.store8 (i32.const 81) (call $clock (i32.const 0) (i64.const 1) (i32.const 200)))
            (i32.store8 (i32.const 82) (i64.gt_u (i64.load (i32.const 200)) (i64.const 1600000000000000000)))
            (i32.store8 (i32.const 83) (call $random (i32.const 300) (i32.const 32)))
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 20))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
        let r = ok(run(e, &wat::parse_str(wat).unwrap()));
        assert_eq!(&r.body[..], &[0, 1, 0], "clock ok, clock after 2020, random ok");
    }

    fn long_guests_yield_many_times_then_finish(e) {
        // Iterations for several slices: wasmtime slices by time, wasmi by fuel.
        let count: u32 = if e.kind() == EngineKind::Wasmtime { 400_000_000 } else { 12_000_000 };
        let module = e.compile(&guest("engines/tests/guests/spin.wat")).unwrap();
        let req = request("POST", "/svc", &[], &count.to_le_bytes());
        let mut task = module.start(&req, &limits());
        let mut yields = 0;
        let output = loop {
            match task.run_slice(std::task::Waker::noop()) {
                Slice::Streamed(piece) => panic!("this guest writes only at its end: {piece:?}"),
                Slice::Yielded => yields += 1,
                Slice::Finished(output) => break output,
                Slice::Waiting(_) => panic!("spin.wat makes no calls"),
                Slice::Parked => panic!("drip.wat never sleeps"),
            }
        };
        assert_eq!(body(&ok(output.result)), "spun\n");
        assert!(yields >= 3, "yielded only {yields} times");
        assert!(matches!(task.run_slice(std::task::Waker::noop()), Slice::Finished(RunOutput { result: Err(GuestFailure::Trap(_)), .. })));
    }

    fn a_long_response_goes_out_in_pieces_then_ends(e) {
        // The head and 64 KiB are written, then the guest spins for several slices: what
        // it wrote goes out as a piece at a slice's end, the rest with its end.
        let count: u32 = if e.kind() == EngineKind::Wasmtime { 400_000_000 } else { 12_000_000 };
        let module = e.compile(&guest("engines/tests/guests/drip.wat")).unwrap();
        let req = request("POST", "/svc", &[], &count.to_le_bytes());
        let mut task = module.start(&req, &limits());
        let (mut status, mut body, mut pieces) = (None, Vec::new(), 0);
        let output = loop {
            match task.run_slice(std::task::Waker::noop()) {
                Slice::Streamed(Piece::Start(head)) => {
                    assert!(status.is_none(), "one head");
                    status = Some(head.status);
                    body.extend_from_slice(&head.body);
                    pieces += 1;
                }
                Slice::Streamed(Piece::More(more)) => {
                    assert!(status.is_some(), "the head first");
                    body.extend_from_slice(&more);
                    pieces += 1;
                }
                Slice::Streamed(other) => panic!("{other:?}"),
                Slice::Yielded => {}
                Slice::Finished(output) => break output,
                Slice::Waiting(_) => panic!("drip.wat makes no calls"),
                Slice::Parked => panic!("drip.wat never sleeps"),
            }
        };
        assert_eq!(status, Some(200), "the head went out before the end ({pieces} pieces)");
        body.extend_from_slice(&ok(output.result).body);
        assert_eq!(body.len(), 65536 + 4);
        assert!(body[..65536].iter().all(|b| *b == b'a'));
        assert_eq!(&body[65536..], b"end\n");
    }

    fn a_guest_that_sleeps_parks_and_sends_what_it_wrote_first(e) {
        // `poll_oneoff` on a clock: the task parks (a slice per loop turn would be
        // thousands over 300 ms), what the guest wrote goes out before it sleeps, and the
        // call is answered with its clock's event once the time came.
        let module = e.compile(&guest("engines/tests/guests/sleep.wat")).unwrap();
        let req = request("POST", "/svc", &[], &300u32.to_le_bytes());
        let patience = Instant::now() + Duration::from_secs(60);
        let wakeup = ThreadWaker::new();
        let began = Instant::now();
        let mut task = module.start(&req, &limits());
        let (mut slices, mut parked, mut first) = (0, 0, None);
        let output = loop {
            slices += 1;
            match task.run_slice(&wakeup.waker()) {
                Slice::Streamed(Piece::Start(head)) if parked == 0 => first = Some(head.body),
                Slice::Parked => {
                    parked += 1;
                    assert!(wakeup.wait(patience), "never woken");
                }
                Slice::Yielded => assert!(Instant::now() < patience, "never finished"),
                Slice::Finished(output) => break output,
                other => panic!("{other:?}"),
            }
        };
        assert!(began.elapsed() >= Duration::from_millis(300));
        assert_eq!(first.as_deref(), Some(&b"before\n"[..]), "sent before it slept");
        assert_eq!(body(&ok(output.result)), "slept\n");
        assert!(parked >= 1, "it never parked");
        assert!(slices < 50, "{slices} slices for one sleep");
        // Run to its end on its own, with a sleep of nothing, it answers whole.
        let req = request("POST", "/svc", &[], &0u32.to_le_bytes());
        assert_eq!(body(&ok(run_with(e, &guest("engines/tests/guests/sleep.wat"), &req, limits()).result)), "before\nslept\n");
    }

    fn rust_std_sleep_works(e) {
        // `std::thread::sleep` as the Rust toolchain builds it: std checks the answer to
        // its `poll_oneoff` and panics (a trap here) unless it is the one clock event.
        let req = request("GET", "/svc?200", &[("Host", "h")], b"");
        let began = Instant::now();
        let r = ok(run_with(e, &guest("engines/tests/guests/rust-sleep.wasm"), &req, limits()).result);
        assert!(began.elapsed() >= Duration::from_millis(200));
        assert_eq!(body(&r), "before\nslept at least 200 ms: true\n");
    }

    fn a_guest_asleep_is_dropped_when_cancelled(e) {
        // A task cancelled mid-sleep (the request's deadline passed) frees its instance and
        // its timer: more than the pool holds, one after another.
        let e = own_engine(e.kind());
        let e = e.as_ref();
        let module = e.compile(&guest("engines/tests/guests/sleep.wat")).unwrap();
        let hour = (3_600_000u32).to_le_bytes();
        for _ in 0..20 {
            let mut task = module.start(&request("POST", "/svc", &[], &hour), &limits());
            let wakeup = ThreadWaker::new();
            loop {
                match task.run_slice(&wakeup.waker()) {
                    Slice::Parked => break,
                    Slice::Streamed(_) | Slice::Yielded => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        let r = ok(run(e, &guest("examples/hello.wat")));
        assert_eq!(r.status, 200);
    }

    fn a_cancelled_task_frees_its_instance(e) {
        // More cancelled tasks than the pool has instances: each drop must free its slot.
        let e = own_engine(e.kind());
        let e = e.as_ref();
        let module = e.compile(&guest("engines/tests/guests/loop.wat")).unwrap();
        for _ in 0..3 {
            let mut tasks: Vec<_> = (0..10).map(|_| module.start(&request("GET", "/svc", &[], b""), &limits())).collect();
            for task in &mut tasks {
                assert!(matches!(task.run_slice(std::task::Waker::noop()), Slice::Yielded));
            }
        }
        let r = ok(run(e, &guest("examples/hello.wat")));
        assert_eq!(r.status, 200);
    }

    fn interleaved_runs_answer_as_sequential_runs_do(e) {
        let e = own_engine(e.kind());
        let e = e.as_ref();
        let spin = e.compile(&guest("engines/tests/guests/spin.wat")).unwrap();
        let echo = e.compile(&guest("examples/echo.wat")).unwrap();
        let counter = e.compile(&guest("engines/tests/guests/counter.wat")).unwrap();
        let count: u32 = if e.kind() == EngineKind::Wasmtime { 40_000_000 } else { 3_000_000 };
        let mut runs = Vec::new();
        for i in 0..4u32 {
            runs.push((spin.clone(), request("POST", &format!("/svc/spin/{i}"), &[], &(count * (i + 1)).to_le_bytes())));
            runs.push((echo.clone(), request("POST", &format!("/svc/echo/{i}?n={i}"), &[("X-N", &i.to_string())], format!("body {i}").as_bytes())));
        }
        runs.push((counter.clone(), request("GET", "/svc", &[], b"")));
        let wire = |out: RunOutput| out.result.map(|r| (r.status, r.headers, r.body));
        let sequential: Vec<_> = runs.iter().map(|(m, req)| wire(run_to_completion(m.as_ref(), req, &limits(), deadline()))).collect();
        let mut tasks: Vec<_> = runs.iter().map(|(m, req)| Some(m.start(req, &limits()))).collect();
        let mut interleaved: Vec<_> = runs.iter().map(|_| None).collect();
        let mut yields = 0;
        while tasks.iter().any(Option::is_some) {
            for (i, slot) in tasks.iter_mut().enumerate() {
                let Some(task) = slot else { continue };
                match task.run_slice(std::task::Waker::noop()) {
                    Slice::Streamed(piece) => panic!("this guest writes only at its end: {piece:?}"),
                    Slice::Yielded => yields += 1,
                    Slice::Finished(out) => {
                        interleaved[i] = Some(wire(out));
                        *slot = None;
                    }
                    Slice::Waiting(_) => panic!("these guests make no calls"),
                    Slice::Parked => panic!("drip.wat never sleeps"),
                }
            }
        }
        let interleaved: Vec<_> = interleaved.into_iter().map(Option::unwrap).collect();
        for (i, (a, b)) in interleaved.iter().zip(&sequential).enumerate() {
            assert_eq!(a, b, "run {i} differs");
        }
        assert!(yields >= 4, "the spinning guests yielded only {yields} times");
    }
}
