//! HTTP/1.1 request framing: bytes in, requests out.
//!
//! [`RequestParser`] is fed whatever the socket produced, split anywhere, and yields
//! [`ParseEvent`]s. It never does I/O and never blocks. Bodies are collected whole (WAGI
//! hands the guest its whole body on stdin), unless the caller, told of a head whose body
//! is still on its way, asks for the body in pieces ([`RequestParser::stream_body`]): the
//! same requests come out either way, however the bytes were split.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Limits on what a client may send, applied while framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingLimits {
    /// Largest request line plus header section, in bytes.
    pub max_head_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Largest request body, in bytes (after removing chunked framing).
    pub max_body_bytes: usize,
}

impl Default for FramingLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// HTTP protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: close after the response unless the client asked for keep-alive.
    Http10,
    /// HTTP/1.1: keep-alive unless the client asked to close.
    Http11,
}

impl Version {
    /// The protocol name as written in a request line (`SERVER_PROTOCOL` in CGI).
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// One header field as received. Names keep the client's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name, a valid token.
    pub name: String,
    /// Field value, without surrounding whitespace.
    pub value: Bytes,
}

/// A complete request: head and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token, as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Path and query in origin form (`/shop/cart?id=3`); absolute-form targets are reduced to this.
    pub target: String,
    /// Protocol version.
    pub version: Version,
    /// Header fields in the order received.
    pub headers: Vec<Header>,
    /// Body with any chunked framing removed.
    pub body: Bytes,
    /// Whether the connection may stay open after this request, by the version's rules.
    pub keep_alive: bool,
}

impl Request {
    /// First value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| &h.value)
    }

    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query part of the target, without the `?`; empty when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// Whether this is a `HEAD` request, whose response carries no body.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// What the parser produced from the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseEvent {
    /// The client sent `Expect: 100-continue` and waits before sending its body.
    ContinueExpected,
    /// A request's head (its `body` empty), when its body has not all arrived with it.
    /// Parsing on gives the whole [`ParseEvent::Request`] once the body is in; after
    /// [`RequestParser::stream_body`] the body comes as [`ParseEvent::Body`] pieces and a
    /// [`ParseEvent::BodyEnd`] instead.
    Head(Request),
    /// A piece of the body of a request whose body streams.
    Body(Bytes),
    /// The end of the body of a request whose body streams.
    BodyEnd,
    /// A complete request.
    Request(Request),
}

/// Why a request could not be framed. After any of these the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The bytes are not a well-formed HTTP/1.x request.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request line and headers exceed the head size limit.
    #[error("request header section too large")]
    HeadTooLarge,
    /// More header fields than the limit allows.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The body exceeds the body size limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// A transfer coding other than `chunked` was used.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// The request uses an HTTP version other than 1.0 or 1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
}

impl FramingError {
    /// The response status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            FramingError::Malformed(_) => 400,
            FramingError::HeadTooLarge | FramingError::TooManyHeaders => 431,
            FramingError::BodyTooLarge => 413,
            FramingError::UnsupportedTransferCoding => 501,
            FramingError::UnsupportedVersion => 505,
        }
    }
}

/// Longest chunk-size line we accept (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 1024;

#[derive(Debug)]
enum State {
    Head,
    /// Collecting a Content-Length body.
    Fixed {
        request: Request,
        remaining: usize,
        flow: Flow,
    },
    /// Collecting a chunked body.
    Chunked {
        request: Request,
        body: BytesMut,
        chunk: ChunkState,
        flow: Flow,
        /// Body bytes handed out as pieces so far (they count toward the limit).
        taken: usize,
    },
    /// A streamed body is complete: [`ParseEvent::BodyEnd`] is next.
    BodyDone,
    /// A framing error was returned; nothing more is parsed.
    Failed,
}

