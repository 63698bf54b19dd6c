//! An open-loop HTTP/1.1 load generator for measuring latency under a fixed offered rate.
//!
//! Request `i` is due at `start + i / rate`, whether or not earlier ones were answered. It
//! goes out on the first connection with nothing in flight; when every connection is busy
//! it waits in the generator. Its latency is counted from the time it was *due*, not from
//! when it went out, so a server that stalls is charged for every request it held back
//! (coordinated omission, as in wrk2 and `oha --latency-correction`); the latency from the
//! actual send is kept too, and the gap between the two is the generator's own queueing.
//!
//! One thread, one `mio` poll, no allocation per request. Between sends closer than
//! [`SPIN_BELOW`] apart the loop polls without sleeping, because `epoll_wait` sleeps in
//! whole milliseconds: the generator then keeps its core busy, which is why it belongs on
//! a core of its own (`taskset`). Latencies are recorded in microseconds in HdrHistograms.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

pub mod response;

use response::{Body, Head, ResponseError};

/// Waits shorter than this are spent polling without sleeping.
pub const SPIN_BELOW: Duration = Duration::from_millis(2);

/// Largest latency recorded; longer ones count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Requests allowed to wait in the generator for a free connection; past it the run stops,
/// since the server is so far behind that the figures no longer describe the offered rate.
pub const MAX_BACKLOG: usize = 1 << 20;

/// What to send, how fast and for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// The bytes of one request.
    pub request: Vec<u8>,
    /// Requests per second offered.
    pub rate: f64,
    /// Connections open at once.
    pub connections: usize,
    /// Time at the start whose requests are sent but not counted.
    pub warmup: Duration,
    /// Time after the warm-up whose requests are counted.
    pub duration: Duration,
    /// How long a request may wait for its whole response (then it counts as timed out and
    /// its connection is closed).
    pub timeout: Duration,
    /// Open a new connection for each request (and send `Connection: close`).
    pub connection_per_request: bool,
}

impl Plan {
    /// The bytes of a `GET` of `path` on `host`.
    pub fn get(host: &str, path: &str, close: bool) -> Vec<u8> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n").into_bytes()
    }

    /// How many requests the whole run sends, warm-up included.
    pub fn total(&self) -> u64 {
        ((self.warmup + self.duration).as_secs_f64() * self.rate) as u64
    }

    /// When request `i` is due, from the start of the run.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The first request due after the warm-up: it and those after it are counted.
    pub fn first_counted(&self) -> u64 {
        ((self.warmup.as_secs_f64() * self.rate).ceil() as u64).min(self.total())
    }
}

/// What a run measured, over the requests due after the warm-up.
#[derive(Debug)]
pub struct Report {
    /// Requests due in the measured time (after the warm-up).
    pub due: u64,
    /// Requests answered with a whole response, by status class: 1xx to 5xx, then others.
    pub by_class: [u64; 6],
    /// Requests whose connection failed (refused, reset, closed early, unreadable answer).
    pub errors: u64,
    /// Requests not answered within [`Plan::timeout`].
    pub timeouts: u64,
    /// Latency from the time each request was due, in microseconds.
    pub corrected: Histogram<u64>,
    /// Latency from the time each request was sent, in microseconds.
    pub uncorrected: Histogram<u64>,
    /// From the first counted request's due time to the last counted answer.
    pub elapsed: Duration,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
}

impl Report {
    /// Requests answered with a whole response.
    pub fn answered(&self) -> u64 {
        self.by_class.iter().sum()
    }

    /// Requests unanswered, or never sent, when the run ended.
    pub fn unanswered(&self) -> u64 {
        self.due
            .saturating_sub(self.answered() + self.errors + self.timeouts)
    }

