//! The state machine under a fake driver: unit tests for each behaviour, and property tests
//! for the invariants (one response per request, limits, every task ends once, fair turns).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::contract::Monitor;

mod body;
mod stream;

const REMOTE: &str = "127.0.0.1:50000";
const LOCAL: &str = "127.0.0.1:8080";

/// A fake driver: feeds inputs, carries out outputs, keeps what each connection received.
/// It holds at most one slice at a time; its [`Monitor`] checks both sides keep the
/// polling contract.
struct Harness {
    server: Server,
    monitor: Monitor,
    now: Instant,
    sent: BTreeMap<ConnId, Vec<u8>>,
    closed: BTreeSet<ConnId>,
    compiles: Vec<ModuleKey>,
    evicted: Vec<ModuleKey>,
    next_version: u64,
    /// Tasks started and not ended, with what they were started with.
    tasks: BTreeMap<JobId, Execution>,
    /// The task whose slice the core handed out and the harness has not run yet.
    out: Option<JobId>,
    /// Every slice handed out, in order: the task and its service.
    slices: Vec<(JobId, String)>,
    /// Tasks the core cancelled, in order.
    cancelled: Vec<JobId>,
    /// Tasks that ended (finished or cancelled): each may end once.
    ended: BTreeSet<JobId>,
    /// Management calls handed out and not answered.
    calls: Vec<ManagementCall>,
    /// Every `Responded` report, in order.
    responded: Vec<Responded>,
    /// Every piece of a streaming request body handed to a task, in order.
    bodies: Vec<(JobId, BodyPiece)>,
    /// What `yield_out` and `finish` report the slice ran.
    yield_ran: Duration,
    finish_ran: Duration,
}

/// A whole time slice, as the engines cut them.
const SLICE: Duration = Duration::from_millis(2);

impl Harness {
    fn new(config: ServerConfig) -> Self {
        Self {
            server: Server::new(config),
            monitor: Monitor::new(),
            now: Instant::now(),
            sent: BTreeMap::new(),
            closed: BTreeSet::new(),
            compiles: Vec::new(),
            evicted: Vec::new(),
            next_version: 1,
            tasks: BTreeMap::new(),
            out: None,
            slices: Vec::new(),
            cancelled: Vec::new(),
            ended: BTreeSet::new(),
            calls: Vec::new(),
            responded: Vec::new(),
            bodies: Vec::new(),
            yield_ran: SLICE,
            finish_ran: Duration::from_micros(50),
        }
    }

    fn with_service(mut self, name: &str, limits: ServiceLimits) -> Self {
        self.put(name, limits);
        self
    }

    /// Adds or replaces a service with a new version; returns its key.
    fn put(&mut self, name: &str, limits: ServiceLimits) -> ModuleKey {
        let module = ModuleKey {
            service: ServiceName::new(name).unwrap(),
            version: self.next_version,
        };
        self.next_version += 1;
        self.input(Input::Registry(RegistryChange::Put {
            module: module.clone(),
            wasm: Bytes::from_static(b"wasm"),
            limits,
            setup: Default::default(),
        }));
        module
    }

    fn input(&mut self, input: Input<'_>) {
        self.monitor.input(&input);
        self.server.handle(self.now, input);
        while let Some(out) = self.server.poll_output() {
            self.monitor.output(&out);
            match out {
                Output::Transmit { conn, head, body } => {
                    let buf = self.sent.entry(conn).or_default();
                    buf.extend_from_slice(&head);
                    buf.extend_from_slice(&body);
                }
                Output::Close { conn } => {
                    self.closed.insert(conn);
                }
                Output::Compile { module, .. } => self.compiles.push(module),
                Output::Execute(e) => {
                    self.out = Some(e.job);
                    self.slices
                        .push((e.job, e.module.service.as_str().to_owned()));
                    self.tasks.insert(e.job, *e);
                }
                Output::Resume { job } => {
                    let task = &self.tasks[&job];
                    self.slices
                        .push((job, task.module.service.as_str().to_owned()));
                    self.out = Some(job);
                }
                Output::Cancel { job } => {
                    self.tasks.remove(&job);
                    self.ended.insert(job);
                    if self.out == Some(job) {
                        self.out = None;
                    }
                    self.cancelled.push(job);
                }
                Output::Evict { module } => self.evicted.push(module),
                Output::Manage(call) => self.calls.push(*call),
                Output::Responded(r) => self.responded.push(r),
                Output::RequestBody { job, piece } => {
                    assert!(self.tasks.contains_key(&job), "body for no task {job:?}");
                    self.bodies.push((job, piece));
                }
            }
        }
    }

    fn connect(&mut self, id: u64) -> ConnId {
        let conn = ConnId(id);
        self.input(Input::Connected {
            conn,
            remote: REMOTE.parse().unwrap(),
            local: LOCAL.parse().unwrap(),
        });
        conn
    }

    fn send(&mut self, conn: ConnId, data: &str) {
        self.input(Input::Received {
            conn,
            data: data.as_bytes(),
        });
    }

    fn compile_all(&mut self) {
        for module in std::mem::take(&mut self.compiles) {
            self.input(Input::Compiled {
                module,
                result: Ok(()),
            });
        }
    }

    /// The task whose slice is out.
    fn out_task(&self) -> &Execution {
        &self.tasks[&self.out.expect("a slice is out")]
    }

    /// Finishes the task whose slice is out with a 200 whose body names its target.
    fn finish(&mut self) -> Execution {
        self.finish_after(self.finish_ran)
    }

    /// Finishes the task whose slice is out, reporting that the slice ran `ran`.
    fn finish_after(&mut self, ran: Duration) -> Execution {
        let job = self.out.take().expect("a slice is out");
        let e = self.tasks.remove(&job).unwrap();
        assert!(self.ended.insert(job), "a task ended twice");
        let body = Bytes::from(e.request.request.target.clone());
        let response = Response {
            status: 200,
            headers: vec![],
            body,
        };
        self.input(Input::Executed {
            job,
            result: Ok(response),
            ran,
        });
        e
    }

    /// Ends the slice that is out with the guest still running.
    fn yield_out(&mut self) -> JobId {
        self.yield_after(self.yield_ran)
    }

    /// Ends the slice that is out with the guest still running after `ran`.
    fn yield_after(&mut self, ran: Duration) -> JobId {
        let job = self.out.take().expect("a slice is out");
        self.input(Input::Yielded { job, ran });
        job
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.input(Input::Timeout);
    }