/// Where a body being collected stands with its request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The head was not handed out: the whole request will be.
    Whole,
    /// The head was handed out ([`ParseEvent::Head`]); the whole request follows.
    HeadOut,
    /// The body goes out in pieces ([`RequestParser::stream_body`]).
    Streaming,
}

#[derive(Debug, Clone, Copy)]
enum ChunkState {
    Size,
    Data(usize),
    DataEnd,
    Trailers { seen: usize },
}

/// Header slots parsed into a stack array; a larger `max_headers` uses the heap.
const STACK_HEADERS: usize = 64;

/// Incremental HTTP/1.x request parser for one connection.
#[derive(Debug)]
pub struct RequestParser {
    limits: FramingLimits,
    buf: BytesMut,
    state: State,
}

impl RequestParser {
    /// A parser with the given limits.
    pub fn new(limits: FramingLimits) -> Self {
        Self {
            limits,
            buf: BytesMut::new(),
            state: State::Head,
        }
    }

    /// Appends bytes received from the client.
    pub fn push(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Failed) {
            self.buf.extend_from_slice(data);
        }
    }

    /// After [`ParseEvent::Head`]: the body comes as [`ParseEvent::Body`] pieces (what
    /// arrived so far first) and a [`ParseEvent::BodyEnd`], not as part of a whole
    /// [`ParseEvent::Request`]. The body's size limit still holds. Does nothing otherwise.
    pub fn stream_body(&mut self) {
        if let State::Fixed { flow, .. } | State::Chunked { flow, .. } = &mut self.state {
            *flow = Flow::Streaming;
        }
    }

    /// Whether bytes of an unfinished request are buffered (the client is mid-request).
    pub fn is_mid_request(&self) -> bool {
        !self.buf.is_empty() || !matches!(self.state, State::Head)
    }

    /// Bytes received but not yet consumed by a complete request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next event the buffered bytes allow, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the parser stays failed and returns `Ok(None)` forever.
    pub fn next_event(&mut self) -> Result<Option<ParseEvent>, FramingError> {
        let result = self.advance();
        if result.is_err() {
            self.state = State::Failed;
            self.buf = BytesMut::new();
        }
        result
    }

    fn advance(&mut self) -> Result<Option<ParseEvent>, FramingError> {
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Failed => return Ok(None),
                State::Head => {
                    let Some((request, body)) = self.parse_head()? else {
                        self.state = State::Head;
                        return Ok(None);
                    };
                    let expects = expects_continue(&request)?;
                    match body {
                        BodyKind::Fixed(0) => {
                            self.state = State::Head;
                            return Ok(Some(ParseEvent::Request(request)));
                        }
                        BodyKind::Fixed(len) => {
                            self.state = State::Fixed {
                                request,
                                remaining: len,
                                flow: Flow::Whole,
                            };
                        }
                        BodyKind::Chunked => {
                            self.state = State::Chunked {
                                request,
                                body: BytesMut::new(),
                                chunk: ChunkState::Size,
                                flow: Flow::Whole,
                                taken: 0,
                            };
                        }
                    }
                    // Only ask for the body if the client has not started sending it.
                    if expects && self.buf.is_empty() {
                        return Ok(Some(ParseEvent::ContinueExpected));
                    }
                }
                State::BodyDone => {
                    self.state = State::Head;
                    return Ok(Some(ParseEvent::BodyEnd));
                }
                State::Fixed {
                    mut request,
                    remaining,
                    flow,
                } => {
                    if flow == Flow::Streaming {
                        let n = remaining.min(self.buf.len());
                        self.state = match remaining - n {
                            0 => State::BodyDone,
                            left => State::Fixed {
                                request,
                                remaining: left,
                                flow,
                            },
                        };
                        if n == 0 {
                            return Ok(None);
                        }
                        return Ok(Some(ParseEvent::Body(self.buf.split_to(n).freeze())));
                    }
                    if self.buf.len() < remaining {
                        let head = (flow == Flow::Whole).then(|| request.clone());
                        self.state = State::Fixed {
                            request,
                            remaining,
                            flow: Flow::HeadOut,
                        };
                        return Ok(head.map(ParseEvent::Head));
                    }
                    request.body = self.buf.split_to(remaining).freeze();
                    self.state = State::Head;
                    return Ok(Some(ParseEvent::Request(request)));
                }
                State::Chunked {
                    mut request,
                    mut body,
                    chunk,
                    flow,
                    taken,
                } => {
                    let next = self.parse_chunked(&mut body, chunk, taken)?;
                    if flow == Flow::Streaming {
                        let piece = body.split().freeze();
                        self.state = match next {
                            Some(chunk) => State::Chunked {
                                request,
                                body,
                                chunk,
                                flow,
                                taken: taken + piece.len(),
                            },
                            None => State::BodyDone,
                        };
                        if !piece.is_empty() {
                            return Ok(Some(ParseEvent::Body(piece)));
                        }
                        if next.is_some() {
                            return Ok(None);
                        }
                        continue;
                    }
                    match next {
                        Some(chunk) => {
                            let head = (flow == Flow::Whole).then(|| request.clone());
                            self.state = State::Chunked {
                                request,
                                body,
                                chunk,
                                flow: Flow::HeadOut,
                                taken,
                            };
                            return Ok(head.map(ParseEvent::Head));
                        }
                        None => {
                            request.body = body.freeze();
                            self.state = State::Head;
                            return Ok(Some(ParseEvent::Request(request)));
                        }
                    }
                }
            }
        }
    }

    /// Parses a request head if one is complete. Skips empty lines before a request line,
    /// as RFC 9112 section 2.2 asks of servers.
    fn parse_head(&mut self) -> Result<Option<(Request, BodyKind)>, FramingError> {
        while self.buf.starts_with(b"\r\n") || self.buf.starts_with(b"\n") {
            let n = if self.buf[0] == b'\r' { 2 } else { 1 };
            let _ = self.buf.split_to(n);
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        // On the stack for the usual limit: this runs once per request.
        let mut on_stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        let mut on_heap = Vec::new();
        let headers = if self.limits.max_headers <= STACK_HEADERS {
            &mut on_stack[..self.limits.max_headers]
        } else {
            on_heap.resize(self.limits.max_headers, httparse::EMPTY_HEADER);
            &mut on_heap[..]
        };
        let mut parsed = httparse::Request::new(headers);
        let window = &self.buf[..self.buf.len().min(self.limits.max_head_bytes)];
        let head_len = match parsed.parse(window) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() >= self.limits.max_head_bytes {
                    return Err(FramingError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooManyHeaders),
            Err(httparse::Error::Version) => return Err(FramingError::UnsupportedVersion),
            Err(e) => return Err(FramingError::Malformed(httparse_reason(e))),
        };
        let version = match parsed.version {
            Some(0) => Version::Http10,
            Some(1) => Version::Http11,
            _ => return Err(FramingError::UnsupportedVersion),
        };
        let method = parsed.method.ok_or(FramingError::Malformed("no method"))?;
        let target = origin_form(parsed.path.ok_or(FramingError::Malformed("no target"))?)?;
        let mut fields = Vec::with_capacity(parsed.headers.len());
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut has_host = false;
        let mut connection_close = false;
        let mut connection_keep_alive = false;
        for h in parsed.headers.iter() {
            let value = trim(h.value);
            if h.name.eq_ignore_ascii_case("content-length") {
                let len = parse_content_length(value)?;
                if content_length.is_some_and(|prev| prev != len) {
                    return Err(FramingError::Malformed("conflicting Content-Length"));
                }
                content_length = Some(len);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // HTTP/1.0 has no transfer codings: such a message's framing is faulty
                // and the connection must close after it (RFC 9112 section 6.1).
                if version == Version::Http10 {
                    return Err(FramingError::Malformed(
                        "Transfer-Encoding in an HTTP/1.0 request",
                    ));
                }
                chunked = parse_transfer_encoding(value, chunked)?;
            } else if h.name.eq_ignore_ascii_case("host") {
                if has_host {
                    return Err(FramingError::Malformed("more than one Host header"));
                }
                has_host = true;
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(|&b| b == b',') {
                    let token = trim(token);
                    connection_close |= token.eq_ignore_ascii_case(b"close");
                    connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            fields.push(Header {
                name: h.name.to_owned(),
                value: Bytes::copy_from_slice(value),
            });
        }
        if version == Version::Http11 && !has_host {
            return Err(FramingError::Malformed("missing Host header"));
        }
        // A message with both is a request-smuggling vector (RFC 9112 section 6.1): refuse it.
        if chunked && content_length.is_some() {
            return Err(FramingError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let body = if chunked {
            BodyKind::Chunked
        } else {
            let len = content_length.unwrap_or(0);
            if len > self.limits.max_body_bytes {
                return Err(FramingError::BodyTooLarge);
            }
            BodyKind::Fixed(len)
        };
        let keep_alive = match version {
            Version::Http11 => !connection_close,
            Version::Http10 => connection_keep_alive && !connection_close,
        };
        let request = Request {
            method: method.to_owned(),
            target,
            version,
            headers: fields,
            body: Bytes::new(),
            keep_alive,
        };
        let _ = self.buf.split_to(head_len);
        Ok(Some((request, body)))
    }

    /// Consumes chunked body bytes. Returns the state to wait in, or `None` when the body
    /// and its trailers are complete.
    fn parse_chunked(
        &mut self,
        body: &mut BytesMut,
        mut chunk: ChunkState,
        taken: usize,
    ) -> Result<Option<ChunkState>, FramingError> {
        loop {
            match chunk {
                ChunkState::Size => {
                    let window = &self.buf[..self.buf.len().min(MAX_CHUNK_LINE)];
                    match parse_chunk_line(window)? {
                        Some((used, size)) => {
                            let _ = self.buf.split_to(used);
                            if size == 0 {
                                chunk = ChunkState::Trailers { seen: 0 };
                                continue;
                            }
                            let size = usize::try_from(size)
                                .ok()
                                .filter(|s| {
                                    (taken + body.len()).saturating_add(*s)
                                        <= self.limits.max_body_bytes
                                })
                                .ok_or(FramingError::BodyTooLarge)?;
                            chunk = ChunkState::Data(size);
                        }
                        None => {
                            if self.buf.len() >= MAX_CHUNK_LINE {
                                return Err(FramingError::Malformed("chunk size line too long"));
                            }
                            return Ok(Some(chunk));
                        }
                    }
                }
                ChunkState::Data(remaining) => {
                    let n = remaining.min(self.buf.len());
                    body.extend_from_slice(&self.buf.split_to(n));
                    if n < remaining {
                        return Ok(Some(ChunkState::Data(remaining - n)));
                    }
                    chunk = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => {
                    // CRLF only: a bare LF here is read differently by other parsers on
                    // the path, which is how requests are smuggled (RFC 9112 section 7.1).
                    if self.buf.starts_with(b"\r\n") {
                        let _ = self.buf.split_to(2);
                    } else if self.buf.is_empty() || self.buf[..] == b"\r"[..] {
                        return Ok(Some(chunk));
                    } else {
                        return Err(FramingError::Malformed("chunk data not followed by CRLF"));
                    }
                    chunk = ChunkState::Size;
                }
                ChunkState::Trailers { seen } => {
                    // Trailer fields are read and dropped: WAGI has nowhere to put them.
                    let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                        if seen + self.buf.len() > self.limits.max_head_bytes {
                            return Err(FramingError::HeadTooLarge);
                        }
                        return Ok(Some(chunk));
                    };
                    let line = self.buf.split_to(end + 1);
                    let seen = seen + line.len();
                    if seen > self.limits.max_head_bytes {
                        return Err(FramingError::HeadTooLarge);
                    }
                    let Some(field) = line.strip_suffix(b"\r\n") else {
                        return Err(FramingError::Malformed("trailer line not ended by CRLF"));
                    };
                    if field.is_empty() {
                        return Ok(None);
                    }
                    check_trailer_field(field)?;
                    chunk = ChunkState::Trailers { seen };
                }
            }
        }
    }
}

/// Parses a complete chunk-size line, strictly as RFC 9112 section 7.1 writes it:
/// `1*HEXDIG *( BWS ";" BWS name [ BWS "=" BWS value ] ) CRLF`, names tokens and values
/// tokens or quoted strings. Returns the bytes the line takes and the size, `None` if
/// the line is not complete yet. Leniency here (a bare LF, an empty size) is what lets a
/// front end and this server disagree on where a request ends.
fn parse_chunk_line(buf: &[u8]) -> Result<Option<(usize, u64)>, FramingError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(FramingError::Malformed("chunk size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(FramingError::Malformed("invalid chunk size"));
    }
    let size = line[..digits]
        .iter()
        .try_fold(0u64, |acc, &d| {
            let v = (d as char).to_digit(16)?;
            acc.checked_mul(16)?.checked_add(u64::from(v))
        })
        .ok_or(FramingError::Malformed("chunk size out of range"))?;
    let mut rest = &line[digits..];
    while !rest.is_empty() {
        rest = skip_bws(rest);
        rest = rest
            .strip_prefix(b";")
            .ok_or(FramingError::Malformed("invalid chunk extension"))?;
        rest = skip_token(skip_bws(rest))?;
        let after_name = skip_bws(rest);
        if let Some(value) = after_name.strip_prefix(b"=") {
            let value = skip_bws(value);
            rest = if value.first() == Some(&b'"') {
                skip_quoted_string(value)?
            } else {
                skip_token(value)?
            };
        }
    }
    Ok(Some((lf + 1, size)))
}

/// Checks a trailer field line (without its CRLF) is `token ":" value`; its content is
/// dropped, but a line no parser agrees on must not pass.
fn check_trailer_field(field: &[u8]) -> Result<(), FramingError> {
    let bad = FramingError::Malformed("invalid trailer field");
    let colon = field.iter().position(|&b| b == b':').ok_or(bad.clone())?;
    let name_ok = colon > 0 && field[..colon].iter().copied().all(is_tchar);
    let value_ok = field[colon + 1..]
        .iter()
        .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f));
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(bad)
    }
}

/// `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_bws(v: &[u8]) -> &[u8] {
    let n = v.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &v[n..]
}