    /// Answers per second over the measured time.
    pub fn achieved(&self) -> f64 {
        self.answered() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct Job {
    due: Instant,
    sent: Instant,
    counted: bool,
}

/// One connection slot.
#[derive(Default)]
struct Slot {
    stream: Option<TcpStream>,
    /// The stream finished connecting.
    connected: bool,
    job: Option<Job>,
    /// Bytes of the request written.
    written: usize,
    /// Bytes received and not yet consumed (at most a head's worth).
    received: Vec<u8>,
    /// The head of the response being read, and its body bytes still to come.
    head: Option<(Head, u64)>,
}

/// Why a connection's request failed.
enum Failure {
    Io(io::Error),
    Response(ResponseError),
    ClosedEarly,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Response(e) => write!(f, "{e}"),
            Failure::ClosedEarly => write!(f, "connection closed before the whole response"),
        }
    }
}

/// Runs `plan` to the end and reports it.
pub fn run(plan: &Plan) -> io::Result<Report> {
    Run::new(plan)?.go()
}

struct Run<'a> {
    plan: &'a Plan,
    poll: Poll,
    slots: Vec<Slot>,
    /// Slots with nothing in flight.
    free: Vec<usize>,
    /// Requests waiting for a free slot, by number.
    backlog: VecDeque<u64>,
    start: Instant,
    /// Requests numbered below this are warm-up.
    first_counted: u64,
    last_answer: Instant,
    report: Report,
    scratch: Vec<u8>,
}

impl<'a> Run<'a> {
    fn new(plan: &'a Plan) -> io::Result<Self> {
        let histogram =
            || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(io::Error::other);
        let connections = plan.connections.max(1);
        let start = Instant::now();
        Ok(Run {
            plan,
            poll: Poll::new()?,
            slots: (0..connections).map(|_| Slot::default()).collect(),
            free: (0..connections).rev().collect(),
            backlog: VecDeque::new(),
            start,
            first_counted: plan.first_counted(),
            last_answer: start + plan.warmup,
            report: Report {
                due: plan.total() - plan.first_counted(),
                by_class: [0; 6],
                errors: 0,
                timeouts: 0,
                corrected: histogram()?,
                uncorrected: histogram()?,
                elapsed: Duration::ZERO,
                first_error: None,
            },
            scratch: vec![0; 64 * 1024],
        })
    }

    fn go(mut self) -> io::Result<Report> {
        let total = self.plan.total();
        let mut next = 0u64;
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = self.start;
        // After the last request is due, answers may take up to the timeout.
        let end = self.start + self.plan.warmup + self.plan.duration + self.plan.timeout;
        loop {
            let now = Instant::now();
            while next < total && self.start + self.plan.due(next) <= now {
                self.backlog.push_back(next);
                next += 1;
            }
            if self.backlog.len() > MAX_BACKLOG {
                self.fail_first(format!(
                    "stopped: over {MAX_BACKLOG} requests waiting for a connection"
                ));
                break;
            }
            while let (Some(_), Some(&slot)) = (self.backlog.front(), self.free.last()) {
                self.free.pop();
                let i = self.backlog.pop_front().expect("checked");
                self.dispatch(slot, i, now);
            }
            let in_flight = self.slots.len() - self.free.len();
            if next == total && self.backlog.is_empty() && in_flight == 0 {
                break;
            }
            if now >= end {
                break;
            }
            if now.duration_since(last_sweep) >= Duration::from_millis(1) {
                last_sweep = now;
                self.time_out(now);
            }
            let wait = if next < total {
                (self.start + self.plan.due(next)).saturating_duration_since(now)
            } else {
                Duration::from_millis(10)
            };
            let timeout = if wait >= SPIN_BELOW {
                wait - Duration::from_millis(1)
            } else {
                Duration::ZERO
            };
            self.poll.poll(&mut events, Some(timeout))?;
            for event in events.iter() {
                let slot = event.token().0;
                if event.is_writable() {
                    self.writable(slot);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.readable(slot);
                }
            }
        }
        let r = &mut self.report;
        r.elapsed = self
            .last_answer
            .saturating_duration_since(self.start + self.plan.warmup);
        Ok(self.report)
    }