    /// Status codes of the responses a connection got, in order.
    fn statuses(&self, conn: ConnId) -> Vec<u16> {
        let text = self.text(conn);
        text.match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
            .filter(|s| *s != 100)
            .collect()
    }

    fn text(&self, conn: ConnId) -> String {
        String::from_utf8_lossy(self.sent.get(&conn).map_or(&[][..], |v| v)).into_owned()
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

fn config() -> ServerConfig {
    ServerConfig {
        max_running: 2,
        ..ServerConfig::default()
    }
}

fn key(name: &str, version: u64) -> ModuleKey {
    ModuleKey {
        service: ServiceName::new(name).unwrap(),
        version,
    }
}

#[test]
fn unknown_prefix_is_404_and_management_goes_to_the_driver() {
    let mut h = Harness::new(config()).with_service("shop", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/"));
    h.send(c, &get("/shopping"));
    h.send(c, &get("/services/shop?x=1"));
    h.send(c, &get("/shop"));
    assert_eq!(h.statuses(c), vec![404, 404]);
    assert!(
        h.compiles.len() == 1,
        "the request after the call is admitted meanwhile"
    );
    assert_eq!(h.calls.len(), 1);
    let call = h.calls.pop().unwrap();
    assert_eq!(call.path_info, "/shop");
    assert_eq!(call.request.query(), "x=1");
    h.input(Input::Managed {
        call: call.call,
        response: Response::text(202, "managed"),
    });
    assert_eq!(h.statuses(c), vec![404, 404, 202]);
    // An answer for a call that is gone, or given twice, is dropped.
    h.input(Input::Managed {
        call: call.call,
        response: Response::text(200, "again"),
    });
    assert_eq!(h.statuses(c), vec![404, 404, 202]);
}

#[test]
fn management_calls_are_bounded_and_forgotten_with_their_client() {
    let mut h = Harness::new(config());
    let conns: Vec<ConnId> = (0..MAX_MANAGEMENT_CALLS as u64 + 1)
        .map(|i| h.connect(i))
        .collect();
    for c in &conns {
        h.send(*c, &get("/services"));
    }
    assert_eq!(h.calls.len(), MAX_MANAGEMENT_CALLS);
    assert_eq!(h.statuses(*conns.last().unwrap()), vec![503]);
    let first = h.calls.remove(0);
    h.input(Input::Disconnected { conn: conns[0] });
    h.input(Input::Managed {
        call: first.call,
        response: Response::text(200, "late"),
    });
    assert!(
        !h.sent.contains_key(&conns[0]),
        "nothing for a client that left"
    );
    // Its place is free again.
    let c = h.connect(100);
    h.send(c, &get("/services/health"));
    assert_eq!(h.calls.len(), MAX_MANAGEMENT_CALLS);
}

#[test]
fn every_response_is_reported_with_its_service_and_time() {
    let mut h = Harness::new(config()).with_service("shop", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/shop/a"));
    h.send(c, &get("/nope"));
    h.compile_all();
    h.now += Duration::from_millis(7);
    let job = h.out.unwrap();
    h.finish();
    let reports: Vec<_> = h
        .responded
        .iter()
        .map(|r| {
            (
                r.service.as_ref().map(|s| s.to_string()),
                r.job,
                r.status,
                r.elapsed,
            )
        })
        .collect();
    assert_eq!(
        reports,
        vec![
            (None, None, 404, Duration::ZERO),
            (
                Some("shop".to_owned()),
                Some(job),
                200,
                Duration::from_millis(7)
            ),
        ]
    );
    let sent = h.text(c).len();
    assert_eq!(h.responded.iter().map(|r| r.bytes).sum::<usize>(), sent);
    // A refusal counts under the service it was for.
    let small = ServiceLimits {
        body_bytes: 1,
        ..ServiceLimits::default()
    };
    h.put("tiny", small);
    let c = h.connect(2);
    h.send(
        c,
        "POST /tiny HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab",
    );
    let last = h.responded.last().unwrap();
    assert_eq!(
        (last.status, last.service.as_ref().map(|s| s.as_str())),
        (413, Some("tiny"))
    );
}

#[test]
fn cold_start_compiles_once_then_runs_queued_requests() {
    let mut h = Harness::new(config()).with_service("shop", ServiceLimits::default());
    let c1 = h.connect(1);
    let c2 = h.connect(2);
    h.send(c1, &get("/shop/a?x=1"));
    h.send(c2, &get("/shop"));
    assert_eq!(h.compiles.len(), 1, "one compile for both requests");
    assert!(h.out.is_none());
    h.compile_all();
    let e = h.out_task();
    assert_eq!(e.request.script_name, "/shop");
    assert_eq!(e.request.path_info, "/a");
    assert_eq!(e.request.request.query(), "x=1");
    h.finish();
    h.finish();
    assert_eq!(h.statuses(c1), vec![200]);
    assert_eq!(h.statuses(c2), vec![200]);
    assert_eq!(h.server.stats().compiles, 1);
}

#[test]
fn pipelined_responses_keep_request_order() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(
        c,
        &format!("{}{}{}", get("/s/1"), get("/nope"), get("/s/2")),
    );
    h.compile_all();
    // The first yields twice; the second starts between its slices and finishes first.
    assert_eq!(h.out_task().request.path_info, "/1");
    h.yield_out();
    h.yield_out();
    assert_eq!(h.out_task().request.path_info, "/2");
    let second = h.out.take().unwrap();
    h.tasks.remove(&second);
    h.ended.insert(second);
    h.input(Input::Executed {
        job: second,
        result: Ok(Response::text(201, "second")),
        ran: Duration::ZERO,
    });
    assert!(h.statuses(c).is_empty(), "nothing jumps the first response");
    h.finish();
    assert_eq!(h.statuses(c), vec![200, 404, 201]);
    let text = h.text(c);
    assert!(text.find("/s/1").unwrap() < text.find("second").unwrap());
}

#[test]
fn connection_close_and_http10_close_after_the_response() {
    let mut h = Harness::new(config());
    let c = h.connect(1);
    h.send(
        c,
        "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(
        h.statuses(c),
        vec![404],
        "nothing after a close request is parsed"
    );
    assert!(h.text(c).contains("Connection: close"));
    assert!(h.closed.contains(&c));
    let c = h.connect(2);
    h.send(c, "GET /x HTTP/1.0\r\n\r\n");
    assert!(h.closed.contains(&c));
}

#[test]
fn head_gets_no_body_and_continue_comes_first() {
    let mut h = Harness::new(config());
    let c = h.connect(1);
    h.send(c, "HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n");
    let text = h.text(c);
    assert!(text.contains("Content-Length: 24"));
    assert!(text.ends_with("\r\n\r\n"));
    let c = h.connect(2);
    h.send(
        c,
        "POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(h.text(c), "HTTP/1.1 100 Continue\r\n\r\n");
    h.send(c, "ok");
    assert_eq!(h.statuses(c), vec![404]);
}

#[test]
fn framing_errors_answer_then_close() {
    for (input, status) in [
        ("BROKEN\r\n\r\n", 400),
        (
            "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (
            "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 999999999\r\n\r\n",
            413,
        ),
    ] {
        let mut h = Harness::new(config());
        let c = h.connect(1);
        h.send(c, input);
        assert_eq!(h.statuses(c), vec![status], "{input:?}");
        assert!(h.closed.contains(&c));
    }
    let mut h = Harness::new(config());
    let c = h.connect(1);
    let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(20_000));
    h.send(c, &huge);
    assert_eq!(h.statuses(c), vec![431]);
}

#[test]
fn per_service_body_limit_is_413() {
    let limits = ServiceLimits {
        body_bytes: 4,
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config()).with_service("s", limits);
    let c = h.connect(1);
    h.send(
        c,
        "POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(h.statuses(c), vec![413]);
}

#[test]
fn full_queue_sheds_with_503_and_retry_after() {
    let limits = ServiceLimits {
        max_concurrency: 1,
        max_queued: 1,
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config()).with_service("s", limits);
    let conns: Vec<_> = (0..3).map(|i| h.connect(i)).collect();
    // Compiled beforehand: the service is warm without an `Output::Compile`.
    h.input(Input::Compiled {
        module: key("s", 1),
        result: Ok(()),
    });
    assert!(h.compiles.is_empty());
    for c in &conns {
        h.send(*c, &get("/s"));
    }
    h.yield_out();
    assert_eq!(h.tasks.len(), 1, "one task at concurrency 1");
    assert_eq!(h.statuses(conns[2]), vec![503]);
    assert!(h.text(conns[2]).contains("Retry-After: 1"));
    assert_eq!(h.server.stats().shed, 1);
    h.finish();
    assert_eq!(h.tasks.len(), 1, "the queued one starts");
    h.finish();
    assert_eq!(h.statuses(conns[0]), vec![200]);
    assert_eq!(h.statuses(conns[1]), vec![200]);
}

#[test]
fn queued_bodies_are_bounded_in_bytes() {
    let mut config = config();
    config.max_queued_bytes = 10;
    let limits = ServiceLimits {
        max_concurrency: 1,
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config).with_service("s", limits);
    let post = |body: &str| {
        format!(
            "POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let conns: Vec<_> = (0..4).map(|i| h.connect(i)).collect();
    h.send(conns[0], &post("12345678"));
    h.compile_all();
    h.send(conns[1], &post("12345678"));
    h.send(conns[2], &post("12345678"));
    assert_eq!(
        h.statuses(conns[2]),
        vec![503],
        "8 + 8 queued bytes is over 10"
    );
    h.finish();
    h.send(conns[3], &post("12345678"));
    assert!(
        h.statuses(conns[3]).is_empty(),
        "queued again once the first left the queue"
    );
    h.finish();
    h.finish();
    assert_eq!(h.server.queued_bytes, 0);
}

#[test]
fn a_flooded_service_does_not_starve_a_quiet_one() {
    let mut config = config();
    config.max_running = 1;
    let mut h = Harness::new(config)
        .with_service("noisy", ServiceLimits::default())
        .with_service("quiet", ServiceLimits::default());
    let n = h.connect(1);
    h.send(n, &get("/noisy"));
    h.compile_all();
    for i in 0..5 {
        let c = h.connect(10 + i);
        h.send(c, &get("/noisy"));
    }
    let q = h.connect(2);
    h.send(q, &get("/quiet"));
    h.compile_all();
    let mut order = Vec::new();
    while h.out.is_some() {
        order.push(h.finish().module.service.as_str().to_owned());
    }
    // The quiet service has used no time: it runs as soon as the noisy slice that was out
    // ends, ahead of the noisy backlog.
    assert_eq!(order[..3], ["noisy", "quiet", "noisy"]);
    assert_eq!(order.len(), 7);
}

#[test]
fn a_looping_guest_delays_others_by_one_slice_never_more() {
    let mut h = Harness::new(ServerConfig::default())
        .with_service("loop", ServiceLimits::default())
        .with_service("hello", ServiceLimits::default());
    for (i, name) in ["loop", "hello"].iter().enumerate() {
        h.input(Input::Compiled {
            module: key(name, i as u64 + 1),
            result: Ok(()),
        });
    }
    let loops: Vec<_> = (0..2).map(|i| h.connect(i)).collect();
    for c in &loops {
        h.send(*c, &get("/loop"));
    }
    for _ in 0..10 {
        h.yield_out();
    }
    let c = h.connect(9);
    h.send(c, &get("/hello"));
    // The loop's slice that is out runs, then hello's turn comes.
    h.yield_out();
    assert_eq!(h.out_task().module.service.as_str(), "hello");
    h.finish();
    assert_eq!(h.statuses(c), vec![200]);
    assert_eq!(h.server.running(), 2, "the loops are still parked");
    assert!(h.server.stats().yields >= 11);
}

#[test]
fn deadlines_cancel_running_tasks_and_fail_queued_requests() {
    let limits = ServiceLimits {
        deadline: Duration::from_millis(100),
        max_concurrency: 1,
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config()).with_service("s", limits);
    let a = h.connect(1);
    let b = h.connect(2);
    h.send(a, &get("/s"));
    h.compile_all();
    h.send(b, &get("/s"));
    let job = h.yield_out();
    h.advance(Duration::from_millis(100));
    assert_eq!(h.statuses(a), vec![504]);
    assert_eq!(h.statuses(b), vec![504]);
    assert_eq!(h.cancelled, vec![job], "the parked task is dropped");
    assert_eq!(h.server.running(), 0, "its slot is free at once");
    assert_eq!(h.server.stats().cancelled, 1);
    // A late report for the cancelled task is ignored.
    h.input(Input::Executed {
        job,
        result: Ok(Response::text(200, "late")),
        ran: Duration::ZERO,
    });
    assert_eq!(h.statuses(a), vec![504]);
}

#[test]
fn a_cancelled_slice_that_is_out_is_replaced_by_the_next() {
    let limits = ServiceLimits {
        deadline: Duration::from_millis(100),
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config())
        .with_service("slow", limits)
        .with_service("ok", ServiceLimits::default());
    let a = h.connect(1);
    h.send(a, &get("/slow"));
    h.compile_all();
    let slow = h.out.unwrap();
    h.now += Duration::from_millis(100);
    let b = h.connect(2);
    h.send(b, &get("/ok"));
    h.compile_all();
    assert_eq!(h.cancelled, vec![slow]);
    assert_eq!(h.out_task().module.service.as_str(), "ok");
    h.finish();
    assert_eq!(h.statuses(a), vec![504]);
    assert_eq!(h.statuses(b), vec![200]);
}

#[test]
fn idle_services_are_evicted_and_cold_started_again() {
    let mut config = config();
    config.idle_timeout = Duration::from_secs(5);
    let mut h = Harness::new(config).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/s"));
    h.compile_all();
    h.finish();
    h.advance(Duration::from_secs(4));
    h.send(c, &get("/s"));
    h.finish();
    h.advance(Duration::from_secs(4));
    assert!(h.evicted.is_empty(), "a request resets the idle clock");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.evicted.len(), 1);
    assert_eq!(h.server.services().next().unwrap().state, Lifecycle::Cold);
    let c = h.connect(2);
    h.send(c, &get("/s"));
    assert_eq!(h.compiles.len(), 1);
    assert_eq!(h.server.stats().evictions, 1);
}

#[test]
fn replace_lets_running_requests_finish_on_the_old_version() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/s"));
    h.compile_all();
    let old = h.out_task().module.clone();
    h.yield_out();
    let new = h.put("s", ServiceLimits::default());
    assert_ne!(old, new);
    assert!(h.evicted.is_empty(), "old version still running");
    let e = h.finish();
    assert_eq!(e.module, old, "the parked task resumes on its version");
    assert_eq!(h.evicted, vec![old.clone()]);
    assert_eq!(h.statuses(c), vec![200]);
    h.send(c, &get("/s"));
    assert_eq!(h.compiles, vec![new.clone()]);
    // A change that does not move the version forward is ignored.
    h.input(Input::Registry(RegistryChange::Put {
        module: old,
        wasm: Bytes::new(),
        limits: ServiceLimits::default(),
        setup: Default::default(),
    }));
    assert_eq!(h.server.services().next().unwrap().module, new);
}

#[test]
fn remove_answers_queued_requests_and_routes_404_after() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/s"));
    h.input(Input::Registry(RegistryChange::Remove {
        service: ServiceName::new("s").unwrap(),
    }));
    assert_eq!(h.statuses(c), vec![503]);
    h.send(c, &get("/s"));
    assert_eq!(h.statuses(c), vec![503, 404]);
}

#[test]
fn a_removed_service_lets_started_tasks_finish() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/s"));
    h.compile_all();
    h.yield_out();
    h.input(Input::Registry(RegistryChange::Remove {
        service: ServiceName::new("s").unwrap(),
    }));
    assert!(h.out.is_some(), "the parked task still gets turns");
    h.finish();
    assert_eq!(h.statuses(c), vec![200]);
    assert_eq!(h.evicted, vec![key("s", 1)]);
}

#[test]
fn disconnect_cancels_the_task_and_frees_its_slot() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/s"));
    h.compile_all();
    let job = h.yield_out();
    h.input(Input::Disconnected { conn: c });
    assert_eq!(h.server.connection_count(), 0);
    assert_eq!(h.cancelled, vec![job]);
    assert_eq!(h.server.running(), 0);
    assert!(h.statuses(c).is_empty());
}

#[test]
fn idle_and_slow_connections_time_out() {
    let mut h = Harness::new(config());
    let idle = h.connect(1);
    let slow = h.connect(2);
    h.send(slow, "GET / HTTP/1.1\r\nHo");
    h.advance(Duration::from_secs(10));
    assert_eq!(h.statuses(slow), vec![408]);
    assert!(h.closed.contains(&slow));
    assert!(!h.closed.contains(&idle));
    h.advance(Duration::from_secs(5));
    assert!(h.closed.contains(&idle));
    assert!(h.statuses(idle).is_empty());
}

#[test]
fn read_closed_still_answers_what_no_guest_owes() {
    let mut h = Harness::new(config());
    let c = h.connect(1);
    h.send(c, &format!("{}{}", get("/nope"), get("/services")));
    h.input(Input::ReadClosed { conn: c });
    assert!(!h.closed.contains(&c), "the management call is still owed");
    let call = h.calls.pop().unwrap();
    h.input(Input::Managed {
        call: call.call,
        response: Response::text(200, "managed"),
    });
    assert_eq!(h.statuses(c), vec![404, 200]);
    assert!(h.closed.contains(&c));
    assert_eq!(h.server.stats().abandoned, 0);
}

#[test]
fn a_client_that_stops_sending_while_its_guest_runs_is_gone() {
    let mut h = Harness::new(config())
        .with_service("s", ServiceLimits::default())
        .with_service("t", ServiceLimits::default());
    // Parked between slices: cancelled, nothing answered, the connection closed.
    let a = h.connect(1);
    h.send(a, &get("/s"));
    h.compile_all();
    let parked = h.yield_out();
    h.input(Input::ReadClosed { conn: a });
    assert_eq!(h.cancelled, [parked]);
    assert!(h.closed.contains(&a));
    assert!(h.statuses(a).is_empty());
    assert_eq!((h.server.running(), h.server.connection_count()), (0, 0));
    // Its next slice already handed out: dropped before it runs, and a late report for
    // it is ignored.
    let b = h.connect(2);
    h.send(b, &get("/s"));
    let out = h.out.expect("the next slice is out");
    h.input(Input::ReadClosed { conn: b });
    assert_eq!(h.cancelled, [parked, out]);
    assert!(h.out.is_none());
    h.input(Input::Yielded {
        job: out,
        ran: SLICE,
    });
    assert!(h.out.is_none(), "no slice for a cancelled task");
    // Still waiting for its service to load: dropped from the queue, never started.
    let c = h.connect(3);
    h.send(c, &get("/t"));
    h.input(Input::ReadClosed { conn: c });
    h.compile_all();
    assert!(h.out.is_none() && h.tasks.is_empty());
    assert!(h.statuses(b).is_empty() && h.statuses(c).is_empty());
    assert!(h.closed.contains(&b) && h.closed.contains(&c));
    let stats = h.server.stats();
    assert_eq!((stats.abandoned, stats.cancelled), (3, 2));
    assert_eq!(h.server.queued(), 0);
}

#[test]
fn shutdown_closes_idle_connections_and_drains_busy_ones() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let idle = h.connect(1);
    let busy = h.connect(2);
    h.send(busy, &get("/s"));
    h.compile_all();
    h.input(Input::Shutdown);
    assert!(h.closed.contains(&idle));
    assert!(!h.server.is_drained());
    h.finish();
    assert!(h.text(busy).contains("Connection: close"));
    assert!(h.closed.contains(&busy));
    assert!(h.server.is_drained());
    let late = h.connect(3);
    assert!(h.closed.contains(&late));
}

