//! What a run measures: latencies in a log-bucketed histogram (1% resolution), counts by
//! status, and the rest of what the scenarios report.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latencies, in microseconds, bucketed so that a percentile is within 1% of the truth.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: BTreeMap<u32, u64>,
    count: u64,
    sum: f64,
    max: f64,
}

const GROWTH: f64 = 1.01;

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, us: f64) {
        let us = us.max(1.0);
        let bucket = (us.ln() / GROWTH.ln()) as u32;
        *self.buckets.entry(bucket).or_default() += 1;
        self.count += 1;
        self.sum += us;
        self.max = self.max.max(us);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// The `q` quantile (0..=1), at the middle of its bucket; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let low = GROWTH.powi(*bucket as i32);
                return (low * (1.0 + GROWTH) / 2.0).min(self.max);
            }
        }
        self.max
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }
}

/// One service's results.
#[derive(Debug, Clone, Default)]
pub struct ServiceStats {
    /// Latency of every answered request, from the client's first connection attempt to the
    /// response being queued on the server.
    pub latency: Histogram,
    /// Latency of the requests answered 2xx.
    pub ok_latency: Histogram,
    /// Time from the first connection attempt to being accepted (SYN retries included).
    pub accept_wait: Histogram,
    /// Time a connection spent in the kernel's accept queue (from the SYN that got in).
    pub backlog_wait: Histogram,
    /// 2xx responses queued within the run's arrival window (goodput counts these).
    pub ok_in_window: u64,
    /// Responses by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests whose client gave up connecting (every SYN found the backlog full).
    pub connect_failed: u64,
    /// Requests offered (first connection attempts) within the run.
    pub offered: u64,
}

impl ServiceStats {
    /// Responses with this status class (2 for 2xx, ...).
    pub fn class(&self, class: u16) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| **s / 100 == class)
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds another's counts.
    pub fn merge(&mut self, other: &ServiceStats) {
        self.latency.merge(&other.latency);
        self.ok_latency.merge(&other.ok_latency);
        self.accept_wait.merge(&other.accept_wait);
        self.backlog_wait.merge(&other.backlog_wait);
        self.ok_in_window += other.ok_in_window;
        for (s, n) in &other.by_status {
            *self.by_status.entry(*s).or_default() += n;
        }
        self.connect_failed += other.connect_failed;
        self.offered += other.offered;
    }

    /// The summary the reports print.
    pub fn summary(&self, seconds: f64) -> Summary {
        let ms = |us: f64| (us / 10.0).round() / 100.0;
        let answered = self.latency.count();
        Summary {
            offered: self.offered,
            answered,
            ok: self.class(2),
            shed_503: self.by_status.get(&503).copied().unwrap_or(0),
            timeout_504: self.by_status.get(&504).copied().unwrap_or(0),
            errors_5xx: self.class(5),
            connect_failed: self.connect_failed,
            goodput_per_s: (self.ok_in_window as f64 / seconds * 10.0).round() / 10.0,
            shed_share: if self.offered == 0 {
                0.0
            } else {
                ((self.by_status.get(&503).copied().unwrap_or(0) as f64 / self.offered as f64)
                    * 1000.0)
                    .round()
                    / 1000.0
            },
            mean_ms: ms(self.latency.mean()),
            p50_ms: ms(self.latency.quantile(0.5)),
            p99_ms: ms(self.latency.quantile(0.99)),
            p999_ms: ms(self.latency.quantile(0.999)),
            ok_p99_ms: ms(self.ok_latency.quantile(0.99)),
            accept_wait_mean_ms: ms(self.accept_wait.mean()),
            accept_wait_p99_ms: ms(self.accept_wait.quantile(0.99)),
            backlog_wait_mean_ms: ms(self.backlog_wait.mean()),
            backlog_wait_max_ms: ms(self.backlog_wait.quantile(1.0)),
        }
    }
}

/// Figures for one service (or all) in one run, rounded for printing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests offered.
    pub offered: u64,
    /// Requests answered.
    pub answered: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered 503 (shed by admission control).
    pub shed_503: u64,
    /// Answered 504 (deadline).
    pub timeout_504: u64,
    /// Answered 5xx, 503 and 504 included.
    pub errors_5xx: u64,
    /// Never connected.
    pub connect_failed: u64,
    /// 2xx answers per second within the arrival window.
    pub goodput_per_s: f64,
    /// Share of the offered requests answered 503.
    pub shed_share: f64,
    /// Mean latency of answered requests.
    pub mean_ms: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// 99th percentile of the 2xx answers only.
    pub ok_p99_ms: f64,
    /// Mean time in the kernel's accept queue (SYN retries included).
    pub accept_wait_mean_ms: f64,
    /// Its 99th percentile.
    pub accept_wait_p99_ms: f64,
    /// Mean time in the accept queue itself.
    pub backlog_wait_mean_ms: f64,
    /// Longest time in the accept queue.
    pub backlog_wait_max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_percent() {
        let mut h = Histogram::default();
        for i in 1..=10_000 {
            h.record(f64::from(i));
        }
        for (q, want) in [(0.5, 5000.0), (0.99, 9900.0), (0.999, 9990.0)] {
            let got = h.quantile(q);
            assert!((got - want).abs() / want < 0.01, "q{q}: {got} vs {want}");
        }
        assert!((h.mean() - 5000.5).abs() < 1e-6);
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }
}
