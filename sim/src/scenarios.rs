//! The questions the simulator answers, each a sweep of runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use frenezulo_core::{ServerConfig, ServiceLimits};
use serde_json::{Value, json};

use crate::cluster::{self, ClusterConfig};
use crate::model::{self, Arrivals, Exec, Outcome, ServiceSpec, SimConfig, Violation};
use crate::profile::Profile;
use crate::report::{Plot, Report};
use crate::stats::ServiceStats;

/// Settings every scenario takes.
#[derive(Debug, Clone)]
pub struct Common {
    /// The seed.
    pub seed: u64,
    /// Seconds of arrivals per run; `None` for the scenario's default.
    pub duration_s: Option<f64>,
    /// Serving threads; `None` for the scenario's default.
    pub threads: Option<usize>,
    /// Modelled costs.
    pub profile: Profile,
    /// The instant virtual time zero maps to (any will do; only differences matter).
    pub epoch: Instant,
}

/// A run that broke an invariant: which point of the sweep, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The point, as the table names it.
    pub point: String,
    /// What did not hold.
    pub violation: Violation,
}

/// Runs every config, on as many threads as the machine has; results in config order.
fn run_all(common: &Common, points: &[(String, SimConfig)]) -> Result<Vec<Outcome>, Failure> {
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(points.len());
    let mut results: Vec<Option<Result<Outcome, Violation>>> = vec![None; points.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((_, cfg)) = points.get(i) else { break };
                        done.push((i, model::run(cfg, common.epoch)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a simulation thread panicked") {
                results[i] = Some(r);
            }
        }
    });
    results
        .into_iter()
        .zip(points)
        .map(|(r, (point, _))| {
            r.expect("every point ran").map_err(|violation| Failure {
                point: point.clone(),
                violation,
            })
        })
        .collect()
}

fn base(common: &Common, duration_s: f64, threads: usize) -> SimConfig {
    SimConfig {
        seed: common.seed,
        duration_s: common.duration_s.unwrap_or(duration_s),
        threads: common.threads.unwrap_or(threads),
        backlog: 1024,
        admission: true,
        server: ServerConfig {
            max_running: 64 * common.threads.unwrap_or(threads),
            ..ServerConfig::default()
        },
        services: Vec::new(),
        compile_threads: 1,
        profile: common.profile.clone(),
    }
}

fn merged(outcome: &Outcome, which: impl Fn(usize) -> bool) -> ServiceStats {
    let mut all = ServiceStats::default();
    for (i, s) in outcome.services.iter().enumerate() {
        if which(i) {
            all.merge(s);
        }
    }
    all
}

/// Options of `accept-queue`.
#[derive(Debug, Clone)]
pub struct AcceptQueue {
    /// Requests per second the server completes at most (sets the guests' run time).
    pub capacity: f64,
    /// Offered load, as multiples of the capacity.
    pub loads: Vec<f64>,
    /// Each serving thread's listen backlog.
    pub backlog: usize,
}

impl Default for AcceptQueue {
    fn default() -> Self {
        Self {
            capacity: 2000.0,
            loads: vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
            backlog: 1024,
        }
    }
}

