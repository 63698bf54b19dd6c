//! WAGI's module maps served as they are, on each engine: WAGI's own dynamic-routes cases,
//! a map laid out like WAGI's `examples/modules.toml` run from its folder, and routes of any
//! depth set through the config file and the management API.

#[macro_use]
mod support;

use std::collections::HashMap;

use support::{ConfigFile, ENGINES, Frenezulo, TempDir, repo};

/// The first line of a `dynamic-routes.wat` answer and its CGI variables.
fn described(server: &Frenezulo, path: &str) -> (String, HashMap<String, String>) {
    let r = server.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let text = r.text();
    let mut lines = text.lines();
    let description = lines.next().unwrap_or_default().to_owned();
    let vars = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (description, vars)
}

const MAIN: &str = "This is the main entry point";
const EXACT: &str = "This is the .../exact handler";
const WILDCARD: &str = "This is the .../wildcard/... handler";

/// WAGI's `dynamic_routes_set_path_env_vars_correctly_module_map`, case by case: its map
/// (`test_dynamic_routes.toml`: a root route, an exact route, an exact route with a
/// trailing slash and a wildcard route, all one module) and its expectations for the
/// description, `PATH_INFO`, `PATH_TRANSLATED`, `X_MATCHED_ROUTE`, `X_RAW_PATH_INFO` and
/// `SCRIPT_NAME` of each request.
#[test]
fn wagis_dynamic_routes_cases_hold() {
    let module = repo("engines/tests/guests/dynamic-routes.wat");
    let map = ConfigFile::new(
        "dynamic-routes",
        &format!(
            r#"
        [[module]]
        route = "/"
        module = "file://{module}"

        [[module]]
        route = "/exactparent"
        module = "file://{module}"

        [[module]]
        route = "/exactparentslash/"
        module = "file://{module}"

        [[module]]
        route = "/wildcardparent/..."
        module = "file://{module}"
        "#
        ),
    );
    // (path, description, PATH_INFO, X_MATCHED_ROUTE, SCRIPT_NAME)
    let cases = [
        ("/", MAIN, "", "/", "/"),
        ("/exact", EXACT, "", "/exact", "/exact"),
        ("/exactparent", MAIN, "", "/exactparent", "/exactparent"),
        (
            "/exactparent/exact",
            EXACT,
            "",
            "/exactparent/exact",
            "/exactparent/exact",
        ),
        (
            "/exactparent/wildcard/fizz/buzz",
            WILDCARD,
            "/fizz/buzz",
            "/exactparent/wildcard/...",
            "/exactparent/wildcard",
        ),
        (
            "/exactparentslash/exact",
            EXACT,
            "",
            "/exactparentslash/exact",
            "/exactparentslash/exact",
        ),
        (
            "/exactparentslash/wildcard/fizz/buzz",
            WILDCARD,
            "/fizz/buzz",
            "/exactparentslash/wildcard/...",
            "/exactparentslash/wildcard",
        ),
        (
            "/wildcardparent",
            MAIN,
            "",
            "/wildcardparent/...",
            "/wildcardparent",
        ),
        (
            "/wildcardparent/fizz/buzz",
            MAIN,
            "/fizz/buzz",
            "/wildcardparent/...",
            "/wildcardparent",
        ),
        (
            "/wildcardparent/exact",
            EXACT,
            "",
            "/wildcardparent/exact",
            "/wildcardparent/exact",
        ),
        (
            "/wildcardparent/wildcard/fizz/buzz",
            WILDCARD,
            "/fizz/buzz",
            "/wildcardparent/wildcard/...",
            "/wildcardparent/wildcard",
        ),
        ("/main", MAIN, "", "/main", "/main"),
    ];
    for engine in ENGINES {
        let server = Frenezulo::start(&["--engine", engine, "--wagi-config", map.path()]);
        for (path, description, path_info, matched, script_name) in cases {
            let (got, vars) = described(&server, path);
            let seen = |k: &str| vars.get(k).map(String::as_str);
            assert_eq!(got, description, "{engine} {path}");
            assert_eq!(seen("PATH_INFO"), Some(path_info), "{engine} {path}");
            assert_eq!(seen("PATH_TRANSLATED"), Some(path_info), "{engine} {path}");
            assert_eq!(seen("X_RAW_PATH_INFO"), Some(path_info), "{engine} {path}");
            assert_eq!(seen("X_MATCHED_ROUTE"), Some(matched), "{engine} {path}");
            assert_eq!(seen("SCRIPT_NAME"), Some(script_name), "{engine} {path}");
        }
        // What WAGI answers 404, frenezulo does too; the management API stays reachable.
        for path in [
            "/nothing",
            "/exactparent/",
            "/exactparent/other",
            "/exactparentslash",
        ] {
            assert_eq!(server.get(path).status, 404, "{engine} {path}");
        }
        assert_eq!(server.get("/services/health").status, 200, "{engine}");
        // Each module is a service named after its route.
        let listed = server.admin("GET", "/services", b"").text();
        for route in [
            r#""route": "/""#,
            r#""route": "/exactparent""#,
            r#""route": "/exactparentslash/""#,
            r#""route": "/wildcardparent/...""#,
            r#""route": "/exactparentslash/wildcard/...""#,
        ] {
            assert!(listed.contains(route), "{engine}: {route} in\n{listed}");
        }
    }
}

