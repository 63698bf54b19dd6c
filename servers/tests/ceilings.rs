//! The operator's ceilings on what a management API token may grant, against the real
//! binary: `outbound_allowed_hosts` for the `allowed_hosts` the API sets,
//! `fetch_allowed_hosts` for `POST /services/add` sources and their redirects (no ceiling
//! set: public hosts only), fetched bytes never quoted back, and a guest's `Host` header
//! never sent.

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::{ConfigFile, DEFAULT_ENGINE, Frenezulo, Reply, TempDir, Upstream, json, repo};

fn outbound_wat() -> Vec<u8> {
    std::fs::read(repo("engines/tests/guests/outbound.wat")).unwrap()
}

/// `PUT /services/{name}` of the outbound guest with `allowed_host` set to each of `hosts`.
fn put_with_hosts(server: &Frenezulo, name: &str, hosts: &[&str]) -> support::HttpResponse {
    let query: Vec<String> = hosts
        .iter()
        .map(|h| {
            let encoded: String = h
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("allowed_host={encoded}")
        })
        .collect();
    server.admin(
        "PUT",
        &format!("/services/{name}?{}", query.join("&")),
        &outbound_wat(),
    )
}

/// With no `outbound_allowed_hosts`, the API may grant public origins only: not
/// `insecure:allow-all`, loopback or the link-local metadata address, whether through
/// `PUT` or `POST /services/add`. The config file's own services are the operator's and
/// call loopback as configured.
#[test]
fn without_a_ceiling_the_api_grants_public_origins_only() {
    let upstream = Upstream::start(|_| Reply::ok("reached"));
    let config = ConfigFile::new(
        "no-ceiling",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\n[services.fixed]\nmodule = {:?}\nallowed_hosts = [{:?}]\n",
            repo("engines/tests/guests/outbound.wat"),
            upstream.url(""),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);

    for (host, shown) in [
        ("insecure:allow-all", "insecure:allow-all"),
        ("http://127.0.0.1:1", "http://127.0.0.1:1"),
        ("http://169.254.169.254", "http://169.254.169.254:80"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ] {
        let (status, why) = put_with_hosts(&server, "call", &[host]).error();
        assert_eq!(status, 400, "{host}: {why}");
        assert!(
            why.contains(shown) && why.contains("outbound_allowed_hosts"),
            "{host}: {why}"
        );
        let add = serde_json::json!({
            "prefix": "added",
            "source": "https://example.com/m.wasm",
            "allowed_hosts": [host],
        });
        let (status, why) = server
            .admin("POST", "/services/add", add.to_string().as_bytes())
            .error();
        assert_eq!(status, 400, "{host}: {why}");
        assert!(why.contains("outbound_allowed_hosts"), "{host}: {why}");
    }
    for refused in ["call", "added"] {
        assert_eq!(
            server
                .admin("GET", &format!("/services/{refused}"), b"")
                .status,
            404
        );
    }

    // A public origin is the API's to grant.
    let r = put_with_hosts(&server, "call", &["https://api.example.com"]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(json(&r)["allowed_hosts"][0], "https://api.example.com");

    // The config file's service calls its loopback upstream.
    let r = server.admin("POST", "/fixed", upstream.url("/x").as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.body[0], &r.body[3..]),
        (0, &b"reached"[..]),
        "{:?}",
        r.body
    );
}

/// The operator's `outbound_allowed_hosts` lets the API grant what it lists (here a
/// loopback upstream), or anything when it holds `insecure:allow-all`; and nothing else.
#[test]
fn outbound_allowed_hosts_lets_the_api_grant_what_it_lists() {
    let upstream = Upstream::start(|_| Reply::ok("reached"));
    let config = ConfigFile::new(
        "ceiling",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\noutbound_allowed_hosts = [{:?}]\n",
            upstream.url("/"),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let r = put_with_hosts(&server, "call", &[&upstream.url("")]);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = server.admin("POST", "/call", upstream.url("/x").as_bytes());
    assert_eq!(
        (r.body[0], &r.body[3..]),
        (0, &b"reached"[..]),
        "{:?}",
        r.body
    );
    for host in [
        "http://169.254.169.254",
        "insecure:allow-all",
        "https://api.example.com",
    ] {
        let (status, why) = put_with_hosts(&server, "other", &[host]).error();
        assert_eq!(status, 400, "{host}: {why}");
        assert!(why.contains("outbound_allowed_hosts"), "{host}: {why}");
    }
    // A replace that names no hosts keeps the stored ones, which are within the ceiling.
    assert_eq!(put_with_hosts(&server, "call", &[]).status, 200);

    let config = ConfigFile::new(
        "ceiling-all",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\noutbound_allowed_hosts = [\"insecure:allow-all\"]\n"
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    for host in ["insecure:allow-all", "http://169.254.169.254"] {
        let r = put_with_hosts(&server, "call", &[host]);
        assert!(matches!(r.status, 200 | 201), "{host}: {}", r.text());
    }
}

/// A loopback server with the hello module at `/m.wasm`, text at `/secret.txt`, a redirect
/// at `/moved` to `elsewhere` (if given), and 404 otherwise; `hits` counts its requests.
fn module_server(elsewhere: Option<String>, hits: Arc<AtomicUsize>) -> Upstream {
    let hello = std::fs::read(repo("examples/hello.wat")).unwrap();
    Upstream::start(move |a| {
        hits.fetch_add(1, Ordering::SeqCst);
        match (a.path.as_str(), &elsewhere) {
            ("/m.wasm", _) => Reply::ok(hello.clone()),
            ("/secret.txt", _) => Reply::ok("(module top-secret-hunter2 unbalanced"),
            ("/moved", Some(to)) => Reply::redirect(to),
            _ => Reply::status(404),
        }
    })
}

/// `POST /services/add` fetches from loopback only when `fetch_allowed_hosts` lists the
/// origin; a redirect from an allowed origin to one not listed is refused before it is
/// followed; a fetched source that is no module gets a 400 that does not quote it.
#[test]
fn fetching_stays_within_fetch_allowed_hosts_and_is_never_echoed() {
    let inner_hits = Arc::new(AtomicUsize::new(0));
    let inner = module_server(None, inner_hits.clone());
    let outer = module_server(Some(inner.url("/m.wasm")), Arc::default());
    let add = |server: &Frenezulo, prefix: &str, source: String| {
        let body = serde_json::json!({ "prefix": prefix, "source": source });
        server.admin("POST", "/services/add", body.to_string().as_bytes())
    };

    let server = Frenezulo::start(&["--engine", DEFAULT_ENGINE]);
    let (status, why) = add(&server, "a", outer.url("/m.wasm")).error();
    assert_eq!(status, 400, "{why}");
    assert!(
        why.contains(&outer.url("")) && why.contains("fetch_allowed_hosts"),
        "{why}"
    );
    let (status, why) = add(&server, "a", "http://169.254.169.254/latest".into()).error();
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("fetch_allowed_hosts"), "{why}");
    drop(server);

    let config = ConfigFile::new(
        "fetch-ceiling",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\nfetch_allowed_hosts = [{:?}]\n",
            outer.url("")
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let r = add(&server, "a", outer.url("/m.wasm"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(server.get("/a").text(), "Hello from frenezulo!\n");

    let (status, why) = add(&server, "b", outer.url("/moved")).error();
    assert_eq!(status, 400, "{why}");
    assert!(
        why.contains(&inner.url("")) && why.contains("fetch_allowed_hosts"),
        "{why}"
    );
    assert_eq!(
        inner_hits.load(Ordering::SeqCst),
        0,
        "the redirect's target was never asked"
    );

    let (status, why) = add(&server, "c", outer.url("/secret.txt")).error();
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("not a WebAssembly module"), "{why}");
    assert!(
        !why.contains("hunter2"),
        "the fetched text is not quoted: {why}"
    );
    for refused in ["b", "c"] {
        assert_eq!(server.get(&format!("/{refused}")).status, 404);
    }
}

/// A guest that sets its own `Host` header: the upstream sees the URL's authority.
#[test]
fn a_guests_host_header_is_not_sent() {
    let upstream = Upstream::start(|a| Reply::ok(a.header("host").unwrap_or("none").to_owned()));
    let wat = String::from_utf8(outbound_wat())
        .unwrap()
        .replace(r#""x-test:1\n""#, r#""Host:evil.internal\n""#)
        .replace(
            "(i32.const 112) (i32.const 9)",
            "(i32.const 112) (i32.const 19)",
        );
    assert!(wat.contains("evil.internal") && wat.contains("(i32.const 19)"));
    let config = ConfigFile::new(
        "host-header",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\n[services.call]\nmodule = \"host.wat\"\nallowed_hosts = [{:?}]\n",
            upstream.url(""),
        ),
    );
    std::fs::write(config.dir().join("host.wat"), wat).unwrap();
    let server = Frenezulo::start(&["--config", config.path()]);
    let r = server.admin("POST", "/call", upstream.url("/x").as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body[0], 0, "the call succeeded: {:?}", r.body);
    assert_eq!(
        String::from_utf8_lossy(&r.body[3..]),
        upstream.addr.to_string(),
        "Host is the URL's authority"
    );
}

/// A grant stored while the operator allowed it is not served once the ceiling no longer
/// does (a restart without it): the manifest keeps it, a `PATCH` is refused with the
/// reason, a `DELETE` removes it.
#[test]
fn a_stored_grant_beyond_a_tightened_ceiling_is_not_served() {
    let data = TempDir::new("tightened");
    let open = ConfigFile::new(
        "open",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\noutbound_allowed_hosts = [\"insecure:allow-all\"]\n"
        ),
    );
    let mut server = Frenezulo::start(&["--config", open.path(), "--data-dir", data.arg()]);
    let r = put_with_hosts(&server, "call", &["http://169.254.169.254"]);
    assert_eq!(r.status, 201, "{}", r.text());
    let hello = std::fs::read(repo("examples/hello.wat")).unwrap();
    assert_eq!(server.admin("PUT", "/services/plain", &hello).status, 201);
    server.kill();

    let server = Frenezulo::start(&["--engine", DEFAULT_ENGINE, "--data-dir", data.arg()]);
    let log = server.wait_for_log("stored service not served");
    assert!(log.contains("outbound_allowed_hosts"), "{log}");
    assert_eq!(server.admin("GET", "/services/call", b"").status, 404);
    assert_eq!(server.get("/call").status, 404);
    assert_eq!(
        server.get("/plain").status,
        200,
        "other services are served"
    );
    let (status, why) = server
        .admin("PATCH", "/services/call", br#"{"env": {"A": "1"}}"#)
        .error();
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("outbound_allowed_hosts"), "{why}");
    assert_eq!(server.admin("DELETE", "/services/call", b"").status, 200);
}

/// This machine's own name, if it resolves to local addresses only (as `/etc/hosts` makes
/// it on most Linux machines and containers): a name no text check can tell is local.
fn own_name_resolving_locally() -> Option<String> {
    use std::net::{IpAddr, ToSocketAddrs};
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    let local = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    let plain = !name.is_empty()
        && name != "localhost"
        && !name
            .rsplit('.')
            .next()?
            .starts_with(|c: char| c.is_ascii_digit());
    let addrs: Vec<_> = (name.as_str(), 80).to_socket_addrs().ok()?.collect();
    (plain && !addrs.is_empty() && addrs.iter().all(|a| local(a.ip()))).then_some(name)
}

/// With no ceiling, a granted name must resolve to public addresses: a name that resolves
/// to loopback reaches nothing, for a guest's call and for a fetch; listed in the ceiling,
/// it is the operator's to allow.
#[test]
fn a_name_that_resolves_to_a_local_address_reaches_nothing_unless_listed() {
    let Some(name) = own_name_resolving_locally() else {
        eprintln!("skipped: this machine's name does not resolve to a local address only");
        return;
    };
    let hits = Arc::new(AtomicUsize::new(0));
    let upstream = module_server(None, hits.clone());
    let port = upstream
        .url("")
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let origin = format!("http://{name}:{port}");

    let server = Frenezulo::start(&["--engine", DEFAULT_ENGINE]);
    let r = put_with_hosts(&server, "call", &[&origin]);
    assert_eq!(r.status, 201, "the name passes as written: {}", r.text());
    let r = server.admin("POST", "/call", format!("{origin}/x").as_bytes());
    assert_eq!(r.body[0], 11, "REQUEST_ERROR: {:?}", r.body);
    let log = server.wait_for_log("resolves only to loopback");
    assert!(log.contains("outbound_allowed_hosts"), "{log}");
    let body = serde_json::json!({ "prefix": "a", "source": format!("{origin}/m.wasm") });
    let (status, why) = server
        .admin("POST", "/services/add", body.to_string().as_bytes())
        .error();
    assert_eq!(status, 502, "{why}");
    assert!(
        why.contains("resolves only to loopback") && why.contains("fetch_allowed_hosts"),
        "{why}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    drop(server);

    let config = ConfigFile::new(
        "listed-name",
        &format!(
            "engine = {DEFAULT_ENGINE:?}\noutbound_allowed_hosts = [{origin:?}]\nfetch_allowed_hosts = [{origin:?}]\n"
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    assert_eq!(put_with_hosts(&server, "call", &[&origin]).status, 201);
    let r = server.admin("POST", "/call", format!("{origin}/m.wasm").as_bytes());
    assert_eq!(r.body[0], 0, "listed, the call is made: {:?}", r.body);
    let r = server.admin("POST", "/services/add", body.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
