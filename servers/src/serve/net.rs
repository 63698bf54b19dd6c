//! Sockets: the listeners, one per serving thread, and each connection's writes and close.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};

/// How long a closing connection is drained so the kernel does not reset it under the
/// response still in flight.
pub const LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// Binds `count` listeners to one address with `SO_REUSEPORT`: the kernel spreads new
/// connections over them, each serving thread accepts from its own queue, and no two
/// threads touch the same accept queue. A port of 0 is resolved by the first bind.
///
/// `SO_REUSEPORT` would also let a second server (of the same user) share the port
/// silently, so a fixed port is first probed with a plain bind, which fails with
/// "address in use" as a single listener would.
pub fn bind(addr: SocketAddr, backlog: u32, count: usize) -> io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        let listener = std::net::TcpListener::from(socket);
        addr = listener.local_addr()?;
        listeners.push(TcpListener::from_std(listener));
    }
    Ok(listeners)
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving requests.
    Open,
    /// The core closed it: write what is left, then shut down our side.
    Closing,
    /// Our side is shut; reading and dropping what the client still sends, until
    /// the client closes or `until`.
    Lingering { until: Instant },
}

/// One client connection's socket and what is waiting to be written to it.
pub struct Connection {
    pub stream: TcpStream,
    pub phase: Phase,
    /// Buffers not yet written, in order.
    out: VecDeque<Bytes>,
    /// Offset written into the front buffer.
    front_written: usize,
    /// Since when output has been waiting without a byte of it written: the write timeout
    /// counts from here (from the last write that made progress, not the first block).
    pub blocked_since: Option<Instant>,
    /// Bytes queued and not yet written.
    unsent: usize,
    /// Whether the core was last told the unsent bytes are over its bound.
    pub held: bool,
    /// The socket may have bytes to read that were left there (edge-triggered readiness).
    pub readable: bool,
    /// Whether WRITABLE interest is registered.
    pub wants_writable: bool,
    lingered: usize,
}

/// How a write attempt went.
pub enum Flushed {
    /// Everything is written.
    All,
    /// The socket is full; wait for it to become writable.
    Blocked,
    /// The connection is broken.
    Failed(io::Error),
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            phase: Phase::Open,
            out: VecDeque::new(),
            front_written: 0,
            blocked_since: None,
            unsent: 0,
            held: false,
            readable: true,
            wants_writable: false,
            lingered: 0,
        }
    }

    /// Queues `head` and `body`; [`Connection::flush`] writes them. Returns whether the
    /// connection had nothing queued before (so its owner should schedule a flush).
    pub fn queue(&mut self, head: Bytes, body: Bytes) -> bool {
        let was_empty = self.out.is_empty();
        self.unsent += head.len() + body.len();
        self.out.push_back(head);
        if !body.is_empty() {
            self.out.push_back(body);
        }
        was_empty
    }

    /// Writes queued output, several buffers per call, until it is all out or the socket
    /// is full.
    pub fn flush(&mut self, now: Instant) -> Flushed {
        const MAX_SLICES: usize = 16;
        let mut progressed = false;
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (i, buf) in self.out.iter().take(MAX_SLICES).enumerate() {
                let start = if i == 0 { self.front_written } else { 0 };
                slices[i] = IoSlice::new(&buf[start..]);
                n += 1;
            }
            match self.stream.write_vectored(&slices[..n]) {
                Ok(0) => return Flushed::Failed(io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    progressed = true;
                    self.unsent -= written;
                    while written > 0 {
                        let left = self.out[0].len() - self.front_written;
                        if written >= left {
                            written -= left;
                            self.out.pop_front();
                            self.front_written = 0;
                        } else {
                            self.front_written += written;
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if progressed {
                        self.blocked_since = Some(now);
                    } else {
                        self.blocked_since.get_or_insert(now);
                    }
                    return Flushed::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Flushed::Failed(e),
            }
        }
        self.blocked_since = None;
        Flushed::All
    }

    /// Bytes queued and not yet written.
    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// Shuts down our sending side once everything is written; from then on, lingers.
    pub fn start_linger(&mut self, now: Instant) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)?;
        self.phase = Phase::Lingering {
            until: now + LINGER,
        };
        Ok(())
    }

    /// Reads and drops what the client sends while lingering; true once it is done
    /// (the client closed, an error, or the byte budget is spent).
    pub fn drain_linger(&mut self, buf: &mut [u8]) -> bool {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return true,
                Ok(n) => {
                    self.lingered += n;
                    if self.lingered >= LINGER_BYTES {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose peer reads only when told, with small socket buffers.
    fn pair() -> (Connection, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4096)
            .unwrap();
        server.set_nonblocking(true).unwrap();
        (Connection::new(TcpStream::from_std(server)), client)
    }

    #[test]
    fn the_write_timeout_counts_from_the_last_progress() {
        let (mut c, mut client) = pair();
        let total = 4 << 20;
        c.queue(Bytes::from(vec![b'h'; 100]), Bytes::from(vec![b'b'; total]));
        assert_eq!(c.unsent(), total + 100);
        let t0 = Instant::now();
        assert!(matches!(c.flush(t0), Flushed::Blocked));
        assert_eq!(c.blocked_since, Some(t0));
        let after_first = c.unsent();
        assert!(after_first < total + 100, "some was written");
        // No progress: still counted from the first block.
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(c.flush(t1), Flushed::Blocked));
        assert_eq!(c.blocked_since, Some(t0));
        // The client reads: the next write that gets bytes out restarts the count.
        let t2 = t0 + Duration::from_secs(2);
        let mut buf = vec![0; 64 * 1024];
        let mut restarted = false;
        for _ in 0..10_000 {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0);
            match c.flush(t2) {
                Flushed::Blocked if c.blocked_since == Some(t2) => {
                    restarted = true;
                    break;
                }
                Flushed::Blocked => {}
                Flushed::All => break,
                Flushed::Failed(e) => panic!("{e}"),
            }
        }
        assert!(restarted, "progress moved the write timeout's start");
        assert!(c.unsent() < after_first);
    }
}
