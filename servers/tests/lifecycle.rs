//! A server's life around its requests, against the real binary: services idling out and
//! coming back (scale to zero, the artifact cache), shutdown running out of time, artifacts
//! that must not be trusted, start-up refusals and the client finding its token.

#[macro_use]
mod support;

use std::path::{Path, PathBuf};

use support::{
    Frenezulo, PATIENCE, TempDir, held_call, json, post, repo, run_once, sample, versioned,
    wait_for_counter,
};

per_engine! {
    an_idle_service_is_evicted_and_comes_back => scale_to_zero,
    drain_timeout_stops_a_shutdown_that_waits_too_long => drain_runs_out,
    a_second_signal_stops_a_drain_at_once => second_signal,
}

/// `frenezulo_module_loads_total` of `service` made `from` "compiled" or "artifact".
fn loads(metrics: &str, service: &str, from: &str) -> Option<f64> {
    sample(
        metrics,
        &format!("frenezulo_module_loads_total{{service=\"{service}\",from=\"{from}\"}}"),
    )
}

/// The artifact files under `data/artifacts`, as (engine directory, file name).
fn artifacts(data: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(data.join("artifacts")) else {
        return found;
    };
    for dir in dirs.filter_map(Result::ok) {
        let name = dir.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(dir.path()).into_iter().flatten() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "cwasm") {
                found.push((name.clone(), file));
            }
        }
    }
    found.sort();
    found
}

/// Scale to zero: a service idle for `--idle-timeout` is evicted (`state: cold`, the
/// `evictions` metric, a log line), and the next request brings it back with a 200; on
/// wasmtime from the artifact cache, not by compiling again.
fn scale_to_zero(engine: &str) {
    let data = TempDir::new("idle");
    let server = Frenezulo::start(&[
        "--engine",
        engine,
        "--workers",
        "1",
        "--idle-timeout",
        "1s",
        "--data-dir",
        data.arg(),
    ]);
    // A module of its own: the built-in hello's artifact must not stand in for it.
    let r = server.admin("PUT", "/services/idle", versioned("idle here").as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let digest = json(&r)["digest"].as_str().unwrap().to_owned();
    let r = server.get("/idle");
    assert_eq!((r.status, r.text().as_str()), (200, "idle here"));

    // Idle past the timeout: dropped, and said so in the API, the log and the metrics.
    let cold = || {
        server.eventually("the idle service to turn cold", || {
            let info = json(&server.admin("GET", "/services/idle", b""));
            (info["state"] == "cold").then_some(info)
        })
    };
    let info = cold();
    // Its own line: the built-in hello idles out too, and its line may come first.
    server.eventually("the log to say the idle service was evicted", || {
        server
            .log()
            .lines()
            .any(|l| l.contains("evicted") && l.contains("service=idle"))
            .then_some(())
    });
    let evicted = server.metrics();
    assert!(
        sample(&evicted, "frenezulo_evictions_total{thread=\"0\"}").is_some_and(|n| n >= 1.0),
        "{evicted}"
    );
    // What was made so far: the compile of the upload, and (had the service idled out
    // before the first request) a load for it.
    let made = |m: &str, from: &str| loads(m, "idle", from).unwrap_or_else(|| panic!("{m}"));
    let (compiled, from_artifact) = (made(&evicted, "compiled"), made(&evicted, "artifact"));
    let cold_starts = info["counters"]["cold_starts"].as_u64().unwrap();

    // The next request brings it back, loaded again.
    let r = server.get("/idle");
    assert_eq!((r.status, r.text().as_str()), (200, "idle here"));
    let info = json(&server.admin("GET", "/services/idle", b""));
    assert_eq!(
        info["counters"]["cold_starts"].as_u64(),
        Some(cold_starts + 1),
        "{info}"
    );
    let after = server.metrics();
    if engine == "wasmtime" {
        assert_eq!(compiled, 1.0, "compiled once, for the upload:\n{evicted}");
        assert_eq!(
            made(&after, "artifact"),
            from_artifact + 1.0,
            "reloaded from the artifact cache:\n{after}"
        );
        assert_eq!(
            made(&after, "compiled"),
            1.0,
            "not compiled again:\n{after}"
        );
        let hex = digest.strip_prefix("sha256:").unwrap();
        let kept = artifacts(data.path());
        assert!(
            kept.iter().any(|(dir, file)| dir.starts_with("wasmtime-")
                && file.ends_with(format!("{hex}.cwasm"))),
            "{kept:?}"
        );
    } else {
        assert_eq!(
            made(&after, "compiled"),
            compiled + 1.0,
            "wasmi keeps no artifacts: compiled again:\n{after}"
        );
        assert_eq!(made(&after, "artifact"), 0.0, "{after}");
        assert!(artifacts(data.path()).is_empty());
    }

    // And idles out again.
    cold();
    assert_eq!(server.get("/idle").status, 200);
}

/// SIGTERM with a request that never finishes: after `drain_timeout` the server stops
/// anyway, by itself, and says so.
fn drain_runs_out(engine: &str) {
    let (mut server, upstream, _config) = held_call(engine, "drain_timeout = \"1s\"");
    let mut c = post(&server, "/call", upstream.url("/hold").as_bytes());
    upstream.wait_for("/hold");
    wait_for_counter(&server, "call", "running", 1);
    server.terminate();
    server.wait_for_log("shutting down");
    // The upstream never answers: only the drain timeout can end this.
    let clean = server.wait(PATIENCE);
    // Its last lines may still be on their way from the pipe.
    let log = server.wait_for_log("drain timeout passed; stopping anyway");
    assert!(
        clean,
        "{engine}: exit status after the drain timeout\n{log}"
    );
    assert!(
        c.try_response().is_none_or(|r| r.status >= 500),
        "{engine}: the abandoned request got no success"
    );
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "no longer listening"
    );
    upstream.open_gate();
}

