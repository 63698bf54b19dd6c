//! Starts the real `frenezulo` binary on a free loopback port and speaks raw HTTP to it.
#![allow(dead_code, unused_macros)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One test per engine compiled in, so they run side by side: `name => body` makes
/// `name::wasmtime` and `name::wasmi`, each calling `body(engine)`.
macro_rules! per_engine {
    ($($name:ident => $body:ident),* $(,)?) => {
        $(
            mod $name {
                #[cfg(feature = "wasmtime")]
                #[test]
                fn wasmtime() {
                    super::$body("wasmtime");
                }
                #[cfg(feature = "wasmi")]
                #[test]
                fn wasmi() {
                    super::$body("wasmi");
                }
            }
        )*
    };
}

/// The engines this build of the binary carries, the JIT first.
pub const ENGINES: &[&str] = &[
    #[cfg(feature = "wasmtime")]
    "wasmtime",
    #[cfg(feature = "wasmi")]
    "wasmi",
];

/// A path in the repository.
pub fn repo(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

/// The engine tests use when they do not care which.
pub const DEFAULT_ENGINE: &str = ENGINES[0];

/// How long a test waits for an event before it calls it missing: far beyond what any
/// event here takes on a loaded machine, so only a real stall fails a test.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it gives a value, and returns it; panics, naming `what`, once
/// `bound` has passed. Tests wait for the event itself with this, never a fixed sleep.
pub fn eventually<T>(what: &str, bound: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(bound, check).unwrap_or_else(|| panic!("waited {bound:?} for {what}, in vain"))
}

/// Polls `check` until it gives a value or `bound` has passed.
fn poll<T>(bound: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The seed for a test's random choices: `FRENEZULO_TEST_SEED` if set, else drawn from the
/// clock; printed, so a failing run can be repeated.
pub fn seed() -> u64 {
    let seed = match std::env::var("FRENEZULO_TEST_SEED") {
        Ok(v) => v.parse().expect("FRENEZULO_TEST_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("seed {seed} (FRENEZULO_TEST_SEED={seed} repeats it)");
    seed
}

/// A temporary directory, removed when dropped.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A fresh, empty directory whose name starts with `name`.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("frenezulo-{name}-"))
            .tempdir()
            .expect("a temporary directory");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// The directory, as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path().to_str().expect("temporary paths are UTF-8")
    }
}

/// A config file in a temporary directory of its own, removed when dropped.
pub struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `text` as `frenezulo.toml` in a fresh directory named after `name`.
    pub fn new(name: &str, text: &str) -> Self {
        let dir = TempDir::new(name);
        let path = dir.path().join("frenezulo.toml");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }

    /// The file's path, for `--config`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8")
    }

    /// The directory the file is in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Starts the binary with `args`, the token [`TOKEN`] and then `env`, its output piped;
/// unless `args` say otherwise (or it runs as the client, `services ...`), on a free
/// loopback port with a temporary data directory, returned to be kept while it runs.
fn spawn(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> (Child, Option<TempDir>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_frenezulo"));
    command.args(args);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let is_client = args.first() == Some(&"services");
    let data = (!is_client && !args.contains(&"--data-dir")).then(|| TempDir::new("data"));
    if let Some(data) = &data {
        command.args(["--data-dir", data.arg()]);
    }
    if !is_client && !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    let child = command
        .env("FRENEZULO_ADMIN_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start frenezulo");
    (child, data)
}

/// Runs the binary with `args` to its end (for runs that must fail, print help or act as
/// the client), with a data directory and `--listen` of its own unless `args` name them, so
/// no run touches the user's home or a real port. Panics if it is still running after
/// [`PATIENCE`]: a run that was meant to stop but started serving fails rather than hangs.
pub fn run_once(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let (mut child, _data) = spawn(args, env, None);
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = match exit_within(&mut child, PATIENCE) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`frenezulo {}` still ran after {PATIENCE:?}: {}",
                args.join(" "),
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits up to `limit` for `child` to exit by itself.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    poll(limit, || child.try_wait().unwrap())
}

/// The management API token test servers run with, unless a test says otherwise.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A running server, killed when dropped.
pub struct Frenezulo {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Its data directory, when the test did not give one.
    _data: Option<TempDir>,
}

impl Frenezulo {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:0`, waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// As [`Frenezulo::start`], with extra environment variables. The server gets a fresh
    /// data directory unless `args` name one, and the token [`TOKEN`] unless `env` sets
    /// `FRENEZULO_ADMIN_TOKEN` (an empty value: none, so the server makes one).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(args, env, None)
    }

    /// As [`Frenezulo::start`], run from the working directory `cwd`.
    pub fn start_in(cwd: &Path, args: &[&str]) -> Self {
        Self::launch(args, &[], Some(cwd))
    }

    fn launch(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Self {
        let mut with_log = vec![("RUST_LOG", "info")];
        with_log.extend_from_slice(env);
        let (mut child, data) = spawn(args, &with_log, cwd);
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read stdout");
        let Some(addr) = line.trim().strip_prefix("frenezulo listening on http://") else {
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("server did not start: {line:?}\n{}", log.lock().unwrap());
        };
        let addr = addr.parse().expect("listen address");
        let server = Self {
            child,
            addr,
            log,
            _data: data,
        };
        // The log's last start-up line: after this, what start-up logs is in `log()`.
        server.wait_for_log("listening on http://");
        server
    }

    /// Sends a request with `method`, `path`, optional body, and the token [`TOKEN`]
    /// (or `token`, if given: `Some("")` sends none).
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        self.admin_with(method, path, body, Some(TOKEN))
    }

    /// As [`Frenezulo::admin`], with the token chosen.
    pub fn admin_with(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        token: Option<&str>,
    ) -> HttpResponse {
        let mut c = self.connect();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        );
        c.send(head.as_bytes());
        // A server that refuses the body (413) may close before reading all of it.
        let _ = c.stream.write_all(body);
        c.response()
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the log to contain `needle` and returns the log; panics with the log if it
    /// never does.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.eventually(&format!("the log to say {needle:?}"), || {
            Some(self.log()).filter(|log| log.contains(needle))
        })
    }

    /// Waits for a log line containing `needle` and returns the first such line.
    pub fn wait_for_log_line(&self, needle: &str) -> String {
        self.eventually(&format!("a log line saying {needle:?}"), || {
            self.log()
                .lines()
                .find(|line| line.contains(needle))
                .map(str::to_owned)
        })
    }

    /// [`eventually`] with [`PATIENCE`], showing this server's log if the wait fails.
    pub fn eventually<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        poll(PATIENCE, check).unwrap_or_else(|| {
            panic!(
                "waited {PATIENCE:?} for {what} on {}, in vain; its log:\n{}",
                self.addr,
                self.log()
            )
        })
    }

    /// The Prometheus text of `GET /services/metrics`.
    pub fn metrics(&self) -> String {
        let r = self.admin("GET", "/services/metrics", b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// A new keep-alive connection.
    pub fn connect(&self) -> Client {
        Client::connect_to(self.addr)
    }

    /// `GET path` on a new connection.
    pub fn get(&self, path: &str) -> HttpResponse {
        let mut c = self.connect();
        c.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        c.response()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit by itself; returns whether it exited successfully.
    pub fn wait(&mut self, limit: Duration) -> bool {
        match exit_within(&mut self.child, limit) {
            Some(status) => status.success(),
            None => panic!("server did not exit within {limit:?}\n{}", self.log()),
        }
    }

    /// Sends `signal` (a name `kill` knows, such as `TERM` or `INT`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// CPU time the server's thread named `name` has used, from `/proc` (in 10 ms units:
    /// Linux reports it in USER_HZ ticks, 100 a second). A thread names itself once it
    /// runs, so this waits for the name to appear.
    pub fn thread_cpu(&self, name: &str) -> Duration {
        self.eventually(&format!("a thread named {name}"), || {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
            let task = tasks.flatten().find(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // The fields after the command name (which may hold spaces) end with `)`.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
    }

    /// Resident memory of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Frenezulo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client connection.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A parsed response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `(status, error)` of a management API answer (`{"error": "..."}`).
    pub fn error(&self) -> (u16, String) {
        let why = json(self)["error"].as_str().unwrap_or_default().to_owned();
        (self.status, why)
    }
}

impl Client {
    /// A new connection to `addr`.
    pub fn connect_to(addr: SocketAddr) -> Client {
        Self::try_connect_to(addr).expect("connect")
    }

    /// A new connection to `addr`, or why not (a server that may be gone already).
    pub fn try_connect_to(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Reads one response, or `None` if the connection closes first.
    pub fn try_response(&mut self) -> Option<HttpResponse> {
        while !self.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if !matches!(self.fill(), Ok(n) if n > 0) {
                return None;
            }
        }
        Some(self.response())
    }

    /// Writes raw bytes.
    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write");
    }

    /// Reads what arrives next: `Ok(0)` at EOF, `Err` on a reset or when nothing came
    /// within the read timeout.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads more, panicking with `context` if the connection ends or stalls first.
    fn fill_or_panic(&mut self, context: &str) {
        match self.fill() {
            Ok(0) => panic!(
                "connection closed {context}: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(_) => {}
            Err(e) => panic!("{e} {context}: {:?}", String::from_utf8_lossy(&self.buf)),
        }
    }

    /// Reads one response (with its body).
    pub fn response(&mut self) -> HttpResponse {
        self.read_response(false)
    }

    /// Reads one response to a HEAD request (no body follows its headers).
    pub fn head_response(&mut self) -> HttpResponse {
        self.read_response(true)
    }

    fn read_response(&mut self, head: bool) -> HttpResponse {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill_or_panic("before a response");
        };
        let head_text = String::from_utf8(self.buf[..end].to_vec()).expect("ASCII head");
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line[9..12].parse().expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.to_owned(), v.trim().to_owned())
            })
            .collect();
        self.buf.drain(..end);
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked && !head {
            let body = self.read_chunks();
            return HttpResponse {
                status,
                headers,
                body,
            };
        }
        let len: usize = if head || status == 100 {
            0
        } else {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0)
        };
        while self.buf.len() < len {
            self.fill_or_panic("mid-body");
        }
        let body = self.buf.drain(..len).collect();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// Reads a chunked body to its last chunk (no trailers), checking the framing.
    fn read_chunks(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill_or_panic("before a chunk size");
            };
            let size = std::str::from_utf8(&self.buf[..line_end])
                .ok()
                .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                .unwrap_or_else(|| panic!("chunk size line {:?}", &self.buf[..line_end]));
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill_or_panic("mid-chunk");
            }
            assert_eq!(&self.buf[size..size + 2], b"\r\n", "a chunk ends with CRLF");
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return body;
            }
        }
    }

    /// Whether the server closed the connection: nothing is pending and the next read
    /// meets EOF or a reset. A read that times out (the server kept the connection open)
    /// or that brings bytes is not a close.
    pub fn is_closed(&mut self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        if !self.buf.is_empty() {
            return false;
        }
        match self.fill() {
            Ok(n) => n == 0,
            Err(e) => matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe),
        }
    }

    /// Sets how long a read waits before it counts as a stall.
    pub fn read_timeout(&mut self, limit: Duration) {
        self.stream.set_read_timeout(Some(limit)).unwrap();
    }
}

/// A guest that spins as many times as the little-endian u32 in its body says, then
/// answers `marker`.
pub fn versioned(marker: &str) -> String {
    let body = format!("Content-Type: text/plain\n\n{marker}");
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "{body}")
          (func (export "_start")
            (local $i i32) (local $n i32)
            (i32.store (i32.const 16) (i32.const 200))
            (i32.store (i32.const 20) (i32.const 4))
            (drop (call $r (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
            (local.set $n (i32.load (i32.const 200)))
            (block $done (loop $l
              (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $l)))
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        body = body.replace('\n', "\\n"),
        len = body.len()
    )
}

/// A response body as JSON.
pub fn json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// Sends `spins` to the `slow` service (a [`versioned`] guest) on its own thread, and
/// returns once the server says the request is running.
pub fn slow_request(server: &Frenezulo, spins: u32) -> std::thread::JoinHandle<HttpResponse> {
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect_to(addr);
        let body = spins.to_le_bytes();
        let head = format!(
            "POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.send(head.as_bytes());
        c.send(&body);
        c.response()
    });
    wait_for_counter(server, "slow", "running", 1);
    slow
}

/// Waits until the management API reports `counter` of `service` at `value`.
pub fn wait_for_counter(server: &Frenezulo, service: &str, counter: &str, value: u64) {
    server.eventually(&format!("{service}'s {counter} to be {value}"), || {
        let info = json(&server.admin("GET", &format!("/services/{service}"), b""));
        (info["counters"][counter] == value).then_some(())
    });
}

/// What an [`Upstream`] answers one request with.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header fields besides `Content-Length` and `Connection: close`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Answer only once the test opens the gate ([`Upstream::open_gate`]).
    pub held: bool,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::status(200).with_body(body)
    }

    /// `status` with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            held: false,
        }
    }

    /// A 302 to `location`.
    pub fn redirect(location: &str) -> Self {
        Self::status(302).with_header("Location", location)
    }

    /// The same reply with `body`.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The same reply with one more header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same reply, sent only once the gate opens.
    pub fn held(mut self) -> Self {
        self.held = true;
        self
    }
}

/// A request as an [`Upstream`] saw it.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// The request target.
    pub path: String,
    /// Header lines as `(name, value)`.
    pub headers: Vec<(String, String)>,
}

impl Arrival {
    /// First value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Gate = Arc<(Mutex<bool>, std::sync::Condvar)>;

/// A loopback HTTP/1.1 server for the binary to call (guests' outbound calls, modules
/// fetched by URL): `route` decides each reply; every request is announced, as it comes
/// in, to [`Upstream::wait_for`]. It serves until the test process ends.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    gate: Gate,
    arrivals: Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Upstream {
    /// Starts serving on a free loopback port.
    pub fn start(route: impl Fn(&Arrival) -> Reply + Send + Sync + 'static) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let gate: Gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (tx, arrivals) = std::sync::mpsc::channel();
        let route = Arc::new(route);
        let g = gate.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (gate, tx, route) = (g.clone(), tx.clone(), route.clone());
                std::thread::spawn(move || serve_one(stream, &gate, &tx, &*route));
            }
        });
        Self {
            addr,
            gate,
            arrivals: Mutex::new(arrivals),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Lets held replies go, now and until [`Upstream::close_gate`].
    pub fn open_gate(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    /// Holds replies marked held again.
    pub fn close_gate(&self) {
        *self.gate.0.lock().unwrap() = false;
    }

    /// Waits for the next request for `path`, skipping others.
    pub fn wait_for(&self, path: &str) {
        let arrivals = self.arrivals.lock().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match arrivals.recv_timeout(left) {
                Ok(got) if got == path => return,
                Ok(_) => {}
                Err(_) => panic!("no request for {path} arrived upstream within {PATIENCE:?}"),
            }
        }
    }
}

fn serve_one(
    stream: TcpStream,
    gate: &Gate,
    arrivals: &std::sync::mpsc::Sender<String>,
    route: &(dyn Fn(&Arrival) -> Reply + Send + Sync),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        lines.push(line.trim_end().to_owned());
    }
    let path = lines
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let headers = lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let reply = route(&Arrival {
        path: path.clone(),
        headers,
    });
    let _ = arrivals.send(path);
    if reply.held {
        let (open, cv) = &**gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }
    let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    let mut stream = stream;
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&reply.body));
}

/// Sends `body` to `path` with POST on a new connection, without waiting for the answer.
pub fn post(server: &Frenezulo, path: &str, body: &[u8]) -> Client {
    let mut c = server.connect();
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send(body);
    c
}

/// The value of the sample whose name and labels are exactly `series`
/// (`name{label="value",...}`) in Prometheus text, if there is one.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The outbound guest as service `call`, allowed to call an upstream whose `/hold` answers
/// only once the gate opens (anything else answers the request's `x-test` header at once):
/// a request in flight for exactly as long as the test wants, on either engine. `extra` is
/// more of the config file's top level.
pub fn held_call(engine: &str, extra: &str) -> (Frenezulo, Upstream, ConfigFile) {
    let upstream = Upstream::start(|a| match a.path.as_str() {
        "/hold" => Reply::ok("held").held(),
        _ => Reply::ok(a.header("x-test").unwrap_or_default()),
    });
    let config = ConfigFile::new(
        "held",
        &format!(
            "engine = {engine:?}\n{extra}\n[services.call]\nmodule = {:?}\nallowed_hosts = [{:?}]\n",
            repo("engines/tests/guests/outbound.wat"),
            upstream.url(""),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    (server, upstream, config)
}
