//! Connections: framing requests off the bytes, answering them in order, and the timers of
//! idle and slow connections.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::{ConnId, JobId, LazyTimer, MAX_UNSENT, Output, Responded, Server, Timer};
use crate::http::{ParseEvent, RequestParser};
use crate::response::stream::{Piece, Stream};
use crate::response::{self, Response};
use crate::route::ServiceName;

/// One response owed on a connection, in request order.
pub(super) struct Slot {
    pub(super) seq: u64,
    pub(super) job: Option<JobId>,
    /// The service the request was routed to, for [`Responded`].
    pub(super) service: Option<ServiceName>,
    /// When the request was parsed.
    arrived: Instant,
    head_only: bool,
    /// The client takes chunked coding (HTTP/1.1).
    chunked: bool,
    pub(super) close: bool,
    /// The whole answer (or the end of one sent in pieces), to send once it is first.
    pub(super) ready: Option<(Bytes, Bytes)>,
    /// The answer a guest is sending in pieces, once it began.
    pub(super) stream: Option<Stream>,
    /// Pieces of it not sent yet: an answer before it is still owed.
    pub(super) pending: VecDeque<(Bytes, Bytes)>,
}

impl Slot {
    /// The report of this slot's answer, counted in `stats`.
    fn responded(
        &mut self,
        conn: ConnId,
        (status, bytes): (u16, usize),
        now: Instant,
        cut_short: bool,
        stats: &mut super::Stats,
    ) -> Output {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        stats.responses_by_class[class] += 1;
        Output::Responded(Responded {
            conn,
            service: self.service.take(),
            job: self.job,
            status,
            bytes,
            elapsed: now.saturating_duration_since(self.arrived),
            cut_short,
        })
    }
}

pub(super) struct Conn {
    parser: RequestParser,
    pub(super) remote: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) pipeline: VecDeque<Slot>,
    pub(super) next_seq: u64,
    /// No more requests are parsed: a request asked to close, framing failed, or the peer
    /// stopped sending.
    pub(super) stop_parsing: bool,
    /// When the current idle period or partial request began.
    since: Instant,
    was_mid_request: bool,
    /// When the connection times out as things stand (`None` while a response is owed).
    deadline: Option<Instant>,
    pub(super) timer: LazyTimer,
    /// Bytes the driver has yet to write, as last reported ([`super::Input::Unsent`]).
    pub(super) unsent: usize,
    /// The request whose body is being parsed streams it ([`ParseEvent::Head`]).
    pub(super) body_to: Option<BodyTo>,
}

/// Where the pieces of a streaming request body go.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyTo {
    /// The job, or `None` when the request was answered without one (refused): its body
    /// is read and dropped.
    job: Option<JobId>,
    /// Bytes its service's limit still allows.
    room: usize,
}

impl Conn {
    /// Whether more is parsed (and so read): not while the pipeline is full, while more
    /// than [`MAX_UNSENT`] bytes wait to be written, or once the connection takes no more
    /// requests; but a body that streams is read whatever else holds the connection (its
    /// task waits for it, and its service's limit bounds it).
    pub(super) fn takes_more(&self, max_pipelined: usize) -> bool {
        self.body_to.is_some()
            || (!self.stop_parsing
                && self.pipeline.len() < max_pipelined
                && self.unsent <= MAX_UNSENT)
    }

    pub(super) fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        self.pipeline.iter_mut().find(|s| s.seq == seq)
    }

    /// Adds the slot for the next response; returns its sequence number.
    pub(super) fn push_slot(
        &mut self,
        now: Instant,
        head_only: bool,
        chunked: bool,
        close: bool,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pipeline.push_back(Slot {
            seq,
            job: None,
            service: None,
            arrived: now,
            head_only,
            chunked,
            close,
            ready: None,
            stream: None,
            pending: VecDeque::new(),
        });
        seq
    }
}

