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

/// The routes' body limits when the config sets none.
const DEFAULT_LIMITS: BodyLimits = BodyLimits {
    max_request_bytes: 256 << 20,
    max_grpc_message_bytes: 256 << 20,
};

fn errors_of(text: &str) -> Vec<String> {
    match parse(text, Path::new(".")) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_issue_contract_parses() {
    let config = parse(MINIMAL, Path::new(".")).expect("valid");
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
            pool: 0,
            filters: Vec::new(),
            timeout: None,
            split: None,
            mirror: None,
            access_log: true,
            limits: DEFAULT_LIMITS,
            headers: HeaderRules::default(),
            apis: crate::protocol::api::ApiSet::UNRESTRICTED,
            repository: RepositoryMode::FanOut,
        }
    );
    // All routes use one pool: server-level calls go there; other models have no route.
    let server = config.routes.lookup(None).expect("server route");
    assert_eq!(
        config.routes.target(server),
        &RouteTarget {
            key: SERVER_ROUTE.into(),
            pool: 0,
            filters: Vec::new(),
            timeout: None,
            split: None,
            mirror: None,
            access_log: true,
            limits: DEFAULT_LIMITS,
            headers: HeaderRules::default(),
            apis: crate::protocol::api::ApiSet::UNRESTRICTED,
            repository: RepositoryMode::FanOut,
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
        max_wildcard_models = 5000
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
        // Hidden by the `htp` typo before issue 18.
        "pools[1].name: duplicate pool name \"a\"",
        "pools[2].endpoints: at least one endpoint is required",
        "pools[2].max_h2_streams: must be at least 1",
        "pools[2].max_wildcard_models: must be at most 4096",
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
fn worker_threads_are_bounded() {
    for (threads, error) in [
        (0, "server.threads: must be at least 1"),
        (129, "server.threads: must be at most 128"),
    ] {
        let errors = errors_of(&format!("[server]\nthreads = {threads}\n"));
        assert!(errors.iter().any(|e| e == error), "{errors:?}");
    }
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
        Path::new("."),
    )
    .expect("valid");
    let default = config.routes.lookup(Some("x")).expect("default route");
    assert_eq!(
        config.routes.target(default),
        &RouteTarget {
            key: "*".into(),
            pool: 1,
            filters: Vec::new(),
            timeout: None,
            split: None,
            mirror: None,
            access_log: true,
            limits: DEFAULT_LIMITS,
            headers: HeaderRules::default(),
            apis: crate::protocol::api::ApiSet::UNRESTRICTED,
            repository: RepositoryMode::FanOut,
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
    assert_eq!(config.server.access_log.target, AccessLogTarget::Off);
}

const WITH_FILTERS: &str = r#"
[server]
http_listen = "127.0.0.1:0"
filters = ["keys"]

[filters.keys]
kind = "api_key"
tenant_header = "x-tenant"
keys = [
  { tenant = "acme", key = "acme-secret" },
  { tenant = "globex", sha256 = "6c9bb1d8d3a1ab95b0a7c4c1d0cb8f5e0d3a1b1c5b6f5e4d3c2b1a0f9e8d7c6b" },
]

[filters.per-tenant]
kind = "rate_limit"
rate_per_second = 100
burst = 20
key = ["tenant", "model", "header:x-user", "client_ip"]
cost = "batch_size"
fleet_size = 4

[filters.auth]
kind = "jwt"
hmac_secret = "0123456789abcdef0123456789abcdef"
audiences = ["triton"]

[filters.may-call]
kind = "claims"
model_claim = "models"
require = { scope = "infer" }

[[pools]]
name = "p"
endpoints = [ { http = "127.0.0.1:8000" } ]

[[routes]]
model = "resnet50"
pool = "p"
filters = ["auth", "may-call", "per-tenant"]

[[routes]]
model = "*"
pool = "p"
"#;

#[test]
fn filters_build_chains_with_server_filters_first() {
    let config = parse(WITH_FILTERS, Path::new(".")).expect("valid");
    let names = |route: RouteId| -> Vec<&str> {
        config
            .routes
            .target(route)
            .filters
            .iter()
            .map(|&id| config.filters[id].name.as_str())
            .collect()
    };
    let resnet = config.routes.lookup(Some("resnet50")).unwrap();
    assert_eq!(names(resnet), ["keys", "auth", "may-call", "per-tenant"]);
    assert_eq!(
        names(config.routes.lookup(Some("other")).unwrap()),
        ["keys"]
    );
    assert_eq!(names(config.routes.lookup(None).unwrap()), ["keys"]);
    let FilterSpec::RateLimit(limit) = &config.filters[1].spec else {
        panic!("{:?}", config.filters)
    };
    // The fleet-wide burst of 20 over 4 proxies.
    assert_eq!(limit.quota.burst(), 5);
}

#[test]
fn filter_mistakes_are_all_reported_with_their_key_paths() {
    let errors = errors_of(
        r#"
        [server]
        http_listen = "127.0.0.1:0"
        filters = ["nope", "limit-by-claim"]
        [filters.unknown-kind]
        kind = "oauth"
        [filters.typo]
        kind = "rate_limit"
        rate_per_second = 1
        brust = 3
        [filters.limit-by-claim]
        kind = "rate_limit"
        rate_per_second = 1
        key = ["claim:sub", "tenant"]
        [filters.bad-part]
        kind = "rate_limit"
        rate_per_second = 1
        key = ["cookie"]
        [filters.bad-keys]
        kind = "api_key"
        header = "x api key"
        keys = [ { tenant = "a", key = "k", sha256 = "00" }, { tenant = "", sha256 = "zz" }, { tenant = "b", key = "k2" }, { tenant = "c", key = "k2" } ]
        keys_file = "does-not-exist.toml"
        [filters.two-sources]
        kind = "jwt"
        hmac_secret = "short"
        jwks = "{}"
        [filters.bad-jwt]
        kind = "jwt"
        hmac_secret = "too short"
        algorithms = ["RS256", "XS1"]
        claims_to_headers = { sub = "bad header" }
        [filters.private-idp]
        kind = "jwt"
        jwks_url = "https://idp.internal/jwks.json"
        jwks_ca_file = "no-such-ca.pem"
        [filters.claims]
        kind = "claims"
        [[pools]]
        name = "p"
        endpoints = [ { http = "127.0.0.1:8000" } ]
        [[routes]]
        model = "*"
        pool = "p"
        filters = ["claims", "claims", "typo"]
        "#,
    );
    let expected = [
        "filters.unknown-kind.kind: unknown variant `oauth`",
        "filters.typo.brust: unknown field `brust`",
        "filters.bad-part.key[0]: unknown key part \"cookie\"",
        "filters.bad-keys.header: invalid header name \"x api key\"",
        "filters.bad-keys.keys_file: cannot read ./does-not-exist.toml",
        "filters.bad-keys.keys[0]: set exactly one of `key` (non-empty) or `sha256`",
        "filters.bad-keys.keys[1].tenant: must be a non-empty",
        "filters.bad-keys.keys[1].sha256: expected 64 hex digits",
        "filters.bad-keys.keys[3]: the same key as filters.bad-keys.keys[2]",
        "filters.two-sources: set exactly one of `jwks_file`, `jwks`, `hmac_secret`, `hmac_secret_file`, `hmac_secret_env` or `jwks_url`",
        "filters.bad-jwt.hmac_secret: must be at least 32 bytes",
        "filters.bad-jwt.algorithms[1]: unknown algorithm \"XS1\"",
        "filters.bad-jwt.claims_to_headers.sub: invalid header name \"bad header\"",
        "filters.private-idp.jwks_ca_file: cannot read ./no-such-ca.pem",
        "server.filters[0]: no filter named \"nope\"",
        "server.filters[1]: filter \"limit-by-claim\" reads JWT claims",
        "server.filters[1]: filter \"limit-by-claim\" is keyed by tenant",
        "routes[0].filters[0]: filter \"claims\" reads JWT claims",
        "routes[0].filters[1]: filter \"claims\" is already in this chain",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
    // `typo` failed to parse: naming it in a route is not a second error.
    assert!(
        !errors
            .iter()
            .any(|e| e.contains("no filter named \"typo\"")),
        "{errors:#?}"
    );
}

#[test]
fn resilience_mistakes_are_all_reported_with_their_key_paths() {
    let errors = errors_of(
        r#"
[server]
http_listen = "127.0.0.1:8000"

[[pools]]
name = "a"
endpoints = [ { http = "10.0.0.5:8000", weight = 0 } ]
[pools.load_metrics]
interval_ms = 0
[pools.outlier]
max_ejection_percent = 101
base_ejection_ms = 5000
max_ejection_ms = 1000
[pools.outlier.failure_percentage]
threshold_percent = 120
[pools.health]
interval_ms = 100
timeout_ms = 500
unhealthy_interval_ms = 0
[pools.retry]
on_status = [200, 503]
on_grpc_status = ["UNAVAILABLE", "NOPE", "OK"]
budget_ratio = -1.0
max_body_bytes = 100000
[pools.sequences]
idle_timeout_secs = 0

[[pools]]
name = "b"
endpoints = [ { http = "10.0.0.6:8000" } ]
[pools.balancer]
strategy = "fastest"

[[routes]]
model = "*"
pool = "a"
timeout_ms = 0
"#,
    );
    let expected = [
        "pools[0].endpoints[0].weight: must be at least 1",
        "pools[0].load_metrics: no endpoint has a `metrics` address",
        "pools[0].load_metrics.interval_ms: must be at least 1",
        "pools[0].outlier.max_ejection_percent: must be at most 100",
        "pools[0].outlier.max_ejection_ms: must not be shorter than base_ejection_ms",
        "pools[0].outlier.failure_percentage.threshold_percent: must be at most 100",
        "pools[0].health.unhealthy_interval_ms: must be at least 1",
        "pools[0].health.timeout_ms: must not be longer than interval_ms",
        "pools[0].retry.on_status[0]: 200 is not retryable",
        "pools[0].retry.on_grpc_status[1]: \"NOPE\" is not a gRPC error code name",
        "pools[0].retry.on_grpc_status[2]: \"OK\" is not a gRPC error code name",
        "pools[0].retry.budget_ratio: must be a number from 0 to 10",
        "pools[0].retry.max_body_bytes: at most 65536",
        "pools[0].sequences.idle_timeout_secs: must be at least 1",
        "pools[1].balancer.strategy: unknown variant `fastest`",
        "routes[0].timeout_ms: must be at least 1",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn resilience_defaults_apply_without_sections() {
    let config = parse(MINIMAL, Path::new(".")).expect("valid");
    let pool = &config.pools[0];
    assert_eq!(
        pool.balance.strategy,
        ::filters::balance::Strategy::PeakEwma
    );
    let health = pool
        .health
        .as_ref()
        .expect("readiness checks are on by default");
    assert_eq!(health.interval, Duration::from_secs(5));
    assert_eq!(health.unhealthy_interval, Duration::from_secs(1));
    assert!(pool.load_metrics.is_none());
    assert_eq!(pool.retry.on_status, [503]);
    assert_eq!(pool.retry.on_grpc_status, [14]);
    assert_eq!(pool.retry.max_body_bytes, RETRY_BUFFER_LIMIT);
    assert_eq!(pool.endpoints[0].weight, 1);
    assert_eq!(config.routes.targets[0].timeout, None);
}

const CANARY_POOLS: &str = r#"
[server]
http_listen = "127.0.0.1:8000"

[[pools]]
name = "prod"
endpoints = [ { http = "10.0.0.5:8000" } ]

[[pools]]
name = "canary"
endpoints = [ { http = "10.0.0.6:8000" } ]
"#;

#[test]
fn canary_mistakes_are_all_reported_with_their_key_paths() {
    let errors = errors_of(&format!(
        r#"{CANARY_POOLS}
[[routes]]
model = "m"
pool = "prod"
[[routes.splits]]
pool = "nope"
percent = 60
[[routes.splits]]
pool = "canary"
percent = 50
header = "bad header"
[[routes.splits]]
version = "2"
claim = "cohort"
[[routes.splits]]
claim_value = "x"
version = ""
[routes.mirror]
pool = "canary"
percent = 120
absolute_tolerance = -1
max_concurrent = 0
timeout_ms = 0
header = "x-a"
claim = "c"
"#
    ));
    assert_eq!(
        errors,
        [
            "routes[0].splits[0].pool: no pool named \"nope\"",
            "routes[0].splits[1].header: invalid header name \"bad header\"",
            "routes[0].splits[2].claim: reads JWT claims: put a `jwt` filter in this route's chain (or in server.filters)",
            "routes[0].splits[3].claim_value: set `claim` too",
            "routes[0].splits[3].version: must not be empty",
            "routes[0].splits[3]: takes no request: set `percent`, `header` or `claim`",
            "routes[0].splits: shares add up to 110%, more than 100",
            "routes[0].mirror.claim: reads JWT claims: put a `jwt` filter in this route's chain (or in server.filters)",
            "routes[0].mirror: set `header` or `claim`, not both",
            "routes[0].mirror.percent: must be between 0 and 100, found 120",
            "routes[0].mirror.absolute_tolerance: must be a finite number ≥ 0, found -1",
            "routes[0].mirror.timeout_ms: must be at least 1",
            "routes[0].mirror.max_concurrent: must be at least 1",
        ],
        "{errors:#?}"
    );
}

#[test]
fn canary_sections_build_sides_and_mirrors_with_defaults() {
    let config = parse(
        &format!(
            r#"{CANARY_POOLS}
[[routes]]
model = "m"
pool = "prod"
[[routes.splits]]
pool = "canary"
percent = 5
[[routes.splits]]
version = "3"
header = "x-v3"
[routes.mirror]
pool = "canary"
version = "2"
"#
        ),
        Path::new("."),
    )
    .expect("valid");
    let target = config
        .routes
        .target(config.routes.lookup(Some("m")).unwrap());
    let split = target.split.as_ref().expect("split");
    let labels: Vec<_> = split.sides.iter().map(|s| &*s.label).collect();
    assert_eq!(labels, ["canary", "prod@3"]);
    assert_eq!(split.sides[1].pool, 0);
    assert_eq!(split.choose.sides[0].percent, 5.0);
    assert_eq!(target.pools().collect::<Vec<_>>(), [0, 1, 0]);
    let mirror = target.mirror.as_ref().expect("mirror");
    assert_eq!(mirror.pool, 1);
    assert_eq!(
        mirror.select.percent, 100.0,
        "without a rule every request is copied"
    );
    assert_eq!(mirror.max_concurrent, 16);
    assert_eq!(mirror.queue, 64);
    assert_eq!(mirror.buffer_bytes, 8 << 20);
    assert_eq!(mirror.timeout, Duration::from_secs(10));
    assert_eq!(
        mirror.compare,
        Some(::filters::mirror::compare::Tolerance {
            absolute: 1e-6,
            relative: 1e-4
        })
    );
}

#[test]
fn connection_limits_default_and_reject_zero() {
    let limits = parse(MINIMAL, Path::new("."))
        .expect("valid")
        .server
        .connections;
    assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(limits.max_connections, 4096);
    assert_eq!(limits.tcp_keepalive, Some(Duration::from_secs(60)));
    assert_eq!(limits.discard_body_bytes, 1 << 20);
    assert_eq!(limits.discard_body_timeout, Duration::from_secs(2));
    let zeros = MINIMAL.replace(
        "admin_listen = \"127.0.0.1:9901\"\n",
        "admin_listen = \"127.0.0.1:9901\"\nheader_read_timeout_ms = 0\nidle_timeout_ms = 0\n\
         max_connections = 0\ntcp_keepalive_secs = 0\ndiscard_body_bytes = 0\n\
         discard_body_timeout_ms = 0\n",
    );
    assert_eq!(
        errors_of(&zeros),
        [
            "server.header_read_timeout_ms: must be at least 1",
            "server.idle_timeout_ms: must be at least 1",
            "server.max_connections: must be at least 1",
            "server.discard_body_timeout_ms: must be at least 1",
        ]
    );
}

#[test]
fn circuit_breaker_caps_default_to_envoys_and_must_be_positive() {
    let config = parse(MINIMAL, Path::new(".")).expect("valid");
    assert_eq!(
        config.pools[0].circuit_breaker,
        CircuitBreaker {
            max_requests: 1024,
            max_pending: 1024
        }
    );
    let zero = MINIMAL.replace(
        "[[routes]]",
        "[pools.circuit_breaker]\nmax_requests = 0\nmax_pending = 0\n\n[[routes]]",
    );
    assert_eq!(
        errors_of(&zero),
        [
            "pools[0].circuit_breaker.max_requests: must be at least 1",
            "pools[0].circuit_breaker.max_pending: must be at least 1",
        ]
    );
}

const NAMED: &str = r#"
[server]
http_listen = "127.0.0.1:8000"
[[pools]]
name = "p"
endpoints = [ { http = "triton.test:8000", grpc = "triton.test:8001", weight = 2 } ]
[[routes]]
model = "*"
pool = "p"
"#;

#[test]
fn a_host_name_stands_for_every_address_it_resolves_to() {
    let resolve = |host: &str| {
        assert_eq!(host, "triton.test");
        Ok(vec![
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
        ])
    };
    let config = parse_resolving(NAMED, Path::new("."), &resolve).expect("valid");
    let endpoints = &config.pools[0].endpoints;
    let at = |ip: &str, port: u16| Some(SocketAddr::new(ip.parse().unwrap(), port));
    assert_eq!(endpoints.len(), 2);
    assert_eq!(
        (endpoints[0].http, endpoints[0].grpc, endpoints[0].weight),
        (at("10.0.0.1", 8000), at("10.0.0.1", 8001), 2)
    );
    assert_eq!(endpoints[1].http, at("10.0.0.2", 8000));
    assert_eq!(config.host_names, ["triton.test"]);
    assert!(config.warnings.is_empty());
}

#[test]
fn a_name_that_does_not_resolve_is_a_warning_and_mixed_hosts_an_error() {
    let nxdomain = |_: &str| Err(std::io::Error::other("NXDOMAIN"));
    let config = parse_resolving(NAMED, Path::new("."), &nxdomain).expect("still valid");
    assert!(config.pools[0].endpoints.is_empty());
    assert_eq!(config.warnings[0].path, "pools[0].endpoints[0]");
    assert!(config.warnings[0].message.contains("does not resolve now"));

    let mixed = NAMED.replace("triton.test:8001", "10.0.0.1:8001");
    let errors = match parse_resolving(&mixed, Path::new("."), &nxdomain) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("name one server"), "{errors:?}");
}

/// Writes a self-signed certificate for `name` and its key as `FILE.pem` and
/// `FILE-key.pem` into `dir`.
fn write_pair(dir: &Path, file: &str, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem()).unwrap();
}

#[test]
fn tls_mistakes_are_all_reported_with_their_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "edge", "edge.test");
    write_pair(dir.path(), "other", "other.test");
    std::fs::write(dir.path().join("junk.pem"), "hello").unwrap();
    let text = r#"
[server]
http_listen = "127.0.0.1:8000"
[server.tls]
cert_file = "edge.pem"
key_file = "other-key.pem"
min_version = "1.1"
listeners = ["http", "grpc", "quic"]
require_client_cert = true
client_identity_header = "bad header"
[[server.tls.sni]]
server_names = ["a.test", "a.test", "bad name", "10.0.0.1"]
cert_file = "missing.pem"
key_file = "edge-key.pem"
[[pools]]
name = "p"
endpoints = [ { http = "10.0.0.5:8000" } ]
[pools.tls]
ca_file = "junk.pem"
client_cert_file = "edge.pem"
server_name = "bad name!"
protocols = ["http", "ftp"]
[[routes]]
model = "*"
pool = "p"
"#;
    let errors = match parse(text, dir.path()) {
        Ok(_) => panic!("must fail"),
        Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let expected = [
        ("server.tls.key_file", "does not belong to the certificate"),
        ("server.tls.min_version", "expected \"1.2\" or \"1.3\""),
        ("server.tls.listeners[1]", "server.grpc_listen is not set"),
        ("server.tls.listeners[2]", "found \"quic\""),
        ("server.tls.require_client_cert", "set `client_ca_file`"),
        ("server.tls.client_identity_header", "set `client_ca_file`"),
        ("server.tls.client_identity_header", "invalid header name"),
        ("server.tls.sni[0].server_names[1]", "named twice"),
        ("server.tls.sni[0].server_names[2]", "not a DNS name"),
        ("server.tls.sni[0].server_names[3]", "not a DNS name"),
        ("server.tls.sni[0].cert_file", "cannot read"),
        ("pools[0].tls.ca_file", "no PEM certificate"),
        ("pools[0].tls.client_key_file", "set it too"),
        ("pools[0].tls.server_name", "not a DNS name or IP address"),
        ("pools[0].tls.protocols[1]", "found \"ftp\""),
    ];
    for (path, message) in expected {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(message)),
            "missing {path}: …{message}… in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn a_valid_tls_config_loads_and_skipping_verification_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "edge", "edge.test");
    write_pair(dir.path(), "a", "a.test");
    let text = r#"
[server]
http_listen = "127.0.0.1:8000"
grpc_listen = "127.0.0.1:8001"
[server.tls]
cert_file = "edge.pem"
key_file = "edge-key.pem"
client_ca_file = "edge.pem"
[[server.tls.sni]]
server_names = ["A.test", "*.b.test"]
cert_file = "a.pem"
key_file = "a-key.pem"
[[pools]]
name = "p"
endpoints = [ { http = "10.0.0.5:8000", grpc = "10.0.0.5:8001" } ]
[pools.tls]
insecure_skip_verify = true
protocols = ["grpc"]
[[routes]]
model = "*"
pool = "p"
"#;
    let config = parse(text, dir.path()).expect("valid");
    let tls = config.server.tls.expect("server TLS");
    assert!(tls.on_http && tls.on_grpc, "both listeners by default");
    assert_eq!(tls.min_version, TlsVersion::V1_2);
    assert!(tls.client_auth.expect("client auth").required);
    assert_eq!(tls.sni[0].names, ["a.test", "*.b.test"]);
    let upstream = config.pools[0].tls.as_ref().expect("pool TLS");
    assert!(!upstream.on_http && upstream.on_grpc && !upstream.on_metrics);
    assert!(config
        .warnings
        .iter()
        .any(|w| w.path == "pools[0].tls.insecure_skip_verify"));
}

/// `MINIMAL` with `server` keys added to its `[server]` section and `sections` appended.
fn minimal_with(server: &str, sections: &str) -> String {
    MINIMAL.replace("[server]\n", &format!("[server]\n{server}\n")) + sections
}

#[test]
fn log_and_access_log_default_to_text_info_and_every_request_on_stdout() {
    let config = parse(MINIMAL, Path::new(".")).expect("valid");
    assert_eq!(config.log, LogSettings::default());
    assert_eq!(config.log.level, DEFAULT_LOG_LEVEL);
    assert_eq!(
        config.server.access_log,
        AccessLogSettings {
            target: AccessLogTarget::Stdout,
            sample_ratio: 1.0,
            sample_errors: false,
        }
    );
    assert!(config.routes.targets.iter().all(|t| t.access_log));
}

#[test]
fn log_and_access_log_tables_parse() {
    let text = minimal_with(
        "access_log = { output = \"logs/access.log\", sample_ratio = 0.25, sample_errors = true }",
        "[log]\nlevel = \"warn,trident=debug\"\nformat = \"json\"\n",
    )
    .replace(
        "pool = \"resnet\"\n",
        "pool = \"resnet\"\naccess_log = false\n",
    );
    let config = parse(&text, Path::new("/etc/trident")).expect("valid");
    assert_eq!(
        config.log,
        LogSettings {
            level: "warn,trident=debug".to_owned(),
            format: LogFormat::Json,
        }
    );
    assert_eq!(
        config.server.access_log,
        AccessLogSettings {
            target: AccessLogTarget::File("/etc/trident/logs/access.log".into()),
            sample_ratio: 0.25,
            sample_errors: true,
        }
    );
    let route = config.routes.lookup(Some("resnet50")).unwrap();
    assert!(!config.routes.target(route).access_log);
    let shorthand = minimal_with("access_log = \"stderr\"", "");
    assert_eq!(
        parse(&shorthand, Path::new("."))
            .unwrap()
            .server
            .access_log
            .target,
        AccessLogTarget::Stderr
    );
}

/// Asserts that, for each `(path, words)`, an error starts with `path` and contains `words`.
fn assert_reported(errors: &[String], expected: &[(&str, &str)]) {
    for (path, words) in expected {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(path) && e.contains(words)),
            "no {path}…{words} in {errors:?}"
        );
    }
}

#[test]
fn log_mistakes_are_reported_with_their_key_paths() {
    let errors = errors_of(&minimal_with(
        "access_log = { output = \"\", sample_ratio = 1.5 }",
        "[log]\nlevel = \"info,=debug=x\"\nformat = \"yaml\"\n",
    ));
    assert_reported(
        &errors,
        &[
            ("log.level: ", ""),
            ("log.format: ", "yaml"),
            ("server.access_log: ", "a file path"),
            ("server.access_log.sample_ratio: ", "between 0 and 1"),
        ],
    );
    let errors = errors_of(&minimal_with(
        "access_log = { path = \"x\" }",
        "[log]\nlevl = 1\n",
    ));
    assert_reported(&errors, &[("server.access_log", "path"), ("log", "levl")]);
    let errors = errors_of(&minimal_with("access_log = 3", ""));
    assert_reported(&errors, &[("server.access_log: ", "a table")]);
}

#[test]
fn tracing_is_off_without_its_section_and_defaults_apply() {
    assert!(parse(MINIMAL, Path::new(".")).unwrap().tracing.is_none());
    let config = parse(
        &format!("{MINIMAL}\n[tracing]\nendpoint = \"http://127.0.0.1:4317\"\n"),
        Path::new("."),
    )
    .unwrap();
    let tracing = config.tracing.expect("[tracing] set");
    assert_eq!(tracing.protocol, crate::config::OtlpProtocol::Grpc);
    assert_eq!(tracing.sample_ratio, 0.01);
    assert_eq!(tracing.service_name, "trident");
    assert_eq!(tracing.queue_spans, 2048);
    assert_eq!(tracing.batch_spans, 512);
    assert_eq!(tracing.batch_bytes, 1 << 20);
    assert_eq!(tracing.attribute_value_bytes, 256);
    assert_eq!(tracing.export_interval, Duration::from_millis(1000));
    assert_eq!(tracing.export_timeout, Duration::from_millis(5000));
    assert!(tracing.headers.is_empty());
}

#[test]
fn tracing_mistakes_are_all_reported_with_their_key_paths() {
    let errors = errors_of(&format!(
        "{MINIMAL}\n[tracing]\nendpoint = \"https://collector:4317\"\nprotocol = \"thrift\"\n\
         sample_ratio = 1.5\nservice_name = \"\"\nqueue_spans = 10\nbatch_spans = 20\n\
         batch_bytes = 1000\nattribute_value_bytes = 0\nexport_interval_ms = 0\nexport_timeout_ms = 0\n\
         [tracing.headers]\n\"bad name\" = \"x\"\ncontent-type = \"y\"\n"
    ));
    for (path, needle) in [
        ("tracing.endpoint", "https is not supported"),
        ("tracing.protocol", "\"grpc\" or \"http/protobuf\""),
        ("tracing.sample_ratio", "between 0.0 and 1.0"),
        ("tracing.service_name", "must not be empty"),
        ("tracing.batch_spans", "at most queue_spans"),
        ("tracing.batch_bytes", "between 65536 and 67108864"),
        ("tracing.attribute_value_bytes", "between 16 and 65536"),
        ("tracing.export_interval_ms", "at least 1"),
        ("tracing.export_timeout_ms", "at least 1"),
        ("tracing.headers.bad name", "not a valid header name"),
        ("tracing.headers.content-type", "set by the exporter"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(path) && e.contains(needle)),
            "{path}: {needle} in {errors:#?}"
        );
    }
    for (keys, path, needle) in [
        (
            "endpoint = \"http://collector:4317\"\nsampling = 1",
            "tracing",
            "unknown field",
        ),
        (
            "endpoint = \"http://collector\"",
            "tracing.endpoint",
            "name the port",
        ),
    ] {
        let errors = errors_of(&format!("{MINIMAL}\n[tracing]\n{keys}\n"));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(path) && e.contains(needle)),
            "{path}: {needle} in {errors:#?}"
        );
    }
}