/// A map laid out like WAGI's `examples/modules.toml`, started from its folder as
/// `wagi -c examples/modules.toml` is: a top-level `default_host`, a root route, paths
/// relative to the working directory, a key WAGI ignores and a `bindle_server`.
#[test]
fn a_map_like_wagis_examples_runs_from_its_folder() {
    let dir = TempDir::new("wagi-examples");
    let examples = dir.path().join("examples");
    std::fs::create_dir_all(&examples).unwrap();
    let copy = |from: &str, to: &str| std::fs::copy(repo(from), examples.join(to)).unwrap();
    copy("examples/echo.wat", "hello.wat");
    // WAGI's example is a compiled module; a module is recognised by content.
    copy("examples/hello.wat", "hello.wasm");
    copy("engines/tests/guests/trap.wat", "error.wat");
    std::fs::write(
        examples.join("modules.toml"),
        r#"
default_host = "localhost:3000"
colour = "blue"

[[module]]
# Example executing a Web Assembly Text file
route = "/"
module = "examples/hello.wat"

[[module]]
route = "/hello/..."
module = "examples/hello.wasm"
bindle_server = "http://localhost:8080/v1"

[[module]]
route = "/error"
module = "examples/error.wat"
"#,
    )
    .unwrap();
    for engine in ENGINES {
        let server = Frenezulo::start_in(
            dir.path(),
            &["--engine", engine, "--wagi-config", "examples/modules.toml"],
        );
        let root = server.get("/").text();
        for line in ["SCRIPT_NAME=/", "X_MATCHED_ROUTE=/", "SERVER_NAME=test"] {
            assert!(
                root.lines().any(|l| l == line),
                "{engine}: {line} in\n{root}"
            );
        }
        assert_eq!(
            server.get("/hello/x").text(),
            "Hello from frenezulo!\n",
            "{engine}"
        );
        assert_eq!(server.get("/error").status, 500, "{engine}");
        assert_eq!(server.get("/elsewhere").status, 404, "{engine}");
        // Without a Host header, `default_host` names the server.
        let mut c = server.connect();
        c.send(b"GET / HTTP/1.0\r\n\r\n");
        let text = c.response().text();
        assert!(
            text.lines().any(|l| l == "SERVER_NAME=localhost"),
            "{engine}:\n{text}"
        );
        let log = server.log();
        for warning in ["`colour` is not used", "`bindle_server` is ignored"] {
            assert!(log.contains(warning), "{engine}: {warning} in\n{log}");
        }
    }
}

/// Routes of any depth from the config file and the API: the longest base wins, a root
/// service takes the rest, `/services` stays the API's, and a taken route is refused.
#[test]
fn routes_of_any_depth_from_the_config_file_and_the_api() {
    let config = ConfigFile::new(
        "routes",
        &format!(
            r#"
        [services.site]
        module = "{echo}"
        route = "/"

        [services.users]
        module = "{echo}"
        route = "/api/v1/users"
        "#,
            echo = repo("examples/echo.wat"),
        ),
    );
    let server = Frenezulo::start(&["--config", config.path()]);
    let vars = |path: &str| {
        let r = server.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.text()
    };
    let users = vars("/api/v1/users/7");
    assert!(users.contains("SCRIPT_NAME=/api/v1/users\n"), "{users}");
    assert!(users.contains("PATH_INFO=/7\n"), "{users}");
    assert!(
        users.contains("X_MATCHED_ROUTE=/api/v1/users/...\n"),
        "{users}"
    );
    let site = vars("/api/v1/usersx");
    assert!(site.contains("SCRIPT_NAME=/\n"), "{site}");
    assert!(site.contains("PATH_INFO=/api/v1/usersx\n"), "{site}");
    assert!(site.contains("X_MATCHED_ROUTE=/...\n"), "{site}");
    assert_eq!(server.admin("GET", "/services/health", b"").status, 200);

    // The API sets a route the same way, and refuses one another service has.
    let wat = std::fs::read(repo("examples/hello.wat")).unwrap();
    let put = server.admin("PUT", "/services/greeter?route=/api/v1/greet", &wat);
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(
        server.get("/api/v1/greet/x").text(),
        "Hello from frenezulo!\n"
    );
    assert!(server.get("/greeter").text().contains("SCRIPT_NAME=/\n"));
    for (route, status, why) in [
        (
            "/api/v1/users/",
            409,
            "service `users` owns `/api/v1/users/...`",
        ),
        ("/", 409, "service `site` owns `/...`"),
        ("/services/x", 400, "reserved for the management API"),
        ("no-slash", 400, "must start with `/`"),
    ] {
        let r = server.admin("PUT", &format!("/services/other?route={route}"), &wat);
        assert_eq!(r.status, status, "{route}: {}", r.text());
        assert!(r.text().contains(why), "{route}: {}", r.text());
    }
    let shown = server.admin("GET", "/services/greeter", b"").text();
    assert!(shown.contains(r#""route": "/api/v1/greet/...""#), "{shown}");
    // A replacement without a route keeps the one it had.
    let put = server.admin("PUT", "/services/greeter", &wat);
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        server.get("/api/v1/greet").text(),
        "Hello from frenezulo!\n"
    );
}
