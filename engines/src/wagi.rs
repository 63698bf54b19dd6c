//! The host side of WAGI, shared by every engine: the CGI environment and argv a guest
//! gets, and the parsing of its stdout into a response.

use bytes::Bytes;
use frenezulo_core::response::stream::Piece;
use frenezulo_core::subroute::ROUTES_EXPORT;
use frenezulo_core::{GuestFailure, GuestRequest, Response, RunLimits};

use crate::host::{GuestIo, HostStop};

/// Most header lines a guest's CGI output may have.
pub const MAX_CGI_HEADERS: usize = 100;

/// The argv and environment for `request`, as WAGI defines them, ready for the guest, with
/// its output capped and its held outbound responses bounded by `limits`.
/// Written straight into the guest's buffers: this runs once per request.
pub fn guest_io(request: &GuestRequest, limits: &RunLimits) -> GuestIo {
    let http = &request.request;
    let headers_len: usize = http
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 8)
        .sum();
    let configured = &request.setup.env;
    let env_len: usize = configured.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut io = GuestIo::new(
        http.body.clone(),
        limits.stdout_bytes,
        640 + headers_len + 3 * http.target.len() + env_len,
    );
    // Configured values first; the publisher refuses names the CGI variables below use.
    for (key, value) in configured {
        io.push_env(key.as_bytes(), value.as_bytes());
    }
    let local = request.local;
    // WAGI's `default_host` stands in for a missing `Host` header.
    let host = http.header("host").map(|h| &h[..]).or(request
        .setup
        .default_host
        .as_deref()
        .map(str::as_bytes));
    let path_info = request.path_info.as_bytes();
    let decoded = percent_decode(path_info);
    io.push_env(b"REQUEST_METHOD", http.method.as_bytes());
    io.push_env(b"SCRIPT_NAME", request.script_name.as_bytes());
    io.push_env(b"PATH_INFO", &decoded);
    io.push_env(b"PATH_TRANSLATED", &decoded);
    io.push_env(b"X_RAW_PATH_INFO", path_info);
    io.push_env(b"QUERY_STRING", http.query().as_bytes());
    io.push_env(b"REQUEST_URI", http.target.as_bytes());
    io.begin_env(b"X_MATCHED_ROUTE");
    if request.wildcard {
        // A wildcard at the root is `/...`, its script name `/`.
        let base = request
            .script_name
            .strip_suffix('/')
            .unwrap_or(&request.script_name);
        io.env_value_part(base.as_bytes());
        io.env_value_part(b"/...");
    } else {
        io.env_value_part(request.script_name.as_bytes());
    }
    io.end_env();
    match host {
        Some(host) => {
            io.begin_env(b"X_FULL_URL");
            io.env_value_part(b"http://");
            io.env_value_part(host);
            io.env_value_part(http.target.as_bytes());
            io.end_env();
            io.push_env(b"SERVER_NAME", strip_port(host));
        }
        None => {
            io.push_env_display(b"X_FULL_URL", format_args!("http://{local}{}", http.target));
            io.push_env_ip(b"SERVER_NAME", local.ip());
        }
    }
    io.push_env_number(b"SERVER_PORT", local.port().into());
    io.push_env(b"SERVER_PROTOCOL", http.version.as_str().as_bytes());
    io.push_env(
        b"SERVER_SOFTWARE",
        concat!("frenezulo/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    io.push_env(b"GATEWAY_INTERFACE", b"CGI/1.1");
    io.push_env_number(b"CONTENT_LENGTH", http.body.len() as u64);
    io.push_env(
        b"CONTENT_TYPE",
        http.header("content-type").map_or(&[][..], |v| &v[..]),
    );
    io.push_env_ip(b"REMOTE_ADDR", request.remote.ip());
    io.push_env_ip(b"REMOTE_HOST", request.remote.ip());
    io.push_env_number(b"REMOTE_PORT", request.remote.port().into());
    io.push_env(b"AUTH_TYPE", b"");
    io.push_env(b"REMOTE_USER", b"");
    push_http_variables(&mut io, http);
    push_argv(
        &mut io,
        &request.setup.argv,
        &request.script_name,
        http.query(),
    );
    io.grant(&request.setup);
    io.http = crate::http_calls::Calls::within(limits.memory_bytes);
    // `_routes` writes route lines, not a CGI response.
    io.raw_output = &*request.entrypoint == ROUTES_EXPORT;
    io
}

/// argv from a WAGI template: `${SCRIPT_NAME}` becomes the script name, `${ARGS}` the
/// query's `&`-separated items; the result is split at spaces, as WAGI splits it.
fn push_argv(io: &mut GuestIo, template: &str, script_name: &str, query: &str) {
    let args = || query.split('&').filter(|s| !s.is_empty());
    if template == frenezulo_core::DEFAULT_ARGV {
        // Every request takes this path: no string is built.
        io.push_arg(script_name.as_bytes());
        args().for_each(|a| io.push_arg(a.as_bytes()));
        return;
    }
    let expanded = template
        .replace("${SCRIPT_NAME}", script_name)
        .replace("${ARGS}", &args().collect::<Vec<_>>().join(" "));
    for word in expanded.split(' ').filter(|w| !w.is_empty()) {
        io.push_arg(word.as_bytes());
    }
}

/// The variables [`guest_io`] sets for every request, which configured values may not name.
pub const CGI_VARIABLES: [&str; 21] = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "X_RAW_PATH_INFO",
    "QUERY_STRING",
    "REQUEST_URI",
    "X_MATCHED_ROUTE",
    "X_FULL_URL",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
    "GATEWAY_INTERFACE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "REMOTE_PORT",
    "AUTH_TYPE",
    "REMOTE_USER",
];

