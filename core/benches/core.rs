//! The core's hot path, without sockets or guests: framing a request, routing it, and one
//! whole keep-alive request through `handle`/`poll_output` with its guest finished at once.
//! `cargo bench -p frenezulo-core`
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use frenezulo_core::http::{FramingLimits, ParseEvent, RequestParser};
use frenezulo_core::router::Router;
use frenezulo_core::subroute::SubRoutes;
use frenezulo_core::{
    ConnId, Input, ModuleKey, Output, RegistryChange, Response, Server, ServerConfig,
    ServiceLimits, ServiceName, ServiceRoute,
};

/// What `wrk` sends.
const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
/// A browser-like request with a few more headers.
const BROWSER: &[u8] = b"GET /shop/cart/items?id=42&page=3 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nCookie: session=abcdef0123456789\r\nConnection: keep-alive\r\n\r\n";

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");
    for (name, bytes) in [("wrk", REQUEST), ("browser", BROWSER)] {
        g.bench_function(name, |b| {
            let mut parser = RequestParser::new(FramingLimits::default());
            b.iter(|| {
                parser.push(black_box(bytes));
                match parser.next_event() {
                    Ok(Some(ParseEvent::Request(r))) => r,
                    other => panic!("{other:?}"),
                }
            })
        });
    }
    g.finish();
}

/// A table of 100 services at their default routes, plus a root service and one three
/// segments deep, as a busy node might have.
fn routing(c: &mut Criterion) {
    let mut router = Router::new();
    for i in 0..100 {
        let name = ServiceName::new(&format!("service{i}")).unwrap();
        router.insert(&name, ServiceRoute::of_name(&name), SubRoutes::default());
    }
    let shop = ServiceName::new("shop").unwrap();
    router.insert(&shop, ServiceRoute::of_name(&shop), SubRoutes::default());
    let root = ServiceName::new("root").unwrap();
    router.insert(
        &root,
        ServiceRoute::parse("/...").unwrap(),
        SubRoutes::default(),
    );
    let deep = ServiceName::new("deep").unwrap();
    router.insert(
        &deep,
        ServiceRoute::prefix("/api/v1/users").unwrap(),
        SubRoutes::default(),
    );
    let mut g = c.benchmark_group("route");
    for path in ["/shop/cart/items", "/api/v1/users/42", "/unclaimed/a/b/c/d"] {
        g.bench_function(path, |b| b.iter(|| router.route(black_box(path))));
    }
    g.finish();
}

/// One request on a warm service: received, routed, admitted, started, finished,
/// serialised; the connection stays open.
fn whole_request(c: &mut Criterion) {
    let mut server = Server::new(ServerConfig::default());
    let module = ModuleKey {
        service: ServiceName::new("hello").unwrap(),
        version: 1,
    };
    let now = Instant::now();
    server.handle(
        now,
        Input::Registry(RegistryChange::Put {
            module: module.clone(),
            wasm: Bytes::new(),
            limits: ServiceLimits::default(),
            setup: Default::default(),
        }),
    );
    server.handle(
        now,
        Input::Compiled {
            module,
            result: Ok(()),
        },
    );
    server.set_http_date("Sat, 28 Nov 2026 12:00:00 GMT");
    let conn = ConnId(1);
    let addr = "127.0.0.1:8080".parse().unwrap();
    server.handle(
        now,
        Input::Connected {
            conn,
            remote: addr,
            local: addr,
        },
    );
    let response = Response::text(200, "Hello from frenezulo!");
    let mut at = now;
    c.bench_function("request", |b| {
        b.iter(|| {
            at += Duration::from_micros(10);
            server.handle(
                at,
                Input::Received {
                    conn,
                    data: REQUEST,
                },
            );
            let mut sent = 0;
            while let Some(output) = server.poll_output() {
                match output {
                    Output::Execute(e) => server.handle(
                        at,
                        Input::Executed {
                            job: e.job,
                            result: Ok(response.clone()),
                            ran: Duration::from_micros(10),
                        },
                    ),
                    Output::Transmit { head, body, .. } => sent += head.len() + body.len(),
                    Output::Responded(r) => assert_eq!(r.status, 200),
                    other => panic!("{other:?}"),
                }
            }
            assert!(sent > 0);
        })
    });
}

criterion_group!(benches, framing, routing, whole_request);
criterion_main!(benches);
