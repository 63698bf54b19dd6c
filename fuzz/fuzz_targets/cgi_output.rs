//! The CGI output parser never panics, and what it accepts is well formed.
#![no_main]

use bytes::Bytes;
use frenezulo_engines::wagi::{MAX_CGI_HEADERS, parse_cgi_output};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let stdout = Bytes::copy_from_slice(data);
    if let Ok(response) = parse_cgi_output(stdout) {
        assert!((200..=599).contains(&response.status));
        assert!(response.headers.len() <= MAX_CGI_HEADERS);
        assert!(data.ends_with(&response.body));
        for (name, value) in &response.headers {
            assert!(!name.is_empty() && !name.eq_ignore_ascii_case("status"));
            assert!(!value.contains(&b'\n') && !value.contains(&b'\r'));
        }
    }
});
