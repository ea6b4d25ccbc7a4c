use super::*;

const MINIMAL: &str = r#"
[server]
http_listen = "127.0.0.1:8000"
grpc_listen = "127.0.0.1:8001"
admin_listen = "127.0.0.1:9901"

[[pools]]
name = "resnet"
endpoints = [ { http = "10.0.0.5:8000", grpc = "10.0.0.5:8001" } ]

[[routes]]
model = "resnet50"
pool = "resnet"
"#;

fn errors_of(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_issue_contract_parses() {
    let config = parse(MINIMAL).expect("valid");
    assert_eq!(
        config.server.http_listen,
        Some("127.0.0.1:8000".parse().unwrap())
    );
    assert_eq!(
        config.pools[0].endpoints[0].grpc,
        Some("10.0.0.5:8001".parse().unwrap())
    );
    let resnet = config.routes.lookup(Some("resnet50")).expect("routed");
    assert_eq!(
        config.routes.target(resnet),
        &RouteTarget {
            key: "resnet50".into(),
            pool: 0
        }
    );
    // All routes use one pool: server-level calls go there; other models have no route.
    let server = config.routes.lookup(None).expect("server route");
    assert_eq!(
        config.routes.target(server),
        &RouteTarget {
            key: SERVER_ROUTE.into(),
            pool: 0
        }
    );
    assert_eq!(config.routes.lookup(Some("other")), None);
}

#[test]
fn every_mistake_is_reported_with_its_key_path() {
    let errors = errors_of(
        r#"
        colour = "blue"
        [server]
        http_listen = "nowhere"
        admin_listen = "127.0.0.1:9901"
        grpc_listen = "127.0.0.1:9901"
        [[pools]]
        name = "a"
        endpoints = [ { http = "10.0.0.1:8000" }, { http = "x" }, {} ]
        [[pools]]
        name = "a"
        endpoints = [ { http = "10.0.0.2:8000", htp = "oops" } ]
        [[pools]]
        name = "b"
        endpoints = []
        max_h2_streams = 0
        [[routes]]
        model = "m"
        pool = "missing"
        [[routes]]
        model = "m2"
        pool = "a"
        [[routes]]
        model = "m2"
        pool = "a"
        [[routes]]
        model = ""
        pool = "b"
        [[routes]]
        model = "m3"
        pool = "b"
        "#,
    );
    let expected = [
        "colour: unknown key",
        "server.http_listen: invalid address \"nowhere\"",
        "server.admin_listen: 127.0.0.1:9901 is already used by server.grpc_listen",
        "pools[0].endpoints[1].http: invalid address \"x\"",
        "pools[0].endpoints[2]: set `http`, `grpc` or both",
        "pools[1].endpoints[0].htp: unknown field `htp`",
        "pools[2].endpoints: at least one endpoint is required",
        "pools[2].max_h2_streams: must be at least 1",
        "routes[0].pool: no pool named \"missing\"",
        "routes[2].model: duplicate route for model \"m2\"",
        "routes[3].model: must not be empty",
        "routes: no default route",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in:\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(errors.len(), expected.len(), "{}", errors.join("\n"));
}

#[test]
fn duplicate_pool_names_are_reported() {
    let errors = errors_of(
        r#"
        [server]
        http_listen = "127.0.0.1:8000"
        [[pools]]
        name = "a"
        endpoints = [ { http = "10.0.0.1:8000" } ]
        [[pools]]
        name = "a"
        endpoints = [ { http = "10.0.0.2:8000" } ]
        [[routes]]
        model = "*"
        pool = "a"
        "#,
    );
    assert_eq!(errors, vec!["pools[1].name: duplicate pool name \"a\""]);
}

#[test]
fn wrong_types_and_syntax_are_errors_not_panics() {
    assert!(
        errors_of("[server]\nthreads = \"many\"\n")[0].starts_with("server.threads: invalid type")
    );
    assert!(errors_of("pools = 3")[0].starts_with("pools: expected an array of tables"));
    assert!(errors_of("[[pools]\n")[0].starts_with("invalid TOML"));
    assert_eq!(
        errors_of(""),
        [
            "server: set `http_listen`, `grpc_listen` or both",
            "pools: at least one pool is required",
            "routes: at least one route is required (model = \"*\" routes every model)"
        ]
    );
    for junk in [
        "\u{0}",
        "[[routes]]\nmodel = 1",
        "server = 1",
        "[[pools]]\nendpoints = [1]",
        "x.y.z = [[]]",
    ] {
        assert!(!errors_of(junk).is_empty(), "{junk:?}");
    }
}

#[test]
fn explicit_default_route_and_timeouts() {
    let config = parse(
        r#"
        [server]
        grpc_listen = "[::1]:0"
        access_log = "off"
        [[pools]]
        name = "a"
        endpoints = [ { grpc = "127.0.0.1:8001" } ]
        read_timeout_ms = 0
        [[pools]]
        name = "b"
        endpoints = [ { grpc = "localhost:8001" } ]
        connect_timeout_ms = 50
        [[routes]]
        model = "*"
        pool = "b"
        "#,
    )
    .expect("valid");
    let default = config.routes.lookup(Some("x")).expect("default route");
    assert_eq!(
        config.routes.target(default),
        &RouteTarget {
            key: "*".into(),
            pool: 1
        }
    );
    assert_eq!(
        config
            .routes
            .target(config.routes.lookup(None).unwrap())
            .pool,
        1
    );
    assert_eq!(config.pools[0].read_timeout, None);
    assert_eq!(config.pools[1].connect_timeout, Duration::from_millis(50));
    assert_eq!(config.server.access_log, AccessLogTarget::Off);
}
