//! Arbitrary bytes fed in arbitrary splits never panic and give exactly what feeding them
//! whole gives.
#![no_main]

use frenezulo_core::FramingLimits;
use frenezulo_core::http::{ParseEvent, RequestParser};
use libfuzzer_sys::fuzz_target;

fn events(parts: &[&[u8]]) -> (Vec<ParseEvent>, Option<frenezulo_core::FramingError>) {
    let limits = FramingLimits {
        max_head_bytes: 512,
        max_headers: 8,
        max_body_bytes: 1024,
    };
    let mut parser = RequestParser::new(limits);
    let mut out = Vec::new();
    for part in parts {
        parser.push(part);
        loop {
            match parser.next_event() {
                // When the 100 is asked for depends on how the bytes arrived.
                Ok(Some(ParseEvent::ContinueExpected)) => {}
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
    let whole = events(&[&data]);
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
    assert_eq!(events(&parts), whole);
});
