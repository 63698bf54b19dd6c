//! `poll_oneoff`: a guest waits on clocks (how `sleep` reaches the host on
//! `wasm32-wasip1`), or on its stdio and files, which are always ready. A wait on clocks
//! none of which is due yet stops the call with [`HostStop::Sleeping`]: the engine parks
//! the guest without its thread until [`GuestIo::wake_at`] and then answers the call with
//! [`GuestIo::wake`].

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{errno, errno_of, monotonic_base};
use crate::abi::{slice, write_bytes, write_u32};
use crate::host::{Asleep, GuestIo, HostStop, STDERR_CAP};

/// Bytes of one `subscription` and of one `event` in guest memory.
const SUBSCRIPTION: u32 = 48;
const EVENT: u32 = 32;

/// Most subscriptions one call may pass: far more than a WAGI guest waits on, and a bound
/// on the work one call makes.
const MAX_SUBSCRIPTIONS: u32 = 1024;

/// `eventtype` values.
const CLOCK: u8 = 0;
const FD_READ: u8 = 1;
const FD_WRITE: u8 = 2;

/// `subclockflags`: the timeout is an absolute time of the clock, not a wait.
const ABSTIME: u16 = 1;

impl GuestIo {
    /// `poll_oneoff(subscriptions, events_out, count, nevents_out)`: every subscription
    /// that is ready now gets its event; with none ready, the guest sleeps until the
    /// first clock is due ([`HostStop::Sleeping`]).
    pub fn poll_oneoff(
        &mut self,
        mem: &mut [u8],
        subs: i32,
        events: i32,
        count: i32,
        nevents: i32,
    ) -> Result<i32, HostStop> {
        let Some(count) = u32::try_from(count)
            .ok()
            .filter(|c| (1..=MAX_SUBSCRIPTIONS).contains(c))
        else {
            return Ok(errno::INVAL);
        };
        let called = (Instant::now(), SystemTime::now());
        let mut asleep = Asleep {
            subs,
            count,
            events,
            nevents,
            called,
            until: called.0,
        };
        match self.answer(mem, &mut asleep, called.0) {
            Ok(0) => {
                self.asleep = Some(asleep);
                Err(HostStop::Sleeping)
            }
            Ok(n) => Ok(errno_of(write_u32(mem, nevents, n))),
            Err(e) => Ok(e),
        }
    }

    /// When the guest asleep in `poll_oneoff` is to wake, if it is asleep.
    pub fn wake_at(&self) -> Option<Instant> {
        self.asleep.as_ref().map(|a| a.until)
    }

    /// Answers the `poll_oneoff` the guest sleeps in, as at the instant it was to wake:
    /// the clocks due by then get their events. Returns the call's errno.
    pub fn wake(&mut self, mem: &mut [u8]) -> i32 {
        let Some(mut asleep) = self.asleep.take() else {
            return errno::INVAL;
        };
        let now = asleep.until;
        match self.answer(mem, &mut asleep, now) {
            Ok(n) => errno_of(write_u32(mem, asleep.nevents, n)),
            Err(e) => e,
        }
    }

    /// Writes an event for each subscription ready at `now` and returns how many; sets
    /// `asleep.until` to the first clock due after `now`. An errno for a bad call.
    fn answer(&mut self, mem: &mut [u8], asleep: &mut Asleep, now: Instant) -> Result<u32, i32> {
        if slice(mem, asleep.events, asleep.count * EVENT).is_none() {
            return Err(errno::FAULT);
        }
        let mut ready = 0u32;
        let mut first_due: Option<Instant> = None;
        for i in 0..asleep.count {
            let at = asleep.subs.wrapping_add((i * SUBSCRIPTION) as i32);
            let sub: [u8; SUBSCRIPTION as usize] = slice(mem, at, SUBSCRIPTION)
                .and_then(|s| s.try_into().ok())
                .ok_or(errno::FAULT)?;
            let userdata = u64_at(&sub, 0);
            let kind = sub[8];
            let event = match kind {
                CLOCK => {
                    let due = clock_due(&sub, asleep.called).ok_or(errno::INVAL)?;
                    if due > now {
                        first_due = Some(first_due.map_or(due, |f| f.min(due)));
                        continue;
                    }
                    Event::new(userdata, kind, errno::SUCCESS, 0)
                }
                FD_READ | FD_WRITE => self.fd_event(userdata, kind, u32_at(&sub, 16) as i32),
                _ => return Err(errno::INVAL),
            };
            let out = asleep.events.wrapping_add((ready * EVENT) as i32);
            write_bytes(mem, out, &event.0).ok_or(errno::FAULT)?;
            ready += 1;
        }
        if let Some(due) = first_due {
            asleep.until = due;
        }
        Ok(ready)
    }