/// Offered load from half to three times capacity, with admission control and without.
pub fn accept_queue(common: &Common, o: &AcceptQueue) -> Result<Report, Failure> {
    let template = base(common, 20.0, 1);
    let threads = template.threads;
    let p = &common.profile;
    let service_us = threads as f64 * 1e6 / o.capacity;
    let exec_us = service_us - p.connection_us - p.instance_us;
    if exec_us <= 0.0 {
        return Err(Failure {
            point: "setup".to_owned(),
            violation: Violation(format!(
                "a capacity of {} req/s leaves no time for the guest after {} us per connection",
                o.capacity,
                p.connection_us + p.instance_us
            )),
        });
    }
    let mut points = Vec::new();
    for &load in &o.loads {
        for admission in [true, false] {
            let mut cfg = template.clone();
            cfg.backlog = o.backlog;
            cfg.admission = admission;
            cfg.services = vec![ServiceSpec {
                name: "work".to_owned(),
                exec: Exec::Fixed(exec_us),
                trap_share: 0.0,
                hang_share: 0.0,
                sleep: None,
                limits: ServiceLimits::default(),
                arrivals: Arrivals::Poisson(load * o.capacity),
            }];
            // Warm from the start: the question is queueing, not cold starts.
            cfg.profile.compile_ms = 0.0;
            let label = format!(
                "load {load}, admission {}",
                if admission { "on" } else { "off" }
            );
            points.push((label, cfg));
        }
    }
    let outcomes = run_all(common, &points)?;
    let mut rows = Vec::new();
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for ((_, cfg), outcome) in points.iter().zip(&outcomes) {
        let s = outcome.services[0].summary(cfg.duration_s);
        let load = match cfg.services[0].arrivals {
            Arrivals::Poisson(rate) => rate / o.capacity,
            _ => 0.0,
        };
        let series = if cfg.admission { &mut on } else { &mut off };
        series.push((load, s.p99_ms.max(0.001)));
        rows.push(vec![
            json!(load),
            json!(if cfg.admission { "on" } else { "off" }),
            json!(((s.offered as f64 / cfg.duration_s) * 10.0).round() / 10.0),
            json!(s.goodput_per_s),
            json!(s.shed_share),
            json!(s.p50_ms),
            json!(s.p99_ms),
            json!(s.p999_ms),
            json!(s.ok_p99_ms),
            json!(s.backlog_wait_mean_ms),
            json!(s.backlog_wait_max_ms),
            json!(s.accept_wait_p99_ms),
            json!(s.connect_failed),
        ]);
    }
    Ok(Report {
        scenario: "accept-queue".to_owned(),
        seed: common.seed,
        columns: [
            "load", "admission", "offered/s", "goodput/s", "shed 503", "p50 ms", "p99 ms",
            "p99.9 ms", "2xx p99 ms", "in backlog ms", "in backlog max ms",
            "to accept p99 ms", "gave up",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows,
        notes: vec![
            format!(
                "capacity {} req/s on {threads} serving thread(s): {:.0} us per request ({:.0} us connection, {:.1} us instance, {:.0} us guest); backlog {} per thread; {} s of Poisson arrivals per point",
                o.capacity, service_us, p.connection_us, p.instance_us, exec_us, o.backlog, template.duration_s
            ),
            format!(
                "without admission control a full backlog waits backlog / capacity = {} / {} = {:.0} ms, and SYNs past it are dropped and sent again after {} s, then twice as long",
                o.backlog * threads,
                o.capacity,
                (o.backlog * threads) as f64 / o.capacity * 1e3,
                p.syn_rto_ms / 1e3
            ),
            "with it every connection is accepted at once and the core's queues (128 per service by default) bound the wait; the rest get a fast 503".to_owned(),
            "latency runs from the client's first SYN to the response; `in backlog` is the time a connection waited in the kernel's accept queue, `to accept` adds the SYN retries before it got in; `gave up` counts clients whose every SYN was dropped; goodput counts 2xx answered within the arrival window".to_owned(),
        ],
        plot: Some(vec![Plot {
            title: "accept-queue: p99 latency against offered load".to_owned(),
            x_label: "offered load (multiple of capacity)".to_owned(),
            y_label: "p99 latency (ms, log scale)".to_owned(),
            log_y: true,
            series: vec![
                ("admission control on".to_owned(), on),
                ("admission control off (the seed)".to_owned(), off),
            ],
        }]),
    })
}

/// How the services of `scale-to-zero` get traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Bursts with idle gaps of 15 s to 2 min.
    Bursty,
    /// Rates that swing over five minutes.
    Diurnal,
    /// Half of each.
    Mixed,
}

/// Options of `scale-to-zero`.
#[derive(Debug, Clone)]
pub struct ScaleToZero {
    /// Services.
    pub services: usize,
    /// Idle timeouts to try, in seconds.
    pub idle_timeouts: Vec<f64>,
    /// Their traffic.
    pub traffic: Traffic,
}

impl Default for ScaleToZero {
    fn default() -> Self {
        Self {
            services: 50,
            idle_timeouts: vec![1.0, 5.0, 15.0, 60.0, 300.0],
            traffic: Traffic::Mixed,
        }
    }
}