/// Whether `name` is a CGI variable a request sets (or may set: every `HTTP_` name, and
/// WAGI's `X_` names), so that a configured value could be mistaken for one.
pub fn is_cgi_variable(name: &str) -> bool {
    name.starts_with("HTTP_") || name.starts_with("X_") || CGI_VARIABLES.contains(&name)
}

/// `HTTP_<NAME>` variables, one per header name in order of first appearance; repeated
/// headers are joined with ", ". Content-Type and Content-Length have their own variables.
fn push_http_variables(io: &mut GuestIo, http: &frenezulo_core::Request) {
    let mut name = Vec::with_capacity(64);
    for (i, h) in http.headers.iter().enumerate() {
        let own_variable = h.name.eq_ignore_ascii_case("content-type")
            || h.name.eq_ignore_ascii_case("content-length");
        let seen = http.headers[..i]
            .iter()
            .any(|p| p.name.eq_ignore_ascii_case(&h.name));
        if own_variable || seen {
            continue;
        }
        name.clear();
        name.extend_from_slice(b"HTTP_");
        name.extend(h.name.bytes().map(|b| {
            if b == b'-' {
                b'_'
            } else {
                b.to_ascii_uppercase()
            }
        }));
        io.begin_env(&name);
        io.env_value_part(&h.value);
        for later in http.headers[i + 1..]
            .iter()
            .filter(|l| l.name.eq_ignore_ascii_case(&h.name))
        {
            io.env_value_part(b", ");
            io.env_value_part(&later.value);
        }
        io.end_env();
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        // [v6]:port
        return host
            .iter()
            .position(|&b| b == b']')
            .map_or(host, |i| &host[..=i]);
    }
    host.iter()
        .rposition(|&b| b == b':')
        .map_or(host, |i| &host[..i])
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as is.
pub fn percent_decode(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !raw.contains(&b'%') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && i + 2 < raw.len()
            && let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Why a guest's stdout is not a CGI response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CgiOutputError {
    /// The guest wrote nothing.
    #[error("no output")]
    Empty,
    /// No blank line ends the header lines: of a guest still running, more may come.
    #[error("header section is not ended by a blank line")]
    Unended,
    /// A header line has no colon.
    #[error("header line without a colon")]
    NoColon,
    /// A header name is not an HTTP token.
    #[error("invalid header name")]
    BadName,
    /// A header value holds a control character.
    #[error("control character in header value")]
    ControlCharacter,
    /// `Status` is given twice.
    #[error("more than one Status header")]
    StatusTwice,
    /// `Status` is not a code from 200 to 599.
    #[error("Status is not a code from 200 to 599")]
    BadStatus,
    /// More than [`MAX_CGI_HEADERS`] header lines.
    #[error("more than {MAX_CGI_HEADERS} header lines")]
    TooManyHeaders,
    /// None of `Content-Type`, `Location` or `Status`.
    #[error("no Content-Type, Location or Status header")]
    NotAResponse,
}

/// Parses a guest's stdout as a CGI response: header lines (LF or CRLF), a blank line,
/// then the body. `Status:` sets the status; `Location:` without it gives 302; output with
/// none of `Content-Type`, `Location`, `Status` is not a response.
pub fn parse_cgi_output(stdout: Bytes) -> Result<Response, CgiOutputError> {
    if stdout.is_empty() {
        return Err(CgiOutputError::Empty);
    }
    let mut headers = Vec::new();
    let mut status: Option<u16> = None;
    let mut has_content_type = false;
    let mut has_location = false;
    let mut pos = 0;
    let body_start = loop {
        let Some(nl) = stdout[pos..].iter().position(|&b| b == b'\n') else {
            return Err(CgiOutputError::Unended);
        };
        let mut line = &stdout[pos..pos + nl];
        pos += nl + 1;
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if line.is_empty() {
            break pos;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(CgiOutputError::NoColon);
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(CgiOutputError::BadName);
        }
        let value = trim(&line[colon + 1..]);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(CgiOutputError::ControlCharacter);
        }
        let name = std::str::from_utf8(name).expect("token bytes are ASCII");
        if name.eq_ignore_ascii_case("status") {
            if status.is_some() {
                return Err(CgiOutputError::StatusTwice);
            }
            status = Some(parse_status(value)?);
            continue;
        }
        has_content_type |= name.eq_ignore_ascii_case("content-type");
        has_location |= name.eq_ignore_ascii_case("location");
        if headers.len() == MAX_CGI_HEADERS {
            return Err(CgiOutputError::TooManyHeaders);
        }
        headers.push((name.to_owned(), stdout.slice_ref(value)));
    };
    let status = match status {
        Some(s) => s,
        None if has_location => 302,
        None if has_content_type => 200,
        None => return Err(CgiOutputError::NotAResponse),
    };
    Ok(Response {
        status,
        headers,
        body: stdout.slice(body_start..),
    })
}