    /// The event of a wait for `fd` to read or write: stdio and files never block, so it
    /// is ready now, or an error for a descriptor that cannot do what was asked.
    fn fd_event(&mut self, userdata: u64, kind: u8, fd: i32) -> Event {
        let room = match (kind, fd) {
            (FD_READ, 0) => Some(self.stdin.len() - self.stdin_pos),
            (FD_WRITE, 1) => Some(self.stdout_cap.saturating_sub(self.stdout.len())),
            (FD_WRITE, 2) => Some(STDERR_CAP - self.stderr.len()),
            (FD_READ, 3..) if self.files.fdstat(fd).is_some() => Some(0),
            _ => None,
        };
        match room {
            Some(n) => Event::new(userdata, kind, errno::SUCCESS, n as u64),
            None => Event::new(userdata, kind, errno::BADF, 0),
        }
    }
}

/// An `event` as the guest reads it.
struct Event([u8; EVENT as usize]);

impl Event {
    fn new(userdata: u64, kind: u8, error: i32, nbytes: u64) -> Self {
        let mut e = [0u8; EVENT as usize];
        e[0..8].copy_from_slice(&userdata.to_le_bytes());
        e[8..10].copy_from_slice(&(error as u16).to_le_bytes());
        e[10] = kind;
        e[16..24].copy_from_slice(&nbytes.to_le_bytes());
        Event(e)
    }
}

