//! Answers sent in pieces ([`Input::Streamed`]): framing, order, backpressure from the
//! connection, and what a failure after the head does.

use super::*;
use crate::response::stream::Piece;

fn start(body: &'static str) -> Piece {
    Piece::Start(Response {
        status: 200,
        headers: vec![("X-A".to_owned(), Bytes::from_static(b"1"))],
        body: Bytes::from_static(body.as_bytes()),
    })
}

fn more(body: &'static str) -> Piece {
    Piece::More(Bytes::from_static(body.as_bytes()))
}

impl Harness {
    /// Ends the slice that is out with a piece of the task's answer.
    fn stream_out(&mut self, piece: Piece) -> JobId {
        let job = self.out.take().expect("a slice is out");
        self.input(Input::Streamed {
            job,
            ran: self.yield_ran,
            piece,
        });
        job
    }

    /// Ends the task whose slice is out with `result`.
    fn end_out(&mut self, result: Result<Response, GuestFailure>) {
        let job = self.out.take().expect("a slice is out");
        self.tasks.remove(&job).unwrap();
        assert!(self.ended.insert(job), "a task ended twice");
        self.input(Input::Executed {
            job,
            result,
            ran: self.finish_ran,
        });
    }
}

fn last(body: &'static str) -> Result<Response, GuestFailure> {
    Ok(Response {
        status: 200,
        headers: vec![],
        body: Bytes::from_static(body.as_bytes()),
    })
}

fn streaming() -> (Harness, ConnId) {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &get("/s/1"));
    h.compile_all();
    (h, c)
}

#[test]
fn pieces_go_out_as_chunks_while_the_task_runs_on() {
    let (mut h, c) = streaming();
    let job = h.stream_out(start("ab"));
    let text = h.text(c);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n"));
    assert!(text.ends_with("\r\n\r\n2\r\nab"), "{text:?}");
    assert_eq!(h.out, Some(job), "the task runs again at once");
    h.stream_out(more("cde"));
    assert!(h.text(c).ends_with("2\r\nab\r\n3\r\ncde"));
    h.yield_out();
    h.end_out(last("f"));
    let text = h.text(c);
    assert!(
        text.ends_with("2\r\nab\r\n3\r\ncde\r\n1\r\nf\r\n0\r\n\r\n"),
        "{text:?}"
    );
    assert_eq!(h.statuses(c), vec![200]);
    assert_eq!(h.responded.len(), 1);
    assert_eq!(h.responded[0].bytes, text.len());
    assert_eq!(h.responded[0].status, 200);
    assert_eq!(h.server.stats().responses_by_class[1], 1);
    // Kept alive: the next request is answered as usual.
    assert!(!h.closed.contains(&c));
    h.send(c, &get("/s/2"));
    h.finish();
    assert_eq!(h.statuses(c), vec![200, 200]);
}

#[test]
fn a_slow_reader_holds_its_task_not_the_server() {
    let (mut h, c) = streaming();
    h.input(Input::Unsent {
        conn: c,
        bytes: MAX_UNSENT + 1,
    });
    let job = h.stream_out(start("ab"));
    assert_eq!(h.out, None, "held while its bytes wait");
    assert_eq!(h.server.running(), 1, "it keeps its slot");
    // Another client is served meanwhile.
    let other = h.connect(2);
    h.send(other, &get("/s/2"));
    h.finish();
    assert_eq!(h.statuses(other), vec![200]);
    // Written: the task runs again.
    h.input(Input::Unsent { conn: c, bytes: 0 });
    assert_eq!(h.out, Some(job));
    h.end_out(last(""));
    assert!(h.text(c).ends_with("2\r\nab\r\n0\r\n\r\n"));
}

#[test]
fn a_held_task_still_has_its_deadline_and_its_client() {
    let limits = ServiceLimits {
        deadline: Duration::from_secs(5),
        ..ServiceLimits::default()
    };
    let mut h = Harness::new(config()).with_service("s", limits);
    let c = h.connect(1);
    h.send(c, &get("/s/1"));
    h.compile_all();
    h.input(Input::Unsent {
        conn: c,
        bytes: MAX_UNSENT + 1,
    });
    let job = h.stream_out(start("ab"));
    h.advance(Duration::from_secs(6));
    assert_eq!(h.cancelled, vec![job]);
    assert!(
        h.closed.contains(&c),
        "cut short: the head is out, a 504 cannot follow"
    );
    assert!(!h.text(c).contains("504"));
    assert_eq!(h.server.running(), 0);
    // A client that leaves while its task is held cancels it too.
    let c = h.connect(2);
    h.send(c, &get("/s/2"));
    h.input(Input::Unsent {
        conn: c,
        bytes: MAX_UNSENT + 1,
    });
    let job = h.stream_out(start("ab"));
    h.input(Input::Disconnected { conn: c });
    assert_eq!(h.cancelled.last(), Some(&job));
    assert_eq!(h.server.running(), 0);
    // Both answers are reported, cut short, for the access log and the metrics.
    let reports: Vec<_> = h
        .responded
        .iter()
        .map(|r| (r.status, r.cut_short))
        .collect();
    assert_eq!(reports, [(200, true), (200, true)]);
}

