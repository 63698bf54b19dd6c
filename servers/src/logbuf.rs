//! Log output to stderr, batched on serving threads. The access log writes a line per
//! request; a `write(2)` for each cost a quarter of a serving thread's throughput. A serving
//! thread keeps its lines in a buffer and writes them when the buffer fills a batch, when
//! the oldest has waited 100 ms, or before the loop goes idle (see `serve`); every other
//! thread writes each line at once.

use std::cell::RefCell;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes a batching thread holds before it writes them, whatever the turn.
const MAX_BUFFERED: usize = 64 * 1024;

thread_local! {
    /// `Some` on a thread that batches.
    static BUFFER: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Makes the calling thread keep its log lines until [`flush`].
pub fn batch_this_thread() {
    BUFFER.with(|b| *b.borrow_mut() = Some(Vec::with_capacity(MAX_BUFFERED)));
}

/// Bytes the calling thread holds.
pub fn buffered() -> usize {
    BUFFER.with(|b| b.borrow().as_ref().map_or(0, Vec::len))
}

/// Writes what the calling thread buffered.
pub fn flush() {
    BUFFER.with(|b| {
        if let Some(buffer) = b.borrow_mut().as_mut()
            && !buffer.is_empty()
        {
            let _ = io::stderr().lock().write_all(buffer);
            buffer.clear();
        }
    });
}

/// Writes a line the caller formats into the thread's buffer (if it batches; otherwise to
/// stderr at once), without going through the log subscriber.
pub fn append(format: impl FnOnce(&mut Vec<u8>)) {
    let mut format = Some(format);
    let full = BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        let buffer = b.as_mut()?;
        format.take()?(buffer);
        Some(buffer.len() >= MAX_BUFFERED)
    });
    match (full, format) {
        (Some(true), _) => flush(),
        (None, Some(format)) => {
            let mut line = Vec::new();
            format(&mut line);
            let _ = io::stderr().write_all(&line);
        }
        _ => {}
    }
}

/// The subscriber's writer: stderr, through the thread's buffer if it batches.
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

/// One log event's output.
pub struct Line;

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let buffered = BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            let buffer = b.as_mut()?;
            buffer.extend_from_slice(bytes);
            Some(buffer.len() >= MAX_BUFFERED)
        });
        match buffered {
            Some(true) => flush(),
            Some(false) => {}
            None => io::stderr().write_all(bytes)?,
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
