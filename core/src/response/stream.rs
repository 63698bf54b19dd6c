//! A response sent in pieces, as a guest writes it: the head once the guest set it, then
//! the body framed as it arrives. The body is delimited by the guest's own
//! `Content-Length` when it declared one, else by chunked transfer coding, else (a client
//! that speaks only HTTP/1.0) by the connection's close.
//!
//! Framing costs no copy of the guest's bytes: each piece goes out as a short framing
//! prefix and the bytes as they were given.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Length, Response, put_head, status_has_body};

/// A piece of a response a guest sends before it finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Piece {
    /// The status and headers, and the body's first bytes (its `body`, often empty).
    Start(Response),
    /// More of the body.
    More(Bytes),
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Chunked transfer coding.
    Chunked,
    /// The length the guest declared.
    Declared(u64),
    /// The connection's close.
    UntilClose,
    /// No body goes out: a HEAD request, or a status that carries none.
    Dropped,
}

/// One response going out in pieces: what its framing needs to remember.
#[derive(Debug)]
pub struct Stream {
    framing: Framing,
    /// Body bytes the guest wrote so far, sent or not.
    written: u64,
    /// A chunk went out: its closing CRLF goes before the next size line.
    chunk_open: bool,
    /// The status sent.
    status: u16,
    /// Bytes queued for the connection so far, head and framing included.
    bytes: usize,
}

/// What [`Stream::start`] gives: the stream, then bytes to send.
#[derive(Debug)]
pub struct Started {
    /// The stream, for the pieces that follow.
    pub stream: Stream,
    /// The head, with the first piece's framing.
    pub head: Bytes,
    /// The first body bytes.
    pub body: Bytes,
    /// The connection must close after this response (its body runs to the close).
    pub close: bool,
}

impl Stream {
    /// Starts a response whose head is `response` (and whose first body bytes are its
    /// body). `head_only` is for HEAD requests; `chunked` says the client takes chunked
    /// coding (HTTP/1.1); `close`, that the connection closes after this response anyway.
    pub fn start(
        response: &Response,
        head_only: bool,
        chunked: bool,
        close: bool,
        date: &[u8],
    ) -> Started {
        let declared = declared_length(response);
        let (length, framing) = if !status_has_body(response.status) {
            (Length::None, Framing::Dropped)
        } else if response.status == 205 {
            // Framed like any response but empty (RFC 9110 section 15.3.6).
            (Length::Bytes(0), Framing::Dropped)
        } else if let Some(n) = declared {
            (Length::Bytes(n), Framing::Declared(n))
        } else if chunked {
            (Length::Chunked, Framing::Chunked)
        } else {
            (Length::None, Framing::UntilClose)
        };
        let framing = if head_only { Framing::Dropped } else { framing };
        let close = close || framing == Framing::UntilClose;
        let mut stream = Stream {
            framing,
            written: 0,
            chunk_open: false,
            status: response.status,
            bytes: 0,
        };
        let (prefix, body) = stream.more(response.body.clone());
        let mut head = put_head(response, length, close, date, prefix.len());
        head.put_slice(&prefix);
        let head = head.freeze();
        stream.bytes = head.len() + body.len();
        Started {
            stream,
            head,
            body,
            close,
        }
    }

    /// Frames more body bytes: a prefix and the bytes to send after it (either may be
    /// empty). Bytes past a declared length, or of a response without a body, are
    /// dropped.
    pub fn more(&mut self, data: Bytes) -> (Bytes, Bytes) {
        self.written += data.len() as u64;
        let out = match self.framing {
            Framing::Dropped => (Bytes::new(), Bytes::new()),
            Framing::UntilClose => (Bytes::new(), data),
            Framing::Declared(n) => {
                let before = self.written - data.len() as u64;
                let room = usize::try_from(n.saturating_sub(before)).unwrap_or(usize::MAX);
                (Bytes::new(), data.slice(..data.len().min(room)))
            }
            Framing::Chunked if data.is_empty() => (Bytes::new(), Bytes::new()),
            Framing::Chunked => {
                let mut prefix = BytesMut::with_capacity(20);
                if self.chunk_open {
                    prefix.put_slice(b"\r\n");
                }
                put_hex(&mut prefix, data.len() as u64);
                prefix.put_slice(b"\r\n");
                self.chunk_open = true;
                (prefix.freeze(), data)
            }
        };
        self.bytes += out.0.len() + out.1.len();
        out
    }

    /// Ends the body after its last bytes, `data`: what to send, in order, and whether the
    /// body is what its head promised. When it is not (fewer or more bytes than the guest
    /// declared), the connection must close, so that the client sees it cut short.
    pub fn end(&mut self, data: Bytes) -> ([(Bytes, Bytes); 2], bool) {
        let last = self.more(data);
        let (ending, whole): (&'static [u8], bool) = match self.framing {
            Framing::Chunked if self.chunk_open => (b"\r\n0\r\n\r\n", true),
            Framing::Chunked => (b"0\r\n\r\n", true),
            Framing::Declared(n) => (b"", self.written == n),
            Framing::UntilClose | Framing::Dropped => (b"", true),
        };
        self.bytes += ending.len();
        ([last, (Bytes::from_static(ending), Bytes::new())], whole)
    }