#[test]
fn finished_requests_leave_no_timers_behind() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/s"));
    h.compile_all();
    h.finish();
    let baseline = h.server.timers.len();
    for i in 0..100 {
        h.now += Duration::from_millis(i);
        h.send(c, &get("/s"));
        h.finish();
    }
    assert_eq!(
        h.server.timers.len(),
        baseline,
        "one timer per connection and idle service"
    );
}

#[test]
fn closed_connections_leave_no_timers_behind() {
    let mut h = Harness::new(config());
    for i in 0..50 {
        let c = h.connect(i);
        h.send(c, "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert!(h.closed.contains(&c));
    }
    let gone = h.connect(99);
    h.input(Input::Disconnected { conn: gone });
    assert!(
        h.server.timers.is_empty(),
        "{} timers left",
        h.server.timers.len()
    );
}

#[test]
fn a_full_pipeline_stops_reading() {
    let mut config = config();
    config.max_pipelined = 2;
    let mut h = Harness::new(config).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &format!("{}{}{}", get("/s/1"), get("/s/2"), get("/s/3")));
    h.compile_all();
    assert!(!h.server.wants_read(c));
    h.finish();
    assert!(
        !h.server.wants_read(c),
        "the buffered third request is parsed once there is room"
    );
    h.finish();
    h.finish();
    assert_eq!(h.statuses(c), vec![200, 200, 200]);
    assert!(h.server.wants_read(c));
}