fn parse_status(value: &[u8]) -> Result<u16, CgiOutputError> {
    let code = value.split(|&b| b == b' ').next().unwrap_or_default();
    let status = std::str::from_utf8(code)
        .ok()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s));
    status.ok_or(CgiOutputError::BadStatus)
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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

/// How a guest run ended, before its output is interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// `_start` returned.
    Returned,
    /// A host call stopped the guest.
    Stopped(HostStop),
    /// The engine stopped the guest: a module's start function outran its first slice.
    Interrupted,
    /// The guest trapped; the engine's description, for the log.
    Trapped(String),
    /// Instantiation failed; the engine's description, for the log.
    Instantiate(String),
}

/// The result of one guest run.
#[derive(Debug)]
pub struct RunOutput {
    /// The response, or why there is none.
    pub result: Result<Response, GuestFailure>,
    /// What the guest wrote to stderr (truncated), for the log.
    pub stderr: Vec<u8>,
}

/// The next piece of a WAGI guest's response to hand out at the end of a slice, while it
/// runs on: the CGI head parsed, with the body so far, then more of the body, when
/// [`crate::piece_due`] says so. Stdout's cap keeps counting what was handed out.
pub(crate) fn stdout_piece(io: &mut GuestIo) -> Option<Piece> {
    // Output that goes out whole never reads the clock.
    if io.raw_output
        || io.pieces.refused
        || io.stdout.is_empty()
        || !crate::piece_due(io.stdout.len(), &mut io.pieces.waiting_since)
    {
        return None;
    }
    stdout_piece_now(io)
}

/// The piece of a WAGI guest's response to hand out as it goes to sleep: all it wrote,
/// whatever its size, since nothing else would send it before it wakes.
pub(crate) fn stdout_piece_now(io: &mut GuestIo) -> Option<Piece> {
    if io.raw_output || io.pieces.refused || io.stdout.is_empty() {
        return None;
    }
    let taken = io.stdout.len();
    let out = Bytes::from(io.take_stdout());
    let piece = if io.pieces.started {
        Piece::More(out)
    } else {
        match parse_cgi_output(out.clone()) {
            // A head that ends past the first piece's worth goes out whole at the end, as
            // one that is not a head goes out as an error.
            Ok(response) if response.body.len() + crate::PIECE_BYTES >= out.len() => {
                io.pieces.started = true;
                Piece::Start(response)
            }
            // Not a head yet: keep the bytes; past a piece's worth, stop looking.
            outcome => {
                io.pieces.refused = !matches!(outcome, Err(CgiOutputError::Unended))
                    || out.len() >= crate::PIECE_BYTES;
                io.stdout = Vec::from(out);
                return None;
            }
        }
    };
    io.stdout_cap = io.stdout_cap.saturating_sub(taken);
    io.pieces.waiting_since = None;
    Some(piece)
}