#[test]
fn a_failure_after_the_head_cuts_the_answer_short() {
    let (mut h, c) = streaming();
    h.stream_out(start("ab"));
    h.end_out(Err(GuestFailure::Trap("unreachable".to_owned())));
    let text = h.text(c);
    assert!(h.closed.contains(&c));
    assert!(text.ends_with("2\r\nab"), "no last chunk: {text:?}");
    assert_eq!(h.statuses(c), vec![200]);
    assert_eq!(h.responded.len(), 1);
}

#[test]
fn a_declared_length_not_met_closes_the_connection() {
    let (mut h, c) = streaming();
    h.stream_out(Piece::Start(Response {
        status: 200,
        headers: vec![("Content-Length".to_owned(), Bytes::from_static(b"10"))],
        body: Bytes::from_static(b"abc"),
    }));
    assert!(h.text(c).contains("Content-Length: 10\r\n"));
    h.end_out(last("de"));
    assert!(h.text(c).ends_with("\r\n\r\nabcde"));
    assert!(h.closed.contains(&c));
}

#[test]
fn pieces_wait_for_the_answers_before_them() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, &format!("{}{}", get("/s/1"), get("/s/2")));
    h.compile_all();
    // The first request's task waits on a call; the second's streams meanwhile.
    let first = h.out.take().unwrap();
    h.input(Input::Waiting {
        job: first,
        ran: SLICE,
    });
    assert!(h.out.is_some_and(|j| j != first));
    h.stream_out(start("ab"));
    assert_eq!(h.text(c), "", "nothing jumps the queue");
    h.yield_out();
    h.input(Input::Woken { job: first });
    while h.out != Some(first) {
        h.yield_out();
    }
    h.finish();
    let text = h.text(c);
    assert!(
        text.ends_with("2\r\nab"),
        "its pieces follow at once: {text:?}"
    );
    h.end_out(last("c"));
    assert_eq!(h.statuses(c), vec![200, 200]);
    assert!(h.text(c).ends_with("2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"));
}

#[test]
fn an_http10_client_gets_the_body_to_the_close() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, "GET /s/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    h.compile_all();
    h.stream_out(start("ab"));
    h.end_out(last("c"));
    let text = h.text(c);
    assert!(text.contains("Connection: close\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\nabc"));
    assert!(h.closed.contains(&c));
}

#[test]
fn a_head_request_gets_the_head_only() {
    let mut h = Harness::new(config()).with_service("s", ServiceLimits::default());
    let c = h.connect(1);
    h.send(c, "HEAD /s/1 HTTP/1.1\r\nHost: t\r\n\r\n");
    h.compile_all();
    h.stream_out(start("ab"));
    h.stream_out(more("cd"));
    h.end_out(last("e"));
    let text = h.text(c);
    assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    assert!(
        !text.contains("ab") && !text.contains("\r\n0\r\n"),
        "{text:?}"
    );
    assert!(!h.closed.contains(&c));
}

/// One response read off a connection's bytes: its status and body, or `None` when the
/// bytes end before it does.
fn read_response(wire: &[u8]) -> Option<(u16, Vec<u8>, usize)> {
    let end = wire.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&wire[..end]).unwrap();
    let status = head[9..12].parse().unwrap();
    let field = |name: &str| {
        head.split("\r\n")
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    if field("Transfer-Encoding:") == Some("chunked") {
        let (mut at, mut body) = (end, Vec::new());
        loop {
            let line = wire[at..].windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&wire[at..at + line]).unwrap(), 16)
                    .unwrap();
            at += line + 2;
            if wire.len() < at + size + 2 {
                return None;
            }
            assert_eq!(&wire[at + size..at + size + 2], b"\r\n");
            body.extend_from_slice(&wire[at..at + size]);
            at += size + 2;
            if size == 0 {
                return Some((status, body, at));
            }
        }
    }
    let len: usize = field("Content-Length:").map_or(0, |v| v.parse().unwrap());
    (wire.len() >= end + len).then(|| (status, wire[end..end + len].to_vec(), end + len))
}

