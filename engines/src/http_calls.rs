//! The state of a guest's outbound HTTP calls (`wasi_experimental_http`): the call being
//! made, checked against the service's grant, and the responses the instance holds open,
//! with the module's error codes and the types the driver exchanges with the engines. The
//! host functions that use it are in [`crate::outbound`], which re-exports the public
//! items here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use frenezulo_core::GuestSetup;

use crate::abi::{slice, slice_mut, write_bytes};
use crate::grants::Grants;

/// The module's error codes, as its guests know them.
pub mod code {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// No open response has this handle.
    pub const INVALID_HANDLE: i32 = 1;
    /// A pointer or length is outside the guest's memory.
    pub const MEMORY_ACCESS_ERROR: i32 = 3;
    /// The guest's buffer cannot hold the value.
    pub const BUFFER_TOO_SMALL: i32 = 4;
    /// The response has no such header.
    pub const HEADER_NOT_FOUND: i32 = 5;
    /// A string is not UTF-8.
    pub const UTF8_ERROR: i32 = 6;
    /// The service may not call this origin.
    pub const DESTINATION_NOT_ALLOWED: i32 = 7;
    /// The method is not an HTTP token.
    pub const INVALID_METHOD: i32 = 8;
    /// The request headers are not `name:value` lines.
    pub const INVALID_ENCODING: i32 = 9;
    /// The URL is not an absolute `http` or `https` URL.
    pub const INVALID_URL: i32 = 10;
    /// The call failed: could not connect, timed out, or the response was too large.
    pub const REQUEST_ERROR: i32 = 11;
    /// The host could not make the call (its outbound queue is full, or it is stopping).
    pub const RUNTIME_ERROR: i32 = 12;
    /// Too many calls of this service in flight, or too many responses open here.
    pub const TOO_MANY_SESSIONS: i32 = 13;
}

/// Responses one instance may hold open at once.
pub const MAX_OPEN_RESPONSES: usize = 16;

/// Largest URL, header block or method a guest may pass, in bytes.
const MAX_TEXT: u32 = 64 * 1024;

/// Largest request body a guest may send, in bytes.
pub const MAX_REQUEST_BODY: u32 = 4 << 20;

/// A call a guest asked for, checked against its grant.
#[derive(Debug)]
pub struct OutboundRequest {
    /// The method.
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Its origin, `scheme://host:port`, for the log.
    pub origin: String,
    /// Header lines, never `Host` (the URL's authority is).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Counts the call against its service's limit until dropped.
    pub permit: InFlight,
    /// Whether it may connect to public addresses only (the grant's
    /// [`OutboundGrant::public_only`](frenezulo_core::OutboundGrant::public_only)).
    pub public_only: bool,
}

/// One call counted in its service's in-flight total; dropping it uncounts it.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response to give back to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The body, whole (the driver caps its size).
    pub body: Bytes,
}

impl OutboundResponse {
    /// Bytes it holds: body and header lines.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.body.len() + headers
    }
}

/// Why a call the guest was allowed to make failed; the guest sees `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundError {
    /// [`code::REQUEST_ERROR`] or [`code::RUNTIME_ERROR`].
    pub code: i32,
    /// What happened, for the log.
    pub reason: String,
}

/// What a call came to.
pub type OutboundResult = Result<OutboundResponse, OutboundError>;

/// What a guest gets when its task runs again before its call's result came.
pub(crate) fn not_delivered() -> OutboundError {
    OutboundError {
        code: code::RUNTIME_ERROR,
        reason: "the task ran again before its outbound call finished".to_owned(),
    }
}

/// The origin of an absolute `http`/`https` URL: `scheme://host:port`, lower case, the
/// port made explicit. URLs with user info are refused (they hide the real host).
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (format!("[{host}]"), after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        },
    };
    let port: u16 = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    host_ok.then(|| format!("{scheme}://{}:{port}", host.to_ascii_lowercase()))
}