impl Server {
    pub(super) fn on_connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        remote: SocketAddr,
        local: SocketAddr,
    ) {
        if self.shutting_down {
            self.outputs.push_back(Output::Close { conn });
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                parser: RequestParser::new(self.config.framing),
                remote,
                local,
                pipeline: VecDeque::new(),
                next_seq: 0,
                stop_parsing: false,
                since: now,
                was_mid_request: false,
                deadline: None,
                timer: LazyTimer::default(),
                unsent: 0,
                body_to: None,
            },
        );
        self.arm_conn_timer(conn);
    }

    pub(super) fn on_received(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.stop_parsing && c.body_to.is_none() {
            return;
        }
        c.parser.push(data);
        self.parse(now, conn);
        self.arm_conn_timer(conn);
    }

    /// Parses as many requests as the pipeline has room for.
    fn parse(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if !c.takes_more(self.config.max_pipelined) {
                break;
            }
            match c.parser.next_event() {
                Ok(None) => break,
                Ok(Some(ParseEvent::ContinueExpected)) => {
                    // Only when nothing is owed earlier, or the 100 would jump the queue.
                    if c.pipeline.is_empty() {
                        self.outputs.push_back(Output::Transmit {
                            conn,
                            head: Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
                            body: Bytes::new(),
                        });
                    }
                }
                Ok(Some(ParseEvent::Request(request))) => {
                    let seq = self.new_slot(now, conn, &request);
                    self.admit(now, conn, seq, request, false);
                }
                // Parsed on whole unless its service reads its body as it arrives.
                Ok(Some(ParseEvent::Head(head))) => {
                    let Some(room) = self.streams_body(&head) else {
                        continue;
                    };
                    let seq = self.new_slot(now, conn, &head);
                    let job = self.admit(now, conn, seq, head, true);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.parser.stream_body();
                        c.body_to = Some(BodyTo { job, room });
                    }
                }
                Ok(Some(ParseEvent::Body(data))) => {
                    let Some(to) = c.body_to.as_mut() else {
                        continue;
                    };
                    match to.room.checked_sub(data.len()) {
                        Some(room) => {
                            to.room = room;
                            if let Some(job) = to.job {
                                self.relay_body(job, crate::guest::BodyPiece::Data(data));
                            }
                        }
                        None => {
                            self.body_broke(now, conn);
                            break;
                        }
                    }
                }
                Ok(Some(ParseEvent::BodyEnd)) => {
                    if let Some(job) = c.body_to.take().and_then(|to| to.job) {
                        self.relay_body(job, crate::guest::BodyPiece::End);
                    }
                }
                Err(_) if c.body_to.is_some() => {
                    self.body_broke(now, conn);
                    break;
                }
                Err(e) => {
                    c.stop_parsing = true;
                    let seq = c.push_slot(now, false, false, true);
                    self.respond(now, conn, seq, Response::text(e.status(), &e.to_string()));
                    break;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            let mid = c.parser.is_mid_request();
            if mid && !c.was_mid_request {
                c.since = now;
            }
            c.was_mid_request = mid;
        }
    }

    /// The slot for a request parsed on `conn` (whole, or its head when its body streams).
    fn new_slot(&mut self, now: Instant, conn: ConnId, request: &crate::http::Request) -> u64 {
        self.stats.requests += 1;
        let close = !request.keep_alive || self.shutting_down;
        let c = self
            .conns
            .get_mut(&conn)
            .expect("parsing a known connection");
        if close {
            c.stop_parsing = true;
        }
        let chunked = request.version != crate::http::Version::Http10;
        c.push_slot(now, request.is_head(), chunked, close)
    }

    /// A streaming body broke off (over its service's limit, or badly framed): its task's
    /// next read fails, and the connection closes once the task answered (at once if it
    /// has), since where the next request would begin is unknown.
    fn body_broke(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.stop_parsing = true;
        let job = c.body_to.take().and_then(|to| to.job);
        // No request is parsed after a streaming one until its body ended: the last slot,
        // if any, is its.
        match c.pipeline.back_mut() {
            Some(last) => last.close = true,
            None => return self.close(now, conn),
        }
        if let Some(job) = job {
            self.relay_body(job, crate::guest::BodyPiece::Broken);
        }
    }

    /// The driver's unsent bytes for `conn` changed: over [`MAX_UNSENT`] the connection
    /// is held (no parsing, no idle timer: the driver's write timeout governs); back under,
    /// the requests that waited are parsed.
    pub(super) fn on_unsent(&mut self, now: Instant, conn: ConnId, bytes: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let was_held = c.unsent > MAX_UNSENT;
        c.unsent = bytes;
        if was_held && bytes <= MAX_UNSENT {
            // Held, it was not idle: its idle time starts now.
            c.since = now;
            let jobs: Vec<JobId> = c.pipeline.iter().filter_map(|s| s.job).collect();
            for job in jobs {
                self.release(job);
            }
            self.parse(now, conn);
        }
        self.arm_conn_timer(conn);
    }

    /// The client stopped sending. As nginx does, a client that closes while a guest
    /// still owes it a response is taken to be gone: its tasks are cancelled (a running one
    /// at the end of its slice) and the connection closed unanswered, rather than a guest
    /// running to its deadline for nobody. Otherwise what is owed is answered, then closed.
    pub(super) fn on_read_closed(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let guest_owed = c.pipeline.iter().any(|slot| {
            slot.ready.is_none() && slot.job.is_some_and(|job| self.jobs.contains_key(&job))
        });
        if guest_owed {
            self.stats.abandoned += 1;
            self.close(now, conn);
            return;
        }
        c.stop_parsing = true;
        if c.pipeline.is_empty() {
            self.close(now, conn);
        } else if let Some(last) = c.pipeline.back_mut() {
            last.close = true;
        }
    }

    pub(super) fn on_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            let c = self.conns.get_mut(&conn).expect("listed above");
            if c.pipeline.is_empty() && !c.parser.is_mid_request() {
                self.close(now, conn);
            } else if let Some(last) = c.pipeline.back_mut() {
                c.stop_parsing = true;
                last.close = true;
            }
            // A connection mid-request gets its answer with `Connection: close`.
        }
    }

    /// Fills the response slot `seq` of `conn` and queues what is ready, in order. Does
    /// not parse further requests: see [`Self::answer`].
    pub(super) fn respond(&mut self, now: Instant, conn: ConnId, seq: u64, response: Response) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(slot) = c.slot_mut(seq) else {
            return;
        };
        let (head, body) = response::serialize(&response, slot.head_only, slot.close, &self.date);
        let sizes = (response.status, head.len() + body.len());
        let report = slot.responded(conn, sizes, now, false, &mut self.stats);
        self.outputs.push_back(report);
        slot.ready = Some((head, body));
        self.send_ready(now, conn);
    }

    /// Sends what is ready, in request order: the pieces of the first answer, and the
    /// answers that are whole, up to the first one still owed. Closes the connection
    /// after an answer that closes it, or once nothing more will come.
    fn send_ready(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut close = false;
        while let Some(front) = c.pipeline.front_mut() {
            for (head, body) in front.pending.drain(..) {
                self.outputs
                    .push_back(Output::Transmit { conn, head, body });
            }
            if front.ready.is_none() {
                break;
            }
            let slot = c.pipeline.pop_front().expect("checked front");
            let (head, body) = slot.ready.expect("checked ready");
            if !head.is_empty() || !body.is_empty() {
                self.outputs
                    .push_back(Output::Transmit { conn, head, body });
            }
            if slot.close {
                close = true;
                break;
            }
        }
        if !close && c.pipeline.is_empty() {
            // Once the peer stopped sending and everything owed is out, close.
            close = c.stop_parsing && !c.parser.is_mid_request();
            c.since = now;
        }
        if close {
            self.close(now, conn);
        }
    }

    /// A piece of the answer in slot `seq`, which a guest sends as it runs: framed, and
    /// sent now if the slot is first, else once the answers before it are out.
    pub(super) fn stream_piece(&mut self, now: Instant, conn: ConnId, seq: u64, piece: Piece) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(slot) = c.pipeline.iter_mut().find(|s| s.seq == seq) else {
            return;
        };
        let framed = match (piece, slot.stream.as_mut()) {
            (Piece::Start(response), None) => {
                let started = Stream::start(
                    &response,
                    slot.head_only,
                    slot.chunked,
                    slot.close,
                    &self.date,
                );
                slot.stream = Some(started.stream);
                if started.close {
                    // Its body runs to the close: nothing after it can be answered.
                    slot.close = true;
                    c.stop_parsing = true;
                }
                (started.head, started.body)
            }
            (Piece::More(bytes), Some(stream)) => stream.more(bytes),
            // A head twice, or a body before one: the engine broke its contract; the
            // answer cannot be framed, so it ends where it is.
            (Piece::Start(_), Some(_)) | (Piece::More(_), None) => {
                debug_assert!(false, "a streamed piece out of order");
                return;
            }
        };
        if !framed.0.is_empty() || !framed.1.is_empty() {
            slot.pending.push_back(framed);
        }
        self.send_ready(now, conn);
    }

    /// A task's run ended: its answer in slot `seq`, whole, or the end of the one it sent
    /// in pieces. A failure after the head went out cannot change the status any more:
    /// the connection closes, so the client sees the body cut short.
    pub(super) fn answer_task(
        &mut self,
        now: Instant,
        conn: ConnId,
        seq: u64,
        result: Result<Response, crate::GuestFailure>,
    ) {
        let streaming = self.conns.get_mut(&conn).and_then(|c| {
            let slot = c.pipeline.iter_mut().find(|s| s.seq == seq)?;
            slot.stream.is_some().then_some((&mut c.stop_parsing, slot))
        });
        let Some((stop_parsing, slot)) = streaming else {
            let response = result.unwrap_or_else(|failure| failure.to_response());
            return self.answer(now, conn, seq, response);
        };
        let stream = slot.stream.as_mut().expect("a streaming slot");
        let whole = match result {
            Ok(response) => {
                let (pieces, whole) = stream.end(response.body);
                slot.pending.extend(
                    pieces
                        .into_iter()
                        .filter(|(a, b)| !a.is_empty() || !b.is_empty()),
                );
                whole
            }
            Err(_) => false,
        };
        if !whole {
            slot.close = true;
            *stop_parsing = true;
        }
        let sizes = (stream.status(), stream.bytes());
        let report = slot.responded(conn, sizes, now, !whole, &mut self.stats);
        self.outputs.push_back(report);
        slot.ready = Some((Bytes::new(), Bytes::new()));
        self.send_ready(now, conn);
        self.parse(now, conn);
        self.arm_conn_timer(conn);
    }

    /// Responds from outside the parse loop, then parses requests that were waiting for
    /// room in the pipeline.
    pub(super) fn answer(&mut self, now: Instant, conn: ConnId, seq: u64, response: Response) {
        self.respond(now, conn, seq, response);
        self.parse(now, conn);
        self.arm_conn_timer(conn);
    }

    fn close(&mut self, now: Instant, conn: ConnId) {
        self.drop_conn(now, conn);
        self.outputs.push_back(Output::Close { conn });
    }

    /// Forgets a connection: its queued requests leave their queues, its started tasks are
    /// cancelled.
    pub(super) fn drop_conn(&mut self, now: Instant, conn: ConnId) {
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        c.timer.cancel(&mut self.timers, Timer::Conn(conn));
        // An answer that was going out in pieces ends here, cut short: it is still
        // reported, for the access log and the metrics.
        for slot in &mut c.pipeline {
            if let (None, Some(stream)) = (&slot.ready, &slot.stream) {
                let sizes = (stream.status(), stream.bytes());
                let report = slot.responded(conn, sizes, now, true, &mut self.stats);
                self.outputs.push_back(report);
            }
        }
        for job in c.pipeline.into_iter().filter_map(|slot| slot.job) {
            self.drop_job(now, job);
        }
        self.pump();
    }

    pub(super) fn arm_conn_timer(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.deadline = if !c.pipeline.is_empty() || c.unsent > MAX_UNSENT {
            None
        } else if c.parser.is_mid_request() {
            Some(super::later(c.since, self.config.request_timeout))
        } else {
            Some(super::later(c.since, self.config.keep_alive_timeout))
        };
        if let Some(deadline) = c.deadline {
            c.timer.arm(&mut self.timers, deadline, Timer::Conn(conn));
        }
    }

    pub(super) fn conn_timer(&mut self, now: Instant, conn: ConnId, at: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Busy: armed again once the response is out.
        if !c
            .timer
            .fired(&mut self.timers, at, now, c.deadline, Timer::Conn(conn))
        {
            return;
        }
        c.deadline = None;
        // A body still streaming in after its request was answered is not a request owed
        // a 408: the connection just ends.
        if c.parser.is_mid_request() && c.body_to.is_none() {
            c.stop_parsing = true;
            let seq = c.push_slot(now, false, false, true);
            self.respond(
                now,
                conn,
                seq,
                Response::text(408, "request not received in time"),
            );
        } else {
            self.close(now, conn);
        }
    }
}
