//! wasi:http components: the committed fixtures (built by `examples/build-components.sh`
//! with toolchains frenezulo did not write) answer on wasmtime, within the same limits as
//! WAGI guests; the interpreter refuses them at compile time.

mod common;

const HELLO: &str = "examples/components/rust-hello.wasm";

#[cfg(feature = "wasmtime")]
mod wasmtime {
    use super::HELLO;
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use crate::common::{guest, outbound_setup, request};
    use bytes::Bytes;
    use frenezulo_core::response::stream::Piece;
    use frenezulo_core::{BodyPiece, GuestFailure, GuestRequest, GuestSetup, Response, RunLimits};
    use frenezulo_engines::outbound::OutboundResponse;
    use frenezulo_engines::{
        CompileError, Engine, EngineConfig, EngineKind, Grants, ModuleKind, Slice, ThreadWaker,
        check_entrypoints, is_component, run_to_completion,
    };

    const ECHO: &str = "examples/components/rust-echo.wasm";
    const SPIN: &str = "examples/components/spin-hello.wasm";
    /// componentize-py's output: CPython and the handler, 18 MB unzipped.
    const PYTHON: &str = "examples/components/py-hello.wasm.gz";

    fn limits() -> RunLimits {
        RunLimits {
            memory_bytes: 16 << 20,
            stdout_bytes: 1 << 20,
        }
    }

    fn engine() -> Arc<dyn Engine> {
        static ENGINE: OnceLock<Arc<dyn Engine>> = OnceLock::new();
        ENGINE
            .get_or_init(|| {
                let config = EngineConfig {
                    max_instances: 16,
                    max_memory_bytes: 64 << 20,
                };
                frenezulo_engines::create(EngineKind::Wasmtime, &config).expect("engine")
            })
            .clone()
    }

    fn run_for(
        path: &str,
        req: &GuestRequest,
        limits: RunLimits,
        within: Duration,
    ) -> frenezulo_engines::RunOutput {
        let module = engine().compile(&guest(path)).expect("compiles");
        assert_eq!(module.kind(), ModuleKind::HttpComponent);
        run_to_completion(module.as_ref(), req, &limits, Instant::now() + within)
    }

    fn run(path: &str, req: &GuestRequest) -> frenezulo_engines::RunOutput {
        run_for(path, req, limits(), Duration::from_secs(20))
    }