/// Many services with idle gaps, over a sweep of `idle_timeout`.
pub fn scale_to_zero(common: &Common, o: &ScaleToZero) -> Result<Report, Failure> {
    let template = base(common, 900.0, 2);
    let services: Vec<ServiceSpec> = (0..o.services)
        .map(|k| {
            let bursty = match o.traffic {
                Traffic::Bursty => true,
                Traffic::Diurnal => false,
                Traffic::Mixed => k % 2 == 0,
            };
            let arrivals = if bursty {
                Arrivals::Bursty {
                    rate: 20.0,
                    on_s: 2.0,
                    off_s: 15.0 * (1 + k % 8) as f64,
                }
            } else {
                Arrivals::Diurnal {
                    mean: 0.2 * (1 + k % 5) as f64,
                    period_s: 300.0,
                }
            };
            ServiceSpec {
                name: format!("s{k}"),
                exec: Exec::Exponential(100.0),
                trap_share: 0.0,
                hang_share: 0.0,
                sleep: None,
                limits: ServiceLimits::default(),
                arrivals,
            }
        })
        .collect();
    let points: Vec<(String, SimConfig)> = o
        .idle_timeouts
        .iter()
        .map(|&idle| {
            let mut cfg = template.clone();
            cfg.server.idle_timeout = Duration::from_secs_f64(idle);
            cfg.services = services.clone();
            (format!("idle_timeout {idle} s"), cfg)
        })
        .collect();
    let outcomes = run_all(common, &points)?;
    let mut rows = Vec::new();
    let (mut colds, mut memory, mut p99) = (Vec::new(), Vec::new(), Vec::new());
    for (&idle, outcome) in o.idle_timeouts.iter().zip(&outcomes) {
        let d = template.duration_s;
        let s = merged(outcome, |_| true).summary(d);
        let per_1000 = if s.answered == 0 {
            0.0
        } else {
            outcome.cold_starts as f64 * 1000.0 / s.answered as f64
        };
        let mean_mib = outcome.memory_mib_s / d;
        colds.push((idle, per_1000));
        memory.push((idle, mean_mib));
        p99.push((idle, s.p99_ms));
        rows.push(vec![
            json!(idle),
            json!(s.answered),
            json!(outcome.cold_starts),
            json!((per_1000 * 10.0).round() / 10.0),
            json!(outcome.evictions),
            json!((mean_mib * 100.0).round() / 100.0),
            json!(outcome.memory_mib_s.round()),
            json!(s.p50_ms),
            json!(s.p99_ms),
            json!(s.p999_ms),
        ]);
    }
    let p = &common.profile;
    Ok(Report {
        scenario: "scale-to-zero".to_owned(),
        seed: common.seed,
        columns: [
            "idle_timeout s", "requests", "cold starts", "per 1000", "evictions", "warm MiB",
            "MiB-s", "p50 ms", "p99 ms", "p99.9 ms",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows,
        notes: vec![
            format!(
                "{} services ({:?} traffic) on {} serving threads for {} s; a cold start loads from the artifact cache in {} ms ({} ms the first time it compiles); a warm module holds {} MiB",
                o.services, o.traffic, template.threads, template.duration_s, p.artifact_ms, p.compile_ms, p.module_mib
            ),
            "a cold start is counted per serving thread that waited for a load; `warm MiB` is the mean memory of warm modules over the run".to_owned(),
        ],
        plot: Some(vec![
            Plot {
                title: "scale-to-zero: cold starts against idle_timeout".to_owned(),
                x_label: "idle_timeout (s)".to_owned(),
                y_label: "cold starts per 1000 requests".to_owned(),
                log_y: false,
                series: vec![("cold starts".to_owned(), colds)],
            },
            Plot {
                title: "scale-to-zero: memory held against idle_timeout".to_owned(),
                x_label: "idle_timeout (s)".to_owned(),
                y_label: "mean warm module memory (MiB)".to_owned(),
                log_y: false,
                series: vec![("warm modules".to_owned(), memory)],
            },
            Plot {
                title: "scale-to-zero: p99 latency against idle_timeout".to_owned(),
                x_label: "idle_timeout (s)".to_owned(),
                y_label: "p99 latency (ms)".to_owned(),
                log_y: false,
                series: vec![("p99".to_owned(), p99)],
            },
        ]),
    })
}

/// What the neighbour of `noisy-neighbour` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Neighbour {
    /// No neighbour: the baseline.
    None,
    /// 50 ms guests, 20 a second: half a core of work.
    Slow,
    /// Guests that never finish, 10 a second, each cancelled at its deadline.
    Hang,
    /// Short guests at three times the server's capacity.
    Flood,
    /// Guests that wait 1 s (a timer, an upstream) parked, then run 200 us, 40 a second:
    /// 40 tasks held at a time and next to no work.
    Sleepy,
}