/// Issue 18: a file with 15 mistakes reported 7, since serde stopped at the
/// first error of each table (`acess_log` hid `threads = "4"` and port 99999,
/// then a false "set `http_listen`, `grpc_listen` or both"). All 15 in one
/// pass now, each at its line, and nothing more.
const FIFTEEN_MISTAKES: &str = r#"[server]
acess_log = "stdout"
threads = "4"
http_listen = "0.0.0.0:99999"
grpc_listen = 8001

[[pools]]
name = "a"
conect_timeout_ms = 100
endpoints = [ { http = "10.0.0.1:8000", weight = "heavy" } ]
[pools.retry]
max_retries = -1

[[pools]]
name = "b"
endpoints = [ { htp = "10.0.0.2:8000" } ]
read_timeout_ms = "1s"

[[routes]]
model = "m"
pool = "a"
filters = ["limit", "ghost"]
timeout = 5

[[routes]]
model = 7
pool = "b"

[filters.limit]
kind = "rate_limit"
rate_per_second = 1
brust = 3
key = "client_ip"

[tracing]
endpoint = "http://127.0.0.1:4317"
sample_ratio = "all"
"#;

#[test]
fn every_mistake_of_a_file_is_reported_in_one_pass_with_its_line() {
    let errors = match parse(FIFTEEN_MISTAKES, Path::new(".")) {
        Ok(_) => panic!("must fail"),
        Err(e) => e.0,
    };
    let expected = [
        (2, "server.acess_log: unknown field `acess_log`"),
        (3, "server.threads: invalid type: string \"4\""),
        (5, "server.grpc_listen: invalid type: integer `8001`"),
        (
            4,
            "server.http_listen: invalid address \"0.0.0.0:99999\": port 99999 is out of range (1–65535)",
        ),
        (9, "pools[0].conect_timeout_ms: unknown field"),
        (10, "pools[0].endpoints[0].weight: invalid type: string \"heavy\""),
        (12, "pools[0].retry.max_retries: invalid value: integer `-1`"),
        (16, "pools[1].endpoints[0].htp: unknown field `htp`"),
        (17, "pools[1].read_timeout_ms: invalid type: string \"1s\""),
        (23, "routes[0].timeout: unknown field `timeout`"),
        (22, "routes[0].filters[1]: no filter named \"ghost\""),
        (26, "routes[1].model: invalid type: integer `7`"),
        (32, "filters.limit.brust: unknown field `brust`"),
        (33, "filters.limit.key: invalid type: string \"client_ip\""),
        (37, "tracing.sample_ratio: invalid type: string \"all\""),
    ];
    let shown: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {e}", e.line.unwrap_or(0)))
        .collect();
    for (line, want) in expected {
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with(&format!("{line}: {want}"))),
            "missing {line}: {want:?} in:\n{}",
            shown.join("\n")
        );
    }
    assert_eq!(errors.len(), expected.len(), "{}", shown.join("\n"));
}

