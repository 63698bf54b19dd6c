//! A WAGI guest that sleeps with `std::thread::sleep`, as the Rust toolchain builds it for
//! wasm32-wasip1 (one `poll_oneoff` on the monotonic clock; std panics if the answer is not
//! the one clock event it asked for). The query string is the sleep in milliseconds.

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let ms: u64 = std::env::var("QUERY_STRING")
        .ok()
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "Content-Type: text/plain\n\nbefore\n");
    let _ = out.flush();
    let began = Instant::now();
    std::thread::sleep(Duration::from_millis(ms));
    let slept = began.elapsed();
    let _ = writeln!(out, "slept at least {ms} ms: {}", slept >= Duration::from_millis(ms));
}
