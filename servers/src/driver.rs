//! The driver: a single-threaded smol loop that owns the sockets and the core, and carries
//! out what the core asks. Guests run on worker threads; their results come back here.
//!
//! One task accepts, one task per connection reads and writes, one task sleeps until the
//! core's next deadline, one task takes worker results. They share the core through a
//! `RefCell` on this one thread, and no borrow is held across an `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use frenezulo_core::{ConnId, GuestFailure, Input, JobId, ModuleKey, Output, Server};
use frenezulo_engines::{CompiledModule, Engine};
use smol::channel::{Receiver, Sender};
use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::stream::StreamExt;
use smol::{Async, LocalExecutor, Timer};
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::workers::{self, Done, Job};

/// Bytes read from a socket at once.
const READ_BUF: usize = 16 * 1024;
/// How long a closing connection is drained so the kernel does not reset it under the
/// response still in flight.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 64 * 1024;

enum ConnMsg {
    Write(Bytes, Bytes),
    Close,
}

struct State {
    core: Server,
    conns: HashMap<ConnId, Sender<ConnMsg>>,
    modules: HashMap<ModuleKey, Arc<dyn CompiledModule>>,
    jobs: Sender<Job>,
    /// Wakes the timer task when the core's next deadline moved earlier.
    timer_wake: Sender<()>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    /// The second the `Date` header was last formatted for.
    date_second: u64,
}

type Shared = Rc<RefCell<State>>;

impl State {
    /// Feeds one input to the core and carries out everything it asks for.
    fn handle(&mut self, input: Input<'_>) {
        let now = Instant::now();
        self.refresh_date();
        self.core.handle(now, input);
        self.carry_out(now);
    }

    fn refresh_date(&mut self) {
        let wall = SystemTime::now();
        let second = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.date_second {
            self.date_second = second;
            self.core.set_http_date(&httpdate::fmt_http_date(wall));
        }
    }

    fn carry_out(&mut self, now: Instant) {
        let mut orphans: Vec<JobId> = Vec::new();
        loop {
            while let Some(output) = self.core.poll_output() {
                match output {
                    Output::Transmit { conn, head, body } => {
                        if let Some(tx) = self.conns.get(&conn) {
                            let _ = tx.try_send(ConnMsg::Write(head, body));
                        }
                    }
                    Output::Close { conn } => {
                        if let Some(tx) = self.conns.remove(&conn) {
                            let _ = tx.try_send(ConnMsg::Close);
                        }
                    }
                    Output::Compile { module, wasm } => {
                        info!(service = %module.service, version = module.version, "cold start: compiling");
                        let _ = self.jobs.try_send(Job::Compile { module, wasm });
                    }
                    Output::Execute(execution) => match self.modules.get(&execution.module) {
                        Some(module) => {
                            let module = module.clone();
                            let _ = self.jobs.try_send(Job::Run { execution, module });
                        }
                        None => {
                            let key = &execution.module;
                            error!(service = %key.service, version = key.version, "no compiled module to run");
                            orphans.push(execution.job);
                        }
                    },
                    Output::Evict { module } => {
                        if self.modules.remove(&module).is_some() {
                            info!(service = %module.service, version = module.version, "evicted");
                        }
                    }
                    other => warn!(?other, "output not understood by this driver"),
                }
            }
            // The core counts every run it hands out, so even one that cannot start is answered.
            let Some(job) = orphans.pop() else { break };
            let result = Err(GuestFailure::Instantiate("module not loaded".to_owned()));
            self.core.handle(now, Input::Executed { job, result });
        }
        let next = self.core.poll_timeout();
        if next.is_some() && (self.armed.is_none() || next < self.armed) {
            self.armed = next;
            let _ = self.timer_wake.try_send(());
        }
    }
}

fn handle(shared: &Shared, input: Input<'_>) {
    shared.borrow_mut().handle(input);
}

/// Binds the listening socket with the configured backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<Async<TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Async::new(TcpListener::from(socket))
}

/// Serves until SIGINT or SIGTERM, then drains in-flight requests and returns.
/// `loaded` are modules already compiled for services registered in `core`.
pub fn run(
    settings: Settings,
    engine: Arc<dyn Engine>,
    mut core: Server,
    loaded: Vec<(ModuleKey, Arc<dyn CompiledModule>)>,
    listener: Async<TcpListener>,
) -> anyhow::Result<()> {
    let now = Instant::now();
    for (key, _) in &loaded {
        core.module_loaded(now, key);
    }
    let (jobs_tx, jobs_rx) = smol::channel::unbounded();
    let (done_tx, done_rx) = smol::channel::unbounded();
    workers::spawn(settings.workers, engine, jobs_rx, done_tx)?;
    let (timer_wake, timer_woken) = smol::channel::bounded(1);
    let shared: Shared = Rc::new(RefCell::new(State {
        core,
        conns: HashMap::new(),
        modules: loaded.into_iter().collect(),
        jobs: jobs_tx,
        timer_wake,
        armed: None,
        date_second: 0,
    }));
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])?;
    let ex = LocalExecutor::new();
    smol::block_on(ex.run(async {
        ex.spawn(timers(shared.clone(), timer_woken)).detach();
        ex.spawn(completions(shared.clone(), done_rx)).detach();
        let stop = future::or(
            accept_loop(&ex, shared.clone(), listener, &settings),
            async {
                let signal = signals.next().await;
                info!(
                    ?signal,
                    "shutting down: no new connections, finishing requests in flight"
                );
            },
        );
        stop.await;
        handle(&shared, Input::Shutdown);
        let drained = async {
            while !shared.borrow().core.is_drained() {
                Timer::after(Duration::from_millis(10)).await;
            }
            info!("all connections closed");
        };
        let give_up = async {
            Timer::after(settings.drain_timeout).await;
            warn!(
                open = shared.borrow().core.connection_count(),
                "drain timeout passed; stopping anyway"
            );
        };
        let again = async {
            signals.next().await;
            warn!("second signal: stopping now");
        };
        future::or(drained, future::or(give_up, again)).await;
    }));
    Ok(())
}