#[test]
fn a_missing_key_is_reported_unless_it_was_already_wrong() {
    // `pool` missing from the route is a mistake of its own; `name = 5` was
    // reported as a wrong type, not again as missing.
    let errors = errors_of(
        r#"
        [server]
        http_listen = "127.0.0.1:8000"
        [[pools]]
        name = 5
        endpoints = [ { http = "10.0.0.1:8000" } ]
        [[pools]]
        name = "b"
        endpoints = [ { http = "10.0.0.2:8000" } ]
        [[routes]]
        model = "*"
        [[routes]]
        model = "m"
        pool = "b"
        "#,
    );
    assert_eq!(
        errors,
        [
            "pools[0].name: invalid type: integer `5`, expected a string",
            "routes[0].pool: missing field `pool`",
        ],
    );
}

#[test]
fn an_out_of_range_port_is_reported_as_such() {
    for (address, want) in [
        ("0.0.0.0:99999", "port 99999 is out of range (1–65535)"),
        ("[::]:70000", "port 70000 is out of range (1–65535)"),
        ("triton:65536", "port 65536 is out of range (1–65535)"),
        ("nowhere", "expected host:port"),
    ] {
        let errors = errors_of(&MINIMAL.replace("10.0.0.5:8000", address));
        assert_eq!(
            errors,
            [format!(
                "pools[0].endpoints[0].http: invalid address {address:?}: {want}"
            )],
        );
    }
}