    /// Starts request `i` on `slot`, connecting first if the slot has no connection.
    fn dispatch(&mut self, slot: usize, i: u64, now: Instant) {
        let s = &mut self.slots[slot];
        s.job = Some(Job {
            due: self.start + self.plan.due(i),
            sent: now,
            counted: i >= self.first_counted,
        });
        s.written = 0;
        if s.stream.is_none() {
            match TcpStream::connect(self.plan.addr) {
                Ok(mut stream) => {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(slot), interest)
                    {
                        return self.failed(slot, Failure::Io(e));
                    }
                    stream.set_nodelay(true).ok();
                    s.stream = Some(stream);
                    s.connected = false;
                }
                Err(e) => return self.failed(slot, Failure::Io(e)),
            }
            // The request goes out when the connection is writable.
            return;
        }
        self.write(slot);
    }

    fn writable(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        let Some(stream) = &s.stream else { return };
        if !s.connected {
            match (stream.take_error(), stream.peer_addr()) {
                (Ok(Some(e)) | Err(e), _) => return self.failed(slot, Failure::Io(e)),
                (Ok(None), Ok(_)) => s.connected = true,
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                (Ok(None), Err(e)) => return self.failed(slot, Failure::Io(e)),
            }
        }
        self.write(slot);
    }

    /// Writes what is left of the slot's request.
    fn write(&mut self, slot: usize) {
        let request = &self.plan.request;
        let s = &mut self.slots[slot];
        if s.job.is_none() || !s.connected {
            return;
        }
        let Some(stream) = &mut s.stream else { return };
        while s.written < request.len() {
            match stream.write(&request[s.written..]) {
                Ok(n) => s.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.failed(slot, Failure::Io(e)),
            }
        }
    }

    fn readable(&mut self, slot: usize) {
        // Out of `self` while reading, so that what was read can be taken in by `&mut self`.
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(stream) = &mut self.slots[slot].stream {
            match stream.read(&mut scratch) {
                Ok(0) => {
                    self.closed(slot);
                    break;
                }
                Ok(n) => {
                    if let Err(failure) = self.consume(slot, &scratch[..n]) {
                        self.failed(slot, failure);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed(slot, Failure::Io(e));
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Takes in bytes just read on the slot's connection.
    fn consume(&mut self, slot: usize, mut fresh: &[u8]) -> Result<(), Failure> {
        while !fresh.is_empty() {
            let s = &mut self.slots[slot];
            if s.job.is_none() {
                // Bytes nobody asked for: the server is not speaking HTTP/1.1 as expected.
                return Err(Failure::Response(ResponseError::Malformed(
                    "bytes after the response".into(),
                )));
            }
            match &mut s.head {
                None => {
                    let before = s.received.len();
                    s.received.extend_from_slice(fresh);
                    let Some(head) = response::head(&s.received).map_err(Failure::Response)? else {
                        return Ok(());
                    };
                    // What followed the head in this read.
                    fresh = &fresh[head.len - before..];
                    s.received.clear();
                    let body = match head.body {
                        Body::Length(n) => n,
                        Body::UntilClose => u64::MAX,
                    };
                    s.head = Some((head, body));
                }
                Some((_, left)) => {
                    let take = (*left).min(fresh.len() as u64);
                    *left -= take;
                    fresh = &fresh[take as usize..];
                }
            }
            if let Some((head, 0)) = self.slots[slot].head {
                self.answered(slot, head);
            }
        }
        Ok(())
    }

    /// The slot's request has its whole response.
    fn answered(&mut self, slot: usize, head: Head) {
        let now = Instant::now();
        let s = &mut self.slots[slot];
        s.head = None;
        let job = s.job.take().expect("a response answers a request");
        if job.counted {
            let class = match head.status {
                100..=599 => usize::from(head.status / 100 - 1),
                _ => 5,
            };
            self.report.by_class[class] += 1;
            let us = |d: Duration| (d.as_micros() as u64).max(1);
            self.report
                .corrected
                .saturating_record(us(now.duration_since(job.due)));
            self.report
                .uncorrected
                .saturating_record(us(now.duration_since(job.sent)));
            self.last_answer = self.last_answer.max(now);
        }
        if head.close || self.plan.connection_per_request {
            self.drop_stream(slot);
        }
        self.free.push(slot);
    }

    /// The server closed the slot's connection.
    fn closed(&mut self, slot: usize) {
        match self.slots[slot].head {
            Some((head, _)) if head.body == Body::UntilClose => {
                self.drop_stream(slot);
                self.answered(slot, head);
            }
            _ if self.slots[slot].job.is_some() => self.failed(slot, Failure::ClosedEarly),
            // An idle keep-alive connection the server let go: the next request reconnects.
            _ => self.drop_stream(slot),
        }
    }

    /// The slot's request failed: its connection is closed and the slot freed.
    fn failed(&mut self, slot: usize, failure: Failure) {
        self.drop_stream(slot);
        if let Some(job) = self.slots[slot].job.take() {
            if job.counted {
                self.report.errors += 1;
                self.fail_first(failure.to_string());
            }
            self.free.push(slot);
        }
    }

    /// Requests in flight past the timeout fail, and their connections close.
    fn time_out(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let Some(job) = self.slots[slot].job else {
                continue;
            };
            if now.duration_since(job.sent) > self.plan.timeout {
                self.drop_stream(slot);
                self.slots[slot].job = None;
                if job.counted {
                    self.report.timeouts += 1;
                    self.fail_first(format!("no whole response within {:?}", self.plan.timeout));
                }
                self.free.push(slot);
            }
        }
    }

    fn drop_stream(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if let Some(mut stream) = s.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        s.connected = false;
        s.head = None;
        s.received.clear();
    }

    fn fail_first(&mut self, why: String) {
        self.report.first_error.get_or_insert(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A server on a free loopback port; its accepting thread ends when this is dropped.
    struct Server {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            // Wakes the accepting thread so that it sees the flag.
            let _ = std::net::TcpStream::connect(self.addr);
        }
    }

    /// A server answering each request with `answer` (then closing the connection if
    /// `close`), each connection on its own thread.
    fn server(answer: &'static [u8], close: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut writer = conn.try_clone().unwrap();
                    let mut reader = io::BufReader::new(conn);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                if writer.write_all(answer).is_err() || close {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        Server { addr, stop }
    }

    fn plan(addr: SocketAddr, close: bool) -> Plan {
        Plan {
            addr,
            request: Plan::get("test", "/", close),
            rate: 400.0,
            connections: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            // Far from the work: a slow or busy machine still answers well within it.
            timeout: Duration::from_secs(60),
            connection_per_request: close,
        }
    }

    #[test]
    fn every_due_request_is_answered_and_counted_once() {
        let server = server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        for close in [false, true] {
            let plan = plan(server.addr, close);
            let report = run(&plan).unwrap();
            assert_eq!(report.first_error, None, "close {close}");
            assert_eq!(report.due, 200, "close {close}");
            assert_eq!(report.answered(), 200, "close {close}");
            assert_eq!(report.by_class[1], 200);
            assert_eq!(report.corrected.len(), 200);
            assert_eq!(report.uncorrected.len(), 200);
            assert_eq!(
                (report.errors, report.timeouts, report.unanswered()),
                (0, 0, 0)
            );
            // Latency from the due time is never below latency from the send.
            assert!(report.corrected.value_at_quantile(0.5) >= report.uncorrected.min());
        }
    }

    #[test]
    fn a_body_that_ends_with_the_connection_and_other_statuses_are_counted() {
        let server = server(b"HTTP/1.0 503 Busy\r\n\r\nbusy", true);
        let report = run(&plan(server.addr, false)).unwrap();
        assert_eq!(report.first_error, None);
        assert_eq!(report.by_class[4], 200);
    }

    #[test]
    fn a_refused_connection_is_an_error_not_a_hang() {
        // A port nothing listens on: bound, then closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let report = run(&plan(addr, false)).unwrap();
        assert_eq!(report.answered(), 0);
        assert_eq!(report.errors, 200);
        assert!(report.first_error.is_some());
    }

    #[test]
    fn requests_are_due_at_even_intervals() {
        let plan = Plan {
            rate: 1000.0,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(2),
            ..plan("127.0.0.1:1".parse().unwrap(), false)
        };
        assert_eq!(plan.total(), 3000);
        assert_eq!(plan.due(0), Duration::ZERO);
        assert_eq!(plan.due(1500), Duration::from_millis(1500));
    }
}
