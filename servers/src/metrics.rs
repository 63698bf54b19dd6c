//! Metrics: each serving thread counts its own requests (no shared counter on the request
//! path); the management API asks every thread for a snapshot and renders the sum in the
//! Prometheus text exposition format.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use frenezulo_core::{Lifecycle, Responded, ServiceInfo, ServiceName, Stats};

use crate::compile::LoadStats;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One service's counters on one thread (or summed over threads).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceMetrics {
    /// Responses by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Responses per latency bucket (not cumulative); the last slot is past the last bound.
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies, in seconds.
    pub latency_sum: f64,
    /// Time guests of this service ran, in seconds.
    pub guest_seconds: f64,
    /// Compiles (or artifact loads) this service's requests waited for.
    pub cold_starts: u64,
    /// Outbound HTTP calls its guests made (handed to a worker).
    pub outbound_calls: u64,
}

impl ServiceMetrics {
    /// Responses counted.
    pub fn count(&self) -> u64 {
        self.latency.iter().sum()
    }

    fn add(&mut self, other: &ServiceMetrics) {
        for (status, n) in &other.by_status {
            *self.by_status.entry(*status).or_default() += n;
        }
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
        self.latency_sum += other.latency_sum;
        self.guest_seconds += other.guest_seconds;
        self.cold_starts += other.cold_starts;
        self.outbound_calls += other.outbound_calls;
    }
}

/// What one serving thread counts. Requests that matched no service count under `None`.
#[derive(Debug, Clone, Default)]
pub struct ThreadMetrics {
    services: HashMap<Option<ServiceName>, ServiceMetrics>,
}

impl ThreadMetrics {
    /// Counts one response.
    pub fn record(&mut self, r: &Responded, guest: Duration) {
        // Looked up by reference first: the key is cloned only for a service's first response.
        let m = match self.services.get_mut(&r.service) {
            Some(m) => m,
            None => self.services.entry(r.service.clone()).or_default(),
        };
        *m.by_status.entry(r.status).or_default() += 1;
        let seconds = r.elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        m.latency[bucket] += 1;
        m.latency_sum += seconds;
        m.guest_seconds += guest.as_secs_f64();
    }

    /// Counts a cold start of `service`.
    pub fn cold_start(&mut self, service: &ServiceName) {
        let key = Some(service.clone());
        self.services.entry(key).or_default().cold_starts += 1;
    }

    /// Counts an outbound call a guest of `service` made.
    pub fn outbound_call(&mut self, service: &ServiceName) {
        let key = Some(service.clone());
        self.services.entry(key).or_default().outbound_calls += 1;
    }
}

/// One serving thread's state, as the management API sees it.
#[derive(Debug, Clone)]
pub struct ThreadSnapshot {
    /// The thread's index.
    pub thread: usize,
    /// Its core's counters.
    pub stats: Stats,
    /// Guest tasks running (or yielded).
    pub running: usize,
    /// Requests waiting for a task slot.
    pub queued: usize,
    /// Open connections.
    pub connections: usize,
    /// Its view of the services.
    pub services: Vec<ServiceInfo>,
    /// Its counters by service.
    pub metrics: ThreadMetrics,
}

/// Every thread's counters for `service`, summed.
pub fn service_totals(snapshots: &[ThreadSnapshot], service: &ServiceName) -> ServiceMetrics {
    let mut total = ServiceMetrics::default();
    let key = Some(service.clone());
    for s in snapshots {
        if let Some(m) = s.metrics.services.get(&key) {
            total.add(m);
        }
    }
    total
}

/// A service's state across threads: warm if any thread holds it compiled, loading if
/// any is compiling it, cold otherwise.
pub fn service_state(snapshots: &[ThreadSnapshot], service: &ServiceName) -> Option<Lifecycle> {
    let states = snapshots
        .iter()
        .flat_map(|s| &s.services)
        .filter(|i| i.module.service == *service)
        .map(|i| i.state);
    states.fold(None, |acc, state| {
        Some(match (acc, state) {
            (Some(Lifecycle::Warm), _) | (_, Lifecycle::Warm) => Lifecycle::Warm,
            (Some(Lifecycle::Loading), _) | (_, Lifecycle::Loading) => Lifecycle::Loading,
            _ => Lifecycle::Cold,
        })
    })
}