#[test]
fn likely_mistakes_are_warnings_with_their_lines() {
    let config = parse(
        r#"[server]
http_listen = "127.0.0.1:8000"
admin_listen = "0.0.0.0:9901"

[[pools]]
name = "main"
endpoints = [ { http = "10.0.0.1:8000" }, { http = "10.0.0.2:8000" }, { http = "10.0.0.1:8000" } ]

[[pools]]
name = "forgotten"
endpoints = [ { http = "10.0.0.3:8000" } ]

[[pools]]
name = "canary"
endpoints = [ { http = "10.0.0.4:8000" } ]

[[routes]]
model = "*"
pool = "main"
mirror = { pool = "main" }
splits = [ { pool = "canary", percent = 5 } ]

[[routes]]
model = "versioned"
pool = "main"
mirror = { pool = "main", version = "2" }

[filters.unused]
kind = "rate_limit"
rate_per_second = 10
"#,
        Path::new("."),
    )
    .expect("valid");
    let warnings: Vec<String> = config
        .warnings
        .iter()
        .map(|w| format!("{}: {w}", w.line.unwrap_or(0)))
        .collect();
    let expected = [
        "20: routes[0].mirror.pool: mirrors to the route's own pool \"main\"",
        "7: pools[0].endpoints[2]: same address as pools[0].endpoints[0]",
        "10: pools[1].name: no route uses pool \"forgotten\"",
        "28: filters.unused: filter \"unused\" is in no chain",
        "3: server.admin_listen: admin listener on non-loopback address 0.0.0.0:9901 has no protection",
    ];
    for want in expected {
        assert!(
            warnings.iter().any(|w| w.starts_with(want)),
            "missing {want:?} in:\n{}",
            warnings.join("\n")
        );
    }
    assert_eq!(warnings.len(), expected.len(), "{}", warnings.join("\n"));
}