/// Three fast services beside one neighbour of each kind.
pub fn noisy_neighbour(common: &Common, kinds: &[Neighbour]) -> Result<Report, Failure> {
    let template = base(common, 30.0, 2);
    let fast = |k: usize| ServiceSpec {
        name: format!("fast{k}"),
        exec: Exec::Fixed(200.0),
        trap_share: 0.0,
        hang_share: 0.0,
        sleep: None,
        limits: ServiceLimits::default(),
        arrivals: Arrivals::Poisson(500.0),
    };
    let p = &common.profile;
    let capacity = template.threads as f64 * 1e6 / (p.connection_us + p.instance_us + 200.0);
    let points: Vec<(String, SimConfig)> = kinds
        .iter()
        .map(|&kind| {
            let mut cfg = template.clone();
            // Compiled before: their cold starts load from the artifact cache.
            cfg.profile.compile_ms = cfg.profile.artifact_ms;
            cfg.services = (0..3).map(fast).collect();
            let neighbour = |exec, hang_share, rate| ServiceSpec {
                name: "noisy".to_owned(),
                exec,
                trap_share: 0.0,
                hang_share,
                sleep: None,
                limits: ServiceLimits::default(),
                arrivals: Arrivals::Poisson(rate),
            };
            match kind {
                Neighbour::None => {}
                Neighbour::Slow => cfg
                    .services
                    .push(neighbour(Exec::Fixed(50_000.0), 0.0, 20.0)),
                Neighbour::Hang => cfg.services.push(neighbour(Exec::Fixed(1.0), 1.0, 10.0)),
                Neighbour::Flood => {
                    cfg.services
                        .push(neighbour(Exec::Fixed(200.0), 0.0, 3.0 * capacity))
                }
                Neighbour::Sleepy => cfg.services.push(ServiceSpec {
                    sleep: Some(Exec::Fixed(1e6)),
                    ..neighbour(Exec::Fixed(200.0), 0.0, 40.0)
                }),
            }
            (format!("{kind:?}"), cfg)
        })
        .collect();
    let outcomes = run_all(common, &points)?;
    let mut rows = Vec::new();
    for ((label, cfg), outcome) in points.iter().zip(&outcomes) {
        let d = cfg.duration_s;
        let f = merged(outcome, |i| i < 3).summary(d);
        let n = (outcome.services.len() > 3).then(|| outcome.services[3].summary(d));
        rows.push(vec![
            json!(label.to_lowercase()),
            json!(f.goodput_per_s),
            json!(f.p50_ms),
            json!(f.p99_ms),
            json!(f.p999_ms),
            json!(f.shed_share),
            n.as_ref().map_or(Value::Null, |n| json!(n.goodput_per_s)),
            n.as_ref().map_or(Value::Null, |n| json!(n.p50_ms)),
            n.as_ref().map_or(Value::Null, |n| json!(n.shed_503)),
            n.as_ref().map_or(Value::Null, |n| json!(n.timeout_504)),
        ]);
    }
    Ok(Report {
        scenario: "noisy-neighbour".to_owned(),
        seed: common.seed,
        columns: [
            "neighbour", "fast goodput/s", "fast p50 ms", "fast p99 ms", "fast p99.9 ms",
            "fast shed", "noisy 2xx/s", "noisy p50 ms", "noisy 503", "noisy 504",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows,
        notes: vec![
            format!(
                "three services of 200 us guests at 500 req/s each, on {} serving threads ({capacity:.0} req/s capacity for such requests), for {} s",
                template.threads, template.duration_s
            ),
            "slow: 50 ms guests at 20/s; hang: guests that never finish at 10/s, cancelled at the 10 s deadline; flood: 200 us guests at three times capacity; sleepy: guests that wait 1 s parked, then run 200 us, at 40/s".to_owned(),
        ],
        plot: None,
    })
}

/// What a failing guest does in `faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Traps at the end of its run (500).
    Trap,
    /// Never finishes; cancelled at its deadline (504).
    Hang,
}

