//! An arbitrary sequence of events drives the core; after each step its bounds hold, and
//! at the end every request on a connection still open has had exactly one response.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use frenezulo_core::contract::Monitor;
use frenezulo_core::{
    ConnId, GuestFailure, Input, JobId, ModuleKey, Output, RegistryChange, Response, Server,
    ServerConfig, ServiceLimits, ServiceName,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes on a connection (possibly partial or malformed requests).
    Bytes {
        conn: u8,
        data: Vec<u8>,
    },
    /// A well-formed GET to one of the services (or an unknown prefix).
    Get {
        conn: u8,
        service: u8,
    },
    /// The slice out ends; each report says how long it ran, in microseconds.
    Finish {
        outcome: u8,
        micros: u16,
    },
    Yield {
        micros: u16,
    },
    /// The slice out ends with its guest waiting on an outbound call.
    Wait {
        micros: u16,
    },
    /// A waiting task's call finished (possibly for a task cancelled meanwhile).
    Wake {
        which: u8,
    },
    Compile {
        ok: bool,
    },
    Advance {
        millis: u16,
    },
    ReadClosed {
        conn: u8,
    },
    Disconnect {
        conn: u8,
    },
    Replace {
        service: u8,
    },
    Remove {
        service: u8,
    },
    Shutdown,
    /// Answers the oldest management call out.
    Answer,
}

const SERVICES: [&str; 3] = ["a", "b", "zz"];
const MAX_RUNNING: usize = 3;

/// The core and what a driver would know about it; the monitor checks the contract.
struct Harness {
    server: Server,
    monitor: Monitor,
    now: Instant,
    open: BTreeSet<ConnId>,
    compiles: Vec<ModuleKey>,
    /// Tasks started and not ended.
    tasks: BTreeSet<JobId>,
    /// The task whose slice is out.
    out: Option<JobId>,
    next_conn: u64,
    next_version: u64,
    /// Management calls out, oldest first.
    calls: Vec<JobId>,
    /// Tasks reported waiting and not woken yet (some may be cancelled since).
    waiting: Vec<JobId>,
}

impl Harness {
    fn input(&mut self, input: Input<'_>) {
        self.monitor.input(&input);
        self.server.handle(self.now, input);
        while let Some(out) = self.server.poll_output() {
            self.monitor.output(&out);
            match out {
                Output::Transmit { conn, .. } => {
                    assert!(self.open.contains(&conn), "transmit on a closed connection")
                }
                Output::Close { conn } => {
                    self.open.remove(&conn);
                }
                Output::Compile { module, .. } => self.compiles.push(module),
                Output::Execute(e) => {
                    self.tasks.insert(e.job);
                    self.out = Some(e.job);
                }
                Output::Resume { job } => self.out = Some(job),
                Output::Cancel { job } => {
                    self.tasks.remove(&job);
                    if self.out == Some(job) {
                        self.out = None;
                    }
                }
                Output::Manage(call) => self.calls.push(call.call),
                _ => {}
            }
        }
    }