/// Skips one token (at least one `tchar`).
fn skip_token(v: &[u8]) -> Result<&[u8], FramingError> {
    let n = v.iter().take_while(|&&b| is_tchar(b)).count();
    if n == 0 {
        return Err(FramingError::Malformed("invalid chunk extension"));
    }
    Ok(&v[n..])
}

/// Skips a quoted string that starts `v`: `"` then text or `\`-escaped octets, then `"`.
fn skip_quoted_string(v: &[u8]) -> Result<&[u8], FramingError> {
    let bad = FramingError::Malformed("invalid chunk extension");
    let text = |b: u8| b == b'\t' || (b >= b' ' && b != 0x7f);
    let mut i = 1;
    while let Some(&b) = v.get(i) {
        match b {
            b'"' => return Ok(&v[i + 1..]),
            b'\\' if v.get(i + 1).is_some_and(|&e| text(e)) => i += 2,
            b if b != b'\\' && text(b) => i += 1,
            _ => return Err(bad),
        }
    }
    Err(bad)
}

#[derive(Debug, Clone, Copy)]
enum BodyKind {
    Fixed(usize),
    Chunked,
}

fn expects_continue(request: &Request) -> Result<bool, FramingError> {
    match request.header("expect") {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case(b"100-continue") => {
            Ok(request.version == Version::Http11)
        }
        // RFC 9110 allows 417 here; 400 keeps the error set small and is equally clear.
        Some(_) => Err(FramingError::Malformed("unsupported Expect value")),
    }
}