#[test]
fn a_client_that_does_not_read_is_not_parsed_for_while_its_answers_wait() {
    let mut config = config();
    config.max_pipelined = 1;
    let mut h = Harness::new(config).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &format!("{}{}{}", get("/s/1"), get("/s/2"), get("/s/3")));
    h.compile_all();
    h.finish();
    // The driver could not write the answers: over the bound, nothing more is taken.
    h.input(Input::Unsent {
        conn: c,
        bytes: MAX_UNSENT + 1,
    });
    assert!(!h.server.wants_read(c), "not read while answers wait");
    h.finish();
    assert!(
        h.out.is_none(),
        "the third request, already buffered, is not started while held"
    );
    // Held, it is not idle: no idle or request timer closes it (the driver's write
    // timeout does, if the client never reads).
    h.advance(Duration::from_secs(3600));
    assert!(!h.closed.contains(&c));
    assert_eq!(h.statuses(c), vec![200, 200]);
    // Written: the waiting request is parsed and run.
    h.input(Input::Unsent { conn: c, bytes: 0 });
    h.compile_all();
    h.finish();
    assert_eq!(h.statuses(c), vec![200, 200, 200]);
    assert!(h.server.wants_read(c));
}

proptest! {
    /// Guests that never finish, arriving at random over several services: between two
    /// slices of a service that has work, every other service gets at most one slice.
    #[test]
    fn no_service_with_work_waits_more_than_one_round(
        arrivals in proptest::collection::vec((0u8..4, 0u8..6), 1..60),
        concurrency in 1usize..4,
    ) {
        let limits = ServiceLimits { max_concurrency: concurrency, ..ServiceLimits::default() };
        let mut config = config();
        config.max_running = 64;
        let mut h = Harness::new(config);
        let names = ["a", "b", "c", "d"];
        for name in names {
            let module = h.put(name, limits);
            h.input(Input::Compiled { module, result: Ok(()) });
        }
        for (conn, (service, slices)) in (0u64..).zip(arrivals) {
            let c = h.connect(conn);
            h.send(c, &get(&format!("/{}", names[service as usize])));
            for _ in 0..slices {
                if h.out.is_some() {
                    h.yield_out();
                }
            }
        }
        for _ in 0..40 {
            h.yield_out();
        }
        // Every task yields forever here, so a service that got a slice has work from
        // then on: check the gaps between its slices.
        let mut seen_since: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        for (_, service) in &h.slices {
            for (waiting, others) in seen_since.iter_mut() {
                if waiting != service {
                    let n = others.entry(service.as_str()).or_default();
                    *n += 1;
                    prop_assert!(*n <= 1, "{} waited behind {} twice", waiting, service);
                }
            }
            seen_since.insert(service.as_str(), BTreeMap::new());
        }
    }
}

