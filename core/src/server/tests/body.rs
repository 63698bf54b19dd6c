//! Request bodies that stream to their task ([`GuestSetup::body_streams`]): the request
//! starts at its head, the rest follows as [`Output::RequestBody`], held while the task is
//! queued and until it reported a slice, bounded by the service's limit.

use super::*;

impl Harness {
    /// Adds a service whose guests read their body as it arrives.
    fn with_streaming_service(mut self, name: &str, limits: ServiceLimits) -> Self {
        let module = ModuleKey {
            service: ServiceName::new(name).unwrap(),
            version: self.next_version,
        };
        self.next_version += 1;
        self.input(Input::Registry(RegistryChange::Put {
            module,
            wasm: Bytes::from_static(b"wasm"),
            limits,
            setup: Arc::new(GuestSetup {
                body_streams: true,
                ..GuestSetup::default()
            }),
        }));
        self
    }

    /// The body pieces handed to `job`, data joined, and how the body ended.
    fn body_of(&self, job: JobId) -> (String, Option<BodyPiece>) {
        let mut data = String::new();
        let mut end = None;
        for (j, piece) in &self.bodies {
            if *j != job {
                continue;
            }
            assert!(end.is_none(), "a piece after the body's end: {piece:?}");
            match piece {
                BodyPiece::Data(d) => data.push_str(std::str::from_utf8(d).unwrap()),
                other => end = Some(other.clone()),
            }
        }
        (data, end)
    }
}

fn upload(path: &str, length: usize) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n")
}

fn streaming(limits: ServiceLimits) -> (Harness, ConnId) {
    let mut h = Harness::new(config())
        .with_streaming_service("up", limits)
        .with_service("whole", ServiceLimits::default());
    let c = h.connect(1);
    (h, c)
}

#[test]
fn a_streaming_request_starts_at_its_head_and_its_body_follows() {
    let (mut h, c) = streaming(ServiceLimits::default());
    h.send(c, &format!("{}abc", upload("/up", 10)));
    h.compile_all();
    let task = h.out_task();
    assert!(task.request.body_follows);
    assert_eq!(
        &task.request.request.body[..],
        b"abc",
        "what came with the head"
    );
    // Nothing goes to the task before it reported its first slice: the driver may not
    // hold it yet.
    h.send(c, "defg");
    assert!(h.bodies.is_empty());
    let job = h.yield_out();
    assert_eq!(h.body_of(job), ("defg".to_owned(), None));
    h.send(c, "hij");
    assert_eq!(h.body_of(job), ("defghij".to_owned(), Some(BodyPiece::End)));
    h.finish();
    assert_eq!(h.statuses(c), vec![200]);
    // The connection goes on with the next request.
    h.send(c, &get("/whole/x"));
    h.compile_all();
    h.finish();
    assert_eq!(h.statuses(c), vec![200, 200]);
}

#[test]
fn a_whole_service_gets_its_body_whole_and_a_complete_request_starts_whole() {
    let (mut h, c) = streaming(ServiceLimits::default());
    h.send(c, &format!("{}ab", upload("/whole", 4)));
    assert!(h.compiles.is_empty(), "admitted before its body was in");
    h.send(c, "cd");
    h.compile_all();
    let task = h.out_task();
    assert!(!task.request.body_follows);
    assert_eq!(&task.request.request.body[..], b"abcd");
    h.finish();
    // A streaming service's request whose body came with its head starts whole.
    h.send(c, &format!("{}wxyz", upload("/up", 4)));
    h.compile_all();
    let task = h.out_task();
    assert!(!task.request.body_follows);
    assert_eq!(&task.request.request.body[..], b"wxyz");
    h.finish();
    assert!(h.bodies.is_empty());
    assert_eq!(h.statuses(c), vec![200, 200]);
}

#[test]
fn a_body_that_arrives_while_its_task_is_queued_joins_its_request() {
    let limits = ServiceLimits {
        max_concurrency: 1,
        ..ServiceLimits::default()
    };
    let (mut h, c) = streaming(limits);
    let first = h.connect(2);
    h.send(first, &get("/up/first"));
    h.compile_all();
    // Queued behind the first request: its body waits in the core, counted as queued.
    h.send(c, &format!("{}ab", upload("/up", 6)));
    h.send(c, "cd");
    assert_eq!(h.server.queued(), 1);
    h.finish();
    let task = h.out_task();
    assert!(task.request.body_follows);
    assert_eq!(&task.request.request.body[..], b"abcd");
    let job = h.yield_out();
    h.send(c, "ef");
    assert_eq!(h.body_of(job), ("ef".to_owned(), Some(BodyPiece::End)));
    // Its whole body arrived while queued: it starts whole.
    let other = h.connect(3);
    h.send(first, &get("/up/again"));
    h.send(other, &format!("{}ab", upload("/up", 4)));
    h.send(other, "cd");
    h.finish();
    h.finish();
    let task = h.out_task();
    assert!(!task.request.body_follows);
    assert_eq!(&task.request.request.body[..], b"abcd");
}

