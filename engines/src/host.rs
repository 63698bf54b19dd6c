//! The per-instance host state both sets of host functions share: [`GuestIo`], with the
//! guest's inputs and captured outputs, its WASI file table ([`crate::file_table`]) and its
//! outbound calls ([`crate::http_calls`]), and [`HostStop`], why a host call stops the
//! guest. The WASI functions ([`crate::wasi`]) and the outbound HTTP functions
//! ([`crate::outbound`]) are methods on [`GuestIo`] defined in their own modules; they
//! depend on this one and never on each other.

use bytes::Bytes;
use frenezulo_core::response::push_decimal;

use crate::file_table::Files;
use crate::grants::Grants;
use crate::http_calls::Calls;

/// Why a host call stops the guest rather than returning an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStop {
    /// The guest called `proc_exit`.
    Exit(i32),
    /// The guest wrote past its stdout cap.
    StdoutFull,
    /// A WASI call came before the instance's memory was known (from a start function).
    NoMemory,
    /// The guest waits on an outbound call: the engine suspends it (never an ending,
    /// except where it cannot suspend).
    Waiting,
    /// The guest sleeps in `poll_oneoff` until `GuestIo::wake_at`: the engine parks it
    /// (never an ending, except where it cannot suspend).
    Sleeping,
}

impl std::fmt::Display for HostStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostStop::Exit(code) => write!(f, "guest exited with status {code}"),
            HostStop::StdoutFull => f.write_str("guest output exceeded its limit"),
            HostStop::NoMemory => f.write_str("WASI call before memory was available"),
            HostStop::Waiting => f.write_str("outbound call where the guest cannot wait"),
            HostStop::Sleeping => f.write_str("sleep where the guest cannot wait"),
        }
    }
}

impl std::error::Error for HostStop {}

/// Most stderr bytes kept per run; the rest is dropped (the guest is not told).
pub const STDERR_CAP: usize = 16 * 1024;

/// The guest's view of the world for one run: its inputs and captured outputs.
#[derive(Debug, Default)]
pub struct GuestIo {
    /// argv strings, each NUL-terminated, back to back.
    pub(crate) args: Vec<u8>,
    pub(crate) argc: u32,
    /// `KEY=VALUE` strings, each NUL-terminated, back to back.
    pub(crate) env: Vec<u8>,
    pub(crate) envc: u32,
    pub(crate) stdin: Bytes,
    pub(crate) stdin_pos: usize,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stdout_cap: usize,
    pub(crate) stderr: Vec<u8>,
    /// Whether stdout is returned as it is rather than parsed as CGI output.
    pub(crate) raw_output: bool,
    /// How stdout goes out while the guest runs (`wagi::stdout_piece`).
    pub(crate) pieces: Pieces,
    /// Volumes and the files opened beneath them.
    pub(crate) files: Files,
    /// The service's grants (for outbound calls), when run for a request.
    pub(crate) setup: Option<std::sync::Arc<frenezulo_core::GuestSetup>>,
    /// Outbound HTTP calls and the responses held open.
    pub(crate) http: Calls,
    /// Bytes copied between guest memory and the host since the engine last took the
    /// count: wasmi charges them as fuel, so that time spent in host calls counts
    /// against the guest's slice as its own instructions do.
    pub(crate) moved: usize,
    /// The `poll_oneoff` call the guest sleeps in ([`crate::wasi::poll`]).
    pub(crate) asleep: Option<Asleep>,
}

/// A guest asleep in `poll_oneoff`: where the call's subscriptions and answer are, to
/// answer it when it wakes.
#[derive(Debug)]
pub(crate) struct Asleep {
    pub(crate) subs: i32,
    pub(crate) count: u32,
    pub(crate) events: i32,
    pub(crate) nevents: i32,
    /// When the call was made, by both clocks: relative timeouts count from here.
    pub(crate) called: (std::time::Instant, std::time::SystemTime),
    /// When its first clock is due.
    pub(crate) until: std::time::Instant,
}

/// Where a WAGI guest's response is in being sent in pieces.
#[derive(Debug, Default)]
pub(crate) struct Pieces {
    /// Its head went out: what stdout holds now is more of the body.
    pub(crate) started: bool,
    /// Its head is not one that can go out early (malformed, or not within the first
    /// piece's bytes): the response goes out whole, or as an error, at the end.
    pub(crate) refused: bool,
    /// When a slice first ended with bytes in stdout not handed out since.
    pub(crate) waiting_since: Option<std::time::Instant>,
}