#[test]
fn sub_routes_choose_the_entrypoint_and_split_the_path() {
    let mut h = Harness::new(config());
    let routes = crate::subroute::SubRoutes::parse(b"/hello hello\n/files/... files").unwrap();
    h.input(Input::Registry(RegistryChange::Put {
        module: key("s", 1),
        wasm: Bytes::from_static(b"wasm"),
        limits: ServiceLimits::default(),
        setup: Arc::new(GuestSetup {
            entrypoint: "main".into(),
            routes,
            ..Default::default()
        }),
    }));
    let c = h.connect(1);
    for (path, entry, script, rest, wildcard) in [
        ("/s/hello", "hello", "/s/hello", "", false),
        ("/s/hello/x", "main", "/s", "/hello/x", true),
        ("/s/files/a/b", "files", "/s/files", "/a/b", true),
        ("/s", "main", "/s", "", true),
    ] {
        h.send(c, &get(path));
        h.compile_all();
        let r = &h.out_task().request;
        assert_eq!(
            (
                &*r.entrypoint,
                r.script_name.as_str(),
                r.path_info.as_str(),
                r.wildcard
            ),
            (entry, script, rest, wildcard),
            "{path}"
        );
        h.finish();
    }
    assert_eq!(h.statuses(c), [200, 200, 200, 200]);
}

#[test]
fn a_waiting_task_holds_its_slot_lets_others_run_and_resumes_when_woken() {
    let limits = ServiceLimits {
        max_concurrency: 1,
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config())
        .with_service("s", limits)
        .with_service("t", ServiceLimits::default());
    let (a, b) = (h.connect(1), h.connect(2));
    h.send(a, &get("/s"));
    h.compile_all();
    let waiting = h.out.take().expect("the first slice is out");
    h.input(Input::Waiting {
        job: waiting,
        ran: Duration::ZERO,
    });
    // Nothing of s can start while its one slot waits; t runs meanwhile.
    h.send(a, &get("/s"));
    h.send(b, &get("/t"));
    h.compile_all();
    assert_eq!(h.out_task().module.service.as_str(), "t");
    h.finish();
    assert!(h.out.is_none(), "s's queued request waits for the slot");
    assert_eq!(h.statuses(b), [200]);
    // Woken, it is resumed, finishes, and the queued request starts.
    h.input(Input::Woken { job: waiting });
    assert_eq!(h.out, Some(waiting));
    h.finish();
    assert!(h.out.is_some(), "the queued request started");
    h.finish();
    assert_eq!(h.statuses(a), [200, 200]);
    // A wake-up for a task that is gone is ignored.
    h.input(Input::Woken { job: waiting });
    assert!(h.out.is_none());
}

