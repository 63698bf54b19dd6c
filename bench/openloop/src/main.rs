//! `openloop`: offers an HTTP/1.1 server a fixed rate of `GET`s and prints the latency
//! distribution, corrected for coordinated omission. See the library's docs for the model.

use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use frenezulo_openloop::{Plan, Report, run};

/// Offer a server a fixed rate of GET requests (open loop) and print the latency counted
/// from each request's due time, so a stall is charged for every request it held back.
///
/// Runs on one thread that polls without sleeping when requests are due less than 2 ms
/// apart: pin it to a core of its own (`taskset -c 1 openloop ...`).
#[derive(Parser, Debug)]
#[command(name = "openloop", version)]
struct Cli {
    /// The URL to GET: `http://HOST:PORT/PATH` (plain HTTP/1.1 only).
    url: String,
    /// Requests per second offered.
    #[arg(short = 'r', long)]
    rate: f64,
    /// Connections open at once; a request due while all are busy waits for one.
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Seconds measured, after the warm-up.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start whose requests are sent but not counted.
    #[arg(short = 'w', long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds a request may wait for its whole response (then it counts as timed out).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// A new connection per request (sends `Connection: close`).
    #[arg(long)]
    close: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match plan(&cli).and_then(|plan| {
        let report = run(&plan).map_err(|e| format!("run failed: {e}"))?;
        Ok((plan, report))
    }) {
        Ok((plan, report)) => {
            print(&cli, &plan, &report);
            if report.answered() == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(why) => {
            eprintln!("openloop: {why}");
            ExitCode::from(2)
        }
    }
}

fn plan(cli: &Cli) -> Result<Plan, String> {
    let rest = cli
        .url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{:?}: only http:// URLs are supported", cli.url))?;
    let (host, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host:?}: {e} (give HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))?;
    let seconds = |name: &str, s: f64| {
        if (0.0..1e6).contains(&s) {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(format!("--{name} {s}: give seconds between 0 and 1e6"))
        }
    };
    if !(cli.rate.is_finite() && cli.rate > 0.0 && cli.rate <= 10_000_000.0) {
        return Err(format!(
            "--rate {}: give a rate above 0 and at most 1e7",
            cli.rate
        ));
    }
    if !(1..=60_000).contains(&cli.connections) {
        return Err(format!(
            "--connections {}: give 1 to 60000",
            cli.connections
        ));
    }
    Ok(Plan {
        addr,
        request: Plan::get(host, path, cli.close),
        rate: cli.rate,
        connections: cli.connections,
        warmup: seconds("warmup", cli.warmup)?,
        duration: seconds("duration", cli.duration)?,
        timeout: seconds("timeout", cli.timeout)?,
        connection_per_request: cli.close,
    })
}

fn print(cli: &Cli, plan: &Plan, r: &Report) {
    let mode = if cli.close {
        "a connection per request"
    } else {
        "keep-alive"
    };
    println!(
        "{} at {} req/s for {:?} after {:?} of warm-up, {} connections, {mode}",
        cli.url, plan.rate, plan.duration, plan.warmup, plan.connections
    );
    println!(
        "  due {}, answered {} ({:.1} req/s): 1xx {} 2xx {} 3xx {} 4xx {} 5xx {} other {}",
        r.due,
        r.answered(),
        r.achieved(),
        r.by_class[0],
        r.by_class[1],
        r.by_class[2],
        r.by_class[3],
        r.by_class[4],
        r.by_class[5]
    );
    println!(
        "  errors {}, timeouts {}, unanswered {}",
        r.errors,
        r.timeouts,
        r.unanswered()
    );
    if let Some(why) = &r.first_error {
        println!("  first error: {why}");
    }
    let ms = |us: u64| us as f64 / 1000.0;
    for (name, h) in [
        ("from due time (corrected)", &r.corrected),
        ("from send time", &r.uncorrected),
    ] {
        println!(
            "  {name:<26} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
    }
    // One line for scripts.
    let c = &r.corrected;
    println!(
        "RESULT achieved={:.1} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} answered={} s2xx={} s5xx={} errors={} timeouts={} unanswered={}",
        r.achieved(),
        c.value_at_quantile(0.5),
        c.value_at_quantile(0.9),
        c.value_at_quantile(0.99),
        c.value_at_quantile(0.999),
        c.max(),
        r.answered(),
        r.by_class[1],
        r.by_class[4],
        r.errors,
        r.timeouts,
        r.unanswered()
    );
}
