//! The simulator: deterministic, its invariants hold over many seeds, and where queueing
//! theory has an answer it agrees.

use std::time::Instant;

use frenezulo_core::{ServerConfig, ServiceLimits};
use frenezulo_sim::cluster::{self, ClusterConfig};
use frenezulo_sim::model::{self, Arrivals, Exec, ServiceSpec, SimConfig};
use frenezulo_sim::profile::Profile;
use frenezulo_sim::scenarios::{self, Common, FaultKind, Neighbour, Traffic};

fn common(seed: u64, duration_s: f64) -> Common {
    Common {
        seed,
        duration_s: Some(duration_s),
        threads: None,
        profile: Profile::default(),
        epoch: Instant::now(),
    }
}

fn accept_queue(seed: u64, loads: Vec<f64>, duration_s: f64) -> serde_json::Value {
    let o = scenarios::AcceptQueue {
        loads,
        ..scenarios::AcceptQueue::default()
    };
    scenarios::accept_queue(&common(seed, duration_s), &o)
        .unwrap_or_else(|f| panic!("seed {seed}: {f:?}"))
        .json()
}

#[test]
fn one_seed_gives_the_same_bytes_and_another_differs() {
    let a = accept_queue(7, vec![0.8, 2.0], 3.0).to_string();
    let b = accept_queue(7, vec![0.8, 2.0], 3.0).to_string();
    let c = accept_queue(8, vec![0.8, 2.0], 3.0).to_string();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // The epoch is arbitrary: a different one changes nothing.
    let mut later = common(7, 3.0);
    later.epoch += std::time::Duration::from_secs(3600);
    let o = scenarios::AcceptQueue {
        loads: vec![0.8, 2.0],
        ..scenarios::AcceptQueue::default()
    };
    assert_eq!(
        scenarios::accept_queue(&later, &o)
            .unwrap()
            .json()
            .to_string(),
        a
    );
}

#[test]
fn invariants_hold_over_many_seeds() {
    // Short runs in a debug build; `frenezulo-sim --seed N` runs any of them longer.
    for seed in 0..16 {
        let c = common(seed, 1.0);
        let fail = |f: scenarios::Failure| -> ! {
            panic!(
                "seed {seed}: {} at {}; reproduce with a scenario run at --seed {seed} --duration 2",
                f.violation.0, f.point
            )
        };
        accept_queue(seed, vec![0.5, 1.5, 3.0], 1.0);
        for kind in [FaultKind::Hang, FaultKind::Trap] {
            let o = scenarios::Faults {
                shares: vec![0.05, 0.3],
                kind,
                deadline_s: 0.5,
            };
            scenarios::faults(&c, &o).unwrap_or_else(|f| fail(f));
        }
        let kinds = [Neighbour::Slow, Neighbour::Hang, Neighbour::Sleepy];
        scenarios::noisy_neighbour(&c, &kinds).unwrap_or_else(|f| fail(f));
        let o = scenarios::ScaleToZero {
            services: 8,
            idle_timeouts: vec![0.5, 5.0],
            traffic: Traffic::Mixed,
        };
        scenarios::scale_to_zero(&common(seed, 30.0), &o).unwrap_or_else(|f| fail(f));
    }
}

#[test]
fn the_control_plane_keeps_its_invariants_over_many_seeds() {
    // Every kind of fault at once, busier than the scenario's default, many seeds.
    let seeds: u64 =
        std::env::var("SIM_SEEDS").map_or(64, |s| s.parse().expect("SIM_SEEDS is a count"));
    for seed in 0..seeds {
        let config = ClusterConfig {
            seed,
            duration_s: 30.0,
            change_rate: 20.0,
            foreign_rate: 1.0,
            outage_rate: 0.2,
            partition_rate: 0.3,
            restart_rate: 0.2,
            max_preparing: 2,
            ..ClusterConfig::default()
        };
        let outcome = cluster::run(&config).unwrap_or_else(|v| {
            panic!(
                "seed {seed}: {}; reproduce with `frenezulo-sim --seed {seed} cluster` or this test's config",
                v.0
            )
        });
        assert!(
            outcome.done > 0 && outcome.remote_applied > 0,
            "seed {seed}: {outcome:?}"
        );
    }
    let report = scenarios::cluster(&common(3, 20.0), &scenarios::Cluster::default()).unwrap();
    assert_eq!(report.rows.len(), 5);
}