#[test]
fn a_protected_admin_listener_on_any_address_is_no_warning() {
    let text = MINIMAL.replace("127.0.0.1:9901", "0.0.0.0:9901")
        + "\n[server.admin_auth]\nallow_networks = [\"10.0.0.0/8\"]\n";
    let config = parse(&text, Path::new(".")).expect("valid");
    assert!(
        config
            .warnings
            .iter()
            .all(|w| w.path != "server.admin_listen"),
        "{:?}",
        config.warnings
    );
}

#[test]
fn the_jwt_hmac_secret_comes_inline_from_a_file_or_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("secret"), format!("{secret}\n")).unwrap();
    // 31 bytes and a newline: the newline is not part of the secret.
    std::fs::write(dir.path().join("short"), format!("{}\n", &secret[1..])).unwrap();
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let errors_with = |source: &str| {
        let text = format!("{MINIMAL}\n[filters.sso]\nkind = \"jwt\"\n{source}\n").replace(
            "pool = \"resnet\"",
            "pool = \"resnet\"\nfilters = [\"sso\"]",
        );
        match parse(&text, dir.path()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    };
    assert_eq!(
        errors_with(&format!("hmac_secret = \"{secret}\"")),
        Vec::<String>::new()
    );
    assert_eq!(
        errors_with("hmac_secret_file = \"secret\""),
        Vec::<String>::new()
    );
    for (source, want) in [
        (
            "hmac_secret_file = \"short\"",
            "filters.sso.hmac_secret_file: must be at least 32 bytes",
        ),
        (
            "hmac_secret_file = \"empty\"",
            "filters.sso.hmac_secret_file: must not be empty",
        ),
        (
            "hmac_secret_file = \"missing\"",
            "filters.sso.hmac_secret_file: cannot read",
        ),
        (
            "hmac_secret_env = \"TRIDENT_TEST_UNSET_18\"",
            "filters.sso.hmac_secret_env: environment variable TRIDENT_TEST_UNSET_18",
        ),
        (
            "hmac_secret_env = \"X\"\nhmac_secret_file = \"secret\"",
            "filters.sso: set exactly one of",
        ),
    ] {
        let errors = errors_with(source);
        assert!(
            errors.len() == 1 && errors[0].starts_with(want),
            "{source}: {errors:?}"
        );
    }
}