#[test]
fn chunked_bodies_stream_too() {
    let (mut h, c) = streaming(ServiceLimits::default());
    h.send(
        c,
        "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    );
    h.compile_all();
    assert_eq!(&h.out_task().request.request.body[..], b"abc");
    let job = h.yield_out();
    h.send(c, "2\r\nde\r\n0\r\n\r\n");
    assert_eq!(h.body_of(job), ("de".to_owned(), Some(BodyPiece::End)));
}

#[test]
fn a_body_past_its_limit_breaks_off_and_the_connection_closes_after_the_answer() {
    let limits = ServiceLimits {
        body_bytes: 8,
        ..ServiceLimits::default()
    };
    let (mut h, c) = streaming(limits);
    // A declared length past the limit is refused whole, as for any service.
    h.send(c, &format!("{}abc", upload("/up", 9)));
    h.compile_all();
    assert!(h.out.is_none());
    h.send(c, "defghi");
    assert_eq!(h.statuses(c), vec![413]);
    // A chunked one is cut where it passes the limit: the task's read fails.
    let c = h.connect(2);
    h.send(
        c,
        "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    );
    h.compile_all();
    let job = h.yield_out();
    h.send(c, "5\r\nefghi\r\n");
    assert_eq!(h.body_of(job), (String::new(), Some(BodyPiece::Broken)));
    assert!(!h.server.wants_read(c));
    h.finish();
    assert_eq!(h.statuses(c), vec![200]);
    assert!(h.closed.contains(&c));
}

#[test]
fn a_task_answered_before_its_body_ended_leaves_the_rest_to_be_read_and_dropped() {
    let (mut h, c) = streaming(ServiceLimits::default());
    h.send(c, &format!("{}ab", upload("/up", 6)));
    h.compile_all();
    h.finish();
    assert_eq!(h.statuses(c), vec![200]);
    assert!(h.server.wants_read(c), "the rest of the body is read");
    h.send(c, "cdef");
    assert!(h.bodies.is_empty());
    h.send(c, &get("/whole/next"));
    h.compile_all();
    h.finish();
    assert_eq!(h.statuses(c), vec![200, 200]);
}

#[test]
fn a_streaming_task_cancelled_at_its_deadline_gets_no_more_body() {
    let limits = ServiceLimits {
        deadline: Duration::from_secs(1),
        ..ServiceLimits::default()
    };
    let (mut h, c) = streaming(limits);
    h.send(c, &format!("{}ab", upload("/up", 100)));
    h.compile_all();
    let job = h.yield_out();
    // Parked, waiting for the body the client is slow to send.
    assert!(h.out.is_some());
    h.out = None;
    h.input(Input::Waiting { job, ran: SLICE });
    h.advance(Duration::from_secs(2));
    assert_eq!(h.cancelled, vec![job]);
    assert_eq!(h.statuses(c), vec![504]);
    h.send(c, "more");
    assert!(h.body_of(job).0.is_empty());
}

#[test]
fn a_queued_streaming_request_counts_what_its_body_may_grow_to() {
    // Room for one queued 8-byte body: a second one waiting is shed, though neither has
    // sent a byte of it yet.
    let mut h = Harness::new(ServerConfig {
        max_queued_bytes: 8,
        ..config()
    })
    .with_streaming_service(
        "up",
        ServiceLimits {
            max_concurrency: 1,
            ..ServiceLimits::default()
        },
    );
    let (a, b, c) = (h.connect(1), h.connect(2), h.connect(3));
    h.send(a, &get("/up/running"));
    h.compile_all();
    h.send(b, &upload("/up", 8));
    h.send(c, &upload("/up", 8));
    assert_eq!(h.statuses(c), vec![503]);
    h.finish();
    assert_eq!(h.out_task().request.request.target, "/up");
}

#[test]
fn a_body_that_breaks_off_after_its_answer_closes_the_connection_and_nothing_more() {
    let limits = ServiceLimits {
        body_bytes: 8,
        ..ServiceLimits::default()
    };
    let (mut h, c) = streaming(limits);
    h.send(
        c,
        "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    );
    h.compile_all();
    h.finish();
    assert_eq!(h.statuses(c), vec![200]);
    assert!(!h.closed.contains(&c));
    h.send(c, "9\r\nefghijklm\r\n");
    assert!(h.closed.contains(&c), "closed once its body broke off");
    h.advance(Duration::from_secs(3600));
    assert_eq!(
        h.statuses(c),
        vec![200],
        "no 408 for a request already answered"
    );
}