/// Checks a call against the service's grant (an `http`/`https` URL, an allowed origin, a
/// free slot under `http_max_concurrency`) and makes it, counted in flight; `Err` is the
/// `wasi_experimental_http` code saying why not. Both WAGI's `req` and a component's
/// `outgoing-handler` come through here.
pub(crate) fn admit(
    setup: &GuestSetup,
    method: &str,
    url: &str,
    mut headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Result<OutboundRequest, i32> {
    // The connection goes to the URL's origin, the one checked: its `Host` is the URL's
    // authority (set by the driver), never the guest's, which could name another virtual
    // host behind the allowed one.
    headers.retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
    let Some(origin) = origin_of(url) else {
        return Err(code::INVALID_URL);
    };
    let service = &setup.name;
    let Some(grant) = Grants::of(setup).and_then(|g| g.outbound.as_ref()) else {
        tracing::warn!(target: "outbound", service, origin, "outbound call refused: the service has no allowed_hosts");
        return Err(code::DESTINATION_NOT_ALLOWED);
    };
    if let Some(allowed) = &grant.allowed
        && !allowed.contains(&origin)
    {
        tracing::warn!(target: "outbound", service, origin, "outbound call refused: origin not in allowed_hosts");
        return Err(code::DESTINATION_NOT_ALLOWED);
    }
    let taken = grant.in_flight.fetch_add(1, Ordering::AcqRel);
    let permit = InFlight(grant.in_flight.clone());
    if taken >= grant.max_in_flight {
        tracing::warn!(target: "outbound", service, origin, limit = grant.max_in_flight, "outbound call refused: http_max_concurrency reached");
        return Err(code::TOO_MANY_SESSIONS);
    }
    Ok(OutboundRequest {
        method: method.to_owned(),
        url: url.to_owned(),
        origin,
        headers,
        body,
        permit,
        public_only: grant.public_only,
    })
}

/// Per instance: the call being made, and the responses held open.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// Where `req` writes its status and handle once the result is delivered.
    pending: Option<(i32, i32)>,
    request: Option<OutboundRequest>,
    delivered: Option<OutboundResult>,
    responses: Vec<Option<Open>>,
    /// The instance's memory limit: its linear memory and the responses it holds open
    /// must fit in it together. `None` (tests): no limit.
    budget: Option<usize>,
}

#[derive(Debug)]
struct Open {
    response: OutboundResponse,
    read: usize,
}

impl Calls {
    /// No calls yet, for an instance whose memory limit is `memory_bytes`.
    pub(crate) fn within(memory_bytes: usize) -> Self {
        Self {
            budget: Some(memory_bytes),
            ..Self::default()
        }
    }

