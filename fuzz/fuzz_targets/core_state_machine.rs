//! An arbitrary sequence of events drives the core; after each step its bounds hold, and
//! at the end every request on a connection still open has had exactly one response.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use frenezulo_core::{
    ConnId, GuestFailure, Input, Output, Response, Server, ServerConfig, ServiceLimits,
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
    Finish {
        index: u8,
        outcome: u8,
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
}

const SERVICES: [&str; 3] = ["a", "b", "zz"];
const MAX_RUNNING: usize = 3;

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
    let mut server = Server::new(config);
    for name in &SERVICES[..2] {
        server.add_service(name, Bytes::new(), limits).unwrap();
    }
    let mut now = Instant::now();
    let mut compiles = Vec::new();
    let mut executions = Vec::new();
    let mut open: BTreeSet<ConnId> = BTreeSet::new();
    let mut sent: BTreeMap<ConnId, usize> = BTreeMap::new();
    let mut next = 0u64;
    let addr = "127.0.0.1:1".parse().unwrap();
    let drive = |server: &mut Server,
                 now: Instant,
                 input: Input<'_>,
                 open: &mut BTreeSet<ConnId>,
                 sent: &mut BTreeMap<ConnId, usize>,
                 compiles: &mut Vec<_>,
                 executions: &mut Vec<_>| {
        server.handle(now, input);
        while let Some(out) = server.poll_output() {
            match out {
                Output::Transmit { conn, .. } => {
                    assert!(open.contains(&conn), "transmit on a closed connection");
                    *sent.entry(conn).or_default() += 1;
                }
                Output::Close { conn } => assert!(open.remove(&conn), "closed twice"),
                Output::Compile { module, .. } => compiles.push(module),
                Output::Execute(e) => executions.push(e.job),
                Output::Evict { .. } => {}
                _ => {}
            }
        }
    };
    for i in 0..4 {
        let conn = ConnId(i);
        open.insert(conn);
        drive(
            &mut server,
            now,
            Input::Connected {
                conn,
                remote: addr,
                local: addr,
            },
            &mut open,
            &mut sent,
            &mut compiles,
            &mut executions,
        );
        next = i + 1;
    }
    for op in ops.into_iter().take(200) {
        let pick = |c: u8, open: &BTreeSet<ConnId>| {
            open.iter().nth(usize::from(c) % open.len().max(1)).copied()
        };
        match op {
            Op::Bytes { conn, data } => {
                if let Some(c) = pick(conn, &open) {
                    if server.wants_read(c) {
                        drive(
                            &mut server,
                            now,
                            Input::Received {
                                conn: c,
                                data: &data,
                            },
                            &mut open,
                            &mut sent,
                            &mut compiles,
                            &mut executions,
                        );
                    }
                }
            }
            Op::Get { conn, service } => {
                if let Some(c) = pick(conn, &open) {
                    if server.wants_read(c) {
                        let req = format!(
                            "GET /{} HTTP/1.1\r\nHost: f\r\n\r\n",
                            SERVICES[usize::from(service) % 3]
                        );
                        drive(
                            &mut server,
                            now,
                            Input::Received {
                                conn: c,
                                data: req.as_bytes(),
                            },
                            &mut open,
                            &mut sent,
                            &mut compiles,
                            &mut executions,
                        );
                    }
                }
            }
            Op::Finish { index, outcome } => {
                if !executions.is_empty() {
                    let job = executions.remove(usize::from(index) % executions.len());
                    let result = match outcome % 3 {
                        0 => Ok(Response::text(200, "ok")),
                        1 => Err(GuestFailure::Trap("t".into())),
                        _ => Err(GuestFailure::Timeout),
                    };
                    drive(
                        &mut server,
                        now,
                        Input::Executed { job, result },
                        &mut open,
                        &mut sent,
                        &mut compiles,
                        &mut executions,
                    );
                }
            }
            Op::Compile { ok } => {
                for module in std::mem::take(&mut compiles) {
                    let result = if ok { Ok(()) } else { Err("no".to_owned()) };
                    drive(
                        &mut server,
                        now,
                        Input::Compiled { module, result },
                        &mut open,
                        &mut sent,
                        &mut compiles,
                        &mut executions,
                    );
                }
            }
            Op::Advance { millis } => {
                now += Duration::from_millis(u64::from(millis));
                drive(
                    &mut server,
                    now,
                    Input::Timeout,
                    &mut open,
                    &mut sent,
                    &mut compiles,
                    &mut executions,
                );
            }
            Op::ReadClosed { conn } => {
                if let Some(c) = pick(conn, &open) {
                    drive(
                        &mut server,
                        now,
                        Input::ReadClosed { conn: c },
                        &mut open,
                        &mut sent,
                        &mut compiles,
                        &mut executions,
                    );
                }
            }
            Op::Disconnect { conn } => {
                if let Some(c) = pick(conn, &open) {
                    open.remove(&c);
                    drive(
                        &mut server,
                        now,
                        Input::Disconnected { conn: c },
                        &mut open,
                        &mut sent,
                        &mut compiles,
                        &mut executions,
                    );
                    let fresh = ConnId(next);
                    next += 1;
                    open.insert(fresh);
                    drive(
                        &mut server,
                        now,
                        Input::Connected {
                            conn: fresh,
                            remote: addr,
                            local: addr,
                        },
                        &mut open,
                        &mut sent,
                        &mut compiles,
                        &mut executions,
                    );
                }
            }
            Op::Replace { service } => {
                let _ = server.replace_service(
                    SERVICES[usize::from(service) % 2],
                    Bytes::new(),
                    limits,
                );
                drive(
                    &mut server,
                    now,
                    Input::Timeout,
                    &mut open,
                    &mut sent,
                    &mut compiles,
                    &mut executions,
                );
            }
            Op::Remove { service } => {
                let _ = server.remove_service(now, SERVICES[usize::from(service) % 2]);
                drive(
                    &mut server,
                    now,
                    Input::Timeout,
                    &mut open,
                    &mut sent,
                    &mut compiles,
                    &mut executions,
                );
            }
            Op::Shutdown => drive(
                &mut server,
                now,
                Input::Shutdown,
                &mut open,
                &mut sent,
                &mut compiles,
                &mut executions,
            ),
        }
        assert!(server.running() <= MAX_RUNNING);
        for s in server.services() {
            assert!(s.running <= 2 && s.queued <= 3);
        }
        assert_eq!(server.connection_count(), open.len());
    }
    // Finish everything: no job may stay running, every connection ends up idle or closed.
    for _ in 0..20 {
        for module in std::mem::take(&mut compiles) {
            drive(
                &mut server,
                now,
                Input::Compiled {
                    module,
                    result: Ok(()),
                },
                &mut open,
                &mut sent,
                &mut compiles,
                &mut executions,
            );
        }
        while let Some(job) = executions.pop() {
            drive(
                &mut server,
                now,
                Input::Executed {
                    job,
                    result: Ok(Response::text(200, "ok")),
                },
                &mut open,
                &mut sent,
                &mut compiles,
                &mut executions,
            );
        }
        now += Duration::from_secs(1);
        drive(
            &mut server,
            now,
            Input::Timeout,
            &mut open,
            &mut sent,
            &mut compiles,
            &mut executions,
        );
    }
    assert_eq!(server.running(), 0);
    assert!(compiles.is_empty() && executions.is_empty());
    // Idle connections time out after the keep-alive timeout: by now all are closed.
    now += Duration::from_secs(60);
    drive(
        &mut server,
        now,
        Input::Timeout,
        &mut open,
        &mut sent,
        &mut compiles,
        &mut executions,
    );
    assert!(open.is_empty(), "connections left open: {open:?}");
});