#[test]
fn a_table_of_thousands_of_mistakes_is_checked_in_bounded_time() {
    let keys: String = (0..20_000).map(|i| format!("typo{i} = {i}\n")).collect();
    let errors = errors_of(&format!("{MINIMAL}\n[log]\n{keys}"));
    assert_eq!(errors.len(), 51, "{:?}", &errors[..3]);
    assert!(
        errors[0].starts_with("log.typo0: unknown field"),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[50],
        "log: more than 50 mistakes in log: the rest is not checked"
    );
}

const EDGE: &str = r#"
[server]
http_listen = "127.0.0.1:8000"
max_request_header_bytes = 8192
max_request_bytes = 1000
served_by_header = "x-served-by"

[filters.browsers]
kind = "cors"
allow_origins = ["https://app.example.com", "https://*.corp.example"]

[[pools]]
name = "p"
endpoints = [ { http = "10.0.0.5:8000" } ]

[[routes]]
model = "small"
pool = "p"
filters = ["browsers"]
max_grpc_message_bytes = 10

[routes.headers]
request_set = { "x-team" = "vision" }
request_remove = ["x-internal"]
response_set = { "cache-control" = "no-store" }
response_remove = ["server"]
"#;

#[test]
fn edge_keys_parse_with_route_over_server_defaults() {
    let config = parse(EDGE, Path::new(".")).expect("valid");
    assert_eq!(config.server.max_request_header_bytes, 8192);
    assert_eq!(
        config.server.served_by_header.as_ref().map(|h| h.as_str()),
        Some("x-served-by")
    );
    let small = config
        .routes
        .target(config.routes.lookup(Some("small")).unwrap());
    assert_eq!(
        small.limits,
        BodyLimits {
            max_request_bytes: 1000,
            max_grpc_message_bytes: 10
        }
    );
    assert_eq!(small.headers.request_set[0].0, "x-team");
    assert_eq!(small.headers.request_remove[0], "x-internal");
    assert_eq!(small.headers.response_set[0].1, "no-store");
    assert_eq!(small.headers.response_remove[0], "server");
    assert!(matches!(config.filters[0].spec, FilterSpec::Cors(_)));
    let minimal = parse(MINIMAL, Path::new(".")).expect("valid");
    assert_eq!(minimal.server.max_request_header_bytes, 64 << 10);
    assert_eq!(minimal.server.served_by_header, None);
}

