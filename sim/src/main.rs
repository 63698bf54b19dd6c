//! `frenezulo-sim`: runs a scenario and prints what it found.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use frenezulo_sim::profile::Profile;
use frenezulo_sim::scenarios::{self, Common, FaultKind, Neighbour, Traffic};

/// Deterministic simulation of frenezulo: the real core, one per modelled serving thread,
/// in virtual time. The same seed and options print the same bytes.
#[derive(Debug, Parser)]
#[command(name = "frenezulo-sim", version, about, long_about)]
struct Cli {
    /// The seed every random choice comes from.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Seconds of arrivals per run (default: the scenario's own).
    #[arg(long, global = true, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Serving threads (default: the scenario's own).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// A TOML file of modelled costs (see `sim/src/profile.rs`; keys left out keep the
    /// measured defaults).
    #[arg(long, global = true, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Also draw the sweep to this SVG file.
    #[arg(long, global = true, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Offered load from 0.5x to 3x capacity, with frenezulo's admission control and without
    /// it (the seed's behaviour: everything waits in the kernel's accept queue).
    AcceptQueue {
        /// Requests per second the server completes at most (the seed's: about 2000).
        #[arg(long, default_value_t = 2000.0)]
        capacity: f64,
        /// Offered loads, as multiples of capacity.
        #[arg(long, value_delimiter = ',', default_values_t = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0])]
        loads: Vec<f64>,
        /// Listen backlog of each serving thread.
        #[arg(long, default_value_t = 1024)]
        backlog: usize,
    },
    /// Many services with bursty or diurnal traffic and idle gaps, over a sweep of
    /// idle_timeout: cold starts, memory held, latency.
    ScaleToZero {
        /// Services.
        #[arg(long, default_value_t = 50)]
        services: usize,
        /// Idle timeouts to try, in seconds.
        #[arg(long, value_delimiter = ',', default_values_t = [1.0, 5.0, 15.0, 60.0, 300.0])]
        idle_timeouts: Vec<f64>,
        /// Their traffic.
        #[arg(long, value_enum, default_value_t = TrafficArg::Mixed)]
        traffic: TrafficArg,
    },
    /// Three fast services beside a slow, hanging, flooded or sleeping one.
    NoisyNeighbour {
        /// Neighbours to try.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [NeighbourArg::None, NeighbourArg::Slow, NeighbourArg::Hang, NeighbourArg::Flood, NeighbourArg::Sleepy])]
        kinds: Vec<NeighbourArg>,
    },
    /// A share of every service's guests trap or hang: goodput and latency of the rest.
    Faults {
        /// Shares of failing guests to sweep.
        #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.01, 0.05, 0.1, 0.25])]
        shares: Vec<f64>,
        /// How they fail.
        #[arg(long, value_enum, default_value_t = FaultArg::Hang)]
        kind: FaultArg,
        /// The services' deadline, in seconds.
        #[arg(long, default_value_t = 2.0)]
        deadline: f64,
    },
    /// Several nodes' control planes against a shared store with delays, conflicts,
    /// outages, partitions and restarts (default 60 s of changes).
    Cluster {
        /// Nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Changes asked per second, all nodes together.
        #[arg(long, default_value_t = 5.0)]
        change_rate: f64,
    },
    /// The core under the fuzz target's fake driver: one seed fans out to many random
    /// sequences of events, each checked against the polling contract and the core's bounds.
    Contract {
        /// Sequences to run.
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Events per sequence at most.
        #[arg(long, default_value_t = 200)]
        ops: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TrafficArg {
    Bursty,
    Diurnal,
    Mixed,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NeighbourArg {
    None,
    Slow,
    Hang,
    Flood,
    Sleepy,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FaultArg {
    Trap,
    Hang,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let profile = match &cli.profile {
        Some(path) => match Profile::load(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("frenezulo-sim: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Profile::default(),
    };
    let common = Common {
        seed: cli.seed,
        duration_s: cli.duration,
        threads: cli.threads,
        profile,
        // The one clock read: an arbitrary origin for virtual time. Nothing depends on its
        // value, only on differences from it.
        epoch: std::time::Instant::now(),
    };
    let result = match &cli.scenario {
        Scenario::AcceptQueue {
            capacity,
            loads,
            backlog,
        } => scenarios::accept_queue(
            &common,
            &scenarios::AcceptQueue {
                capacity: *capacity,
                loads: loads.clone(),
                backlog: *backlog,
            },
        ),
        Scenario::ScaleToZero {
            services,
            idle_timeouts,
            traffic,
        } => scenarios::scale_to_zero(
            &common,
            &scenarios::ScaleToZero {
                services: *services,
                idle_timeouts: idle_timeouts.clone(),
                traffic: match traffic {
                    TrafficArg::Bursty => Traffic::Bursty,
                    TrafficArg::Diurnal => Traffic::Diurnal,
                    TrafficArg::Mixed => Traffic::Mixed,
                },
            },
        ),
        Scenario::NoisyNeighbour { kinds } => {
            let kinds: Vec<Neighbour> = kinds
                .iter()
                .map(|k| match k {
                    NeighbourArg::None => Neighbour::None,
                    NeighbourArg::Slow => Neighbour::Slow,
                    NeighbourArg::Hang => Neighbour::Hang,
                    NeighbourArg::Flood => Neighbour::Flood,
                    NeighbourArg::Sleepy => Neighbour::Sleepy,
                })
                .collect();
            scenarios::noisy_neighbour(&common, &kinds)
        }
        Scenario::Faults {
            shares,
            kind,
            deadline,
        } => scenarios::faults(
            &common,
            &scenarios::Faults {
                shares: shares.clone(),
                kind: match kind {
                    FaultArg::Trap => FaultKind::Trap,
                    FaultArg::Hang => FaultKind::Hang,
                },
                deadline_s: *deadline,
            },
        ),
        Scenario::Cluster { nodes, change_rate } => scenarios::cluster(
            &common,
            &scenarios::Cluster {
                nodes: *nodes,
                change_rate: *change_rate,
            },
        ),
        Scenario::Contract { runs, ops } => scenarios::contract(
            &common,
            &scenarios::Contract {
                runs: *runs,
                ops: *ops,
            },
        ),
    };
    let report = match result {
        Ok(report) => report,
        Err(failure) => {
            eprintln!(
                "frenezulo-sim: invariant violated (seed {}) at {}: {}",
                cli.seed, failure.point, failure.violation.0
            );
            eprintln!("reproduce with: {}", reproduce(cli.seed));
            return ExitCode::from(2);
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).expect("JSON values serialize")
        );
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &cli.plot
        && let Err(e) = report.svg(path)
    {
        eprintln!("frenezulo-sim: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The command line that reproduces this run: the same arguments, the seed made explicit.
fn reproduce(seed: u64) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--seed") {
        args.drain(i..(i + 2).min(args.len()));
    }
    args.retain(|a| !a.starts_with("--seed="));
    args.push("--seed".to_owned());
    args.push(seed.to_string());
    args.join(" ")
}