/// When a clock subscription is due, for a call made at `called`; `None` for a clock
/// that cannot be waited on (the CPU-time clocks, an unknown id).
fn clock_due(sub: &[u8; SUBSCRIPTION as usize], called: (Instant, SystemTime)) -> Option<Instant> {
    let id = u32_at(sub, 16);
    let timeout = u64_at(sub, 24);
    let absolute = u16::from_le_bytes([sub[40], sub[41]]) & ABSTIME != 0;
    let wait = match (id, absolute) {
        (0 | 1, false) => timeout,
        (0, true) => {
            let now = called.1.duration_since(UNIX_EPOCH).unwrap_or_default();
            timeout.saturating_sub(now.as_nanos() as u64)
        }
        (1, true) => {
            let now = called.0.saturating_duration_since(monotonic_base());
            timeout.saturating_sub(now.as_nanos() as u64)
        }
        _ => return None,
    };
    // A wait past any request's deadline: the request ends first.
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    Some(
        called
            .0
            .checked_add(Duration::from_nanos(wait).min(CENTURY))
            .unwrap_or(called.0),
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A subscription at `at` in `mem`.
    fn subscribe(mem: &mut [u8], at: usize, userdata: u64, kind: u8, arg: u32, timeout: u64) {
        let sub = &mut mem[at..at + SUBSCRIPTION as usize];
        sub.fill(0);
        sub[0..8].copy_from_slice(&userdata.to_le_bytes());
        sub[8] = kind;
        sub[16..20].copy_from_slice(&arg.to_le_bytes());
        sub[24..32].copy_from_slice(&timeout.to_le_bytes());
    }

    /// The `(userdata, error, type, nbytes)` of the event at `at`.
    fn event(mem: &[u8], at: usize) -> (u64, u16, u8, u64) {
        (
            u64_at(mem, at),
            u16::from_le_bytes([mem[at + 8], mem[at + 9]]),
            mem[at + 10],
            u64_at(mem, at + 16),
        )
    }

    fn io() -> GuestIo {
        GuestIo::new(Bytes::from_static(b"body"), 100, 0)
    }

    const SUBS: usize = 0;
    const EVENTS: usize = 256;
    const NEVENTS: i32 = 512;

    fn poll(io: &mut GuestIo, mem: &mut [u8], count: i32) -> Result<i32, HostStop> {
        io.poll_oneoff(mem, SUBS as i32, EVENTS as i32, count, NEVENTS)
    }

    #[test]
    fn stdio_is_ready_at_once_beside_a_clock() {
        let (mut io, mut mem) = (io(), vec![0u8; 1024]);
        subscribe(&mut mem, 0, 7, CLOCK, 1, 10_000_000_000);
        subscribe(&mut mem, 48, 8, FD_READ, 0, 0);
        subscribe(&mut mem, 96, 9, FD_WRITE, 1, 0);
        subscribe(&mut mem, 144, 10, FD_WRITE, 0, 0);
        assert_eq!(poll(&mut io, &mut mem, 4), Ok(errno::SUCCESS));
        assert_eq!(u32_at(&mem, NEVENTS as usize), 3);
        assert_eq!(event(&mem, EVENTS), (8, 0, FD_READ, 4));
        assert_eq!(event(&mem, EVENTS + 32), (9, 0, FD_WRITE, 100));
        assert_eq!(
            event(&mem, EVENTS + 64),
            (10, errno::BADF as u16, FD_WRITE, 0)
        );
        assert_eq!(io.wake_at(), None);
    }

    #[test]
    fn a_clock_already_due_answers_at_once() {
        let (mut io, mut mem) = (io(), vec![0u8; 1024]);
        subscribe(&mut mem, 0, 1, CLOCK, 1, 0);
        assert_eq!(poll(&mut io, &mut mem, 1), Ok(errno::SUCCESS));
        assert_eq!(u32_at(&mem, NEVENTS as usize), 1);
        assert_eq!(event(&mem, EVENTS), (1, 0, CLOCK, 0));
        // An absolute time not after now, of either clock (the monotonic one starts
        // with the process).
        for (clock, at) in [(0, 1), (1, 0)] {
            subscribe(&mut mem, 0, 2, CLOCK, clock, at);
            mem[40] = ABSTIME as u8;
            assert_eq!(poll(&mut io, &mut mem, 1), Ok(errno::SUCCESS));
            assert_eq!(event(&mem, EVENTS), (2, 0, CLOCK, 0));
        }
    }

    #[test]
    fn a_wait_sleeps_until_its_first_clock_and_answers_that_one() {
        let (mut io, mut mem) = (io(), vec![0u8; 1024]);
        let before = Instant::now();
        subscribe(&mut mem, 0, 1, CLOCK, 1, 5_000_000_000);
        subscribe(&mut mem, 48, 2, CLOCK, 0, 2_000_000_000);
        assert_eq!(poll(&mut io, &mut mem, 2), Err(HostStop::Sleeping));
        let until = io.wake_at().expect("asleep");
        assert!(until >= before + Duration::from_secs(2));
        assert!(until <= Instant::now() + Duration::from_secs(2));
        assert_eq!(io.wake(&mut mem), errno::SUCCESS);
        assert_eq!(u32_at(&mem, NEVENTS as usize), 1);
        assert_eq!(event(&mem, EVENTS), (2, 0, CLOCK, 0));
        assert_eq!(io.wake_at(), None);
    }

    #[test]
    fn bad_calls_are_errors_not_sleeps() {
        let (mut io, mut mem) = (io(), vec![0u8; 1024]);
        subscribe(&mut mem, 0, 1, CLOCK, 1, 5_000_000_000);
        assert_eq!(poll(&mut io, &mut mem, 0), Ok(errno::INVAL));
        assert_eq!(poll(&mut io, &mut mem, -1), Ok(errno::INVAL));
        assert_eq!(poll(&mut io, &mut mem, 1025), Ok(errno::INVAL));
        // Subscriptions or events beyond memory.
        assert_eq!(poll(&mut io, &mut mem, 22), Ok(errno::FAULT));
        assert_eq!(
            io.poll_oneoff(&mut mem, 0, 1000, 1, NEVENTS),
            Ok(errno::FAULT)
        );
        // A CPU-time clock, an unknown event type.
        subscribe(&mut mem, 0, 1, CLOCK, 2, 5);
        assert_eq!(poll(&mut io, &mut mem, 1), Ok(errno::INVAL));
        subscribe(&mut mem, 0, 1, 3, 0, 0);
        assert_eq!(poll(&mut io, &mut mem, 1), Ok(errno::INVAL));
        assert_eq!(io.wake_at(), None);
    }
}