#[test]
fn edge_mistakes_are_reported_with_their_key_path() {
    let broken = EDGE
        .replace("max_request_bytes = 1000", "max_request_bytes = 0")
        .replace(
            "max_request_header_bytes = 8192",
            "max_request_header_bytes = 2000000",
        )
        .replace(
            "\"x-team\" = \"vision\"",
            "\"content-length\" = \"1\", \"x-ok\" = \"a\\nb\"",
        )
        .replace("[\"x-internal\"]", "[\"grpc-timeout\", \"bad name\"]")
        .replace(
            "allow_origins = [\"https://app.example.com\", \"https://*.corp.example\"]",
            "allow_origins = [\"*\"]\nallow_credentials = true",
        );
    let errors = errors_of(&broken);
    for expected in [
        "server.max_request_bytes",
        "server.max_request_header_bytes",
        "routes[0].headers.request_set.content-length",
        "routes[0].headers.request_set.x-ok",
        "routes[0].headers.request_remove[0]",
        "routes[0].headers.request_remove[1]",
        "filters.browsers.allow_credentials",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected} not in {errors:#?}"
        );
    }
}

#[test]
fn a_chain_takes_one_cors_filter() {
    let two = EDGE.replace(
        "filters = [\"browsers\"]",
        "filters = [\"browsers\", \"more\"]",
    ) + "\n[filters.more]\nkind = \"cors\"\nallow_origins = [\"*\"]\n";
    let errors = errors_of(&two);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("routes[0].filters[1]") && e.contains("already has a `cors`")),
        "{errors:#?}"
    );
}

#[test]
fn apis_and_repository_mistakes_are_reported_with_their_key_paths() {
    let errors = errors_of(
        r#"
[server]
http_listen = "127.0.0.1:8000"
[server.repository]
max_body_bytes = 0
concurrency = 0

[[pools]]
name = "p"
endpoints = [ { http = "10.0.0.5:8000" } ]

[[routes]]
model = "*"
pool = "p"
apis = ["infer", "everything"]

[[routes]]
model = "m"
pool = "p"
repository = "all"
"#,
    );
    let expected = [
        "server.repository.max_body_bytes: must be at least 1",
        "server.repository.concurrency: must be at least 1",
        "routes[0].apis[1]: unknown variant `everything`",
        "routes[1].repository: unknown variant `all`",
    ];
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !expected.iter().any(|want| e.starts_with(want)))
        .collect();
    assert!(
        unexpected.is_empty() && errors.len() == expected.len(),
        "{errors:#?}"
    );
}

#[test]
fn server_level_calls_follow_the_default_routes_apis() {
    use crate::protocol::api::{Api, ApiSet};
    let config = parse(
        &format!(
            "{MINIMAL}apis = [\"infer\"]\nrepository = \"deny\"\n\
             [[routes]]\nmodel = \"*\"\npool = \"resnet\"\napis = [\"infer\", \"health\"]\n"
        ),
        Path::new("."),
    )
    .expect("valid");
    let routes = &config.routes;
    let resnet = routes.target(routes.lookup(Some("resnet50")).unwrap());
    assert_eq!(resnet.apis, ApiSet::only([Api::Infer]));
    assert_eq!(resnet.repository, RepositoryMode::Deny);
    let server = routes.target(routes.lookup(None).unwrap());
    assert_eq!(server.apis, ApiSet::only([Api::Infer, Api::Health]));
    assert_eq!(server.repository, RepositoryMode::FanOut);
    // Without a default route, an API any route allows.
    let exact_only = parse(
        &format!(
            "{MINIMAL}apis = [\"infer\"]\n\
             [[routes]]\nmodel = \"other\"\npool = \"resnet\"\napis = [\"health\"]\n"
        ),
        Path::new("."),
    )
    .expect("valid");
    let server = exact_only
        .routes
        .target(exact_only.routes.lookup(None).unwrap());
    assert_eq!(server.apis, ApiSet::only([Api::Infer, Api::Health]));
    // Without `apis` nothing is refused, and the repository is fanned out.
    let minimal = parse(MINIMAL, Path::new(".")).expect("valid");
    let server = minimal.routes.target(minimal.routes.lookup(None).unwrap());
    assert_eq!(server.apis, ApiSet::UNRESTRICTED);
    assert_eq!(minimal.server.repository.concurrency, 16);
    assert_eq!(minimal.server.repository.max_body_bytes, 16 << 20);
}

