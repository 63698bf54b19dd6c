//! Shared by the targets that run guests.

use bytes::Bytes;
use frenezulo_core::http::Header;
use frenezulo_core::{GuestRequest, Request, Version};

/// A fixed request for guests to answer.
pub fn request() -> GuestRequest {
    let request = Request {
        method: "POST".to_owned(),
        target: "/svc/a?b=c".to_owned(),
        version: Version::Http11,
        headers: vec![Header {
            name: "Host".to_owned(),
            value: Bytes::from_static(b"fuzz"),
        }],
        body: Bytes::from_static(b"body"),
        keep_alive: true,
    };
    GuestRequest {
        setup: std::sync::Arc::new(frenezulo_core::GuestSetup {
            env: vec![("FUZZ_VALUE".to_owned(), "1".to_owned())],
            ..Default::default()
        }),
        ..GuestRequest::new(
            request,
            "/svc",
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        )
    }
}