/// What the fake guest of `job` writes as its `i`th piece.
fn piece_text(job: JobId, i: usize) -> String {
    format!("<{}.{i}>", job.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Pipelined requests on a few connections, whose tasks yield, stream pieces, finish or
    /// fail at random while the connections' unwritten bytes go over and under the bound:
    /// every answer arrives whole and in order, with the body its guest wrote, or the
    /// connection closes with the one that failed cut short; no task is lost or run twice
    /// (the harness and the core's own invariants check as they go).
    #[test]
    fn streamed_answers_arrive_whole_in_order_or_cut_short(
        requests in proptest::collection::vec(0u64..3, 1..24),
        steps in proptest::collection::vec((0u8..8, 0u64..3), 1..200),
    ) {
        let mut config = config();
        config.max_running = 4;
        let mut h = Harness::new(config).with_service("s", ServiceLimits::default());
        let conns: Vec<ConnId> = (0..3).map(|i| h.connect(i)).collect();
        let mut asked: [Vec<String>; 3] = Default::default();
        for (i, c) in requests.iter().enumerate() {
            let target = format!("/s/{i}");
            h.send(conns[*c as usize], &get(&target));
            asked[*c as usize].push(target);
        }
        h.compile_all();
        // Per task: pieces sent so far (`None` before its head).
        let mut sent: BTreeMap<JobId, usize> = BTreeMap::new();
        // Per request target: the answer's status and body.
        let mut expected: BTreeMap<String, (u16, String)> = BTreeMap::new();
        let mut step = |h: &mut Harness, action: u8, arg: u64| {
            match action {
                // The driver's backlog on a connection crosses the bound, either way.
                0 => h.input(Input::Unsent { conn: conns[arg as usize], bytes: MAX_UNSENT + 1 }),
                1 => h.input(Input::Unsent { conn: conns[arg as usize], bytes: 0 }),
                _ if h.out.is_none() => {}
                2 => { h.yield_out(); }
                3 | 4 => {
                    let job = h.out.unwrap();
                    let n = sent.entry(job).or_insert(0);
                    let text = Bytes::from(piece_text(job, *n));
                    let piece = if *n == 0 {
                        Piece::Start(Response { status: 200, headers: vec![], body: text })
                    } else {
                        Piece::More(text)
                    };
                    *n += 1;
                    h.stream_out(piece);
                }
                5 if arg == 0 => {
                    let job = h.out.unwrap();
                    let target = h.tasks[&job].request.request.target.clone();
                    // Before its head, a failure is answered (500); after, it cuts short.
                    if !sent.contains_key(&job) {
                        let body = GuestFailure::Trap("boom".to_owned()).to_response().body;
                        let body = String::from_utf8(body.to_vec()).unwrap();
                        expected.insert(target, (500, body));
                    }
                    h.end_out(Err(GuestFailure::Trap("boom".to_owned())));
                }
                _ => {
                    let job = h.out.unwrap();
                    let target = h.tasks[&job].request.request.target.clone();
                    let n = sent.get(&job).copied().unwrap_or(0);
                    let mut body: String = (0..n).map(|i| piece_text(job, i)).collect();
                    body.push_str("end");
                    expected.insert(target, (200, body));
                    h.end_out(last("end"));
                }
            }
        };
        for (action, arg) in steps {
            step(&mut h, action, arg);
        }
        // Drain: every backlog written, every task finished.
        for c in &conns {
            step(&mut h, 1, c.0);
        }
        while h.out.is_some() {
            step(&mut h, 7, 0);
        }
        prop_assert_eq!(h.server.running(), 0);
        prop_assert!(h.tasks.is_empty());
        for (i, c) in conns.iter().enumerate() {
            let wire = h.sent.get(c).cloned().unwrap_or_default();
            let mut at = 0;
            let mut answers = 0;
            while let Some((status, body, len)) = read_response(&wire[at..]) {
                let target = &asked[i][answers];
                let body = String::from_utf8(body).unwrap();
                prop_assert_eq!(Some(&(status, body)), expected.get(target), "{}", target);
                at += len;
                answers += 1;
            }
            if h.closed.contains(c) {
                // Only an answer cut short closes these keep-alive connections: the
                // answers before it came whole, and none after it.
                prop_assert!(answers < asked[i].len());
                prop_assert!(!expected.contains_key(&asked[i][answers]));
            } else {
                prop_assert_eq!(at, wire.len(), "bytes after the last whole answer");
                prop_assert_eq!(answers, asked[i].len());
            }
        }
    }
}
