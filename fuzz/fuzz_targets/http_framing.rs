//! Arbitrary bytes fed in arbitrary splits never panic and give exactly what feeding them
//! whole gives, whether bodies are taken whole or streamed in pieces and put back together.
#![no_main]

use frenezulo_core::FramingLimits;
use frenezulo_core::http::{ParseEvent, RequestParser};
use libfuzzer_sys::fuzz_target;

fn events(
    parts: &[&[u8]],
    stream: bool,
) -> (Vec<ParseEvent>, Option<frenezulo_core::FramingError>) {
    let limits = FramingLimits {
        max_head_bytes: 512,
        max_headers: 8,
        max_body_bytes: 1024,
    };
    let mut parser = RequestParser::new(limits);
    let mut out = Vec::new();
    let mut streaming: Option<(frenezulo_core::Request, Vec<u8>)> = None;
    for part in parts {
        parser.push(part);
        loop {
            match parser.next_event() {
                // When the 100 is asked for, and whether a head comes before its body,
                // depend on how the bytes arrived.
                Ok(Some(ParseEvent::ContinueExpected)) => {}
                Ok(Some(ParseEvent::Head(head))) => {
                    if stream {
                        parser.stream_body();
                        streaming = Some((head, Vec::new()));
                    }
                }
                Ok(Some(ParseEvent::Body(piece))) => {
                    assert!(!piece.is_empty(), "an empty piece");
                    let (_, body) = streaming.as_mut().expect("a head before its body");
                    body.extend_from_slice(&piece);
                }
                Ok(Some(ParseEvent::BodyEnd)) => {
                    let (mut head, body) = streaming.take().expect("a head before its end");
                    head.body = body.into();
                    out.push(ParseEvent::Request(head));
                }
                Ok(Some(event)) => out.push(event),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|input: (Vec<u8>, Vec<u16>)| {
    let (data, cuts) = input;
    let whole = events(&[&data], false);
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) % (data.len() + 1))
        .collect();
    points.sort_unstable();
    let mut parts = Vec::new();
    let mut last = 0;
    for p in points {
        parts.push(&data[last..p]);
        last = p;
    }
    parts.push(&data[last..]);
    assert_eq!(events(&parts, false), whole);
    assert_eq!(events(&parts, true), whole);
});