/// A second signal while draining stops the server at once, however long the drain
/// timeout.
fn second_signal(engine: &str) {
    let (mut server, upstream, _config) = held_call(engine, "drain_timeout = \"1h\"");
    let mut c = post(&server, "/call", upstream.url("/hold").as_bytes());
    upstream.wait_for("/hold");
    wait_for_counter(&server, "call", "running", 1);
    server.terminate();
    server.wait_for_log("shutting down");
    server.signal("INT");
    let clean = server.wait(PATIENCE);
    let log = server.wait_for_log("second signal: stopping now");
    assert!(
        !log.contains("drain timeout passed"),
        "{engine}: stopped by the signal, not the timeout\n{log}"
    );
    assert!(clean, "{engine}: exit status after a second signal\n{log}");
    assert!(
        c.try_response().is_none_or(|r| r.status >= 500),
        "{engine}: the abandoned request got no success"
    );
    upstream.open_gate();
}

/// Artifacts are trusted only when they are this engine's own: one of another engine
/// version (another `<engine>` directory), one whose bytes were changed, and one whose
/// checksum matches but which wasmtime itself refuses (made by another version) are never
/// loaded; the module is compiled again and answers as before.
#[cfg(feature = "wasmtime")]
#[test]
fn artifacts_of_another_engine_or_damaged_ones_are_never_loaded() {
    let data = TempDir::new("artifacts");
    let args = ["--engine", "wasmtime", "--data-dir", data.arg()];
    let echo = std::fs::read(repo("examples/echo.wat")).unwrap();
    let hex = {
        let server = Frenezulo::start(&args);
        let r = server.admin("PUT", "/services/echo", &echo);
        assert_eq!(r.status, 201, "{}", r.text());
        let digest = json(&r)["digest"].as_str().unwrap().to_owned();
        digest.strip_prefix("sha256:").unwrap().to_owned()
    };
    let answers = |server: &Frenezulo| {
        let r = server.admin("POST", "/echo/x", b"the body");
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert!(
            text.contains("\nPATH_INFO=/x\n") && text.ends_with("the body"),
            "{text}"
        );
    };
    let restart = |why: &str, compiled: f64| {
        let server = Frenezulo::start(&args);
        answers(&server);
        let m = server.metrics();
        assert_eq!(loads(&m, "echo", "compiled"), Some(compiled), "{why}:\n{m}");
        assert_eq!(
            loads(&m, "echo", "artifact"),
            Some(1.0 - compiled),
            "{why}:\n{m}"
        );
        server
    };
    // The artifact as the first run left it: loaded.
    let all = artifacts(data.path());
    let Some((fingerprint, artifact)) = all
        .iter()
        .find(|(_, file)| file.ends_with(format!("{hex}.cwasm")))
    else {
        panic!("no artifact of echo ({hex}): {all:?}");
    };
    assert!(fingerprint.starts_with("wasmtime-"), "{fingerprint}");
    drop(restart("a sound artifact", 0.0));

    // Under another engine fingerprint (another wasmtime version or settings): removed,
    // never loaded.
    let root = data.path().join("artifacts");
    let other = root.join("wasmtime-00000000000000ff");
    std::fs::rename(root.join(fingerprint), &other).unwrap();
    let server = restart("an artifact of another engine", 1.0);
    server.wait_for_log("removing artifacts of another engine version");
    assert!(!other.exists(), "the other engine's artifacts were removed");
    drop(server);
    assert!(artifact.exists(), "compiled again, and kept for next time");

    // One byte of the code changed: the checksum does not match.
    let mut file = std::fs::read(artifact).unwrap();
    let middle = file.len() / 2;
    file[middle] ^= 0x55;
    std::fs::write(artifact, &file).unwrap();
    let server = restart("a damaged artifact", 1.0);
    server.wait_for_log("artifact checksum does not match");
    drop(server);

    // Made by another wasmtime version, with a checksum that matches: wasmtime's own
    // header check refuses it. Its engine section names the major version as a version
    // byte (0), a length and the digits.
    let file = std::fs::read(artifact).unwrap();
    // The code, then a magic line and the code's CRC-32.
    const TRAILER: usize = 8 + 4;
    let (code, trailer) = file.split_at(file.len() - TRAILER);
    assert!(
        trailer.starts_with(b"FRZART2\n"),
        "the artifact format changed"
    );
    let mut code = code.to_vec();
    let major = wasmtime_major();
    let mut needle = vec![0, major.len() as u8];
    needle.extend_from_slice(major.as_bytes());
    let at: Vec<usize> = code
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == &needle[..])
        .map(|(i, _)| i)
        .collect();
    let [at] = at[..] else {
        panic!("wasmtime {major} is named once in its artifacts, not at {at:?}");
    };
    let other = other_major(&major);
    code[at + 2..at + needle.len()].copy_from_slice(other.as_bytes());
    let mut forged = code.clone();
    forged.extend_from_slice(b"FRZART2\n");
    forged.extend_from_slice(&crc32fast::hash(&code).to_le_bytes());
    std::fs::write(artifact, &forged).unwrap();
    let server = restart("an artifact of another wasmtime version", 1.0);
    server.wait_for_log(&format!("compiled with incompatible version '{other}'"));
    drop(server);
    // Each time the sound artifact was written again: the next start loads it.
    drop(restart("the artifact written again", 0.0));
}

