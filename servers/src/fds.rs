//! The file descriptor budget: at start the soft `RLIMIT_NOFILE` is raised to the hard
//! limit, and what the server may hold open at once (its own descriptors, client
//! connections, files guests open in their volumes) must fit in it. A configuration that
//! does not fit is refused at start with the numbers, rather than failing `accept` or a
//! guest's `path_open` under load.

use frenezulo_engines::wasi::files::MAX_OPEN;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::warn;

/// Descriptors kept for the server itself whatever the configuration: standard streams,
/// the data directory's lock, logs, files read while compiling or fetching, NATS, the
/// artifact cache. Per serving thread and per outbound worker come on top.
const RESERVED: u64 = 128;
/// Per serving thread: its poller, its waker, its listening socket, and slack.
const PER_WORKER: u64 = 4;
/// Per outbound worker: its connection, and one idle one kept for reuse.
const PER_OUTBOUND_WORKER: u64 = 2;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit now in force
/// (an unlimited one as `u64::MAX`). If it cannot be raised, the current soft limit is
/// returned and a warning logged.
pub fn raise_limit() -> u64 {
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if current.current == current.maximum {
        return soft;
    }
    let raised = Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => current.maximum.unwrap_or(u64::MAX),
        Err(e) => {
            warn!(soft, error = %e, "could not raise the open-file limit to the hard limit");
            soft
        }
    }
}

/// What the server may hold open, from what it is configured to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Serving threads.
    pub workers: usize,
    /// Open client connections at most, all threads together.
    pub max_connections: usize,
    /// Guests running at once, all threads together.
    pub max_running: usize,
    /// Outbound worker threads.
    pub outbound_workers: usize,
    /// Whether any service has volumes (only those guests can open files).
    pub volumes: bool,
}

/// How a configuration fits the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Files one guest may open beyond its volumes: [`MAX_OPEN`], or fewer so that every
    /// running guest can hold that many beside every connection.
    pub guest_files: usize,
    /// Descriptors left over once everything configured is open.
    pub spare: u64,
}

/// Fits `demand` into `limit` descriptors: guests with volumes get up to [`MAX_OPEN`]
/// files each, fewer if the limit requires it, but at least one; connections are not
/// lowered. An error says what does not fit and what to change.
pub fn budget(limit: u64, demand: Demand) -> Result<Budget, String> {
    let reserved = RESERVED
        + PER_WORKER * demand.workers as u64
        + PER_OUTBOUND_WORKER * demand.outbound_workers as u64;
    let connections = demand.max_connections as u64;
    let running = demand.max_running.max(1) as u64;
    let guests_min = if demand.volumes { running } else { 0 };
    let needed = reserved
        .saturating_add(connections)
        .saturating_add(guests_min);
    if needed > limit {
        let guests = if demand.volumes {
            format!(", max_running {running} guests with volumes (one file each at least)")
        } else {
            String::new()
        };
        return Err(format!(
            "the open-file limit (RLIMIT_NOFILE, raised to the hard limit) is {limit}, but \
             {needed} descriptors are needed: {reserved} for the server itself ({} serving \
             threads, {} outbound workers), max_connections {connections}{guests}; raise \
             the limit (`ulimit -n`, systemd's LimitNOFILE=) or lower max_connections",
            demand.workers, demand.outbound_workers,
        ));
    }
    let left = limit - reserved - connections;
    if !demand.volumes {
        return Ok(Budget {
            guest_files: MAX_OPEN,
            spare: left,
        });
    }
    let guest_files = usize::try_from(left / running)
        .unwrap_or(usize::MAX)
        .min(MAX_OPEN);
    Ok(Budget {
        guest_files,
        spare: left - guest_files as u64 * running,
    })
}

/// The most connections `demand` could have within `limit`, leaving its guests with
/// volumes one file each: for lowering a default `max_connections` that does not fit.
/// `None` if not even one connection per serving thread would.
pub fn connections_that_fit(limit: u64, demand: Demand) -> Option<usize> {
    let reserved = RESERVED
        + PER_WORKER * demand.workers as u64
        + PER_OUTBOUND_WORKER * demand.outbound_workers as u64;
    let guests_min = if demand.volumes {
        demand.max_running.max(1) as u64
    } else {
        0
    };
    let fit = limit.saturating_sub(reserved).saturating_sub(guests_min);
    let fit = usize::try_from(fit).unwrap_or(usize::MAX);
    (fit >= demand.workers.max(1)).then_some(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(max_connections: usize, max_running: usize, volumes: bool) -> Demand {
        Demand {
            workers: 4,
            max_connections,
            max_running,
            outbound_workers: 16,
            volumes,
        }
    }

    // 128 + 4 * 4 + 2 * 16
    const RESERVED_HERE: u64 = 176;

    #[test]
    fn a_roomy_limit_keeps_the_full_cap() {
        let b = budget(1 << 20, demand(10_000, 256, true)).unwrap();
        assert_eq!(b.guest_files, MAX_OPEN);
        assert_eq!(b.spare, (1 << 20) - RESERVED_HERE - 10_000 - 256 * 64);
    }

    #[test]
    fn the_default_1024_lowers_the_guests_cap_to_fit() {
        // 64 running guests of 64 files each and 500 connections cannot fit in 1024.
        let b = budget(1024, demand(500, 64, true)).unwrap();
        assert_eq!(b.guest_files, (1024 - RESERVED_HERE as usize - 500) / 64);
        assert!(b.guest_files >= 1 && b.guest_files < MAX_OPEN);
        let held = RESERVED_HERE + 500 + 64 * b.guest_files as u64;
        assert!(held <= 1024);
    }

    #[test]
    fn without_volumes_guests_need_no_files() {
        let b = budget(1024, demand(800, 1000, false)).unwrap();
        assert_eq!(b.guest_files, MAX_OPEN);
        assert_eq!(b.spare, 1024 - RESERVED_HERE - 800);
    }

    #[test]
    fn a_configuration_that_cannot_fit_is_refused_with_the_numbers() {
        let e = budget(1024, demand(10_000, 64, false)).unwrap_err();
        assert!(
            e.contains("1024") && e.contains("max_connections 10000") && e.contains("ulimit"),
            "{e}"
        );
        // Connections fit, but not one file for each running guest with volumes.
        let e = budget(1024, demand(800, 64, true)).unwrap_err();
        assert!(e.contains("max_running 64"), "{e}");
        assert!(budget(1024, demand(800, 64, false)).is_ok());
    }

    #[test]
    fn a_default_connection_count_can_be_lowered_to_fit() {
        let d = demand(10_000, 64, true);
        let fit = connections_that_fit(1024, d).unwrap();
        assert_eq!(fit as u64, 1024 - RESERVED_HERE - 64);
        let lowered = Demand {
            max_connections: fit,
            ..d
        };
        assert_eq!(budget(1024, lowered).unwrap().guest_files, 1);
        assert_eq!(
            connections_that_fit(200, d),
            None,
            "not even one per thread"
        );
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        let limit = raise_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum, "soft raised to hard");
        assert_eq!(Some(limit), now.current.or(Some(u64::MAX)));
    }
}