#[test]
fn admin_auth_reads_its_token_file_and_reports_its_mistakes() {
    let config = parse(MINIMAL, Path::new(".")).expect("valid");
    assert!(config.server.admin_auth.is_none());
    assert!(!config.server.admin_is_protected());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "s3cret\n").expect("write token");
    let with = |table: &str| format!("{MINIMAL}\n[server.admin_auth]\n{table}\n");
    let config = parse(&with("token_file = \"token\""), dir.path()).expect("valid");
    let auth = config.server.admin_auth.as_ref().expect("auth");
    assert_eq!(
        auth.token,
        Some(::filters::api_key::digest(b"s3cret")),
        "the trailing newline is not part of the token"
    );
    assert_eq!(auth.open_paths, ["/live", "/ready", "/metrics"]);
    assert!(
        auth.allows("192.0.2.1".parse().unwrap()),
        "no network list: any"
    );
    assert!(config.server.admin_is_protected());
    assert!(!format!("{auth:?}").contains("s3cret"));
    let config = parse(
        &with("allow_networks = [\"10.0.0.0/8\"]\nopen_paths = []"),
        dir.path(),
    )
    .expect("valid");
    let auth = config.server.admin_auth.as_ref().expect("auth");
    assert!(auth.token.is_none() && !auth.is_open("/live"));
    assert!(config.server.admin_is_protected());
    std::fs::write(dir.path().join("blank"), "\n").expect("write token");
    let errors = match parse(
        &with(
            "token_file = \"blank\"\nallow_networks = [\"10.0.0.0/8\", \"10.0.0.0/40\", \"lan\"]\n\
             open_paths = [\"live\"]",
        ),
        dir.path(),
    ) {
        Ok(_) => panic!("invalid"),
        Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    for needle in [
        "server.admin_auth.token_file: the token must be one line",
        "server.admin_auth.allow_networks[1]: \"10.0.0.0/40\": the prefix length",
        "server.admin_auth.allow_networks[2]: \"lan\" is not an IP network",
        "server.admin_auth.open_paths[0]: \"live\" must be a path",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "{needle} in {errors:#?}"
        );
    }
    assert!(errors_of(&with(""))[0].starts_with("server.admin_auth: set `token_file`"));
    assert!(errors_of(&with("token_file = \"missing\""))[0]
        .starts_with("server.admin_auth.token_file: cannot read"));
    assert!(errors_of(&with("token = \"x\""))[0].contains("unknown field"));
}

#[test]
fn sequence_placement_defaults_to_the_table() {
    let config = parse(MINIMAL, Path::new(".")).expect("valid");
    assert_eq!(
        config.pools[0].sequences.placement,
        file::PlacementFile::Table
    );
    let hashed = MINIMAL.replace(
        "[[routes]]",
        "[pools.sequences]\nplacement = \"hash\"\n\n[[routes]]",
    );
    let config = parse(&hashed, Path::new(".")).expect("valid");
    assert_eq!(
        config.pools[0].sequences.placement,
        file::PlacementFile::Hash
    );
    let errors = errors_of(&hashed.replace("\"hash\"", "\"random\""));
    assert!(
        errors[0].starts_with("pools[0].sequences.placement: unknown variant"),
        "{errors:?}"
    );
}

/// `check --print` (and admin `GET /config`) fills in every default that does not
/// depend on other keys: sections on by default appear whole even when the file
/// leaves them out, and optional sections are filled in when present.
#[test]
fn print_fills_in_the_defaults_of_every_section() {
    let text = format!(
        r#"{MINIMAL}
[[pools]]
name = "b"
endpoints = [ {{ http = "10.0.0.6:8000" }} ]
[pools.outlier]
consecutive_failures = 3
[pools.outlier.failure_percentage]

[[routes]]
model = "other"
pool = "resnet"
filters = ["per-tenant", "browser"]
[routes.mirror]
pool = "b"

[filters.per-tenant]
kind = "rate_limit"
rate_per_second = 10.5

[filters.browser]
kind = "cors"
allow_origins = ["https://app.example.com"]

[tracing]
endpoint = "http://127.0.0.1:4317"
"#
    );
    let printed = print::effective(&text, Secrets::Shown).expect("prints");
    let value: toml::Value = toml::from_str(&printed).expect("TOML");
    let at = |path: &str| {
        path.split('.')
            .try_fold(&value, |v, key| match key.parse::<usize>() {
                Ok(i) => v.get(i),
                Err(_) => v.get(key),
            })
            .unwrap_or_else(|| panic!("no {path} in:\n{printed}"))
            .clone()
    };
    let int = |n: i64| toml::Value::Integer(n);
    let string = |s: &str| toml::Value::String(s.to_owned());
    for (path, want) in [
        ("log.level", string(DEFAULT_LOG_LEVEL)),
        ("log.format", string("text")),
        ("server.access_log.output", string("stdout")),
        ("server.access_log.sample_ratio", toml::Value::Float(1.0)),
        ("server.max_request_bytes", int(256 << 20)),
        ("server.max_request_header_bytes", int(64 << 10)),
        ("server.repository.concurrency", int(16)),
        ("server.filters", toml::Value::Array(Vec::new())),
        ("pools.0.balancer.strategy", string("peak_ewma")),
        ("pools.0.balancer.half_life_ms", int(10_000)),
        ("pools.0.retry.max_retries", int(2)),
        (
            "pools.0.retry.on_grpc_status",
            toml::Value::Array(vec![string("UNAVAILABLE")]),
        ),
        ("pools.0.health.interval_ms", int(5_000)),
        ("pools.0.sequences.placement", string("table")),
        ("pools.0.circuit_breaker.max_pending", int(1024)),
        ("pools.0.outlier.base_ejection_ms", int(30_000)),
        ("pools.1.outlier.consecutive_failures", int(3)),
        ("pools.1.outlier.max_ejection_percent", int(50)),
        (
            "pools.1.outlier.success_rate.stdev_factor",
            toml::Value::Float(1.9),
        ),
        (
            "pools.1.outlier.failure_percentage.threshold_percent",
            int(85),
        ),
        ("routes.1.mirror.max_concurrent", int(16)),
        ("routes.1.mirror.compare", toml::Value::Boolean(true)),
        ("filters.per-tenant.cost", string("request")),
        ("filters.per-tenant.max_keys", int(100_000)),
        ("filters.per-tenant.fleet_size", int(1)),
        ("filters.browser.max_age_s", int(600)),
        ("tracing.sample_ratio", toml::Value::Float(0.01)),
        ("tracing.protocol", string("grpc")),
        ("tracing.queue_spans", int(2048)),
        ("tracing.batch_bytes", int(1 << 20)),
        ("tracing.attribute_value_bytes", int(256)),
    ] {
        assert_eq!(at(path), want, "{path} in:\n{printed}");
    }
    // Off when absent: not invented. Defaults that depend on other keys: not printed.
    assert!(value["pools"][0]["outlier"]
        .get("failure_percentage")
        .is_none());
    assert!(value["pools"][0].get("tls").is_none());
    assert!(value["routes"][0].get("mirror").is_none());
    assert!(value["filters"]["per-tenant"].get("burst").is_none());
    assert!(value["routes"][1]["mirror"].get("percent").is_none());
    assert!(value["server"].get("threads").is_none());
    // What is printed is a config that means the same and prints the same.
    let again = parse(&printed, Path::new(".")).expect("the printed config checks");
    let first = parse(&text, Path::new(".")).expect("valid");
    assert_eq!(again.pools, first.pools);
    assert_eq!(print::effective(&printed, Secrets::Shown).unwrap(), printed);
}