impl GuestIo {
    /// A guest whose stdin is `stdin` and whose stdout may hold `stdout_cap` bytes; argv
    /// and environment are added with the `push_*` methods. `env_capacity` sizes the
    /// environment buffer up front.
    pub fn new(stdin: Bytes, stdout_cap: usize, env_capacity: usize) -> Self {
        GuestIo {
            stdin,
            stdout_cap,
            env: Vec::with_capacity(env_capacity),
            ..GuestIo::default()
        }
    }

    /// Takes the count of bytes moved since it was last taken ([`GuestIo::moved`]).
    pub fn take_moved(&mut self) -> usize {
        std::mem::take(&mut self.moved)
    }

    /// Adds an argv item (NUL bytes, which C strings cannot hold, are dropped).
    pub fn push_arg(&mut self, arg: &[u8]) {
        push_c_string(&mut self.args, arg);
        self.args.push(0);
        self.argc += 1;
    }

    /// Adds an environment variable.
    pub fn push_env(&mut self, key: &[u8], value: &[u8]) {
        push_c_string(&mut self.env, key);
        self.env.push(b'=');
        push_c_string(&mut self.env, value);
        self.env.push(0);
        self.envc += 1;
    }

    /// Adds an environment variable whose value is formatted in place.
    pub fn push_env_display(&mut self, key: &[u8], value: impl std::fmt::Display) {
        use std::io::Write as _;
        push_c_string(&mut self.env, key);
        self.env.push(b'=');
        let _ = write!(self.env, "{value}");
        self.env.push(0);
        self.envc += 1;
    }

    /// Adds an environment variable whose value is a decimal number (no formatter: this
    /// runs several times per request).
    pub fn push_env_number(&mut self, key: &[u8], value: u64) {
        self.begin_env(key);
        push_decimal(&mut self.env, value);
        self.end_env();
    }

    /// Adds an environment variable whose value is an IP address.
    pub fn push_env_ip(&mut self, key: &[u8], ip: std::net::IpAddr) {
        match ip {
            std::net::IpAddr::V4(v4) => {
                self.begin_env(key);
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.env.push(b'.');
                    }
                    push_decimal(&mut self.env, u64::from(octet));
                }
                self.end_env();
            }
            v6 => self.push_env_display(key, v6),
        }
    }

    /// Starts an environment variable whose value the caller appends with
    /// [`GuestIo::env_value_part`] and ends with [`GuestIo::end_env`].
    pub fn begin_env(&mut self, key: &[u8]) {
        push_c_string(&mut self.env, key);
        self.env.push(b'=');
    }

    /// Appends to the value of the variable begun with [`GuestIo::begin_env`].
    pub fn env_value_part(&mut self, part: &[u8]) {
        push_c_string(&mut self.env, part);
    }

    /// Ends the variable begun with [`GuestIo::begin_env`].
    pub fn end_env(&mut self) {
        self.env.push(0);
        self.envc += 1;
    }

    /// What the guest wrote to stdout.
    pub fn stdout(&self) -> &[u8] {
        &self.stdout
    }

    /// Takes what the guest wrote to stdout.
    pub fn take_stdout(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.stdout)
    }

    /// What the guest wrote to stderr, up to [`STDERR_CAP`].
    pub fn stderr(&self) -> &[u8] {
        &self.stderr
    }

    /// Grants the guest what its service was granted: volumes, as preopened directories
    /// from fd 3 on, and outbound calls.
    pub fn grant(&mut self, setup: &std::sync::Arc<frenezulo_core::GuestSetup>) {
        if let Some(grants) = Grants::of(setup)
            && !grants.volumes.is_empty()
        {
            self.files = Files::new(&grants.volumes);
        }
        self.setup = Some(setup.clone());
    }
}

fn push_c_string(buf: &mut Vec<u8>, s: &[u8]) {
    if s.contains(&0) {
        buf.extend(s.iter().filter(|&&b| b != 0));
    } else {
        buf.extend_from_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_format_as_display_does() {
        let mut io = GuestIo::new(Bytes::new(), 8, 0);
        let mut want = Vec::new();
        for n in [0u64, 7, 10, 65535, u64::MAX] {
            io.push_env_number(b"N", n);
            want.extend_from_slice(format!("N={n}\0").as_bytes());
        }
        for ip in [
            "10.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            io.push_env_ip(b"IP", ip);
            want.extend_from_slice(format!("IP={ip}\0").as_bytes());
        }
        assert_eq!(io.env, want);
    }
}