    /// The status sent.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Bytes queued for the connection so far, head and framing included.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The `Content-Length` a guest set, when it set exactly one (or several that agree)
/// that is a decimal number.
fn declared_length(response: &Response) -> Option<u64> {
    let mut found = None;
    for (name, value) in &response.headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = value.trim_ascii();
        if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

fn put_hex(buf: &mut BytesMut, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = DIGITS[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &'static [u8]) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            body: Bytes::from_static(body),
        }
    }

    /// Sends `first`, then `more`, then `last`: everything on the wire, and whether the
    /// body was whole.
    fn wire(
        r: &Response,
        head_only: bool,
        chunked: bool,
        more: &[&'static [u8]],
        last: &'static [u8],
    ) -> (String, bool, bool, usize) {
        let started = Stream::start(r, head_only, chunked, false, b"");
        let mut stream = started.stream;
        let mut out = [started.head, started.body].concat();
        for piece in more {
            let (a, b) = stream.more(Bytes::from_static(piece));
            out.extend_from_slice(&a);
            out.extend_from_slice(&b);
        }
        let (pieces, whole) = stream.end(Bytes::from_static(last));
        for (a, b) in pieces {
            out.extend_from_slice(&a);
            out.extend_from_slice(&b);
        }
        assert_eq!(stream.bytes(), out.len(), "bytes counts what went out");
        (
            String::from_utf8(out).unwrap(),
            whole,
            started.close,
            stream.bytes(),
        )
    }

    fn body_of(wire: &str) -> &str {
        &wire[wire.find("\r\n\r\n").unwrap() + 4..]
    }

    #[test]
    fn pieces_go_out_as_chunks_and_end_with_the_last_chunk() {
        let r = response(200, &[("X-A", "1")], b"hello");
        let (w, whole, close, _) = wire(&r, false, true, &[b"", b", world of many bytes"], b"!");
        assert!(whole && !close);
        assert!(w.starts_with("HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n"));
        assert!(!w.contains("Content-Length"));
        assert_eq!(
            body_of(&w),
            "5\r\nhello\r\n15\r\n, world of many bytes\r\n1\r\n!\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn an_empty_stream_is_one_last_chunk() {
        let (w, whole, _, _) = wire(&response(200, &[], b""), false, true, &[], b"");
        assert!(whole);
        assert_eq!(body_of(&w), "0\r\n\r\n");
    }

    #[test]
    fn a_declared_length_is_kept_and_checked() {
        let r = response(200, &[("content-length", " 11 ")], b"hello");
        let (w, whole, close, _) = wire(&r, false, true, &[b" wor"], b"ld");
        assert!(whole && !close);
        assert!(w.contains("Content-Length: 11\r\n"), "{w:?}");
        assert!(!w.contains("chunked"));
        assert_eq!(body_of(&w), "hello world");
        // Short: the caller must close. Long: cut at the length, and close.
        let (_, whole, _, _) = wire(&r, false, true, &[], b"");
        assert!(!whole);
        let (w, whole, _, _) = wire(&r, false, true, &[b" world"], b" and more");
        assert!(!whole);
        assert_eq!(body_of(&w), "hello world");
    }

    #[test]
    fn a_length_that_is_not_one_number_means_chunks() {
        for value in ["12, 12", "-1", "0x10", "", "99999999999999999999"] {
            let r = response(200, &[("Content-Length", value)], b"ab");
            let (w, whole, _, _) = wire(&r, false, true, &[], b"");
            assert!(whole, "{value:?}");
            assert!(w.contains("chunked"), "{value:?}: {w:?}");
        }
        let r = response(
            200,
            &[("Content-Length", "2"), ("content-length", "3")],
            b"ab",
        );
        assert!(wire(&r, false, true, &[], b"").0.contains("chunked"));
        let r = response(
            200,
            &[("Content-Length", "2"), ("content-length", "2")],
            b"ab",
        );
        assert!(
            wire(&r, false, true, &[], b"")
                .0
                .contains("Content-Length: 2\r\n")
        );
    }

    #[test]
    fn an_http10_client_reads_to_the_close() {
        let (w, whole, close, _) = wire(&response(200, &[], b"a"), false, false, &[b"b"], b"c");
        assert!(whole && close);
        assert!(w.contains("Connection: close\r\n"));
        assert!(!w.contains("chunked") && !w.contains("Content-Length"));
        assert_eq!(body_of(&w), "abc");
    }

    #[test]
    fn head_requests_and_bodiless_statuses_send_no_body() {
        let (w, whole, close, _) = wire(&response(200, &[], b"a"), true, true, &[b"b"], b"c");
        assert!(whole && !close);
        assert!(w.contains("Transfer-Encoding: chunked\r\n"), "{w:?}");
        assert_eq!(body_of(&w), "");
        for status in [204, 304] {
            let (w, _, close, _) = wire(&response(status, &[], b"a"), false, false, &[b"b"], b"c");
            assert!(!close, "{status}");
            assert!(
                !w.contains("chunked") && !w.contains("Content-Length"),
                "{w:?}"
            );
            assert_eq!(body_of(&w), "");
        }
        let (w, _, _, _) = wire(&response(205, &[], b"a"), false, true, &[], b"c");
        assert!(w.contains("Content-Length: 0\r\n"));
        assert_eq!(body_of(&w), "");
    }

    #[test]
    fn sizes_are_lower_case_hex() {
        let mut buf = BytesMut::new();
        for (n, hex) in [
            (0, "0"),
            (10, "a"),
            (255, "ff"),
            (4096, "1000"),
            (u64::MAX, "ffffffffffffffff"),
        ] {
            buf.clear();
            put_hex(&mut buf, n);
            assert_eq!(&buf[..], hex.as_bytes());
        }
    }
}