fn parse_content_length(value: &[u8]) -> Result<usize, FramingError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(FramingError::Malformed("invalid Content-Length"));
    }
    value
        .iter()
        .try_fold(0usize, |acc, &d| {
            acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .ok_or(FramingError::BodyTooLarge)
}

/// Returns whether the body is chunked after this Transfer-Encoding field. Only a lone
/// `chunked` coding is supported; anything else is 501, and `chunked` twice or an empty field
/// is malformed.
fn parse_transfer_encoding(value: &[u8], already_chunked: bool) -> Result<bool, FramingError> {
    let mut chunked = already_chunked;
    let mut codings = 0;
    for coding in value.split(|&b| b == b',') {
        let coding = trim(coding);
        if coding.is_empty() {
            continue;
        }
        codings += 1;
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(FramingError::UnsupportedTransferCoding);
        }
        if chunked {
            return Err(FramingError::Malformed("chunked applied more than once"));
        }
        chunked = true;
    }
    // An empty field still says "not Content-Length framed" to some parsers: refuse it.
    if codings == 0 {
        return Err(FramingError::Malformed("empty Transfer-Encoding"));
    }
    Ok(chunked)
}

/// Reduces a request target to origin form (`/path?query`).
fn origin_form(target: &str) -> Result<String, FramingError> {
    if target.starts_with('/') {
        return Ok(target.to_owned());
    }
    // Absolute form (`http://host/path`), which servers must accept (RFC 9112 section 3.2.2).
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(FramingError::Malformed("request target is not a path"));
    };
    Ok(match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => rest[i..].to_owned(),
        Some(i) => format!("/{}", &rest[i..]),
        None => "/".to_owned(),
    })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        _ => "invalid request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8], limits: FramingLimits) -> Result<Vec<ParseEvent>, FramingError> {
        let mut p = RequestParser::new(limits);
        p.push(input);
        let mut out = Vec::new();
        while let Some(ev) = p.next_event()? {
            out.push(ev);
        }
        Ok(out)
    }

    fn requests(input: &[u8]) -> Vec<Request> {
        parse_all(input, FramingLimits::default())
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                ParseEvent::Request(r) => Some(r),
                ParseEvent::ContinueExpected | ParseEvent::Head(_) => None,
                ParseEvent::Body(_) | ParseEvent::BodyEnd => panic!("not streaming: {e:?}"),
            })
            .collect()
    }

    fn error(input: &[u8]) -> FramingError {
        parse_all(input, FramingLimits::default()).unwrap_err()
    }

    /// Feeds `input` split at every pair of points and checks the result equals a whole feed.
    fn assert_split_invariant(input: &[u8]) {
        let whole = feed(&[input], false);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let parts = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(feed(&parts, false), whole, "split at {i},{j}");
                assert_eq!(feed(&parts, true), whole, "split at {i},{j}, streamed");
            }
        }
    }

    #[test]
    fn simple_get() {
        let r = requests(b"GET /shop/cart?id=3 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].method, "GET");
        assert_eq!(r[0].path(), "/shop/cart");
        assert_eq!(r[0].query(), "id=3");
        assert!(r[0].keep_alive);
        assert!(r[0].body.is_empty());
    }

    #[test]
    fn every_split_of_pipelined_requests_gives_the_same_requests() {
        assert_split_invariant(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n\
              GET /c HTTP/1.0\r\n\r\n",
        );
    }

    #[test]
    fn every_split_of_a_bad_request_gives_the_same_error() {
        assert_split_invariant(b"GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_split_invariant(
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        );
    }

    #[test]
    fn chunked_body_is_reassembled() {
        let r = requests(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        assert_eq!(&r[0].body[..], b"hello world");
    }

    #[test]
    fn keep_alive_rules() {
        let r = requests(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r[0].keep_alive);
        let r = requests(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r[0].keep_alive);
        let r = requests(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(!r[0].keep_alive);
        let r = requests(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, Close\r\n\r\n");
        assert!(!r[0].keep_alive);
    }

    #[test]
    fn expect_continue_is_reported_before_the_body() {
        let mut p = RequestParser::new(FramingLimits::default());
        p.push(b"PUT /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(p.next_event(), Ok(Some(ParseEvent::ContinueExpected)));
        assert!(matches!(p.next_event(), Ok(Some(ParseEvent::Head(h))) if h.target == "/x"));
        assert_eq!(p.next_event(), Ok(None));
        p.push(b"ok");
        let Ok(Some(ParseEvent::Request(r))) = p.next_event() else {
            panic!("expected a request")
        };
        assert_eq!(&r.body[..], b"ok");
    }

    #[test]
    fn absolute_form_is_reduced_to_origin_form() {
        let r = requests(b"GET http://example.com:8080/shop?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r[0].target, "/shop?x=1");
        let r = requests(b"GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r[0].target, "/");
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let r = requests(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn errors_map_to_their_status() {
        assert_eq!(error(b"GARBAGE\r\n\r\n").status(), 400);
        assert_eq!(
            error(b"GET / HTTP/1.1\r\n\r\n").status(),
            400,
            "missing Host"
        );
        assert_eq!(
            error(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n").status(),
            400
        );
        assert_eq!(
            error(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .status(),
            400
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n").status(),
            400
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .status(),
            501
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n").status(),
            413
        );
        assert_eq!(error(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").status(), 505);
        assert_eq!(
            error(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n").status(),
            400
        );
    }

    #[test]
    fn head_and_header_count_limits() {
        let limits = FramingLimits {
            max_head_bytes: 64,
            max_headers: 2,
            max_body_bytes: 8,
        };
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100));
        assert_eq!(
            parse_all(long.as_bytes(), limits),
            Err(FramingError::HeadTooLarge)
        );
        let unfinished = format!("GET /{}", "a".repeat(100));
        assert_eq!(
            parse_all(unfinished.as_bytes(), limits),
            Err(FramingError::HeadTooLarge)
        );
        assert_eq!(
            parse_all(b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n", limits),
            Err(FramingError::TooManyHeaders)
        );
        assert_eq!(
            parse_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n",
                limits
            ),
            Err(FramingError::BodyTooLarge)
        );
    }

    fn chunked(body: &str) -> Vec<u8> {
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
            .into_bytes()
    }

    #[test]
    fn lenient_chunk_lines_are_refused() {
        for body in [
            // A bare LF inside a chunk extension: another parser may end the line there.
            "2;a\nXX\r\n0\r\n\r\n",
            // An empty chunk-size line.
            "\r\n2\r\nXX\r\n0\r\n\r\n",
            // A bare LF ending the size line.
            "2\nXX\r\n0\r\n\r\n",
            // A bare LF after chunk data.
            "2\r\nXX\n0\r\n\r\n",
            // Whitespace, a bare CR or junk where the grammar has none.
            "2 \r\nXX\r\n0\r\n\r\n",
            " 2\r\nXX\r\n0\r\n\r\n",
            "2\r;a\r\nXX\r\n0\r\n\r\n",
            "2;\r\nXX\r\n0\r\n\r\n",
            "2;a=\r\nXX\r\n0\r\n\r\n",
            "2;a=\"x\r\nXX\r\n0\r\n\r\n",
            "2x\r\nXX\r\n0\r\n\r\n",
            // Sizes that overflow 64 bits.
            "10000000000000000\r\n",
            // Trailers: bare LF endings and lines that are no field.
            "0\r\n\n",
            "0\r\nX-T: 1\n\r\n",
            "0\r\nnot a field\r\n\r\n",
        ] {
            let input = chunked(body);
            assert_eq!(error(&input).status(), 400, "{body:?}");
            assert_split_invariant(&input);
        }
    }

    #[test]
    fn chunk_extensions_in_the_grammar_are_accepted() {
        let r = requests(&chunked(
            "2;a\r\nXX\r\n3 ; b = c ;d=\"q \\\" ;\"\r\nYYY\r\n000;z\r\nX-T: 1\r\n\r\n",
        ));
        assert_eq!(&r[0].body[..], b"XXYYY");
        let r = requests(&chunked("A\r\n0123456789\r\n0\r\n\r\n"));
        assert_eq!(r[0].body.len(), 10);
    }

    #[test]
    fn transfer_encoding_on_http_1_0_is_faulty_framing() {
        for te in ["chunked", "gzip", ""] {
            let input = format!("POST / HTTP/1.0\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
            assert_eq!(error(input.as_bytes()).status(), 400, "{te:?}");
        }
        let input =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(error(input).status(), 400);
    }

    #[test]
    fn parser_stays_failed_after_an_error() {
        let mut p = RequestParser::new(FramingLimits::default());
        p.push(b"BAD\r\n\r\n");
        assert!(p.next_event().is_err());
        p.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(p.next_event(), Ok(None));
    }

    /// The requests `parts` frame, fed one after another. With `stream`, each body that
    /// is not in with its head is taken as pieces ([`RequestParser::stream_body`]) and put
    /// back together: the same requests must come out.
    fn feed(parts: &[&[u8]], stream: bool) -> (Vec<Request>, Option<FramingError>) {
        let mut p = RequestParser::new(FramingLimits::default());
        let mut out = Vec::new();
        let mut streaming: Option<(Request, Vec<u8>)> = None;
        for part in parts {
            p.push(part);
            loop {
                match p.next_event() {
                    Ok(Some(ParseEvent::Request(r))) => out.push(r),
                    Ok(Some(ParseEvent::ContinueExpected)) => {}
                    Ok(Some(ParseEvent::Head(head))) => {
                        if stream {
                            p.stream_body();
                            streaming = Some((head, Vec::new()));
                        }
                    }
                    Ok(Some(ParseEvent::Body(piece))) => {
                        assert!(!piece.is_empty(), "an empty piece");
                        streaming
                            .as_mut()
                            .expect("a head first")
                            .1
                            .extend_from_slice(&piece);
                    }
                    Ok(Some(ParseEvent::BodyEnd)) => {
                        let (mut head, body) = streaming.take().expect("a head first");
                        head.body = body.into();
                        out.push(head);
                    }
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn request_text() -> impl Strategy<Value = String> {
        let chunked = "[a-z]{1,20}".prop_map(|b| {
            format!("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n", b.len())
        });
        let fixed = "[a-z]{0,20}".prop_map(|b| {
            format!(
                "PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )
        });
        let get = "/[a-z/?=&]{0,20}"
            .prop_map(|p| format!("GET {p} HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"));
        prop_oneof![
            chunked,
            fixed,
            get,
            Just("GET / HTTP/1.0\r\n\r\n".to_owned()),
            Just("BAD\r\n\r\n".to_owned())
        ]
    }

    proptest! {
        /// Pipelined requests split anywhere frame exactly as when fed whole.
        #[test]
        fn framing_is_split_invariant(
            texts in proptest::collection::vec(request_text(), 1..5),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let data = texts.concat().into_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            points.sort_unstable();
            let mut parts = Vec::new();
            let mut last = 0;
            for p in points {
                parts.push(&data[last..p]);
                last = p;
            }
            parts.push(&data[last..]);
            let whole = feed(&[&data], false);
            prop_assert_eq!(&feed(&parts, false), &whole);
            prop_assert_eq!(&feed(&parts, true), &whole);
        }
    }
}
