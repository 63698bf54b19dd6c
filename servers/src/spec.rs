//! A service's settings as every way in gives them: the limits as written (`LimitsConfig`,
//! with the ceilings each is checked against), byte sizes and durations as people write
//! them, environment values and their checks, who defined a service (`Origin`), and the
//! service a config file or module map asks to load at start (`ServiceSpec`). A leaf:
//! config files, the management API, the manifest and NATS entries all use it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use frenezulo_core::ServiceLimits;
pub use frenezulo_core::ceiling::{self, LimitError, check_size, check_timeout, format_duration};
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

pub use frenezulo_core::control::catalog::Origin;

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

    /// Refuses values no service can run with, and values above the ceilings in
    /// [`ceiling`]. Every way in (config file, API, manifest load, a shared registry's
    /// entry) goes through here before the limits are applied. The keys not set take their
    /// defaults, which are within their ceilings.
    pub fn check(&self) -> Result<(), LimitError> {
        self.apply(ServiceLimits::default()).check()
    }

    /// Limits from `key=value` text, as a query string or the command line gives them.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<LimitsConfig, String> {
        let mut limits = LimitsConfig::default();
        for (key, value) in pairs {
            let (key, value) = (key.as_ref(), value.as_ref());
            let count = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("`{key}` must be a whole number, not `{value}`"))
            };
            match key {
                "memory" => limits.memory = Some(Size(parse_size(value)?)),
                "deadline" => limits.deadline = Some(Span(parse_duration(value)?)),
                "stdout" => limits.stdout = Some(Size(parse_size(value)?)),
                "body" => limits.body = Some(Size(parse_size(value)?)),
                "concurrency" => limits.concurrency = Some(count()?),
                "queue" => limits.queue = Some(count()?),
                "cpu_weight" => {
                    let weight = u32::try_from(count()?)
                        .map_err(|_| format!("`cpu_weight` {value} is too large"))?;
                    limits.cpu_weight = Some(weight);
                }
                _ => {
                    return Err(format!(
                        "unknown limit `{key}`; the limits are memory, deadline, stdout, body, concurrency, queue and cpu_weight"
                    ));
                }
            }
        }
        Ok(limits)
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
/// Why an environment value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// Not a name a shell or a guest can use.
    #[error("environment name `{0}` must match [A-Za-z_][A-Za-z0-9_]*")]
    BadName(String),
    /// A CGI variable, which each request sets.
    #[error("environment name `{0}` is a CGI variable that each request sets")]
    CgiVariable(String),
    /// A value with a NUL byte, which no C string can carry.
    #[error("environment value of `{0}` contains a NUL byte")]
    Nul(String),
}

/// Checks one environment name: a shell's, and not one each request sets.
pub fn check_env_name(name: &str) -> Result<(), EnvError> {
    let valid = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
    if name.is_empty() || !valid {
        return Err(EnvError::BadName(name.to_owned()));
    }
    if frenezulo_engines::wagi::is_cgi_variable(name) {
        return Err(EnvError::CgiVariable(name.to_owned()));
    }
    Ok(())
}

/// Checks every name and value of a service's environment.
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), EnvError> {
    for (name, value) in env {
        check_env_name(name)?;
        if value.contains('\0') {
            return Err(EnvError::Nul(name.clone()));
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
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("MiB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 fortnights").is_err());
    }
}
