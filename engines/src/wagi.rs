//! The host side of WAGI, shared by every engine: the CGI environment and argv a guest
//! gets, and the parsing of its stdout into a response.

use bytes::Bytes;
use frenezulo_core::{GuestFailure, GuestRequest, Response};

use crate::wasi::{GuestIo, HostStop};

/// Most header lines a guest's CGI output may have.
pub const MAX_CGI_HEADERS: usize = 100;

/// The argv and environment for `request`, as WAGI defines them, ready for the guest.
pub fn guest_io(request: &GuestRequest, stdout_cap: usize) -> GuestIo {
    let http = &request.request;
    let host = http
        .header("host")
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .unwrap_or_else(|| request.local.to_string());
    let server_name = strip_port(&host);
    let path_info = percent_decode(request.path_info.as_bytes());
    let content_type = http.header("content-type").cloned().unwrap_or_default();
    let owned: [(&[u8], Vec<u8>); 21] = [
        (b"REQUEST_METHOD", http.method.as_bytes().to_vec()),
        (b"SCRIPT_NAME", request.script_name.as_bytes().to_vec()),
        (b"PATH_INFO", path_info.clone()),
        (b"PATH_TRANSLATED", path_info),
        (b"X_RAW_PATH_INFO", request.path_info.as_bytes().to_vec()),
        (b"QUERY_STRING", http.query().as_bytes().to_vec()),
        (b"REQUEST_URI", http.target.as_bytes().to_vec()),
        (
            b"X_MATCHED_ROUTE",
            format!("{}/...", request.script_name).into_bytes(),
        ),
        (
            b"X_FULL_URL",
            format!("http://{host}{}", http.target).into_bytes(),
        ),
        (b"SERVER_NAME", server_name.as_bytes().to_vec()),
        (
            b"SERVER_PORT",
            request.local.port().to_string().into_bytes(),
        ),
        (
            b"SERVER_PROTOCOL",
            http.version.as_str().as_bytes().to_vec(),
        ),
        (
            b"SERVER_SOFTWARE",
            concat!("frenezulo/", env!("CARGO_PKG_VERSION"))
                .as_bytes()
                .to_vec(),
        ),
        (b"GATEWAY_INTERFACE", b"CGI/1.1".to_vec()),
        (b"CONTENT_LENGTH", http.body.len().to_string().into_bytes()),
        (b"CONTENT_TYPE", content_type.to_vec()),
        (b"REMOTE_ADDR", request.remote.ip().to_string().into_bytes()),
        (b"REMOTE_HOST", request.remote.ip().to_string().into_bytes()),
        (
            b"REMOTE_PORT",
            request.remote.port().to_string().into_bytes(),
        ),
        (b"AUTH_TYPE", Vec::new()),
        (b"REMOTE_USER", Vec::new()),
    ];
    let headers = http_variables(http);
    let env = owned
        .iter()
        .map(|(k, v)| (*k, v.as_slice()))
        .chain(headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    // argv as WAGI does it: the path, then each query item.
    let args = std::iter::once(http.path().as_bytes()).chain(
        http.query()
            .split('&')
            .filter(|s| !s.is_empty())
            .map(str::as_bytes),
    );
    GuestIo::new(args, env, http.body.clone(), stdout_cap)
}

/// `HTTP_<NAME>` variables, one per header name in order of first appearance; repeated
/// headers are joined with ", ". Content-Type and Content-Length have their own variables.
fn http_variables(http: &frenezulo_core::Request) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut vars: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(http.headers.len());
    for h in &http.headers {
        if h.name.eq_ignore_ascii_case("content-type")
            || h.name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        let mut name = Vec::with_capacity(5 + h.name.len());
        name.extend_from_slice(b"HTTP_");
        name.extend(h.name.bytes().map(|b| {
            if b == b'-' {
                b'_'
            } else {
                b.to_ascii_uppercase()
            }
        }));
        match vars.iter_mut().find(|(n, _)| *n == name) {
            Some((_, value)) => {
                value.extend_from_slice(b", ");
                value.extend_from_slice(&h.value);
            }
            None => vars.push((name, h.value.to_vec())),
        }
    }
    vars
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as is.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a guest's stdout as a CGI response: header lines (LF or CRLF), a blank line,
/// then the body. `Status:` sets the status; `Location:` without it gives 302; output with
/// none of `Content-Type`, `Location`, `Status` is not a response.
pub fn parse_cgi_output(stdout: Bytes) -> Result<Response, String> {
    if stdout.is_empty() {
        return Err("no output".to_owned());
    }
    let mut headers = Vec::new();
    let mut status: Option<u16> = None;
    let mut has_content_type = false;
    let mut has_location = false;
    let mut pos = 0;
    let body_start = loop {
        let Some(nl) = stdout[pos..].iter().position(|&b| b == b'\n') else {
            return Err("header section is not ended by a blank line".to_owned());
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
            return Err("header line without a colon".to_owned());
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err("invalid header name".to_owned());
        }
        let value = trim(&line[colon + 1..]);
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("control character in header value".to_owned());
        }
        let name = std::str::from_utf8(name).expect("token bytes are ASCII");
        if name.eq_ignore_ascii_case("status") {
            if status.is_some() {
                return Err("more than one Status header".to_owned());
            }
            status = Some(parse_status(value)?);
            continue;
        }
        has_content_type |= name.eq_ignore_ascii_case("content-type");
        has_location |= name.eq_ignore_ascii_case("location");
        if headers.len() == MAX_CGI_HEADERS {
            return Err(format!("more than {MAX_CGI_HEADERS} header lines"));
        }
        headers.push((name.to_owned(), stdout.slice_ref(value)));
    };
    let status = match status {
        Some(s) => s,
        None if has_location => 302,
        None if has_content_type => 200,
        None => return Err("no Content-Type, Location or Status header".to_owned()),
    };
    Ok(Response {
        status,
        headers,
        body: stdout.slice(body_start..),
    })
}

