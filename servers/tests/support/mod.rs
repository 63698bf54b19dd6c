//! Starts the real `frenezulo` binary on a free loopback port and speaks raw HTTP to it.
#![allow(dead_code, unused_macros)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
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

/// A config file in a temporary directory of its own, removed when dropped.
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `text` as `frenezulo.toml` in a fresh directory named after `name`.
    pub fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("frenezulo-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("frenezulo.toml");
        std::fs::write(&path, text).unwrap();
        Self { path }
    }

    /// The file's path, for `--config`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A temporary directory, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory named after `name`.
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("frenezulo-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The directory, as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
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
        let data = (!args.contains(&"--data-dir")).then(|| TempDir::new("data"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_frenezulo"));
        command.args(args);
        if let Some(data) = &data {
            command.args(["--data-dir", data.arg()]);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("FRENEZULO_ADMIN_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start frenezulo");
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
        Self {
            child,
            addr,
            log,
            _data: data,
        }
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

    /// Waits up to 10 s for the log to contain `needle`; returns the log either way.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself; returns whether it exited successfully.
    pub fn wait(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not exit within {limit:?}\n{}", self.log());
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
}

impl Client {
    /// A new connection to `addr`.
    pub fn connect_to(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads one response, or `None` if the connection closes first.
    pub fn try_response(&mut self) -> Option<HttpResponse> {
        while !self.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if self.fill() == 0 {
                return None;
            }
        }
        Some(self.response())
    }

    /// Writes raw bytes.
    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write");
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
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
            assert!(
                self.fill() > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
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
            assert!(self.fill() > 0, "connection closed mid-body");
        }
        let body = self.buf.drain(..len).collect();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// Whether the server closed the connection (reads EOF, or a reset, with nothing pending).
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = json(&server.admin("GET", "/services/slow", b""));
        if info["counters"]["running"] == 1 {
            return slow;
        }
        assert!(
            Instant::now() < deadline,
            "the slow request never started: {info}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