async fn accept_loop(
    ex: &LocalExecutor<'_>,
    shared: Shared,
    listener: Async<TcpListener>,
    settings: &Settings,
) {
    // One slot per open connection: at `max_connections`, accepting pauses and the kernel's
    // backlog holds the rest.
    let (slots, freed) = smol::channel::bounded::<()>(settings.max_connections);
    let fallback_local = settings.listen;
    let mut next_id = 0u64;
    loop {
        if slots.send(()).await.is_err() {
            return;
        }
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                let _ = freed.try_recv();
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.get_ref().set_nodelay(true);
        let local = stream.get_ref().local_addr().unwrap_or(fallback_local);
        let conn = ConnId(next_id);
        next_id += 1;
        let (tx, rx) = smol::channel::unbounded();
        shared.borrow_mut().conns.insert(conn, tx);
        handle(
            &shared,
            Input::Connected {
                conn,
                remote,
                local,
            },
        );
        let task = connection(shared.clone(), conn, stream, rx, settings.write_timeout);
        let freed = freed.clone();
        ex.spawn(async move {
            task.await;
            let _ = freed.try_recv();
        })
        .detach();
    }
}

enum Event {
    Read(io::Result<usize>),
    Message(Option<ConnMsg>),
}

async fn connection(
    shared: Shared,
    conn: ConnId,
    stream: Async<TcpStream>,
    rx: Receiver<ConnMsg>,
    write_timeout: Duration,
) {
    let mut buf = vec![0u8; READ_BUF];
    let gone = loop {
        let wants_read = shared.borrow().core.wants_read(conn);
        let message = async { Event::Message(rx.recv().await.ok()) };
        let event = if wants_read {
            let read = async { Event::Read((&stream).read(&mut buf).await) };
            future::or(message, read).await
        } else {
            message.await
        };
        match event {
            Event::Read(Ok(0)) => handle(&shared, Input::ReadClosed { conn }),
            Event::Read(Ok(n)) => handle(
                &shared,
                Input::Received {
                    conn,
                    data: &buf[..n],
                },
            ),
            Event::Read(Err(e)) => {
                debug!(conn = conn.0, error = %e, "read failed");
                break true;
            }
            Event::Message(Some(ConnMsg::Write(head, body))) => {
                if let Err(e) = write(&stream, &head, &body, write_timeout).await {
                    debug!(conn = conn.0, error = %e, "write failed");
                    break true;
                }
            }
            Event::Message(Some(ConnMsg::Close) | None) => break false,
        }
    };
    if gone {
        shared.borrow_mut().conns.remove(&conn);
        handle(&shared, Input::Disconnected { conn });
        return;
    }
    linger(&stream).await;
}

async fn write(
    stream: &Async<TcpStream>,
    head: &[u8],
    body: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let io = async {
        let mut s = stream;
        s.write_all(head).await?;
        if !body.is_empty() {
            s.write_all(body).await?;
        }
        Ok(())
    };
    let late = async {
        Timer::after(timeout).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
    };
    future::or(io, late).await
}

/// Closes our side, then reads and drops what the client still sends for a moment:
/// closing with unread data makes the kernel send a reset, which can destroy the response.
async fn linger(stream: &Async<TcpStream>) {
    if stream.get_ref().shutdown(Shutdown::Write).is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match (&*stream).read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    future::or(drain, async {
        Timer::after(LINGER).await;
    })
    .await;
}

async fn timers(shared: Shared, woken: Receiver<()>) {
    loop {
        let next = shared.borrow().core.poll_timeout();
        shared.borrow_mut().armed = next;
        match next {
            Some(at) => {
                let fired = future::or(
                    async {
                        Timer::at(at).await;
                        true
                    },
                    async { woken.recv().await.is_err() },
                )
                .await;
                if fired {
                    handle(&shared, Input::Timeout);
                }
            }
            None => {
                if woken.recv().await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn completions(shared: Shared, done: Receiver<Done>) {
    while let Ok(done) = done.recv().await {
        match done {
            Done::Compiled {
                module,
                result,
                elapsed,
            } => {
                let result = match result {
                    Ok(compiled) => {
                        info!(service = %module.service, version = module.version, ms = elapsed.as_secs_f64() * 1e3, "compiled");
                        shared.borrow_mut().modules.insert(module.clone(), compiled);
                        Ok(())
                    }
                    Err(e) => {
                        error!(service = %module.service, version = module.version, error = %e, "compile failed");
                        Err(e.to_string())
                    }
                };
                handle(&shared, Input::Compiled { module, result });
            }
            Done::Ran {
                job,
                key,
                output,
                elapsed,
            } => {
                log_stderr(&key, &output.stderr);
                match &output.result {
                    Ok(r) => {
                        debug!(service = %key.service, job = job.0, status = r.status, us = elapsed.as_micros() as u64, "ran")
                    }
                    Err(failure) => {
                        warn!(service = %key.service, job = job.0, error = %failure, status = failure.status(), "guest failed")
                    }
                }
                handle(
                    &shared,
                    Input::Executed {
                        job,
                        result: output.result,
                    },
                );
            }
        }
    }
}

fn log_stderr(key: &ModuleKey, stderr: &[u8]) {
    if stderr.is_empty() {
        return;
    }
    for line in String::from_utf8_lossy(stderr).lines() {
        info!(target: "guest", service = %key.service, "{line}");
    }
}