    /// `req(url, url_len, method, method_len, headers, headers_len, body, body_len,
    /// status_out, handle_out)`: checks the call and sets it aside for the driver. `Ok`
    /// means the guest must now wait; `Err` is the code to return at once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin(
        &mut self,
        mem: &[u8],
        setup: &GuestSetup,
        url: (i32, i32),
        method: (i32, i32),
        headers: (i32, i32),
        body: (i32, i32),
        out: (i32, i32),
    ) -> Result<(), i32> {
        let url = text(mem, url, MAX_TEXT)?;
        let method = text(mem, method, 64)?;
        if method.is_empty() || !method.bytes().all(is_token) {
            return Err(code::INVALID_METHOD);
        }
        let headers = parse_headers(text(mem, headers, MAX_TEXT)?)?;
        let body = bytes(mem, body, MAX_REQUEST_BODY)?.to_vec();
        if self.responses.iter().filter(|r| r.is_some()).count() >= MAX_OPEN_RESPONSES {
            return Err(code::TOO_MANY_SESSIONS);
        }
        self.request = Some(admit(setup, method, url, headers, body)?);
        self.pending = Some(out);
        Ok(())
    }

    /// The call `begin` set aside, for the driver.
    pub(crate) fn take_request(&mut self) -> Option<OutboundRequest> {
        self.request.take()
    }

    /// Whether a call was set aside and has no result yet.
    pub(crate) fn is_waiting(&self) -> bool {
        self.pending.is_some() && self.delivered.is_none()
    }

    /// The result of the call, from the driver.
    pub(crate) fn deliver(&mut self, result: OutboundResult) {
        self.delivered = Some(result);
    }

    /// Ends `req`: writes the status and a handle for the response, and gives the code
    /// `req` returns.
    pub(crate) fn finish(&mut self, mem: &mut [u8]) -> i32 {
        let Some((status_out, handle_out)) = self.pending.take() else {
            return code::RUNTIME_ERROR;
        };
        let response = match self.delivered.take() {
            Some(Ok(response)) => response,
            Some(Err(e)) => return e.code,
            None => return code::RUNTIME_ERROR,
        };
        // Responses are held on the host until closed: they count against the memory
        // limit with the guest's own memory, so 16 open ones cannot add 64 MiB beside it.
        if let Some(budget) = self.budget {
            let held: usize = self
                .responses
                .iter()
                .flatten()
                .map(|o| o.response.size())
                .sum();
            if mem.len() + held + response.size() > budget {
                tracing::info!(target: "outbound", bytes = response.size(), held, memory = mem.len(), budget, "outbound response refused: with the responses held open it would pass the memory limit");
                return code::REQUEST_ERROR;
            }
        }
        let slot = match self.responses.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.responses.push(None);
                self.responses.len() - 1
            }
        };
        let status = response.status.to_le_bytes();
        let handle = (slot as u32).to_le_bytes();
        if write_bytes(mem, status_out, &status).is_none()
            || write_bytes(mem, handle_out, &handle).is_none()
        {
            return code::MEMORY_ACCESS_ERROR;
        }
        self.responses[slot] = Some(Open { response, read: 0 });
        code::SUCCESS
    }

    fn open(&mut self, handle: i32) -> Result<&mut Open, i32> {
        usize::try_from(handle)
            .ok()
            .and_then(|h| self.responses.get_mut(h))
            .and_then(Option::as_mut)
            .ok_or(code::INVALID_HANDLE)
    }

    /// `close(handle)`.
    pub(crate) fn close(&mut self, handle: i32) -> i32 {
        match usize::try_from(handle)
            .ok()
            .and_then(|h| self.responses.get_mut(h))
        {
            Some(slot @ Some(_)) => {
                *slot = None;
                code::SUCCESS
            }
            _ => code::INVALID_HANDLE,
        }
    }

    /// `header_get(handle, name, name_len, buf, buf_len, written_out)`: the first value
    /// of the header, by case-insensitive name.
    pub(crate) fn header_get(
        &mut self,
        mem: &mut [u8],
        handle: i32,
        name: (i32, i32),
        buf: (i32, i32),
        written: i32,
    ) -> i32 {
        let name = match text(mem, name, MAX_TEXT) {
            Ok(n) => n.to_ascii_lowercase(),
            Err(e) => return e,
        };
        let value = match self.open(handle) {
            Ok(open) => match open.response.headers.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => v.clone(),
                None => return code::HEADER_NOT_FOUND,
            },
            Err(e) => return e,
        };
        fill(mem, buf, &value, written)
    }

    /// `headers_get_all(handle, buf, buf_len, written_out)`: every header as
    /// `name:value` lines.
    pub(crate) fn headers_get_all(
        &mut self,
        mem: &mut [u8],
        handle: i32,
        buf: (i32, i32),
        written: i32,
    ) -> i32 {
        let all = match self.open(handle) {
            Ok(open) => {
                let mut all = Vec::new();
                for (n, v) in &open.response.headers {
                    all.extend_from_slice(n.as_bytes());
                    all.push(b':');
                    all.extend_from_slice(v);
                    all.push(b'\n');
                }
                all
            }
            Err(e) => return e,
        };
        fill(mem, buf, &all, written)
    }

    /// `body_read(handle, buf, buf_len, written_out)`: the next part of the body; 0 bytes
    /// written at its end.
    pub(crate) fn body_read(
        &mut self,
        mem: &mut [u8],
        handle: i32,
        buf: (i32, i32),
        written: i32,
    ) -> i32 {
        let open = match self.open(handle) {
            Ok(open) => open,
            Err(e) => return e,
        };
        let rest = &open.response.body[open.read..];
        let Some(dst) = slice_mut(mem, buf.0, buf.1 as u32) else {
            return code::MEMORY_ACCESS_ERROR;
        };
        let n = dst.len().min(rest.len());
        dst[..n].copy_from_slice(&rest[..n]);
        if write_bytes(mem, written, &(n as u32).to_le_bytes()).is_none() {
            return code::MEMORY_ACCESS_ERROR;
        }
        open.read += n;
        code::SUCCESS
    }
}

/// Writes `value` into the guest's buffer whole, or says it is too small.
fn fill(mem: &mut [u8], buf: (i32, i32), value: &[u8], written: i32) -> i32 {
    if (buf.1 as u32 as usize) < value.len() {
        return code::BUFFER_TOO_SMALL;
    }
    let filled = write_bytes(mem, buf.0, value)
        .and_then(|()| write_bytes(mem, written, &(value.len() as u32).to_le_bytes()));
    match filled {
        Some(()) => code::SUCCESS,
        None => code::MEMORY_ACCESS_ERROR,
    }
}

