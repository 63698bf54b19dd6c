//! The largest value each setting may have, whoever sets it (the config file, the
//! management API, a stored manifest, another node's entry): they keep arithmetic on them
//! (a deadline added to the clock, buffers sized by them) from overflowing, and a token
//! holder from asking for more than one machine has. README.md and SECURITY.md list them.
//! [`ServiceLimits::check`] holds a service's limits to them, every way in.

use std::time::Duration;

use thiserror::Error;

use crate::{MAX_CPU_WEIGHT, ServiceLimits};

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

/// Why a limit's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
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
    /// Above its ceiling in this module.
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

/// Checks a byte size against its range.
pub fn check_size(key: &'static str, v: usize, min: usize, max: usize) -> Result<(), LimitError> {
    check_range(key, v, min, max, |n| format_size(*n))
}

/// Checks a duration against its range.
pub fn check_span(
    key: &'static str,
    v: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), LimitError> {
    check_range(key, v, min, max, |d| format_duration(*d))
}

/// Checks a count against its range.
pub fn check_count(key: &'static str, v: usize, min: usize, max: usize) -> Result<(), LimitError> {
    check_range(key, v, min, max, usize::to_string)
}

/// Checks one of the server's own timeouts against [`TIMEOUT`].
pub fn check_timeout(key: &'static str, v: Duration) -> Result<(), LimitError> {
    check_span(key, v, Duration::ZERO, TIMEOUT)
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

/// `"10s"` for whole seconds, `"250ms"` otherwise: what the config file's parser reads back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl ServiceLimits {
    /// Refuses values no service can run with, and values above the ceilings here.
    pub fn check(&self) -> Result<(), LimitError> {
        check_size("memory", self.memory_bytes, MIN_MEMORY_BYTES, MEMORY_BYTES)?;
        check_span("deadline", self.deadline, MIN_DEADLINE, DEADLINE)?;
        check_size("stdout", self.stdout_bytes, 0, STDOUT_BYTES)?;
        check_size("body", self.body_bytes, 0, BODY_BYTES)?;
        check_count("concurrency", self.max_concurrency, 1, CONCURRENCY)?;
        check_count("queue", self.max_queued, 0, QUEUE)?;
        check_count(
            "cpu_weight",
            self.cpu_weight as usize,
            1,
            MAX_CPU_WEIGHT as usize,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_within_their_ceilings() {
        assert_eq!(ServiceLimits::default().check(), Ok(()));
    }

    #[test]
    fn each_limit_is_held_to_its_range() {
        let ok = ServiceLimits::default();
        let cases = [
            ServiceLimits {
                memory_bytes: MIN_MEMORY_BYTES - 1,
                ..ok
            },
            ServiceLimits {
                memory_bytes: MEMORY_BYTES + 1,
                ..ok
            },
            ServiceLimits {
                deadline: Duration::ZERO,
                ..ok
            },
            ServiceLimits {
                deadline: DEADLINE + Duration::from_millis(1),
                ..ok
            },
            ServiceLimits {
                stdout_bytes: STDOUT_BYTES + 1,
                ..ok
            },
            ServiceLimits {
                body_bytes: BODY_BYTES + 1,
                ..ok
            },
            ServiceLimits {
                max_concurrency: 0,
                ..ok
            },
            ServiceLimits {
                max_queued: QUEUE + 1,
                ..ok
            },
            ServiceLimits {
                cpu_weight: MAX_CPU_WEIGHT + 1,
                ..ok
            },
        ];
        for limits in cases {
            assert!(limits.check().is_err(), "{limits:?}");
        }
        let e = ServiceLimits {
            memory_bytes: MEMORY_BYTES * 2,
            ..ok
        }
        .check()
        .unwrap_err();
        assert_eq!(e.to_string(), "`memory` is 8GiB; it must be at most 4GiB");
    }

    #[test]
    fn sizes_and_durations_are_written_as_people_write_them() {
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