/// Turns how a run ended, its captured I/O and whether a memory request was refused into
/// the engine-independent result.
pub fn finish(mut io: GuestIo, ending: Ending, memory_refused: bool) -> RunOutput {
    let result = match ending {
        // Its head went out as a piece: only the rest of the body is left.
        Ending::Returned | Ending::Stopped(HostStop::Exit(0)) if io.pieces.started => {
            Ok(Response {
                status: 200,
                headers: Vec::new(),
                body: Bytes::from(io.take_stdout()),
            })
        }
        Ending::Returned | Ending::Stopped(HostStop::Exit(0)) if io.raw_output => Ok(Response {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from(io.take_stdout()),
        }),
        Ending::Returned | Ending::Stopped(HostStop::Exit(0)) => {
            parse_cgi_output(Bytes::from(io.take_stdout()))
                .map_err(|e| GuestFailure::BadOutput(e.to_string()))
        }
        Ending::Stopped(HostStop::Exit(code)) => Err(GuestFailure::Exit(code)),
        Ending::Stopped(HostStop::StdoutFull) => Err(GuestFailure::OutputTooLarge),
        Ending::Stopped(stop @ (HostStop::NoMemory | HostStop::Waiting | HostStop::Sleeping)) => {
            Err(GuestFailure::Trap(stop.to_string()))
        }
        Ending::Interrupted => Err(GuestFailure::Timeout),
        Ending::Trapped(_) | Ending::Instantiate(_) if memory_refused => {
            Err(GuestFailure::OutOfMemory)
        }
        Ending::Trapped(why) => Err(GuestFailure::Trap(why)),
        Ending::Instantiate(why) => Err(GuestFailure::Instantiate(why)),
    };
    RunOutput {
        result,
        stderr: io.stderr().to_vec(),
    }
}

/// Caps linear memory and table growth for one instance; remembers a refusal so a trap
/// that follows can be reported as out-of-memory.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimiter {
    /// Largest linear memory, in bytes.
    pub max_bytes: usize,
    /// Whether a growth request was refused.
    pub refused: bool,
}

impl MemoryLimiter {
    /// A limiter for `max_bytes` of linear memory.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            refused: false,
        }
    }

    /// Whether a memory whose own maximum is `maximum` may grow to `desired` bytes.
    pub fn allow_memory(&mut self, desired: usize, maximum: Option<usize>) -> bool {
        self.allow(desired, self.max_bytes, maximum.unwrap_or(MEMORY32_BYTES))
    }

    /// Whether a table whose own maximum is `maximum` may grow to `desired` elements.
    pub fn allow_table(&mut self, desired: usize, maximum: Option<usize>) -> bool {
        let limit = crate::shape::MAX_TABLE_ELEMENTS;
        self.allow(desired, limit, maximum.unwrap_or(u32::MAX as usize))
    }

    /// A growth past what the memory or table itself allows fails in every engine
    /// whatever the limit, and some engines ask the limiter first and some do not: only a
    /// growth this limiter alone refuses counts as running out of memory, so that both
    /// engines report the same failure.
    fn allow(&mut self, desired: usize, limit: usize, own_maximum: usize) -> bool {
        if desired > own_maximum {
            return false;
        }
        let ok = desired <= limit;
        self.refused |= !ok;
        ok
    }
}