#[test]
fn the_core_keeps_the_contract_over_seeded_sequences() {
    let runs = std::env::var("SIM_SEEDS").map_or(200, |s| s.parse().expect("SIM_SEEDS is a count"));
    let o = scenarios::Contract {
        runs,
        ..scenarios::Contract::default()
    };
    let report = scenarios::contract(&common(5, 1.0), &o).unwrap_or_else(|f| {
        panic!(
            "{}: {}; reproduce with `frenezulo-sim --seed 5 contract --runs {runs}`",
            f.point, f.violation.0
        )
    });
    let row = &report.rows[0];
    // Requests were made and answered, and tasks ran: the sequences reach the core's work.
    for column in [2, 3, 4] {
        assert!(row[column].as_u64().unwrap() > 0, "{row:?}");
    }
    let again = scenarios::contract(&common(5, 1.0), &o).unwrap();
    assert_eq!(report.json(), again.json(), "the same seed runs the same");
}

/// One thread, admission control off: connections are served one at a time in arrival
/// order, each taking the same time: an M/D/1 queue. Its mean response time is
/// W = D + rho * D / (2 (1 - rho)).
#[test]
fn one_thread_without_admission_is_an_md1_queue() {
    let profile = Profile {
        compile_ms: 0.0,
        ..Profile::default()
    };
    let d_us = 500.0;
    let exec_us = d_us - profile.connection_us - profile.instance_us;
    for rho in [0.5, 0.8] {
        let cfg = SimConfig {
            seed: 3,
            duration_s: 120.0,
            threads: 1,
            backlog: 1 << 20,
            admission: false,
            server: ServerConfig::default(),
            services: vec![ServiceSpec {
                name: "md1".to_owned(),
                exec: Exec::Fixed(exec_us),
                trap_share: 0.0,
                hang_share: 0.0,
                sleep: None,
                limits: ServiceLimits::default(),
                arrivals: Arrivals::Poisson(rho * 1e6 / d_us),
            }],
            compile_threads: 1,
            profile: profile.clone(),
        };
        let out = model::run(&cfg, Instant::now()).unwrap();
        let measured = out.services[0].latency.mean();
        let theory = d_us + rho * d_us / (2.0 * (1.0 - rho));
        let error = (measured - theory).abs() / theory;
        assert!(
            error < 0.05,
            "rho {rho}: mean response {measured:.1} us, M/D/1 says {theory:.1} us ({:.1}% off)",
            error * 100.0
        );
    }
}

#[test]
fn without_admission_control_a_full_backlog_waits_what_the_seed_said() {
    let report = accept_queue(1, vec![2.0], 10.0);
    let rows = report["rows"].as_array().unwrap();
    let off = rows.iter().find(|r| r["admission"] == "off").unwrap();
    let on = rows.iter().find(|r| r["admission"] == "on").unwrap();
    // The seed: about 2k requests/s through a 1024-deep backlog, about 500 ms.
    let waited = off["in backlog max ms"].as_f64().unwrap();
    assert!((250.0..1000.0).contains(&waited), "{off}");
    assert!(off["in backlog ms"].as_f64().unwrap() > 250.0, "{off}");
    // With admission control the backlog stays short and the excess gets 503 at once.
    assert!(on["in backlog max ms"].as_f64().unwrap() < 50.0, "{on}");
    assert!(on["shed 503"].as_f64().unwrap() > 0.4, "{on}");
    assert!(on["p99 ms"].as_f64().unwrap() < off["p99 ms"].as_f64().unwrap() / 10.0);
}