#[test]
fn a_waiting_task_is_cancelled_at_its_deadline() {
    let limits = ServiceLimits {
        deadline: Duration::from_secs(1),
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config()).with_service("s", limits);
    let c = h.connect(1);
    h.send(c, &get("/s"));
    h.compile_all();
    let job = h.out.take().unwrap();
    h.input(Input::Waiting {
        job,
        ran: Duration::ZERO,
    });
    h.advance(Duration::from_secs(2));
    assert_eq!(h.cancelled, [job]);
    assert_eq!(h.statuses(c), [504]);
    h.input(Input::Woken { job });
    assert!(h.out.is_none(), "no slice for a cancelled task");
}

/// Starts a request to `/{service}{path}` on a connection of its own.
fn request(h: &mut Harness, conn: &mut u64, service: &str, path: &str) {
    let c = h.connect(*conn);
    *conn += 1;
    h.send(c, &get(&format!("/{service}{path}")));
}

/// A harness with warm services of these names and limits, and room for many tasks.
fn warm(services: &[(&str, ServiceLimits)]) -> Harness {
    let mut h = Harness::new(ServerConfig {
        max_running: 64,
        max_queued: 4096,
        ..ServerConfig::default()
    });
    for (name, limits) in services {
        let module = h.put(name, *limits);
        h.input(Input::Compiled {
            module,
            result: Ok(()),
        });
    }
    h
}

fn roomy() -> ServiceLimits {
    ServiceLimits {
        max_queued: 4096,
        ..ServiceLimits::default()
    }
}

#[test]
fn services_share_by_time_not_turns() {
    // The measurement: a looping guest beside a service of 12 us requests.
    let mut h = warm(&[("hog", roomy()), ("hello", roomy())]);
    let mut conn = 0;
    for _ in 0..2 {
        request(&mut h, &mut conn, "hog", "");
    }
    for _ in 0..1000 {
        request(&mut h, &mut conn, "hello", "");
    }
    let mut per_round = Vec::new();
    let mut hello = 0;
    while h.server.queued() > 0 {
        if h.out_task().module.service.as_str() == "hog" {
            h.yield_out();
            per_round.push(std::mem::take(&mut hello));
        } else {
            h.finish_after(Duration::from_micros(12));
            hello += 1;
        }
    }
    // A 2 ms slice of the hog, then 2 ms of hello: 167 requests of 12 us, not one.
    let rounds = &per_round[1..per_round.len() - 1];
    assert!(rounds.len() >= 4, "{per_round:?}");
    assert!(
        rounds.iter().all(|n| (166..=168).contains(n)),
        "{per_round:?}"
    );
}

#[test]
fn a_service_that_used_little_goes_before_one_that_used_a_lot() {
    let mut h = warm(&[("hog", roomy()), ("light", roomy())]);
    let mut conn = 0;
    request(&mut h, &mut conn, "hog", "");
    request(&mut h, &mut conn, "light", "");
    for _ in 0..10 {
        // The light service's one request each round is served as soon as the hog's
        // slice ends, however often the hog ran before.
        assert_eq!(h.out_task().module.service.as_str(), "hog");
        h.yield_out();
        assert_eq!(h.out_task().module.service.as_str(), "light");
        h.finish_after(Duration::from_micros(5));
        request(&mut h, &mut conn, "light", "");
    }
}

#[test]
fn a_service_starts_new_requests_beside_its_own_long_ones_by_time() {
    let mut h = warm(&[("s", roomy())]);
    let mut conn = 0;
    for _ in 0..2 {
        request(&mut h, &mut conn, "s", "/loop");
    }
    // Both loops are started (a start each), then 300 requests of 200 us queue.
    h.yield_out();
    h.yield_out();
    for _ in 0..300 {
        request(&mut h, &mut conn, "s", "/short");
    }
    let (mut short, mut long) = (Duration::ZERO, Duration::ZERO);
    while short < Duration::from_millis(60) {
        if h.out_task().request.path_info == "/short" {
            h.finish_after(Duration::from_micros(200));
            short += Duration::from_micros(200);
        } else {
            h.yield_out();
            long += SLICE;
        }
    }
    // 60 ms of short requests, and as much again for the loops, give or take a slice.
    assert_eq!(short, Duration::from_millis(60));
    assert!(
        long.abs_diff(short) <= SLICE * 2,
        "{long:?} against {short:?}"
    );
}

#[test]
fn cpu_weight_divides_the_time() {
    let heavy = ServiceLimits {
        cpu_weight: 3,
        ..ServiceLimits::default()
    };
    let mut h = warm(&[("a", ServiceLimits::default()), ("b", heavy)]);
    let mut conn = 0;
    request(&mut h, &mut conn, "a", "");
    request(&mut h, &mut conn, "b", "");
    let mut b = 0;
    for _ in 0..400 {
        if h.out_task().module.service.as_str() == "b" {
            b += 1;
        }
        h.yield_out();
    }
    assert!((296..=304).contains(&b), "b ran {b} of 400 slices");
    // The weight is bounded.
    let huge = ServiceLimits {
        cpu_weight: u32::MAX,
        ..ServiceLimits::default()
    };
    h.put("c", huge);
    let c = h
        .server
        .services()
        .find(|s| s.module.service.as_str() == "c");
    assert_eq!(c.unwrap().limits.cpu_weight, MAX_CPU_WEIGHT);
}

#[test]
fn one_slice_is_charged_at_most_a_second() {
    let mut h = warm(&[("a", roomy()), ("b", roomy())]);
    let mut conn = 0;
    request(&mut h, &mut conn, "a", "");
    request(&mut h, &mut conn, "b", "");
    // A slice reported to have run an hour (a suspended machine) costs `a` one second.
    assert_eq!(h.out_task().module.service.as_str(), "a");
    h.yield_after(Duration::from_secs(3600));
    let mut b = 0;
    while h.out_task().module.service.as_str() == "b" {
        h.yield_after(Duration::from_millis(100));
        b += 1;
    }
    assert_eq!(b, 10);
}

