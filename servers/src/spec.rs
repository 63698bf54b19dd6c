//! A service's settings as every way in gives them: the limits as written (`LimitsConfig`,
//! with the ceilings each is checked against), byte sizes and durations as people write
//! them, environment values and their checks, who defined a service (`Origin`), and the
//! service a config file or module map asks to load at start (`ServiceSpec`). A leaf:
//! config files, the management API, the manifest and NATS entries all use it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use frenezulo_core::ServiceLimits;
use serde::{Deserialize, Serialize};

use crate::guest::GuestConfig;

/// A service to load at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its name, which is its prefix.
    pub name: String,
    /// Path of its `.wasm` or `.wat` module.
    pub module: PathBuf,
    /// Its limits.
    pub limits: ServiceLimits,
    /// Environment values for its guests.
    pub env: BTreeMap<String, String>,
    /// Entrypoint, argv template and volumes (host paths already joined to the config
    /// file's directory).
    pub guest: GuestConfig,
    /// The config file or the command line.
    pub origin: Origin,
}

/// Who defined a service, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Origin {
    /// The management API; it may replace, reconfigure and remove it.
    Api,
    /// The config file; changed by editing the file and restarting.
    Config,
    /// A `--service` flag; changed by restarting with other flags.
    Cli,
    /// The built-in `hello`, served when nothing else is configured; the API may add a
    /// service of the same name, which then takes its place.
    BuiltIn,
}

impl Origin {
    /// Whether the management API may replace, reconfigure or remove such a service.
    pub fn api_may_change(self) -> bool {
        matches!(self, Origin::Api | Origin::BuiltIn)
    }

    /// The name shown in listings.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Config => "config",
            Origin::Cli => "cli",
            Origin::BuiltIn => "built-in",
        }
    }
}

/// Per-service limits as written; each unset key falls back to `[limits]`, then the default.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<usize>,
    /// The service's share of a serving thread's guest time against others with work.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_weight: Option<u32>,
}

impl LimitsConfig {
    /// Every key set, to the values of `limits`.
    pub fn of(limits: &ServiceLimits) -> LimitsConfig {
        LimitsConfig {
            memory: Some(Size(limits.memory_bytes)),
            deadline: Some(Span(limits.deadline)),
            stdout: Some(Size(limits.stdout_bytes)),
            body: Some(Size(limits.body_bytes)),
            concurrency: Some(limits.max_concurrency),
            queue: Some(limits.max_queued),
            cpu_weight: Some(limits.cpu_weight),
        }
    }

    /// These keys over `other`'s: a key set here wins.
    pub fn over(&self, other: &LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            memory: self.memory.or(other.memory),
            deadline: self.deadline.or(other.deadline),
            stdout: self.stdout.or(other.stdout),
            body: self.body.or(other.body),
            concurrency: self.concurrency.or(other.concurrency),
            queue: self.queue.or(other.queue),
            cpu_weight: self.cpu_weight.or(other.cpu_weight),
        }
    }

    /// Refuses values no service can run with, and values above the documented ceilings
    /// in [`ceiling`]. Every way in (config file, API, manifest load, a shared registry's
    /// entry) goes through here before the limits are applied.
    pub fn check(&self) -> Result<(), LimitError> {
        if let Some(Size(v)) = self.memory {
            check_size(
                "memory",
                v,
                ceiling::MIN_MEMORY_BYTES,
                ceiling::MEMORY_BYTES,
            )?;
        }
        if let Some(Span(v)) = self.deadline {
            check_span("deadline", v, ceiling::MIN_DEADLINE, ceiling::DEADLINE)?;
        }
        if let Some(Size(v)) = self.stdout {
            check_size("stdout", v, 0, ceiling::STDOUT_BYTES)?;
        }
        if let Some(Size(v)) = self.body {
            check_size("body", v, 0, ceiling::BODY_BYTES)?;
        }
        if let Some(v) = self.concurrency {
            check_count("concurrency", v, 1, ceiling::CONCURRENCY)?;
        }
        if let Some(v) = self.queue {
            check_count("queue", v, 0, ceiling::QUEUE)?;
        }
        if let Some(v) = self.cpu_weight {
            let max = frenezulo_core::MAX_CPU_WEIGHT;
            check_count("cpu_weight", v as usize, 1, max as usize)?;
        }
        Ok(())
    }

    /// `limits` with the keys set here applied.
    pub fn apply(&self, mut limits: ServiceLimits) -> ServiceLimits {
        if let Some(v) = self.memory {
            limits.memory_bytes = v.0;
        }
        if let Some(v) = self.deadline {
            limits.deadline = v.0;
        }
        if let Some(v) = self.stdout {
            limits.stdout_bytes = v.0;
        }
        if let Some(v) = self.body {
            limits.body_bytes = v.0;
        }
        if let Some(v) = self.concurrency {
            limits.max_concurrency = v;
        }
        if let Some(v) = self.queue {
            limits.max_queued = v;
        }
        if let Some(v) = self.cpu_weight {
            limits.cpu_weight = v;
        }
        limits
    }
}

/// The largest value each setting may have, whoever sets it. They keep arithmetic on them
/// (a deadline added to the clock, buffers sized by them) from overflowing, and a token
/// holder from asking for more than one machine has. README.md and SECURITY.md list them.
pub mod ceiling {
    use std::time::Duration;