#[test]
fn a_longer_idle_timeout_trades_memory_for_cold_starts() {
    let o = scenarios::ScaleToZero {
        services: 12,
        idle_timeouts: vec![1.0, 30.0, 200.0],
        traffic: Traffic::Mixed,
    };
    let report = scenarios::scale_to_zero(&common(5, 300.0), &o)
        .unwrap()
        .json();
    let rows = report["rows"].as_array().unwrap();
    let column =
        |name: &str| -> Vec<f64> { rows.iter().map(|r| r[name].as_f64().unwrap()).collect() };
    let colds = column("cold starts");
    let memory = column("warm MiB");
    assert!(
        colds.windows(2).all(|w| w[0] >= w[1]) && colds[0] > colds[2],
        "{colds:?}"
    );
    assert!(
        memory.windows(2).all(|w| w[0] <= w[1]) && memory[0] < memory[2],
        "{memory:?}"
    );
}

#[test]
fn a_hanging_neighbour_slows_others_by_slices_and_stalls_no_one() {
    let kinds = [Neighbour::None, Neighbour::Hang];
    let report = scenarios::noisy_neighbour(&common(2, 10.0), &kinds)
        .unwrap()
        .json();
    let rows = report["rows"].as_array().unwrap();
    let (alone, beside) = (&rows[0], &rows[1]);
    assert_eq!(alone["fast shed"], 0.0);
    assert_eq!(beside["fast shed"], 0.0, "{beside}");
    // Every request of the fast services was answered, within a few time slices.
    assert!(
        beside["fast p99.9 ms"].as_f64().unwrap() < 100.0,
        "{beside}"
    );
    assert!(beside["noisy 504"].as_u64().unwrap() > 0, "{beside}");
}

/// Guests that wait parked hold task slots but not the thread: the fast services beside
/// forty of them are answered as fast as alone, and each sleeper when its wait is over.
#[test]
fn a_sleeping_neighbour_takes_no_time_from_others() {
    let kinds = [Neighbour::None, Neighbour::Sleepy];
    let report = scenarios::noisy_neighbour(&common(2, 10.0), &kinds)
        .unwrap()
        .json();
    let rows = report["rows"].as_array().unwrap();
    let (alone, beside) = (&rows[0], &rows[1]);
    let p99 = |row: &serde_json::Value| row["fast p99 ms"].as_f64().unwrap();
    assert!(p99(beside) < p99(alone) + 1.0, "{alone} against {beside}");
    assert_eq!(beside["fast shed"], 0.0, "{beside}");
    // About 40 a second answered, each a little over its 1 s wait.
    let served = beside["noisy 2xx/s"].as_f64().unwrap();
    assert!((30.0..=50.0).contains(&served), "{beside}");
    let p50 = beside["noisy p50 ms"].as_f64().unwrap();
    assert!((1000.0..1010.0).contains(&p50), "{beside}");
    assert_eq!(beside["noisy 503"], 0, "{beside}");
}

/// The model keeps virtual time: no clock and no sleep in the core or the simulator's model
/// code (the binary's `main.rs` reads the clock once, for an arbitrary epoch).
#[test]
fn model_code_reads_no_clock() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["core/src", "core/src/server", "core/src/control", "sim/src"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".rs") && name != "main.rs" && name != "tests.rs" {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests at the bottom of a file (`#[cfg(test)] mod tests { ... }`) may use the
        // clock for an epoch; a `#[cfg(test)] mod tests;` line hides nothing after it.
        let code = text
            .find("#[cfg(test)]\nmod tests {")
            .map_or(text.as_str(), |end| &text[..end]);
        for banned in ["Instant::now", "SystemTime", "thread::sleep", "UNIX_EPOCH"] {
            assert!(!code.contains(banned), "{} uses {banned}", path.display());
        }
    }
}

#[test]
fn sweeps_draw_to_svg_with_labelled_axes() {
    let o = scenarios::Faults {
        shares: vec![0.0, 0.1],
        kind: FaultKind::Trap,
        deadline_s: 1.0,
    };
    let report = scenarios::faults(&common(4, 1.0), &o).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("faults.svg");
    report.svg(&path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    for label in [
        "share of guests that fail",
        "2xx responses per second",
        "2xx p99 latency (ms)",
    ] {
        assert!(svg.contains(label), "{label} missing");
    }
    let table = report.table();
    assert!(table.starts_with("# faults (seed 4)\n"), "{table}");
    let noisy = scenarios::noisy_neighbour(&common(4, 1.0), &[Neighbour::None]).unwrap();
    assert!(noisy.svg(&path).is_err(), "no sweep, no plot");
}