/// The name of a lifecycle state in the API and metrics.
pub fn state_name(state: Lifecycle) -> &'static str {
    match state {
        Lifecycle::Cold => "cold",
        Lifecycle::Loading => "loading",
        Lifecycle::Warm => "warm",
        _ => "unknown",
    }
}

/// Renders everything in the Prometheus text exposition format (version 0.0.4).
pub fn render(snapshots: &[ThreadSnapshot], loads: &BTreeMap<ServiceName, LoadStats>) -> String {
    let mut by_service: BTreeMap<String, ServiceMetrics> = BTreeMap::new();
    for s in snapshots {
        for (name, m) in &s.metrics.services {
            let label = name.as_ref().map_or("", |n| n.as_str()).to_owned();
            by_service.entry(label).or_default().add(m);
        }
    }
    let mut out = String::with_capacity(4096);
    render_requests(&mut out, &by_service);
    render_services(&mut out, &by_service);
    render_loads(&mut out, loads);
    render_threads(&mut out, snapshots);
    out
}

/// Responses by service and status, and the latency histogram.
fn render_requests(out: &mut String, by_service: &BTreeMap<String, ServiceMetrics>) {
    counter(
        out,
        "frenezulo_requests_total",
        "Responses by service (empty for requests that matched none) and status code.",
        by_service.iter().flat_map(|(s, m)| {
            m.by_status.iter().map(move |(status, n)| {
                (
                    format!("service=\"{}\",status=\"{status}\"", escape(s)),
                    n.to_string(),
                )
            })
        }),
    );
    let name = "frenezulo_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From a request being parsed to its response being queued.\n# TYPE {name} histogram"
    );
    for (service, m) in by_service {
        let label = escape(service);
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(m.latency) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{service=\"{label}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = m.count();
        let _ = writeln!(
            out,
            "{name}_bucket{{service=\"{label}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "{name}_sum{{service=\"{label}\"}} {}", m.latency_sum);
        let _ = writeln!(out, "{name}_count{{service=\"{label}\"}} {count}");
    }
}

/// Counters of each named service.
fn render_services(out: &mut String, by_service: &BTreeMap<String, ServiceMetrics>) {
    let named = || by_service.iter().filter(|(s, _)| !s.is_empty());
    counter(
        out,
        "frenezulo_guest_seconds_total",
        "Time guests ran, by service.",
        named().map(|(s, m)| {
            (
                format!("service=\"{}\"", escape(s)),
                m.guest_seconds.to_string(),
            )
        }),
    );
    counter(
        out,
        "frenezulo_cold_starts_total",
        "Requests that found their service cold and waited for it to load, counted once per serving thread and load.",
        named().map(|(s, m)| {
            (
                format!("service=\"{}\"", escape(s)),
                m.cold_starts.to_string(),
            )
        }),
    );
    counter(
        out,
        "frenezulo_outbound_calls_total",
        "Outbound HTTP calls guests made (wasi_experimental_http), by service.",
        named().map(|(s, m)| {
            (
                format!("service=\"{}\"", escape(s)),
                m.outbound_calls.to_string(),
            )
        }),
    );
    counter(
        out,
        "frenezulo_timeouts_total",
        "Requests answered 504 (deadline passed), by service.",
        named().map(|(s, m)| {
            let n = m.by_status.get(&504).copied().unwrap_or(0);
            (format!("service=\"{}\"", escape(s)), n.to_string())
        }),
    );
}

/// How modules were made ready, by service.
fn render_loads(out: &mut String, loads: &BTreeMap<ServiceName, LoadStats>) {
    counter(
        out,
        "frenezulo_module_loads_total",
        "Modules made ready, by service and how: compiled, or deserialized from the artifact cache.",
        loads.iter().flat_map(|(s, l)| {
            [
                (
                    format!("service=\"{}\",from=\"compiled\"", escape(s.as_str())),
                    l.compiled.to_string(),
                ),
                (
                    format!("service=\"{}\",from=\"artifact\"", escape(s.as_str())),
                    l.from_artifact.to_string(),
                ),
            ]
        }),
    );
    counter(
        out,
        "frenezulo_module_load_seconds_total",
        "Time spent compiling or deserializing modules, by service.",
        loads.iter().map(|(s, l)| {
            (
                format!("service=\"{}\"", escape(s.as_str())),
                l.seconds.to_string(),
            )
        }),
    );
}

/// Gauges and counters of each serving thread.
fn render_threads(out: &mut String, snapshots: &[ThreadSnapshot]) {
    let per_thread = |f: fn(&ThreadSnapshot) -> u64| {
        snapshots
            .iter()
            .map(move |s| (format!("thread=\"{}\"", s.thread), f(s).to_string()))
    };
    gauge(
        out,
        "frenezulo_instances_running",
        "Guest instances running or between time slices, by serving thread.",
        per_thread(|s| s.running as u64),
    );
    gauge(
        out,
        "frenezulo_queue_depth",
        "Requests waiting for a guest instance, by serving thread.",
        per_thread(|s| s.queued as u64),
    );
    gauge(
        out,
        "frenezulo_connections",
        "Open client connections, by serving thread.",
        per_thread(|s| s.connections as u64),
    );
    counter(
        out,
        "frenezulo_rejected_total",
        "Requests refused with 503 because the queues were full, by serving thread.",
        per_thread(|s| s.stats.shed),
    );
    counter(
        out,
        "frenezulo_evictions_total",
        "Compiled modules dropped after idling, by serving thread.",
        per_thread(|s| s.stats.evictions),
    );
    counter(
        out,
        "frenezulo_cancelled_total",
        "Guest tasks stopped before they finished (deadline, client gone), by serving thread.",
        per_thread(|s| s.stats.cancelled),
    );
    counter(
        out,
        "frenezulo_abandoned_total",
        "Connections closed unanswered because the client closed while a guest still owed it a response, by serving thread.",
        per_thread(|s| s.stats.abandoned),
    );
    counter(
        out,
        "frenezulo_yields_total",
        "Time slices that ended with the guest still running, by serving thread.",
        per_thread(|s| s.stats.yields),
    );
}

fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (String, String)>,
) {
    family(out, name, "counter", help, samples);
}

fn gauge(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (String, String)>,
) {
    family(out, name, "gauge", help, samples);
}

fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl Iterator<Item = (String, String)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Escapes a label value as the exposition format asks.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use frenezulo_core::ConnId;

    #[test]
    fn responses_land_in_their_bucket_and_sum_over_threads() {
        let shop = ServiceName::new("shop").unwrap();
        let mut a = ThreadMetrics::default();
        let response = |status, ms| Responded {
            conn: ConnId(1),
            service: Some(shop.clone()),
            job: None,
            status,
            bytes: 10,
            elapsed: Duration::from_millis(ms),
            cut_short: false,
        };
        a.record(&response(200, 1), Duration::from_micros(300));
        a.record(&response(504, 20_000), Duration::ZERO);
        a.cold_start(&shop);
        let b = a.clone();
        let snapshot = |thread, metrics| ThreadSnapshot {
            thread,
            stats: Stats::default(),
            running: 0,
            queued: 0,
            connections: 0,
            services: vec![],
            metrics,
        };
        let snapshots = [snapshot(0, a), snapshot(1, b)];
        let total = service_totals(&snapshots, &shop);
        assert_eq!(total.count(), 4);
        assert_eq!(total.by_status[&504], 2);
        assert_eq!(total.latency[1], 2, "1 ms is in the 1 ms bucket");
        assert_eq!(
            total.latency[LATENCY_BUCKETS.len()],
            2,
            "20 s is past the last bound"
        );
        let text = render(&snapshots, &BTreeMap::new());
        assert!(text.contains("frenezulo_requests_total{service=\"shop\",status=\"504\"} 2"));
        assert!(text.contains("frenezulo_cold_starts_total{service=\"shop\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 4"));
    }
}
