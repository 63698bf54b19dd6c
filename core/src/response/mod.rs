//! Responses and their serialisation to HTTP/1.1 bytes: whole ([`serialize`]), or in
//! pieces as a guest writes them ([`stream`]).

use bytes::{BufMut, Bytes, BytesMut};

pub mod stream;

/// A response to send: what a guest produced, or what the server says itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, 200..=599.
    pub status: u16,
    /// Header fields in order; repeated names are kept. Framing headers are ignored.
    pub headers: Vec<(String, Bytes)>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A plain-text response whose body is `message` and a newline.
    pub fn text(status: u16, message: &str) -> Self {
        let mut body = String::with_capacity(message.len() + 1);
        body.push_str(message);
        body.push('\n');
        Self {
            status,
            headers: vec![(
                "Content-Type".to_owned(),
                Bytes::from_static(b"text/plain; charset=utf-8"),
            )],
            body: Bytes::from(body),
        }
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// Headers the server owns: a guest's value for them is dropped, because they describe
/// this connection's framing, which only the server knows.
fn is_framing_header(name: &str) -> bool {
    const OWNED: [&str; 8] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "trailer",
        "te",
        "proxy-connection",
    ];
    OWNED.iter().any(|o| name.eq_ignore_ascii_case(o))
}

/// Bodies up to this size are copied into the head buffer so the response goes out in one write.
const INLINE_BODY: usize = 8 * 1024;

/// Whether a response with this status carries a body at all (RFC 9110 sections 15.2,
/// 15.3.5 and 15.4.5: 1xx, 204 and 304 never do). Bytes a guest wrote after such a head
/// would otherwise be read by the client as the start of the next response.
pub fn status_has_body(status: u16) -> bool {
    !matches!(status, 100..=199 | 204 | 304)
}

/// Serialises `response` as an HTTP/1.1 response.
///
/// Returns the head and, separately, a body that was too large to copy into it (empty
/// otherwise). `head_only` is for HEAD requests: `Content-Length` still says what a GET
/// would carry. A 1xx, 204 or 304 response gets neither a body nor a `Content-Length`
/// (a 304's length would have to be the 200's, which is not known here), and a 205 an
/// empty body, whatever the guest wrote. `date` is a preformatted IMF-fixdate; an empty one leaves `Date` out.
pub fn serialize(response: &Response, head_only: bool, close: bool, date: &[u8]) -> (Bytes, Bytes) {
    let bodiless = !status_has_body(response.status);
    // 205 is framed like any response but must be empty (RFC 9110 section 15.3.6).
    let reset = response.status == 205;
    let body: &[u8] = if bodiless || head_only || reset {
        &[]
    } else {
        &response.body
    };
    let length = if bodiless {
        Length::None
    } else {
        Length::Bytes(if reset { 0 } else { response.body.len() as u64 })
    };
    let inline = if body.len() > INLINE_BODY {
        0
    } else {
        body.len()
    };
    let mut head = put_head(response, length, close, date, inline);
    if body.len() <= INLINE_BODY {
        head.put_slice(body);
        return (head.freeze(), Bytes::new());
    }
    (head.freeze(), response.body.clone())
}