    fn ok(output: &frenezulo_engines::RunOutput) -> &Response {
        output
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("expected a response, got {e:?}"))
    }

    fn text(r: &Response) -> String {
        String::from_utf8_lossy(&r.body).into_owned()
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a [u8]> {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }

    #[test]
    fn every_fixture_is_a_component() {
        for path in [HELLO, ECHO, SPIN, PYTHON] {
            assert!(is_component(&guest(path)), "{path}");
        }
        assert!(!is_component(&guest("examples/hello.wat")));
    }

    #[test]
    fn the_rust_hello_answers() {
        let out = run(
            HELLO,
            &request("GET", "/svc", &[("Host", "example.com")], b""),
        );
        let r = ok(&out);
        assert_eq!(r.status, 200);
        assert_eq!(text(r), "Hello from a wasi:http component\n");
        assert_eq!(header(r, "content-type"), Some(&b"text/plain"[..]));
    }

    #[test]
    fn the_spin_sdk_hello_answers_with_the_full_path() {
        let out = run(
            SPIN,
            &request("GET", "/svc/a/b?x=1", &[("Host", "example.com")], b""),
        );
        let r = ok(&out);
        assert_eq!(r.status, 200);
        assert_eq!(text(r), "Hello from Spin's SDK at /svc/a/b\n");
    }

    #[test]
    fn the_componentize_py_hello_answers() {
        // 14 core instances, and CPython's heap: more than the small fixtures need.
        let limits = RunLimits {
            memory_bytes: 64 << 20,
            ..limits()
        };
        let out = run_for(
            PYTHON,
            &request("GET", "/svc/a?x=1", &[("Host", "example.com")], b""),
            limits,
            Duration::from_secs(60),
        );
        let r = ok(&out);
        assert_eq!(r.status, 200);
        assert_eq!(text(r), "Hello from Python at /svc/a?x=1\n");
    }

    #[test]
    fn the_echo_sees_method_path_prefix_env_and_body() {
        let mut req = request(
            "POST",
            "/svc/items/7?q=1",
            &[
                ("Host", "example.com"),
                // A client cannot say what the prefix is.
                ("frenezulo-script-name", "/forged"),
            ],
            b"the body",
        );
        req.setup = Arc::new(GuestSetup {
            env: vec![("GREETING".to_owned(), "hi there".to_owned())],
            ..Default::default()
        });
        let out = run(ECHO, &req);
        let r = ok(&out);
        assert_eq!(r.status, 200);
        assert_eq!(
            text(r),
            "method: POST\npath: /svc/items/7?q=1\nscript-name: /svc\npath-info: /items/7\nGREETING: hi there\nthe body"
        );
    }

    #[test]
    fn a_body_written_in_many_pieces_arrives_whole() {
        // 300 KiB in 4 KiB writes: more than the body channel holds, so the host must read
        // while the guest writes.
        let out = run(
            ECHO,
            &request("GET", "/svc?big=307200", &[("Host", "h")], b""),
        );
        let r = ok(&out);
        assert_eq!(r.status, 200);
        assert!(text(r).ends_with(&".".repeat(307_200)));
    }

    #[test]
    fn a_large_body_goes_out_in_pieces_as_it_is_written() {
        // 1 MiB in 4 KiB writes: the host reads ahead at most 64 KiB (and a write) before
        // the guest waits for the pieces to be taken.
        const BIG: usize = 1 << 20;
        const MOST: usize = 64 * 1024 + 4096;
        let module = engine().compile(&guest(ECHO)).unwrap();
        let req = request("GET", &format!("/svc?big={BIG}"), &[("Host", "h")], b"");
        let mut task = module.start(
            &req,
            &RunLimits {
                stdout_bytes: 2 << 20,
                ..limits()
            },
        );
        let patience = Instant::now() + Duration::from_secs(60);
        let (mut head, mut body, mut pieces) = (None, Vec::new(), 0);
        let wakeup = ThreadWaker::new();
        let last = loop {
            match task.run_slice(&wakeup.waker()) {
                Slice::Streamed(Piece::Start(r)) => {
                    assert!(head.is_none(), "one head");
                    assert!(r.body.len() <= MOST, "{} bytes read ahead", r.body.len());
                    body.extend_from_slice(&r.body);
                    head = Some(r.status);
                }
                Slice::Streamed(Piece::More(more)) => {
                    assert!(head.is_some(), "the head comes first");
                    assert!(more.len() <= MOST, "{} bytes read ahead", more.len());
                    body.extend_from_slice(&more);
                    pieces += 1;
                }
                Slice::Finished(out) => break out,
                Slice::Yielded => {}
                Slice::Parked => assert!(wakeup.wait(patience), "never woken"),
                other => panic!("{other:?}"),
            }
            assert!(Instant::now() < patience, "never finished");
        };
        assert_eq!(head, Some(200));
        assert!(pieces >= BIG / MOST - 1, "{pieces} pieces");
        body.extend_from_slice(&ok(&last).body);
        assert!(body.starts_with(b"method: GET\n"));
        assert_eq!(body.iter().filter(|b| **b == b'.').count(), BIG);
    }

    #[test]
    fn the_status_the_guest_sets_is_kept() {
        let out = run(
            ECHO,
            &request("GET", "/svc?status=418", &[("Host", "h")], b""),
        );
        assert_eq!(ok(&out).status, 418);
    }

    #[test]
    fn stderr_goes_to_the_log() {
        let out = run(ECHO, &request("GET", "/svc?stderr", &[("Host", "h")], b""));
        assert_eq!(ok(&out).status, 200);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "echo was asked to write to stderr\n"
        );
    }

    #[test]
    fn a_panic_is_a_trap() {
        let out = run(ECHO, &request("GET", "/svc?trap", &[("Host", "h")], b""));
        assert!(
            matches!(out.result, Err(GuestFailure::Trap(_))),
            "{:?}",
            out.result
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("asked to trap"));
    }

    #[test]
    fn an_exit_is_an_exit() {
        // WASI 0.2's `exit` says only success or failure.
        let out = run(ECHO, &request("GET", "/svc?exit=3", &[("Host", "h")], b""));
        assert!(
            matches!(out.result, Err(GuestFailure::Exit(1))),
            "{:?}",
            out.result
        );
        // Success without a response is no response.
        let out = run(ECHO, &request("GET", "/svc?exit=0", &[("Host", "h")], b""));
        assert!(
            matches!(out.result, Err(GuestFailure::BadResponse(_))),
            "{:?}",
            out.result
        );
    }

    #[test]
    fn no_response_set_is_a_bad_gateway() {
        let out = run(ECHO, &request("GET", "/svc?unset", &[("Host", "h")], b""));
        let failure = out.result.unwrap_err();
        assert!(
            matches!(failure, GuestFailure::BadResponse(_)),
            "{failure:?}"
        );
        assert_eq!(failure.status(), 502);
    }

    #[test]
    fn a_loop_is_preempted_at_the_deadline() {
        let out = run_for(
            ECHO,
            &request("GET", "/svc?loop", &[("Host", "h")], b""),
            limits(),
            Duration::from_millis(200),
        );
        assert!(
            matches!(out.result, Err(GuestFailure::Timeout)),
            "{:?}",
            out.result
        );
    }

    #[test]
    fn memory_is_capped() {
        let out = run(
            ECHO,
            &request("GET", "/svc?alloc=64", &[("Host", "h")], b""),
        );
        assert!(
            matches!(out.result, Err(GuestFailure::OutOfMemory)),
            "{:?}",
            out.result
        );
        // The same guest within its limit answers.
        let out = run(ECHO, &request("GET", "/svc?alloc=2", &[("Host", "h")], b""));
        assert_eq!(ok(&out).status, 200);
    }

    #[test]
    fn host_resources_are_capped() {
        let out = run(
            ECHO,
            &request("GET", "/svc?hold=100", &[("Host", "h")], b""),
        );
        assert_eq!(ok(&out).status, 200);
        // Past the cap the host refuses the resource: a trap, not unbounded host memory.
        let many = format!("/svc?hold={}", frenezulo_engines::component::MAX_RESOURCES);
        let out = run(ECHO, &request("GET", &many, &[("Host", "h")], b""));
        assert!(
            matches!(out.result, Err(GuestFailure::Trap(_))),
            "{:?}",
            out.result
        );
    }

    #[test]
    fn the_body_is_capped() {
        let small = RunLimits {
            stdout_bytes: 64 * 1024,
            ..limits()
        };
        let out = run_for(
            ECHO,
            &request("GET", "/svc?big=100000", &[("Host", "h")], b""),
            small,
            Duration::from_secs(20),
        );
        assert!(
            matches!(out.result, Err(GuestFailure::OutputTooLarge)),
            "{:?}",
            out.result
        );
    }

    fn in_flight(setup: &GuestSetup) -> usize {
        Grants::of(setup)
            .and_then(|g| g.outbound.as_ref())
            .unwrap()
            .in_flight
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// A guest that sleeps parks: its task is not run again until the timer wakes it (a
    /// slice per poll of a spinning loop would be thousands over 300 ms), and a line it
    /// wrote before it slept is handed out before it sleeps on.
    #[test]
    fn a_sleeping_guest_parks_until_its_timer_wakes_it() {
        let module = engine().compile(&guest(ECHO)).unwrap();
        let patience = Instant::now() + Duration::from_secs(60);
        let wakeup = ThreadWaker::new();
        let began = Instant::now();
        let mut task = module.start(
            &request("GET", "/svc?sleep=300", &[("Host", "h")], b""),
            &limits(),
        );
        let (mut slices, mut parked) = (0, 0);
        let out = loop {
            slices += 1;
            match task.run_slice(&wakeup.waker()) {
                Slice::Finished(out) => break out,
                Slice::Parked => {
                    parked += 1;
                    assert!(wakeup.wait(patience), "never woken");
                }
                Slice::Yielded => assert!(Instant::now() < patience, "never finished"),
                other => panic!("{other:?}"),
            }
        };
        assert!(began.elapsed() >= Duration::from_millis(300));
        assert!(
            ok(&out)
                .body
                .starts_with(b"method: GET\npath: /svc?sleep=300\n")
        );
        assert!(parked >= 1, "it never parked");
        assert!(slices < 50, "{slices} slices for one sleep");

        let mut task = module.start(
            &request("GET", "/svc?tick=3", &[("Host", "h")], b""),
            &limits(),
        );
        let mut pieces = Vec::new();
        let last = loop {
            match task.run_slice(&wakeup.waker()) {
                Slice::Finished(out) => break out,
                Slice::Streamed(Piece::Start(r)) => pieces.push(r.body),
                Slice::Streamed(Piece::More(more)) => pieces.push(more),
                Slice::Parked => assert!(wakeup.wait(patience), "never woken"),
                Slice::Yielded => assert!(Instant::now() < patience, "never finished"),
                other => panic!("{other:?}"),
            }
        };
        // Each line went out before the guest slept on (the last one may come at its end).
        pieces.retain(|p| !p.is_empty());
        assert_eq!(pieces[..2], ["tick 0\n", "tick 1\n"]);
        let all: Vec<u8> = pieces
            .concat()
            .into_iter()
            .chain(ok(&last).body.to_vec())
            .collect();
        assert_eq!(all, b"tick 0\ntick 1\ntick 2\n");
    }

    /// A request whose body is still on its way starts at once: the guest reads what
    /// came with the head, parks until more is pushed, and answers once the body ended.
    #[test]
    fn a_body_that_streams_is_read_as_it_is_pushed() {
        let module = engine().compile(&guest(ECHO)).unwrap();
        let patience = Instant::now() + Duration::from_secs(60);
        let wakeup = ThreadWaker::new();
        let mut req = request("POST", "/svc", &[("Host", "h")], b"first ");
        req.body_follows = true;
        let mut task = module.start(&req, &limits());
        // Runs until it waits for more body: parked, not finished.
        let run_until_parked = |task: &mut Box<dyn frenezulo_engines::GuestTask>| loop {
            match task.run_slice(&wakeup.waker()) {
                Slice::Parked => return,
                Slice::Yielded => assert!(Instant::now() < patience, "never parked"),
                other => panic!("{other:?}"),
            }
        };
        run_until_parked(&mut task);
        task.push_body(BodyPiece::Data(Bytes::from_static(b"second ")));
        assert!(wakeup.wait(patience), "not woken by its body");
        run_until_parked(&mut task);
        task.push_body(BodyPiece::Data(Bytes::from_static(b"third")));
        task.push_body(BodyPiece::End);
        assert!(wakeup.wait(patience), "not woken by its body");
        let out = run_to_end(task.as_mut(), &wakeup, patience);
        let body = ok(&out).body.clone();
        assert!(
            body.ends_with(b"GREETING: \nfirst second third"),
            "{body:?}"
        );

        // A body that breaks off ends the guest's read: it answers with what came.
        let mut task = module.start(&req, &limits());
        run_until_parked(&mut task);
        task.push_body(BodyPiece::Broken);
        let out = run_to_end(task.as_mut(), &wakeup, patience);
        assert!(ok(&out).body.ends_with(b"first "));
    }

    fn run_to_end(
        task: &mut dyn frenezulo_engines::GuestTask,
        wakeup: &ThreadWaker,
        patience: Instant,
    ) -> frenezulo_engines::RunOutput {
        loop {
            match task.run_slice(&wakeup.waker()) {
                Slice::Finished(out) => return out,
                Slice::Parked => assert!(wakeup.wait(patience), "never woken"),
                Slice::Yielded => assert!(Instant::now() < patience, "never finished"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_outbound_call_is_handed_out_and_its_result_comes_back() {
        let module = engine().compile(&guest(ECHO)).unwrap();
        let mut req = request(
            "GET",
            "/svc?fetch=http://upstream.example:8080/data",
            &[("Host", "h")],
            b"",
        );
        req.setup = outbound_setup(Some(&["http://upstream.example:8080"]), 4);
        let mut task = module.start(&req, &limits());
        let patience = Instant::now() + Duration::from_secs(60);
        let wakeup = ThreadWaker::new();
        // The call is handed out as a slice that waits: the serving thread makes it.
        let call = loop {
            match task.run_slice(&wakeup.waker()) {
                Slice::Waiting(call) => break call,
                Slice::Yielded => assert!(Instant::now() < patience, "no call made"),
                // The hook queues the call on its runtime's thread, then wakes the task.
                Slice::Parked => assert!(wakeup.wait(patience), "no call made"),
                Slice::Streamed(piece) => panic!("streamed before calling: {piece:?}"),
                Slice::Finished(out) => panic!("finished without calling: {:?}", out.result),
            }
        };
        assert_eq!(call.method, "GET");
        assert_eq!(call.url, "http://upstream.example:8080/data");
        assert_eq!(call.origin, "http://upstream.example:8080");
        assert_eq!(
            in_flight(&req.setup),
            1,
            "counted against http_max_concurrency"
        );
        drop(call);
        assert_eq!(in_flight(&req.setup), 0);
        task.deliver(Ok(OutboundResponse {
            status: 201,
            headers: vec![("x-a".to_owned(), Bytes::from_static(b"1"))],
            body: Bytes::from_static(b"upstream says hi"),
        }));
        // What the guest wrote, whole or (on a slow machine) in pieces.
        let mut written = Vec::new();
        let out = loop {
            match task.run_slice(&wakeup.waker()) {
                Slice::Finished(out) => break out,
                Slice::Yielded => assert!(Instant::now() < patience, "never finished"),
                Slice::Parked => assert!(wakeup.wait(patience), "never woken"),
                Slice::Streamed(Piece::Start(r)) => written.extend_from_slice(&r.body),
                Slice::Streamed(Piece::More(more)) => written.extend_from_slice(&more),
                other => panic!("{other:?}"),
            }
        };
        written.extend_from_slice(&ok(&out).body);
        assert_eq!(written, b"upstream 201\nupstream says hi");
    }

    #[test]
    fn an_outbound_call_outside_the_grant_is_denied() {
        let target = "/svc?fetch=http://elsewhere.example/x";
        // No grant at all, then a grant for another origin: the guest is told
        // `HTTP-request-denied`, and no call leaves.
        for setup in [
            Arc::new(GuestSetup::default()),
            outbound_setup(Some(&["http://upstream.example"]), 4),
        ] {
            let mut req = request("GET", target, &[("Host", "h")], b"");
            req.setup = setup;
            let out = run(ECHO, &req);
            let r = ok(&out);
            assert_eq!(r.status, 502);
            assert_eq!(text(r), "fetch failed: ErrorCode::HttpRequestDenied\n");
        }
    }

    #[test]
    fn an_artifact_loads_back_as_a_component() {
        let (_, artifact) = engine().compile_to_artifact(&guest(HELLO)).unwrap();
        // SAFETY: made just above by this engine.
        #[allow(unsafe_code)]
        let module = unsafe { engine().load_artifact(&artifact.expect("serialized")) }.unwrap();
        assert_eq!(module.kind(), ModuleKind::HttpComponent);
        let req = request("GET", "/svc", &[("Host", "h")], b"");
        let out = run_to_completion(
            module.as_ref(),
            &req,
            &limits(),
            Instant::now() + Duration::from_secs(20),
        );
        assert_eq!(ok(&out).status, 200);
    }

    #[test]
    fn entrypoints_and_sub_routes_are_refused_for_a_component() {
        let module = engine().compile(&guest(HELLO)).unwrap();
        assert!(check_entrypoints(module.as_ref(), &GuestSetup::default()).is_ok());
        let named = GuestSetup {
            entrypoint: "main".into(),
            ..Default::default()
        };
        assert!(check_entrypoints(module.as_ref(), &named).is_err());
    }

    #[test]
    fn a_component_without_the_handler_is_refused() {
        let empty = wat::parse_str("(component)").unwrap();
        let refused = engine().compile(&empty).err().expect("refused");
        assert!(matches!(refused, CompileError::NotAHandler(_)), "{refused}");
        let odd_import = wat::parse_str(
            r#"(component (import "example:odd/thing" (instance (export "f" (func)))))"#,
        )
        .unwrap();
        let refused = engine().compile(&odd_import).err().expect("refused");
        assert!(
            matches!(refused, CompileError::ComponentImport(_)),
            "{refused}"
        );
    }

    #[test]
    fn a_component_beyond_the_pools_limits_is_refused_and_says_which() {
        // 16 core instances fit (componentize-py's output has 14); 17 do not.
        let with = |n: usize| {
            let instances = "(core instance (instantiate $m))".repeat(n);
            wat::parse_str(format!("(component (core module $m) {instances})")).unwrap()
        };
        let refused = engine().compile(&with(17)).err().expect("refused");
        assert!(
            matches!(refused, CompileError::ComponentRefused(_)),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("core module instances"),
            "{refused}"
        );
        // Within the limit it compiles, and is refused only for lacking the handler.
        let refused = engine().compile(&with(16)).err().expect("refused");
        assert!(matches!(refused, CompileError::NotAHandler(_)), "{refused}");
    }
}

#[cfg(feature = "wasmi")]
#[test]
fn the_interpreter_refuses_a_component_and_says_why() {
    use common::guest;
    use frenezulo_engines::{CompileError, EngineConfig, EngineKind};

    let engine = frenezulo_engines::create(EngineKind::Wasmi, &EngineConfig::default()).unwrap();
    let refused = engine.compile(&guest(HELLO)).err().expect("refused");
    assert_eq!(
        refused,
        CompileError::ComponentNeedsWasmtime(EngineKind::Wasmi)
    );
    assert!(
        refused.to_string().contains("need the wasmtime engine"),
        "{refused}"
    );
}