/// Options of `faults`.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Shares of guests that fail, to sweep.
    pub shares: Vec<f64>,
    /// How they fail.
    pub kind: FaultKind,
    /// The services' deadline, in seconds.
    pub deadline_s: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            shares: vec![0.0, 0.01, 0.05, 0.1, 0.25],
            kind: FaultKind::Hang,
            deadline_s: 2.0,
        }
    }
}

/// A share of every service's guests trap or hang; what happens to the rest.
pub fn faults(common: &Common, o: &Faults) -> Result<Report, Failure> {
    let template = base(common, 30.0, 2);
    let points: Vec<(String, SimConfig)> = o
        .shares
        .iter()
        .map(|&share| {
            let mut cfg = template.clone();
            // Compiled before: their cold starts load from the artifact cache.
            cfg.profile.compile_ms = cfg.profile.artifact_ms;
            cfg.services = (0..4)
                .map(|k| ServiceSpec {
                    name: format!("svc{k}"),
                    exec: Exec::Exponential(500.0),
                    trap_share: if o.kind == FaultKind::Trap {
                        share
                    } else {
                        0.0
                    },
                    hang_share: if o.kind == FaultKind::Hang {
                        share
                    } else {
                        0.0
                    },
                    sleep: None,
                    limits: ServiceLimits {
                        deadline: Duration::from_secs_f64(o.deadline_s),
                        ..ServiceLimits::default()
                    },
                    arrivals: Arrivals::Poisson(400.0),
                })
                .collect();
            (format!("share {share}"), cfg)
        })
        .collect();
    let outcomes = run_all(common, &points)?;
    let mut rows = Vec::new();
    let (mut goodput, mut ok_p99) = (Vec::new(), Vec::new());
    for (&share, outcome) in o.shares.iter().zip(&outcomes) {
        let m = merged(outcome, |_| true);
        let s = m.summary(template.duration_s);
        let healthy = s.offered as f64 * (1.0 - share) / template.duration_s;
        goodput.push((share, s.goodput_per_s));
        ok_p99.push((share, s.ok_p99_ms));
        rows.push(vec![
            json!(share),
            json!((healthy * 10.0).round() / 10.0),
            json!(s.goodput_per_s),
            json!(s.ok_p99_ms),
            json!(m.by_status.get(&500).copied().unwrap_or(0)),
            json!(s.timeout_504),
            json!(s.shed_503),
        ]);
    }
    Ok(Report {
        scenario: "faults".to_owned(),
        seed: common.seed,
        columns: [
            "fault share",
            "healthy offered/s",
            "goodput/s",
            "2xx p99 ms",
            "500",
            "504",
            "503",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows,
        notes: vec![format!(
            "four services of 500 us (mean) guests at 400 req/s each on {} serving threads for {} s; failing guests {}; deadline {} s",
            template.threads,
            template.duration_s,
            match o.kind {
                FaultKind::Trap => "trap at the end of their run",
                FaultKind::Hang =>
                    "never finish and hold a slot and a share of the CPU until their deadline",
            },
            o.deadline_s
        )],
        plot: Some(vec![
            Plot {
                title: "faults: goodput against the share of failing guests".to_owned(),
                x_label: "share of guests that fail".to_owned(),
                y_label: "2xx responses per second".to_owned(),
                log_y: false,
                series: vec![("goodput".to_owned(), goodput)],
            },
            Plot {
                title: "faults: latency of the healthy requests".to_owned(),
                x_label: "share of guests that fail".to_owned(),
                y_label: "2xx p99 latency (ms)".to_owned(),
                log_y: false,
                series: vec![("2xx p99".to_owned(), ok_p99)],
            },
        ]),
    })
}

/// Options of `cluster`.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Nodes.
    pub nodes: usize,
    /// Changes asked per second, all nodes together.
    pub change_rate: f64,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            nodes: 3,
            change_rate: 5.0,
        }
    }
}

