//! The access log line of each response, written straight into the thread's log buffer.
//!
//! Going through `tracing`'s formatter cost about 13% of a serving thread's peak (an event,
//! its fields visited, a timestamp formatted per line). The line here has the same shape as
//! the formatter's (`2026-11-30T20:54:01.622523Z  INFO access: service="hello" status=200
//! bytes=143 us=967 guest_us=683 thread=0`, and `cut_short=true` after a response sent
//! in pieces that ended before its end), so what reads the log reads it unchanged, but
//! it is written with a few integer conversions into the buffer the loop flushes once per
//! turn, and its timestamp is the turn's (formatted once per turn, as nginx caches its time).
//! `RUST_LOG` still decides: the target `access` below `info` turns it off.

use std::time::Duration;

use frenezulo_core::Responded;
use frenezulo_core::response::push_decimal;

/// One serving thread's access log.
pub struct AccessLog {
    enabled: bool,
    /// The turn's wall time, microseconds since the Unix epoch.
    wall_us: u64,
    /// `wall_us` formatted, once it is needed (`None` until then).
    stamp: Option<[u8; STAMP]>,
}

/// Bytes of `2026-11-30T20:54:01.622523Z`.
const STAMP: usize = 27;

impl AccessLog {
    /// An access log that writes when `wanted` and the log filter lets `access` through.
    pub fn new(wanted: bool) -> Self {
        AccessLog {
            enabled: wanted && tracing::enabled!(target: "access", tracing::Level::INFO),
            wall_us: 0,
            stamp: None,
        }
    }

    /// The wall time of the turn that starts.
    pub fn turn(&mut self, wall_us: u64) {
        if wall_us != self.wall_us {
            self.wall_us = wall_us;
            self.stamp = None;
        }
    }

    /// Writes the line of one response.
    pub fn write(&mut self, r: &Responded, guest: Duration, thread: usize) {
        if !self.enabled {
            return;
        }
        let stamp = *self.stamp.get_or_insert_with(|| rfc3339(self.wall_us));
        let service = r.service.as_ref().map_or("", |s| s.as_str());
        // By hand rather than through `fmt`: this runs once per response.
        crate::logbuf::append(|out| {
            out.extend_from_slice(&stamp);
            out.extend_from_slice(b"  INFO access: service=\"");
            // Names are checked to be plain ASCII without quotes: nothing to escape.
            out.extend_from_slice(service.as_bytes());
            out.extend_from_slice(b"\" status=");
            push_decimal(out, u64::from(r.status));
            out.extend_from_slice(b" bytes=");
            push_decimal(out, r.bytes as u64);
            out.extend_from_slice(b" us=");
            push_decimal(out, r.elapsed.as_micros() as u64);
            out.extend_from_slice(b" guest_us=");
            push_decimal(out, guest.as_micros() as u64);
            out.extend_from_slice(b" thread=");
            push_decimal(out, thread as u64);
            if r.cut_short {
                out.extend_from_slice(b" cut_short=true");
            }
            out.push(b'\n');
        });
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for microseconds since the Unix epoch, in UTC.
fn rfc3339(us: u64) -> [u8; STAMP] {
    let secs = us / 1_000_000;
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let mut stamp = *b"0000-00-00T00:00:00.000000Z";
    // Each field right-aligned in its zeros, at its offset.
    let mut put = |end: usize, mut n: u64| {
        let mut at = end;
        while n > 0 && at > 0 {
            at -= 1;
            stamp[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(4, year.clamp(0, 9999) as u64);
    put(7, u64::from(month));
    put(10, u64::from(day));
    put(13, of_day / 3600);
    put(16, of_day / 60 % 60);
    put(19, of_day % 60);
    put(26, us % 1_000_000);
    stamp
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_in_utc_with_microseconds() {
        let text = |us| String::from_utf8(rfc3339(us).to_vec()).unwrap();
        assert_eq!(text(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(text(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(text(1_796_068_441_622_523), "2026-11-30T19:54:01.622523Z");
        assert_eq!(text(4_102_444_799_999_999), "2099-12-31T23:59:59.999999Z");
        // Against days counted one at a time, across ordinary and leap years.
        let mut expected = (1970, 1, 1);
        for day in 0..(366 * 4 * 3) {
            assert_eq!(civil_from_days(day), expected, "day {day}");
            let leap = expected.0 % 4 == 0 && (expected.0 % 100 != 0 || expected.0 % 400 == 0);
            let days_in = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            expected.2 += 1;
            if expected.2 > days_in[expected.1 as usize - 1] {
                expected = (expected.0, expected.1 + 1, 1);
                if expected.1 > 12 {
                    expected = (expected.0 + 1, 1, 1);
                }
            }
        }
    }
}
