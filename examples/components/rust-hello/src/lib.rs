//! The smallest wasi:http handler: answers every request with a short greeting. Built with
//! the `wasip2` crate (the WASI 0.2 bindings the Rust project publishes) for
//! `wasm32-wasip2`; see `examples/build-components.sh`.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::from_list(&[(
            "content-type".to_owned(),
            b"text/plain".to_vec(),
        )])
        .expect("a valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the body, once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("the stream, once");
        stream
            .blocking_write_and_flush(b"Hello from a wasi:http component\n")
            .expect("written");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finished");
    }
}
