//! Echoes what a wasi:http handler sees: method, path, the prefix headers frenezulo adds,
//! one environment value, then the request body, written back in several pieces (so the
//! host must take a body that arrives in parts). `?status=N` answers with status N;
//! `?stderr` writes a line to stderr; `?trap` panics. Built for `wasm32-wasip2` with the
//! `wasip2` crate; see `examples/build-components.sh`. Knobs for tests of the host's
//! limits: `?loop` never returns, `?alloc=N` holds N MiB, `?big=N` answers N more bytes,
//! `?exit=N` exits with status N, `?unset` returns without setting a response, and
//! `?hold=N` holds N header maps (host resources) while it answers, and
//! `?fetch=http://HOST:PORT/PATH` makes that outbound GET and answers with its status and
//! body (502 and the error if it fails). `?sleep=MS` sleeps MS milliseconds (on a
//! `wasi:clocks` pollable) before it answers; `?tick=N` answers N lines, `tick 0` to
//! `tick N-1`, each written and flushed 50 ms after the one before.

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Echo;

wasip2::http::proxy::export!(Echo);

fn header(request: &IncomingRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// GETs `url` (`http://authority/path`) through `wasi:http/outgoing-handler`.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingRequest, Scheme};
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request
        .set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .map_err(|()| "path")?;
    let body = request.body().map_err(|()| "body")?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response after the pollable was ready")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let incoming = response.consume().map_err(|()| "consumed twice")?;
    let stream = incoming.stream().map_err(|()| "stream")?;
    let mut bytes = Vec::new();
    while let Ok(chunk) = stream.blocking_read(16 * 1024) {
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, bytes))
}

/// Sleeps on a monotonic-clock pollable, as `std::thread::sleep` does on this target.
fn sleep_ms(ms: u64) {
    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

/// Answers `n` lines, one every 50 ms, each flushed as it is written.
fn tick(out: ResponseOutparam, n: u64) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("the stream, once");
    for i in 0..n {
        if i > 0 {
            sleep_ms(50);
        }
        stream
            .blocking_write_and_flush(format!("tick {i}\n").as_bytes())
            .expect("written");
    }
    drop(stream);
    OutgoingBody::finish(body, None).expect("finished");
}

fn answer(out: ResponseOutparam, status: u16, text: &[u8]) {
    let headers = Fields::from_list(&[(
        "content-type".to_owned(),
        b"text/plain".to_vec(),
    )])
    .expect("a valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("the stream, once");
    for piece in text.chunks(4096) {
        stream.blocking_write_and_flush(piece).expect("written");
    }
    drop(stream);
    OutgoingBody::finish(body, None).expect("finished");
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = request.consume() else {
        return body;
    };
    let stream = incoming.stream().expect("the stream, once");
    // Ends with an error once the body is over.
    while let Ok(chunk) = stream.blocking_read(16 * 1024) {
        body.extend_from_slice(&chunk);
    }
    body
}

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        if query.split('&').any(|p| p == "trap") {
            panic!("asked to trap");
        }
        let knob = |name: &str| -> Option<u64> {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        if query.split('&').any(|p| p == "loop") {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if let Some(code) = knob("exit") {
            std::process::exit(code as i32);
        }
        if query.split('&').any(|p| p == "unset") {
            return;
        }
        if let Some(n) = knob("tick") {
            return tick(out, n);
        }
        if let Some(ms) = knob("sleep") {
            sleep_ms(ms);
        }
        if let Some(url) = query.split('&').find_map(|p| p.strip_prefix("fetch=")) {
            return match fetch(url) {
                Ok((status, body)) => {
                    let mut text = format!("upstream {status}\n").into_bytes();
                    text.extend_from_slice(&body);
                    answer(out, 200, &text)
                }
                Err(e) => answer(out, 502, format!("fetch failed: {e}\n").as_bytes()),
            };
        }
        let held = vec![1u8; knob("alloc").unwrap_or(0) as usize * 1024 * 1024];
        let fields: Vec<Fields> = (0..knob("hold").unwrap_or(0)).map(|_| Fields::new()).collect();
        std::hint::black_box(&fields);
        std::hint::black_box(&held);
        if query.split('&').any(|p| p == "stderr") {
            eprintln!("echo was asked to write to stderr");
        }
        let status = knob("status").map_or(200, |s| s as u16);
        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            Method::Head => "HEAD".to_owned(),
            Method::Post => "POST".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Delete => "DELETE".to_owned(),
            Method::Connect => "CONNECT".to_owned(),
            Method::Options => "OPTIONS".to_owned(),
            Method::Trace => "TRACE".to_owned(),
            Method::Patch => "PATCH".to_owned(),
            Method::Other(other) => other,
        };
        let mut text = format!(
            "method: {method}\npath: {path}\nscript-name: {}\npath-info: {}\nGREETING: {}\n",
            header(&request, "frenezulo-script-name"),
            header(&request, "frenezulo-path-info"),
            std::env::var("GREETING").unwrap_or_default(),
        )
        .into_bytes();
        text.extend_from_slice(&read_body(&request));
        text.resize(text.len() + knob("big").unwrap_or(0) as usize, b'.');

        answer(out, status, &text);
    }
}