    /// One WebAssembly page: the smallest memory a module can have.
    pub const MIN_MEMORY_BYTES: usize = 64 * 1024;
    /// A 32-bit guest's whole address space (65536 pages).
    pub const MEMORY_BYTES: usize = 65_536 * MIN_MEMORY_BYTES;
    /// The shortest deadline (zero would answer 504 before any work).
    pub const MIN_DEADLINE: Duration = Duration::from_millis(1);
    /// A request's deadline: one hour.
    pub const DEADLINE: Duration = Duration::from_secs(3600);
    /// What one run may write to stdout, held in memory until the response is sent.
    pub const STDOUT_BYTES: usize = 1 << 30;
    /// A request body (per service, and the server's `max_body`), held in memory.
    pub const BODY_BYTES: usize = 1 << 30;
    /// A service's tasks running at once.
    pub const CONCURRENCY: usize = 65_536;
    /// A service's requests waiting for a task.
    pub const QUEUE: usize = 1 << 20;
    /// Any of the server's own timeouts (`idle_timeout`, `keep_alive_timeout`,
    /// `request_timeout`, `write_timeout`, `drain_timeout`, `fetch_timeout`,
    /// `outbound_timeout`): one day.
    pub const TIMEOUT: Duration = Duration::from_secs(24 * 3600);
}

/// Why a limit's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// Below the smallest value a service can run with.
    #[error("`{key}` is {value}; it must be at least {min}")]
    TooSmall {
        /// The setting.
        key: &'static str,
        /// Its value, as given.
        value: String,
        /// The smallest allowed.
        min: String,
    },
    /// Above the ceiling in [`ceiling`].
    #[error("`{key}` is {value}; it must be at most {max}")]
    TooLarge {
        /// The setting.
        key: &'static str,
        /// Its value, as given.
        value: String,
        /// The largest allowed.
        max: String,
    },
}

fn check_range<T: PartialOrd>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
    show: impl Fn(&T) -> String,
) -> Result<(), LimitError> {
    if value < min {
        return Err(LimitError::TooSmall {
            key,
            value: show(&value),
            min: show(&min),
        });
    }
    if value > max {
        return Err(LimitError::TooLarge {
            key,
            value: show(&value),
            max: show(&max),
        });
    }
    Ok(())
}

pub fn check_size(key: &'static str, v: usize, min: usize, max: usize) -> Result<(), LimitError> {
    check_range(key, v, min, max, |n| format_size(*n))
}

fn check_span(
    key: &'static str,
    v: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), LimitError> {
    check_range(key, v, min, max, |d| format_duration(*d))
}

pub fn check_count(key: &'static str, v: usize, min: usize, max: usize) -> Result<(), LimitError> {
    check_range(key, v, min, max, usize::to_string)
}

/// Checks one of the server's own timeouts against [`ceiling::TIMEOUT`].
pub fn check_timeout(key: &'static str, v: Duration) -> Result<(), LimitError> {
    check_span(key, v, Duration::ZERO, ceiling::TIMEOUT)
}

/// `"4GiB"` for whole binary units, bytes otherwise.
pub fn format_size(n: usize) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// A byte size: an integer, or a string with a unit (`"64MiB"`, `"512KiB"`, `"1GiB"`, `"100B"`).
/// Written back as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "SizeRepr", into = "usize")]
pub struct Size(pub usize);

impl From<Size> for usize {
    fn from(s: Size) -> usize {
        s.0
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(usize),
    Text(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;

    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::Int(n) => Ok(Size(n)),
            SizeRepr::Text(s) => parse_size(&s).map(Size),
        }
    }
}

/// A duration: an integer number of seconds, or a string with a unit (`"250ms"`, `"10s"`, `"5m"`, `"1h"`).
/// Written back as a string: whole seconds as `"10s"`, anything finer in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct Span(pub Duration);

impl From<Span> for String {
    fn from(s: Span) -> String {
        format_duration(s.0)
    }
}

/// `"10s"` for whole seconds, `"250ms"` otherwise: what [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl TryFrom<SizeRepr> for Span {
    type Error = String;

    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::Int(n) => Ok(Span(Duration::from_secs(n as u64))),
            SizeRepr::Text(s) => parse_duration(&s).map(Span),
        }
    }
}

fn split_unit(s: &str) -> (&str, &str) {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (&s[..at], s[at..].trim())
}

/// Parses `"64MiB"`-style sizes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let (num, unit) = split_unit(s);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64MiB"))?;
    let scale: usize = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => {
            return Err(format!(
                "`{s}`: unknown size unit `{unit}` (use B, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses `"250ms"`-style durations; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_unit(s);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 10s"))?;
    let scale: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "`{s}`: unknown duration unit `{unit}` (use ms, s, m, h)"
            ));
        }
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// A service's environment values, by name.
pub type EnvValues = BTreeMap<String, String>;

/// Checks an environment value's name: what a shell would take, and not a CGI variable
/// a request sets (those always come from the request).
pub fn check_env_name(name: &str) -> Result<(), String> {
    let valid = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if name.is_empty() || !valid {
        return Err(format!(
            "environment name `{name}` must match [A-Za-z_][A-Za-z0-9_]*"
        ));
    }
    if frenezulo_engines::wagi::is_cgi_variable(name) {
        return Err(format!(
            "environment name `{name}` is a CGI variable that each request sets"
        ));
    }
    Ok(())
}

/// Checks every name and value of a service's environment.
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in env {
        check_env_name(name)?;
        if value.contains('\0') {
            return Err(format!("environment value of `{name}` contains a NUL byte"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert!(parse_duration("18446744073709551615h").is_err(), "overflow");
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("MiB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 fortnights").is_err());
    }
}