/// Several nodes' control planes against a shared store, calm and with each kind of fault:
/// what callers are answered, and how long the nodes take to agree once the faults end.
pub fn cluster(common: &Common, o: &Cluster) -> Result<Report, Failure> {
    let base = ClusterConfig {
        seed: common.seed,
        nodes: o.nodes,
        change_rate: o.change_rate,
        duration_s: common.duration_s.unwrap_or(60.0),
        ..ClusterConfig::default()
    };
    let points = [
        ("calm", base.clone()),
        (
            "store outages",
            ClusterConfig {
                outage_rate: 0.1,
                ..base.clone()
            },
        ),
        (
            "partitions",
            ClusterConfig {
                partition_rate: 0.2,
                ..base.clone()
            },
        ),
        (
            "restarts",
            ClusterConfig {
                restart_rate: 0.1,
                ..base.clone()
            },
        ),
        (
            "all of them",
            ClusterConfig {
                outage_rate: 0.1,
                partition_rate: 0.2,
                restart_rate: 0.1,
                ..base.clone()
            },
        ),
    ];
    let mut rows = Vec::new();
    for (label, config) in &points {
        let c = cluster::run(config).map_err(|violation| Failure {
            point: (*label).to_owned(),
            violation,
        })?;
        rows.push(vec![
            json!(label),
            json!(c.asked),
            json!(c.done),
            json!(c.conflicts),
            json!(c.unavailable),
            json!(c.refused),
            json!(c.lost_callers),
            json!(c.remote_applied),
            json!(c.remote_refused),
            json!(c.store_revisions),
            json!(c.converge_ms),
        ]);
    }
    Ok(Report {
        scenario: "cluster".to_owned(),
        seed: common.seed,
        columns: [
            "faults",
            "asked",
            "done",
            "409",
            "503",
            "refused",
            "lost (node restarted)",
            "applied from others",
            "refused from others",
            "store revisions",
            "converge ms",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows,
        notes: vec![
            "409: the store's compare-and-set failed, or a newer change overtook the caller's"
                .to_owned(),
            "503: the store was unreachable, or 4 modules were being prepared already".to_owned(),
            "converge ms: virtual time from the end of changes and faults until every node serves what the store holds"
                .to_owned(),
        ],
        plot: None,
    })
}

/// Options of [`contract`].
#[derive(Debug, Clone)]
pub struct Contract {
    /// Runs, each from its own stream of the seed.
    pub runs: usize,
    /// Ops per run at most.
    pub ops: usize,
}

impl Default for Contract {
    fn default() -> Self {
        Self {
            runs: 1000,
            ops: 200,
        }
    }
}

/// The core under the shared fake driver (`frenezulo_core::testing`, the fuzz target's):
/// one seed fans out to `runs` op sequences, each checked against the polling contract,
/// the core's bounds and one response per request. A failing run names its index; the
/// same seed runs the same sequences.
pub fn contract(common: &Common, o: &Contract) -> Result<Report, Failure> {
    use frenezulo_core::testing::{Harness, seeded_ops};
    let root = crate::rng::Rng::new(common.seed);
    let mut total = frenezulo_core::testing::Summary::default();
    for run in 0..o.runs {
        let seed = root.fork(&format!("contract run {run}")).next_u64();
        let ops = seeded_ops(seed, o.ops);
        let summary = Harness::run(common.epoch, &ops).map_err(|v| Failure {
            point: format!("run {run}"),
            violation: Violation(v.0),
        })?;
        total.ops += summary.ops;
        total.requests += summary.requests;
        total.responses += summary.responses;
        total.started += summary.started;
        total.cancelled += summary.cancelled;
    }
    Ok(Report {
        scenario: "contract".to_owned(),
        seed: common.seed,
        columns: [
            "runs",
            "ops",
            "requests",
            "responses",
            "tasks started",
            "cancelled",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows: vec![vec![
            json!(o.runs),
            json!(total.ops),
            json!(total.requests),
            json!(total.responses),
            json!(total.started),
            json!(total.cancelled),
        ]],
        notes: vec![
            "responses include those to raw bytes (400s) and to connections that left".to_owned(),
        ],
        plot: None,
    })
}