fn parse_status(value: &[u8]) -> Result<u16, String> {
    let code = value.split(|&b| b == b' ').next().unwrap_or_default();
    let status = std::str::from_utf8(code)
        .ok()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s));
    status.ok_or_else(|| "Status is not a code from 200 to 599".to_owned())
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
    /// The engine stopped the guest at its deadline.
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

/// Turns how a run ended, its captured I/O and whether a memory request was refused into
/// the engine-independent result.
pub fn finish(mut io: GuestIo, ending: Ending, memory_refused: bool) -> RunOutput {
    let result = match ending {
        Ending::Returned | Ending::Stopped(HostStop::Exit(0)) => {
            parse_cgi_output(Bytes::from(io.take_stdout())).map_err(GuestFailure::BadOutput)
        }
        Ending::Stopped(HostStop::Exit(code)) => Err(GuestFailure::Exit(code)),
        Ending::Stopped(HostStop::StdoutFull) => Err(GuestFailure::OutputTooLarge),
        Ending::Stopped(HostStop::NoMemory) => {
            Err(GuestFailure::Trap(HostStop::NoMemory.to_string()))
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

/// Most elements in one table.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    /// A limiter for `max_bytes` of linear memory.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            refused: false,
        }
    }

    /// Whether a memory may grow to `desired` bytes.
    pub fn allow_memory(&mut self, desired: usize) -> bool {
        let ok = desired <= self.max_bytes;
        self.refused |= !ok;
        ok
    }

    /// Whether a table may grow to `desired` elements.
    pub fn allow_table(&mut self, desired: usize) -> bool {
        let ok = desired <= MAX_TABLE_ELEMENTS;
        self.refused |= !ok;
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Response, String> {
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
        assert!(parse("").unwrap_err().contains("no output"));
        assert!(parse("hello world").unwrap_err().contains("blank line"));
        assert!(
            parse("X-Thing: 1\n\nbody")
                .unwrap_err()
                .contains("no Content-Type")
        );
        assert!(
            parse("Content-Type text\n\n")
                .unwrap_err()
                .contains("colon")
        );
        assert!(parse("Bad Name: x\n\n").unwrap_err().contains("name"));
        assert!(parse("Status: 99\n\n").is_err());
        assert!(parse("Status: 600\n\n").is_err());
        assert!(parse("Status: abc\n\n").is_err());
        assert!(parse("Status: 200\nStatus: 201\n\n").is_err());
        assert!(parse("Content-Type: a\u{1}b\n\n").is_err());
        let many = "X: 1\n".repeat(MAX_CGI_HEADERS + 1) + "Content-Type: t\n\n";
        assert!(parse(&many).is_err());
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode(b"/a%20b%2Fc"), b"/a b/c");
        assert_eq!(percent_decode(b"/100%"), b"/100%");
        assert_eq!(percent_decode(b"/%zz%4"), b"/%zz%4");
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn a_refused_grow_turns_a_trap_into_out_of_memory() {
        let io = GuestIo::default();
        let out = finish(io, Ending::Trapped("unreachable".into()), true);
        assert_eq!(out.result, Err(GuestFailure::OutOfMemory));
        let out = finish(
            GuestIo::default(),
            Ending::Stopped(HostStop::Exit(2)),
            false,
        );
        assert_eq!(out.result, Err(GuestFailure::Exit(2)));
    }
}