#[test]
fn a_task_that_waits_lets_its_own_service_start_the_next_request() {
    let mut h = warm(&[("s", ServiceLimits::default())]);
    let mut conn = 0;
    request(&mut h, &mut conn, "s", "/1");
    request(&mut h, &mut conn, "s", "/2");
    let job = h.out.take().unwrap();
    h.input(Input::Waiting {
        job,
        ran: Duration::from_micros(30),
    });
    assert_eq!(h.out_task().request.path_info, "/2");
}

#[test]
fn a_report_taken_after_the_deadline_still_charges_the_slice() {
    let limits = ServiceLimits {
        deadline: Duration::from_millis(10),
        ..roomy()
    };
    let mut h = warm(&[("a", limits), ("b", roomy())]);
    let mut conn = 0;
    request(&mut h, &mut conn, "a", "");
    request(&mut h, &mut conn, "b", "");
    request(&mut h, &mut conn, "a", "");
    // a's first slice runs past its deadline: the task is cancelled when the report comes,
    // and the slice's time still counts against a, so b goes next.
    h.now += Duration::from_millis(20);
    let job = h.out.take().unwrap();
    h.input(Input::Yielded { job, ran: SLICE });
    assert_eq!(h.cancelled, [job]);
    assert_eq!(h.out_task().module.service.as_str(), "b");
}

/// Whom a slice in a fairness log went to, and how long it ran, in microseconds.
type Ran = (usize, u64);

/// Shares of the reported time per service over `log`, for `k` services.
fn shares(log: &[Ran], k: usize) -> Vec<f64> {
    let mut per = vec![0u64; k];
    for (s, us) in log {
        per[*s] += us;
    }
    let total: u64 = per.iter().sum();
    per.iter().map(|t| *t as f64 / total as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// k services that always have work (looping tasks with slices of any length, and
    /// short requests arriving) each get 1/k of the reported time over any window of
    /// 400 ms or more, within 2%; between two slices of a service, another runs at most
    /// the first one's last slice plus one slice of its own; every task ends once.
    #[test]
    fn services_with_work_share_the_reported_time_fairly(
        loops in proptest::collection::vec(
            (1usize..3, proptest::collection::vec(1u64..=2000, 1..6)),
            2..=4,
        ),
        arrivals in proptest::collection::vec((0usize..4, 1u64..=2000), 0..400),
    ) {
        let k = loops.len();
        let names = ["a", "b", "c", "d"];
        let services: Vec<_> = names[..k].iter().map(|n| (*n, roomy())).collect();
        let mut h = warm(&services);
        let mut conn = 0;
        for (i, (n, _)) in loops.iter().enumerate() {
            for _ in 0..*n {
                request(&mut h, &mut conn, names[i], "/loop");
            }
        }
        let mut arrivals = arrivals.into_iter();
        let mut turn = vec![0usize; k];
        let mut log: Vec<Ran> = Vec::new();
        for step in 0..1500u32 {
            if step.is_multiple_of(3) && let Some((s, us)) = arrivals.next() {
                request(&mut h, &mut conn, names[s % k], &format!("/short/{us}"));
            }
            let task = h.out_task();
            let service = names.iter().position(|n| *n == task.module.service.as_str()).unwrap();
            let short = task.request.path_info.strip_prefix("/short/").map(|us| us.parse::<u64>().unwrap());
            let us = match short {
                Some(us) => {
                    h.finish_after(Duration::from_micros(us));
                    us
                }
                None => {
                    let cycle = &loops[service].1;
                    let us = cycle[turn[service] % cycle.len()];
                    turn[service] += 1;
                    h.yield_after(Duration::from_micros(us));
                    us
                }
            };
            log.push((service, us));
        }
        for start in (0..log.len()).step_by(25) {
            let mut total = 0;
            for end in start..log.len() {
                total += log[end].1;
                if total >= 400_000 {
                    for (s, share) in shares(&log[start..=end], k).iter().enumerate() {
                        prop_assert!((share - 1.0 / k as f64).abs() <= 0.02,
                            "service {} had {:.3} of slices {}..={}", s, share, start, end);
                    }
                }
            }
        }
        for a in 0..k {
            let mut last: Option<(usize, u64)> = None;
            let mut others = vec![0u64; k];
            for (i, (s, us)) in log.iter().enumerate() {
                if *s == a {
                    if let Some((at, ran)) = last {
                        for (b, t) in others.iter().enumerate() {
                            prop_assert!(*t <= ran + 2000,
                                "{} ran {} us between slices {} and {} of {}", b, t, at, i, a);
                        }
                    }
                    last = Some((i, *us));
                    others = vec![0; k];
                } else {
                    others[*s] += us;
                }
            }
        }
        // Every started task ends once (the harness checks as it goes).
        h.input(Input::Shutdown);
        while h.out.is_some() {
            h.finish();
        }
        prop_assert!(h.tasks.is_empty());
        prop_assert_eq!(h.server.running(), 0);
    }
}

// The core checks itself: `check_invariants` runs after every `handle` in debug builds
// (so every test above runs it), and it must be able to fail.

/// A harness with a warm service "a", one task out, one parked, one waiting and one
/// request queued, and a management call out: every kind of bookkeeping in use.
fn busy() -> Harness {
    let limits = ServiceLimits {
        max_concurrency: 3,
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(ServerConfig {
        max_running: 3,
        ..ServerConfig::default()
    });
    let module = h.put("a", limits);
    h.input(Input::Compiled {
        module,
        result: Ok(()),
    });
    let mut conn = 0;
    request(&mut h, &mut conn, "a", "/1");
    let waiting = h.out.take().unwrap();
    h.input(Input::Waiting {
        job: waiting,
        ran: SLICE,
    });
    request(&mut h, &mut conn, "a", "/2");
    request(&mut h, &mut conn, "a", "/3");
    let c = h.connect(conn);
    h.send(
        c,
        "POST /a/4 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    );
    let c = h.connect(conn + 1);
    h.send(c, &get("/services/a"));
    // /2 yields and resumes, yields again, and /3 starts (fair queueing in the lane).
    let parked = h.yield_out();
    assert_eq!(h.out, Some(parked));
    h.yield_out();
    assert!(h.out.is_some_and(|out| out != parked));
    assert_eq!((h.server.running(), h.server.queued()), (3, 1));
    assert_eq!((h.server.waiting.len(), h.calls.len()), (1, 1));
    h
}

/// Whether `check_invariants` panics.
fn check_fails(server: &Server) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.check_invariants())).is_err()
}