fn bytes(mem: &[u8], (ptr, len): (i32, i32), max: u32) -> Result<&[u8], i32> {
    let len = len as u32;
    if len > max {
        return Err(code::MEMORY_ACCESS_ERROR);
    }
    slice(mem, ptr, len).ok_or(code::MEMORY_ACCESS_ERROR)
}

fn text(mem: &[u8], at: (i32, i32), max: u32) -> Result<&str, i32> {
    std::str::from_utf8(bytes(mem, at, max)?).map_err(|_| code::UTF8_ERROR)
}

/// Request headers as the guest library writes them: `name:value` lines.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, i32> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').ok_or(code::INVALID_ENCODING)?;
            let name = name.trim();
            let value = value.trim();
            let valid = !name.is_empty()
                && name.bytes().all(is_token)
                && !value.bytes().any(|b| b < 0x20 && b != b'\t');
            if valid {
                Ok((name.to_owned(), value.to_owned()))
            } else {
                Err(code::INVALID_ENCODING)
            }
        })
        .collect()
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::OutboundGrant;

    fn grant(allowed: Option<&[&str]>, max: usize) -> GuestSetup {
        let grants = Grants {
            outbound: Some(OutboundGrant {
                allowed: allowed.map(|a| a.iter().map(|s| origin_of(s).unwrap()).collect()),
                max_in_flight: max,
                in_flight: Arc::new(AtomicUsize::new(0)),
                public_only: false,
            }),
            ..Grants::default()
        };
        GuestSetup {
            host: grants.into_host(),
            ..GuestSetup::default()
        }
    }

    fn in_flight(setup: &GuestSetup) -> usize {
        let grant = Grants::of(setup).and_then(|g| g.outbound.as_ref()).unwrap();
        grant.in_flight.load(Ordering::Relaxed)
    }

    /// Guest memory with `url` at 100, `method` at 600, `headers` at 700.
    fn memory(url: &str, method: &str, headers: &str) -> Vec<u8> {
        let mut mem = vec![0u8; 4096];
        mem[100..100 + url.len()].copy_from_slice(url.as_bytes());
        mem[600..600 + method.len()].copy_from_slice(method.as_bytes());
        mem[700..700 + headers.len()].copy_from_slice(headers.as_bytes());
        mem
    }

    fn begin(
        calls: &mut Calls,
        setup: &GuestSetup,
        url: &str,
        method: &str,
        headers: &str,
    ) -> Result<(), i32> {
        let mem = memory(url, method, headers);
        calls.begin(
            &mem,
            setup,
            (100, url.len() as i32),
            (600, method.len() as i32),
            (700, headers.len() as i32),
            (0, 0),
            (2000, 2004),
        )
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(
            origin_of("http://Example.com/x").unwrap(),
            "http://example.com:80"
        );
        assert_eq!(origin_of("https://a.b:8443?q").unwrap(), "https://a.b:8443");
        assert_eq!(
            origin_of("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(origin_of("http://[::1]:81/").unwrap(), "http://[::1]:81");
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@host/",
            "//x",
            "http://h:99999",
            "x",
        ] {
            assert_eq!(origin_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn calls_are_checked_against_the_grant() {
        let none = GuestSetup::default();
        let mut calls = Calls::default();
        assert_eq!(
            begin(&mut calls, &none, "http://a/", "GET", ""),
            Err(code::DESTINATION_NOT_ALLOWED)
        );
        let g = grant(Some(&["http://allowed:8080"]), 4);
        assert_eq!(
            begin(&mut calls, &g, "http://other:8080/", "GET", ""),
            Err(code::DESTINATION_NOT_ALLOWED)
        );
        assert_eq!(
            begin(&mut calls, &g, "http://allowed/", "GET", ""),
            Err(code::DESTINATION_NOT_ALLOWED),
            "another port"
        );
        assert_eq!(
            begin(&mut calls, &g, "not a url", "GET", ""),
            Err(code::INVALID_URL)
        );
        assert_eq!(
            begin(&mut calls, &g, "http://allowed:8080/", "G T", ""),
            Err(code::INVALID_METHOD)
        );
        assert_eq!(
            begin(&mut calls, &g, "http://allowed:8080/", "GET", "no colon"),
            Err(code::INVALID_ENCODING)
        );
        assert_eq!(in_flight(&g), 0, "refusals hold no permit");
        assert_eq!(
            begin(
                &mut calls,
                &g,
                "http://allowed:8080/p",
                "POST",
                "a: 1\nHost: internal.example\nB:2\nhOST:x\n"
            ),
            Ok(())
        );
        let request = calls.take_request().unwrap();
        assert_eq!(
            request.headers,
            [
                ("a".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(in_flight(&g), 1);
        drop(request);
        assert_eq!(in_flight(&g), 0, "a finished call frees its permit");
        let any = grant(None, 1);
        assert_eq!(
            begin(&mut calls, &any, "https://anywhere/", "GET", ""),
            Ok(())
        );
        let held = calls.take_request();
        let mut other = Calls::default();
        assert_eq!(
            begin(&mut other, &any, "https://anywhere/", "GET", ""),
            Err(code::TOO_MANY_SESSIONS)
        );
        drop(held);
    }

    #[test]
    fn a_delivered_response_is_read_through_its_handle() {
        let mut calls = Calls::default();
        begin(&mut calls, &grant(None, 1), "http://h/", "GET", "").unwrap();
        assert!(calls.is_waiting());
        calls.deliver(Ok(OutboundResponse {
            status: 201,
            headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
            body: Bytes::from_static(b"hello body"),
        }));
        let mut mem = vec![0u8; 4096];
        assert_eq!(calls.finish(&mut mem), code::SUCCESS);
        assert_eq!(u16::from_le_bytes([mem[2000], mem[2001]]), 201);
        let handle = i32::from_le_bytes(mem[2004..2008].try_into().unwrap());
        mem[10..22].copy_from_slice(b"Content-Type");
        assert_eq!(
            calls.header_get(&mut mem, handle, (10, 12), (100, 4), 50),
            code::BUFFER_TOO_SMALL
        );
        assert_eq!(
            calls.header_get(&mut mem, handle, (10, 12), (100, 64), 50),
            code::SUCCESS
        );
        assert_eq!(&mem[100..110], b"text/plain");
        assert_eq!(
            calls.header_get(&mut mem, handle, (10, 4), (100, 64), 50),
            code::HEADER_NOT_FOUND
        );
        assert_eq!(
            calls.headers_get_all(&mut mem, handle, (100, 64), 50),
            code::SUCCESS
        );
        assert_eq!(&mem[100..124], b"content-type:text/plain\n");
        let mut body = Vec::new();
        loop {
            assert_eq!(
                calls.body_read(&mut mem, handle, (200, 4), 50),
                code::SUCCESS
            );
            let n = u32::from_le_bytes(mem[50..54].try_into().unwrap()) as usize;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&mem[200..200 + n]);
        }
        assert_eq!(body, b"hello body");
        assert_eq!(calls.close(handle), code::SUCCESS);
        assert_eq!(calls.close(handle), code::INVALID_HANDLE);
        assert_eq!(
            calls.body_read(&mut mem, handle, (200, 4), 50),
            code::INVALID_HANDLE
        );
    }

    #[test]
    fn a_failed_call_returns_its_code() {
        let mut calls = Calls::default();
        begin(&mut calls, &grant(None, 1), "http://h/", "GET", "").unwrap();
        calls.deliver(Err(OutboundError {
            code: code::REQUEST_ERROR,
            reason: "timed out".into(),
        }));
        assert_eq!(calls.finish(&mut vec![0u8; 4096]), code::REQUEST_ERROR);
    }

    #[test]
    fn responses_held_open_count_against_the_memory_limit() {
        let mut calls = Calls::within(10_000);
        let mut mem = vec![0u8; 4096];
        let response = |n: usize| {
            Ok(OutboundResponse {
                status: 200,
                headers: Vec::new(),
                body: vec![b'x'; n].into(),
            })
        };
        let g = grant(None, 4);
        let call = |calls: &mut Calls, n: usize, mem: &mut [u8]| {
            begin(calls, &g, "http://h/", "GET", "").unwrap();
            drop(calls.take_request());
            calls.deliver(response(n));
            calls.finish(mem)
        };
        assert_eq!(call(&mut calls, 3000, &mut mem), code::SUCCESS);
        let first = i32::from_le_bytes(mem[2004..2008].try_into().unwrap());
        // 4096 of memory + 3000 held + 3000 more is over 10 000.
        assert_eq!(call(&mut calls, 3000, &mut mem), code::REQUEST_ERROR);
        assert_eq!(calls.close(first), code::SUCCESS);
        assert_eq!(
            call(&mut calls, 3000, &mut mem),
            code::SUCCESS,
            "room again once closed"
        );
    }
}