    fn connect(&mut self) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let addr = "127.0.0.1:1".parse().unwrap();
        self.open.insert(conn);
        self.input(Input::Connected {
            conn,
            remote: addr,
            local: addr,
        });
    }

    fn pick(&self, c: u8) -> Option<ConnId> {
        self.open
            .iter()
            .nth(usize::from(c) % self.open.len().max(1))
            .copied()
    }

    fn send(&mut self, c: u8, data: &[u8]) {
        if let Some(conn) = self.pick(c).filter(|conn| self.server.wants_read(*conn)) {
            self.input(Input::Received { conn, data });
        }
    }

    fn compile_all(&mut self, ok: bool) {
        for module in std::mem::take(&mut self.compiles) {
            let result = if ok { Ok(()) } else { Err("no".to_owned()) };
            self.input(Input::Compiled { module, result });
        }
    }

    fn put(&mut self, name: &str, limits: ServiceLimits) {
        let module = ModuleKey {
            service: ServiceName::new(name).unwrap(),
            version: self.next_version,
        };
        self.next_version += 1;
        self.input(Input::Registry(RegistryChange::Put {
            module,
            wasm: Bytes::new(),
            limits,
            setup: Default::default(),
        }));
    }

    fn finish(&mut self, result: Result<Response, GuestFailure>, micros: u16) {
        if let Some(job) = self.out.take() {
            self.tasks.remove(&job);
            let ran = Duration::from_micros(u64::from(micros));
            self.input(Input::Executed { job, result, ran });
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.input(Input::Timeout);
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let config = ServerConfig {
        max_running: MAX_RUNNING,
        max_queued: 6,
        max_pipelined: 4,
        idle_timeout: Duration::from_secs(3),
        ..ServerConfig::default()
    };
    let limits = ServiceLimits {
        max_concurrency: 2,
        max_queued: 3,
        deadline: Duration::from_secs(2),
        body_bytes: 64,
        ..ServiceLimits::default()
    };
    let mut h = Harness {
        server: Server::new(config),
        monitor: Monitor::new(),
        now: Instant::now(),
        open: BTreeSet::new(),
        compiles: Vec::new(),
        tasks: BTreeSet::new(),
        out: None,
        next_conn: 0,
        next_version: 1,
        calls: Vec::new(),
        waiting: Vec::new(),
    };
    for name in &SERVICES[..2] {
        h.put(name, limits);
    }
    for _ in 0..4 {
        h.connect();
    }
    for op in ops.into_iter().take(200) {
        match op {
            Op::Bytes { conn, data } => h.send(conn, &data),
            Op::Get { conn, service } => {
                let req = format!(
                    "GET /{} HTTP/1.1\r\nHost: f\r\n\r\n",
                    ["a", "b", "zz", "services"][usize::from(service) % 4]
                );
                h.send(conn, req.as_bytes());
            }
            Op::Finish { outcome, micros } => {
                let result = match outcome % 3 {
                    0 => Ok(Response::text(200, "ok")),
                    1 => Err(GuestFailure::Trap("t".into())),
                    _ => Err(GuestFailure::OutOfMemory),
                };
                h.finish(result, micros);
            }
            Op::Yield { micros } => {
                if let Some(job) = h.out.take() {
                    let ran = Duration::from_micros(u64::from(micros));
                    h.input(Input::Yielded { job, ran });
                }
            }
            Op::Wait { micros } => {
                if let Some(job) = h.out.take() {
                    h.waiting.push(job);
                    let ran = Duration::from_micros(u64::from(micros));
                    h.input(Input::Waiting { job, ran });
                }
            }
            Op::Wake { which } => {
                if !h.waiting.is_empty() {
                    let job = h.waiting.remove(usize::from(which) % h.waiting.len());
                    h.input(Input::Woken { job });
                }
            }
            Op::Compile { ok } => h.compile_all(ok),
            Op::Advance { millis } => h.advance(Duration::from_millis(u64::from(millis))),
            Op::ReadClosed { conn } => {
                if let Some(conn) = h.pick(conn) {
                    h.input(Input::ReadClosed { conn });
                }
            }
            Op::Disconnect { conn } => {
                if let Some(conn) = h.pick(conn) {
                    h.open.remove(&conn);
                    h.input(Input::Disconnected { conn });
                    h.connect();
                }
            }
            Op::Replace { service } => h.put(SERVICES[usize::from(service) % 2], limits),
            Op::Remove { service } => {
                let service = ServiceName::new(SERVICES[usize::from(service) % 2]).unwrap();
                h.input(Input::Registry(RegistryChange::Remove { service }));
            }
            Op::Shutdown => h.input(Input::Shutdown),
            Op::Answer => {
                if !h.calls.is_empty() {
                    let call = h.calls.remove(0);
                    let response = Response::text(200, "ok");
                    h.input(Input::Managed { call, response });
                }
            }
        }
        assert!(h.server.running() <= MAX_RUNNING);
        assert_eq!(h.server.running(), h.tasks.len(), "the core counts the tasks out");
        for s in h.server.services() {
            assert!(s.running <= 2 && s.queued <= 3);
        }
        assert_eq!(h.server.connection_count(), h.open.len());
    }
    // Finish everything: no task may stay running, and every connection ends up closed once
    // the keep-alive and request timeouts have passed.
    for _ in 0..20 {
        for call in std::mem::take(&mut h.calls) {
            let response = Response::text(200, "ok");
            h.input(Input::Managed { call, response });
        }
        for job in std::mem::take(&mut h.waiting) {
            h.input(Input::Woken { job });
        }
        h.compile_all(true);
        while h.out.is_some() {
            h.finish(Ok(Response::text(200, "ok")), 10);
        }
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(h.server.running(), 0);
    assert!(h.compiles.is_empty() && h.tasks.is_empty());
    h.advance(Duration::from_secs(60));
    assert!(h.open.is_empty(), "connections left open: {:?}", h.open);
});