/// The major version of the wasmtime this workspace builds, from Cargo.lock.
#[cfg(feature = "wasmtime")]
fn wasmtime_major() -> String {
    let lock = std::fs::read_to_string(repo("Cargo.lock")).unwrap();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\"" {
            let version = lines.next().unwrap();
            let version = version.strip_prefix("version = \"").unwrap();
            return version.split('.').next().unwrap().to_owned();
        }
    }
    panic!("no wasmtime in Cargo.lock");
}

/// Another major version of the same length: `48` -> `47`.
#[cfg(feature = "wasmtime")]
fn other_major(major: &str) -> String {
    let n: u32 = major.parse().unwrap();
    let other = if n.is_multiple_of(10) { n + 1 } else { n - 1 }.to_string();
    assert_eq!(other.len(), major.len());
    other
}

/// A WAGI module map naming `bindle:` and `oci:` modules: each is named with the reason,
/// and the server does not start. (A `bindle_server` beside a file path is only ignored:
/// `module_maps.rs`.)
#[test]
fn bindle_and_oci_modules_in_a_wagi_map_stop_startup_with_reasons() {
    let dir = TempDir::new("bindle");
    let path = dir.path().join("modules.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [[module]]
            route = "/fine"
            module = "{hello}"

            [[module]]
            route = "/bundled"
            module = "bindle:example.com/hello/1.0.0"

            [[module]]
            route = "/image"
            module = "oci:registry.example.com/hello:1"
            "#,
            hello = repo("examples/hello.wat"),
        ),
    )
    .unwrap();
    let out = run_once(&["--wagi-config", path.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it never listened"
    );
    for (module, route, reason) in [
        (
            "bindle:example.com/hello/1.0.0",
            "/bundled",
            "bindle modules are not supported",
        ),
        (
            "oci:registry.example.com/hello:1",
            "/image",
            "OCI modules are not supported",
        ),
    ] {
        let label = format!("module `{module}` at route `{route}`: {reason}");
        assert!(stderr.contains(&label), "{label} in\n{stderr}");
    }
    assert!(!stderr.contains("route `/fine`"), "{stderr}");
}