/// What a head says of its body's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// Nothing: the status carries no body, or the body runs to the connection's close.
    None,
    /// `Content-Length`.
    Bytes(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The status line and headers of `response` (the guest's framing headers dropped), with
/// room for `extra` bytes more.
pub(crate) fn put_head(
    response: &Response,
    length: Length,
    close: bool,
    date: &[u8],
    extra: usize,
) -> BytesMut {
    let mut head = BytesMut::with_capacity(
        128 + response
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + extra,
    );
    head.put_slice(b"HTTP/1.1 ");
    put_u64(&mut head, u64::from(response.status));
    head.put_u8(b' ');
    head.put_slice(reason_phrase(response.status).as_bytes());
    head.put_slice(b"\r\n");
    for (name, value) in &response.headers {
        if is_framing_header(name) {
            continue;
        }
        head.put_slice(name.as_bytes());
        head.put_slice(b": ");
        head.put_slice(value);
        head.put_slice(b"\r\n");
    }
    match length {
        Length::None => {}
        Length::Bytes(n) => {
            head.put_slice(b"Content-Length: ");
            put_u64(&mut head, n);
            head.put_slice(b"\r\n");
        }
        Length::Chunked => head.put_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if !date.is_empty() {
        head.put_slice(b"Date: ");
        head.put_slice(date);
        head.put_slice(b"\r\n");
    }
    head.put_slice(b"Server: frenezulo\r\n");
    if close {
        head.put_slice(b"Connection: close\r\n");
    }
    head.put_slice(b"\r\n");
    head
}

fn put_u64(buf: &mut BytesMut, n: u64) {
    buf.put_slice(decimal(n, &mut [0; 20]));
}

/// `n` in decimal ASCII, written into `digits` without the formatter (it runs several
/// times per request); returns the written part.
pub fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

/// Appends `n` in decimal ASCII to `out`, without the formatter.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0; 20]));
}

/// The reason phrase for a status code; "Unknown" for codes without a registered one.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 404, 1_000_000, u64::MAX] {
            let mut out = b"x=".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x={n}").into_bytes());
        }
    }

    fn whole(r: &Response, head_only: bool, close: bool) -> String {
        let (head, body) = serialize(r, head_only, close, b"Sat, 28 Nov 2026 12:00:00 GMT");
        String::from_utf8([head, body].concat()).unwrap()
    }

    #[test]
    fn serialises_status_headers_and_body() {
        let r = Response::text(404, "no such service").with_header("X-A", "1");
        assert_eq!(
            whole(&r, false, false),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-A: 1\r\n\
             Content-Length: 16\r\nDate: Sat, 28 Nov 2026 12:00:00 GMT\r\nServer: frenezulo\r\n\r\nno such service\n"
        );
    }

    #[test]
    fn head_keeps_length_and_drops_body() {
        let s = whole(&Response::text(200, "hello"), true, true);
        assert!(s.contains("Content-Length: 6\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn guest_framing_headers_are_dropped() {
        let r = Response::text(200, "x")
            .with_header("Content-Length", "999")
            .with_header("Transfer-Encoding", "chunked");
        let s = whole(&r, false, false);
        assert!(!s.contains("999"));
        assert!(!s.contains("chunked"));
        assert!(s.contains("Content-Length: 2\r\n"));
    }

    #[test]
    fn no_content_and_not_modified_carry_no_body_and_no_length() {
        for status in [204, 304] {
            // What a hostile guest writes: a body that looks like a second response.
            let r = Response {
                status,
                headers: vec![("X-A".to_owned(), Bytes::from_static(b"1"))],
                body: Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged"),
            };
            for head_only in [false, true] {
                let s = whole(&r, head_only, false);
                assert!(s.ends_with("\r\n\r\n"), "{status}: {s:?}");
                assert!(!s.contains("forged"), "{status}: {s:?}");
                assert!(!s.contains("Content-Length"), "{status}: {s:?}");
                assert!(s.contains("X-A: 1\r\n"));
            }
        }
        let big = Response {
            status: 204,
            headers: vec![],
            body: Bytes::from(vec![b'a'; INLINE_BODY + 1]),
        };
        let (_, body) = serialize(&big, false, false, b"");
        assert!(body.is_empty());
    }

    #[test]
    fn reset_content_is_sent_empty() {
        let r = Response {
            status: 205,
            headers: vec![],
            body: Bytes::from_static(b"ignored"),
        };
        let s = whole(&r, false, false);
        assert!(s.contains("Content-Length: 0\r\n"), "{s:?}");
        assert!(s.ends_with("\r\n\r\n"), "{s:?}");
    }

    #[test]
    fn head_answer_carries_no_body_even_when_large() {
        let r = Response {
            status: 200,
            headers: vec![],
            body: Bytes::from(vec![b'a'; INLINE_BODY + 1]),
        };
        let (head, body) = serialize(&r, true, false, b"");
        assert!(body.is_empty());
        let head = String::from_utf8(head.to_vec()).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", INLINE_BODY + 1)));
    }

    #[test]
    fn only_1xx_204_and_304_are_bodiless() {
        assert!(!status_has_body(100));
        assert!(!status_has_body(204));
        assert!(!status_has_body(304));
        for status in [200, 201, 206, 302, 400, 404, 500, 504] {
            assert!(status_has_body(status), "{status}");
        }
    }

    #[test]
    fn large_bodies_are_not_copied() {
        let body = Bytes::from(vec![b'a'; INLINE_BODY + 1]);
        let r = Response {
            status: 200,
            headers: vec![],
            body: body.clone(),
        };
        let (_, out) = serialize(&r, false, false, b"");
        assert_eq!(out.as_ptr(), body.as_ptr());
    }
}