/// The largest a 32-bit linear memory can be: 65536 pages of 64 KiB.
const MEMORY32_BYTES: usize = 1 << 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn writing(stdout: &[u8]) -> GuestIo {
        let mut io = GuestIo::new(Bytes::new(), 1 << 20, 0);
        io.stdout.extend_from_slice(stdout);
        io
    }

    #[test]
    fn a_response_goes_out_in_pieces_once_a_piece_is_written() {
        let mut head = b"Status: 201\r\nX-A: 1\r\n\r\n".to_vec();
        head.resize(head.len() + crate::PIECE_BYTES, b'a');
        let mut io = writing(&head);
        let Some(Piece::Start(r)) = stdout_piece(&mut io) else {
            panic!("the head is due");
        };
        assert_eq!((r.status, r.body.len()), (201, crate::PIECE_BYTES));
        assert!(io.stdout.is_empty());
        assert_eq!(
            io.stdout_cap,
            (1 << 20) - head.len(),
            "what went out still counts"
        );
        assert!(stdout_piece(&mut io).is_none(), "nothing new");
        io.stdout.resize(crate::PIECE_BYTES, b'b');
        assert!(
            matches!(stdout_piece(&mut io), Some(Piece::More(m)) if m.len() == crate::PIECE_BYTES)
        );
        // The end carries the rest only.
        io.stdout.extend_from_slice(b"end");
        let out = finish(io, Ending::Returned, false);
        assert_eq!(&out.result.unwrap().body[..], b"end");
    }

    #[test]
    fn a_head_that_is_not_one_keeps_the_response_whole() {
        for bad in [&b"no colon here\n\n"[..], b"Content-Type: text/plain"] {
            let mut stdout = bad.to_vec();
            stdout.resize(bad.len() + crate::PIECE_BYTES, b'a');
            let mut io = writing(&stdout);
            assert!(stdout_piece(&mut io).is_none());
            assert_eq!(io.stdout, stdout, "kept as written");
            assert!(io.pieces.refused, "not looked at again");
            let out = finish(io, Ending::Returned, false);
            assert!(matches!(out.result, Err(GuestFailure::BadOutput(_))));
        }
        // Routes are read whole.
        let mut head = b"Content-Type: text/plain\n\n".to_vec();
        head.resize(head.len() + crate::PIECE_BYTES, b'a');
        let mut io = writing(&head);
        io.raw_output = true;
        assert!(stdout_piece(&mut io).is_none());
    }

    fn parse(s: &str) -> Result<Response, CgiOutputError> {
        parse_cgi_output(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn content_type_alone_is_200() {
        let r = parse("Content-Type: text/plain\n\nhello").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(
            r.headers,
            vec![("Content-Type".to_owned(), Bytes::from_static(b"text/plain"))]
        );
    }

    #[test]
    fn crlf_status_and_repeated_headers() {
        let r =
            parse("Status: 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nnope\r\n")
                .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.headers.len(), 2);
        assert_eq!(&r.headers[1].1[..], b"b=2");
        assert_eq!(&r.body[..], b"nope\r\n");
    }

    #[test]
    fn location_alone_is_302_and_status_wins() {
        assert_eq!(parse("Location: /elsewhere\n\n").unwrap().status, 302);
        assert_eq!(parse("Location: /x\nStatus: 301\n\n").unwrap().status, 301);
    }

    #[test]
    fn bad_outputs_are_rejected_with_a_reason() {
        use CgiOutputError::*;
        let many = "X: 1\n".repeat(MAX_CGI_HEADERS + 1) + "Content-Type: t\n\n";
        for (output, why) in [
            ("", Empty),
            ("hello world", Unended),
            ("Content-Type: text/plain\nX-A", Unended),
            ("X-Thing: 1\n\nbody", NotAResponse),
            ("Content-Type text\n\n", NoColon),
            ("Bad Name: x\n\n", BadName),
            ("Status: 99\n\n", BadStatus),
            ("Status: 600\n\n", BadStatus),
            ("Status: abc\n\n", BadStatus),
            ("Status: 200\nStatus: 201\n\n", StatusTwice),
            ("Content-Type: a\u{1}b\n\n", ControlCharacter),
            (&many, TooManyHeaders),
        ] {
            assert_eq!(parse(output).unwrap_err(), why, "{output:?}");
        }
        assert_eq!(NoColon.to_string(), "header line without a colon");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(&percent_decode(b"/a%20b%2Fc")[..], b"/a b/c");
        assert_eq!(&percent_decode(b"/100%")[..], b"/100%");
        assert_eq!(&percent_decode(b"/%zz%4")[..], b"/%zz%4");
        assert_eq!(&percent_decode(b"/plain")[..], b"/plain");
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port(b"example.com:8080"), b"example.com");
        assert_eq!(strip_port(b"example.com"), b"example.com");
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
    }

    #[test]
    fn only_this_limiters_refusals_count() {
        let mut l = MemoryLimiter::new(2 << 20);
        assert!(l.allow_memory(1 << 20, None));
        assert!(!l.allow_memory(usize::MAX / 2, None), "past 4 GiB");
        assert!(
            !l.allow_memory(3 << 20, Some(1 << 20)),
            "past its own maximum"
        );
        assert!(!l.refused, "both fail in every engine, whatever the limit");
        assert!(!l.allow_memory(3 << 20, None));
        assert!(l.refused);
        let mut l = MemoryLimiter::new(0);
        assert!(!l.allow_table(10, Some(5)) && !l.refused);
        assert!(!l.allow_table(crate::shape::MAX_TABLE_ELEMENTS + 1, None) && l.refused);
    }

    #[test]
    fn a_refused_grow_turns_a_trap_into_out_of_memory() {
        let out = finish(
            GuestIo::default(),
            Ending::Trapped("unreachable".into()),
            true,
        );
        assert_eq!(out.result, Err(GuestFailure::OutOfMemory));
        let out = finish(
            GuestIo::default(),
            Ending::Stopped(HostStop::Exit(2)),
            false,
        );
        assert_eq!(out.result, Err(GuestFailure::Exit(2)));
    }
}