/// Runs `frenezulo services ARGS` with `env` and `FRENEZULO_ADMIN_TOKEN` set empty (no
/// token, to the client as to the server).
fn client_without_token(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut all = vec!["services"];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(("FRENEZULO_ADMIN_TOKEN", ""));
    let out = run_once(&all, &env);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// With no token given, the client reads the one a server generated from its data
/// directory: `--data-dir`, else the default one (`$XDG_DATA_HOME/frenezulo`).
#[test]
fn the_client_reads_a_generated_token_from_the_data_directory() {
    let home = TempDir::new("client-token");
    let data = home.path().join("frenezulo");
    let data_arg = data.to_str().unwrap();
    let server =
        Frenezulo::start_with_env(&["--data-dir", data_arg], &[("FRENEZULO_ADMIN_TOKEN", "")]);
    let url = format!("http://{}", server.addr);
    let listed = |out: &str| {
        out.lines().next().is_some_and(|l| l.starts_with("PREFIX"))
            && out.lines().any(|l| l.starts_with("hello "))
    };
    // Named by --data-dir.
    let (ok, out) = client_without_token(&["list", "--server", &url, "--data-dir", data_arg], &[]);
    assert!(ok && listed(&out), "{out}");
    // The default data directory, as the server would pick it.
    let (ok, out) = client_without_token(
        &["list", "--server", &url],
        &[("XDG_DATA_HOME", home.arg())],
    );
    assert!(ok && listed(&out), "{out}");
    // The file is what is read: another token there is refused by the server...
    let elsewhere = TempDir::new("client-other");
    std::fs::write(elsewhere.path().join("admin-token"), "not-the-token\n").unwrap();
    let (ok, out) = client_without_token(
        &["list", "--server", &url, "--data-dir", elsewhere.arg()],
        &[],
    );
    assert!(!ok && out.contains("HTTP 401"), "{out}");
    // ...and with no file, the client says where it looked.
    let empty = TempDir::new("client-none");
    let (ok, out) =
        client_without_token(&["list", "--server", &url, "--data-dir", empty.arg()], &[]);
    assert!(!ok && out.contains("no token"), "{out}");
    assert!(out.contains(empty.arg()), "{out}");
}

per_engine! {
    a_configured_service_is_dropped_from_memory_when_idle => configured_scale_to_zero,
}

/// Scale to zero applies to services from the command line too: once idle, the module is
/// dropped from memory, so the next request has to load it again (from the artifact cache
/// on wasmtime, by compiling on wasmi), which the load metrics count.
fn configured_scale_to_zero(engine: &str) {
    let dir = TempDir::new("configured-idle");
    let module = dir.path().join("mine.wat");
    std::fs::write(&module, versioned("configured")).unwrap();
    let service = format!("mine={}", module.display());
    let server = Frenezulo::start(&[
        "--engine",
        engine,
        "--workers",
        "1",
        "--idle-timeout",
        "1s",
        "--service",
        &service,
    ]);
    assert_eq!(server.get("/mine").text(), "configured");
    let made = |m: &str| {
        loads(m, "mine", "compiled").unwrap_or_default()
            + loads(m, "mine", "artifact").unwrap_or_default()
    };
    let info = server.eventually("the configured service to turn cold", || {
        let info = json(&server.admin("GET", "/services/mine", b""));
        (info["state"] == "cold").then_some(info)
    });
    let cold_starts = info["counters"]["cold_starts"].as_u64().unwrap();
    let before = server.metrics();
    assert_eq!(server.get("/mine").text(), "configured");
    let info = json(&server.admin("GET", "/services/mine", b""));
    assert_eq!(
        info["counters"]["cold_starts"].as_u64(),
        Some(cold_starts + 1),
        "{info}"
    );
    let after = server.metrics();
    assert_eq!(
        made(&after),
        made(&before) + 1.0,
        "{engine}: the module was loaded again after idling:\n{after}"
    );
}
