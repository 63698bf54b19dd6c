//! A handler written with Spin's Rust SDK (`spin-sdk` 5, the last on wasi:http 0.2), built
//! for `wasm32-wasip2`; see `examples/build-components.sh`.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn hello(request: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!("Hello from Spin's SDK at {}\n", request.path()))
        .build())
}