#[test]
fn check_invariants_catches_corrupted_bookkeeping() {
    assert!(!check_fails(&busy().server), "a busy server checks out");
    type Corrupt = fn(&mut Server);
    let corruptions: [(&str, Corrupt); 14] = [
        ("running too high", |s| s.running += 1),
        ("running too low", |s| s.running -= 1),
        ("a service's running", |s| {
            s.services.values_mut().next().unwrap().running -= 1;
        }),
        ("a retiring count with no tasks", |s| {
            s.retiring.insert(key("gone", 9), 1);
        }),
        ("queued", |s| s.queued += 1),
        ("queued_bytes", |s| s.queued_bytes -= 1),
        ("a queue entry lost", |s| {
            s.services.values_mut().next().unwrap().queue.clear();
        }),
        ("an unknown job queued", |s| {
            let q = &mut s.services.values_mut().next().unwrap().queue;
            q.push_back(JobId(999));
            s.queued += 1;
        }),
        ("the slice out forgotten", |s| s.slice_out = None),
        ("an unknown job waiting", |s| {
            s.waiting.insert(JobId(999));
        }),
        ("a parked task lost", |s| {
            s.lanes.values_mut().next().unwrap().parked.clear();
        }),
        ("a job's connection gone", |s| {
            let conn = s.jobs.values().next().unwrap().conn;
            s.conns.remove(&conn);
        }),
        ("a route without a service", |s| {
            let name = s.services.keys().next().unwrap().clone();
            s.router.remove(&name);
        }),
        ("a job without its deadline timer", |s| {
            let (id, job) = s.jobs.iter().next().unwrap();
            let timer = (job.deadline, Timer::Job(*id));
            s.timers.remove(&timer);
        }),
    ];
    for (what, corrupt) in corruptions {
        let mut h = busy();
        corrupt(&mut h.server);
        assert!(check_fails(&h.server), "not caught: {what}");
    }
}

#[test]
fn a_counter_that_would_go_below_zero_panics_with_its_name() {
    let mut h = busy();
    h.server.queued = 0;
    let job = *h
        .server
        .services
        .values()
        .next()
        .unwrap()
        .queue
        .front()
        .unwrap();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.server.left_queue(job);
    }))
    .unwrap_err();
    let message = err.downcast_ref::<String>().unwrap();
    assert!(message.contains("queued would go below zero"), "{message}");
}

#[test]
fn a_normal_workload_keeps_the_books() {
    let mut h = busy();
    h.server.check_invariants();
    let mut conn = 10;
    for i in 0..6 {
        request(&mut h, &mut conn, "a", &format!("/more/{i}"));
        h.server.check_invariants();
    }
    h.yield_out();
    h.server.check_invariants();
    h.finish();
    h.server.check_invariants();
    // Replaced while tasks run: they finish on the old version, counted as retiring.
    let module = h.put("a", ServiceLimits::default());
    h.server.check_invariants();
    h.input(Input::Compiled {
        module,
        result: Ok(()),
    });
    h.server.check_invariants();
    let waiting = *h.server.waiting.first().unwrap();
    h.input(Input::Woken { job: waiting });
    h.server.check_invariants();
    for call in std::mem::take(&mut h.calls) {
        h.input(Input::Managed {
            call: call.call,
            response: Response::text(200, "ok"),
        });
        h.server.check_invariants();
    }
    h.input(Input::Disconnected { conn: ConnId(12) });
    h.server.check_invariants();
    h.advance(Duration::from_secs(11));
    h.server.check_invariants();
    while h.out.is_some() {
        h.finish();
        h.server.check_invariants();
    }
    h.input(Input::Registry(RegistryChange::Remove {
        service: ServiceName::new("a").unwrap(),
    }));
    h.server.check_invariants();
    h.input(Input::Shutdown);
    h.advance(Duration::from_secs(60));
    h.server.check_invariants();
    assert_eq!((h.server.running(), h.server.queued()), (0, 0));
    assert!(h.server.retiring.is_empty() && h.server.jobs.is_empty());
}

#[test]
fn a_version_put_back_while_its_tasks_retire_counts_them_once() {
    let mut h = warm(&[("a", ServiceLimits::default())]);
    let mut conn = 0;
    request(&mut h, &mut conn, "a", "/1");
    assert!(h.out.is_some());
    let module = h.tasks.values().next().unwrap().module.clone();
    // Removed with its task running, then put back at the same version.
    h.input(Input::Registry(RegistryChange::Remove {
        service: module.service.clone(),
    }));
    h.input(Input::Registry(RegistryChange::Put {
        module: module.clone(),
        wasm: Bytes::from_static(b"wasm"),
        limits: ServiceLimits::default(),
        setup: Default::default(),
    }));
    // The driver still holds it compiled: it serves at once, and counts the old task.
    let info = h.server.services().next().unwrap();
    assert_eq!((info.state, info.running), (Lifecycle::Warm, 1));
    h.finish();
    request(&mut h, &mut conn, "a", "/2");
    h.finish();
    assert_eq!(h.server.running(), 0);
    assert_eq!(h.statuses(ConnId(1)), vec![200]);
    assert!(h.evicted.is_empty(), "the version still serves");
    h.advance(Duration::from_secs(61));
    assert_eq!(h.evicted, vec![module.clone()]);

    // The same by way of a lower version: removed, put back lower, then replaced by it.
    let module = ModuleKey {
        version: 10,
        ..module
    };
    let put = |h: &mut Harness, module: &ModuleKey| {
        h.input(Input::Registry(RegistryChange::Put {
            module: module.clone(),
            wasm: Bytes::from_static(b"wasm"),
            limits: ServiceLimits::default(),
            setup: Default::default(),
        }));
    };
    put(&mut h, &module);
    h.input(Input::Compiled {
        module: module.clone(),
        result: Ok(()),
    });
    request(&mut h, &mut conn, "a", "/3");
    h.yield_out();
    h.input(Input::Registry(RegistryChange::Remove {
        service: module.service.clone(),
    }));
    put(
        &mut h,
        &ModuleKey {
            version: 5,
            ..module.clone()
        },
    );
    request(&mut h, &mut conn, "a", "/4");
    put(&mut h, &module);
    let info = h.server.services().next().unwrap();
    assert_eq!(
        (info.module.version, info.state, info.running),
        (10, Lifecycle::Warm, 1)
    );
    while h.out.is_some() {
        h.finish();
    }
    assert_eq!(h.server.running(), 0);
    assert_eq!(h.statuses(ConnId(3)), vec![200]);
}
