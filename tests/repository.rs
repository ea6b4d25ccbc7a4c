//! Model repository calls across a pool (load / unload fanned out to every
//! endpoint, the index merged), a route's `repository` mode, and its `apis`
//! allow-list, through the real binary over HTTP and gRPC.

mod common;

use common::*;
use trident::protocol::kserve::{
    RepositoryIndexRequest, RepositoryModelLoadRequest, RepositoryModelUnloadRequest,
    ServerReadyRequest,
};

/// Readiness is only checked when this test's calls trigger it (intervals of a
/// minute): a change seen at once comes from the re-check after a fan-out.
const SLOW_CHECKS: &str =
    "[pools.health]\ninterval_ms = 60000\nunhealthy_interval_ms = 60000\nunhealthy_threshold = 1\n";

/// Mocks `a` (models m, only_a) and `b` (m) in pool `p`, behind a Trident
/// routing `m` and every other model (`*`) there; `route_keys` extend the `*` route.
async fn pool_of_two(route_keys: &str, server_keys: &str) -> (MockTriton, MockTriton, Trident) {
    let a = mock("a", &["m", "only_a"]).await;
    let b = mock("b", &["m"]).await;
    let trident = Trident::start(&format!(
        "{server_keys}\n[[pools]]\nname = \"p\"\nendpoints = [ {}, {} ]\n{SLOW_CHECKS}\
         [[routes]]\nmodel = \"m\"\npool = \"p\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n{route_keys}\n",
        endpoint(&a),
        endpoint(&b)
    ))
    .await;
    (a, b, trident)
}

fn calls(mock: &MockTriton, call: &str) -> usize {
    mock.control()
        .repository_calls()
        .iter()
        .filter(|c| *c == call)
        .count()
}

fn load(model: &str) -> RepositoryModelLoadRequest {
    RepositoryModelLoadRequest {
        repository_name: String::new(),
        model_name: model.to_owned(),
    }
}

fn unload(model: &str) -> RepositoryModelUnloadRequest {
    RepositoryModelUnloadRequest {
        repository_name: String::new(),
        model_name: model.to_owned(),
    }
}

fn ready_series(mock: &MockTriton, model: &str) -> String {
    format!(
        "trident_endpoint_ready{{pool=\"p\",endpoint=\"{}\",model=\"{model}\"}}",
        mock.http_addr
    )
}

fn infer_body() -> &'static str {
    r#"{"inputs":[{"name":"INPUT0","shape":[1],"datatype":"FP32","data":[1.0]}]}"#
}

#[tokio::test]
async fn http_unload_and_load_reach_every_endpoint_and_readiness_follows() {
    let (a, b, trident) = pool_of_two("", "").await;
    let http = http1_client();
    let unload = trident.http_url("/v2/repository/models/m/unload");
    for _ in 0..4 {
        let (status, _, body) = post(&http, &unload, &[], "{}").await;
        assert_eq!(status, 200, "{body:?}");
        assert!(body.is_empty());
    }
    assert_eq!(calls(&a, "unload m"), 4);
    assert_eq!(calls(&b, "unload m"), 4);
    // Checked once the unload succeeded everywhere, before it was answered.
    let metrics = trident.metrics().await;
    assert_eq!(metric(&metrics, &ready_series(&a, "m")), 0.0);
    assert_eq!(metric(&metrics, &ready_series(&b, "m")), 0.0);
    let infer = trident.http_url("/v2/models/m/infer");
    let (status, _, _) = post(&http, &infer, &[], infer_body()).await;
    assert_ne!(status, 200);

    let load = trident.http_url("/v2/repository/models/m/load");
    let (status, _, body) = post(&http, &load, &[], "{}").await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!((calls(&a, "load m"), calls(&b, "load m")), (1, 1));
    let metrics = trident.metrics().await;
    assert_eq!(metric(&metrics, &ready_series(&a, "m")), 1.0);
    assert_eq!(metric(&metrics, &ready_series(&b, "m")), 1.0);
    let (status, _, body) = post(&http, &infer, &[], infer_body()).await;
    assert_eq!(status, 200, "{body:?}");
    assert!(
        metrics.contains(
            "trident_repository_calls_total{action=\"unload\",pool=\"p\",result=\"ok\"} 4"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn http_load_failing_on_one_endpoint_names_it() {
    let (a, b, trident) = pool_of_two("", "").await;
    let load = trident.http_url("/v2/repository/models/only_a/load");
    let (status, _, body) = post(&http1_client(), &load, &[], "{}").await;
    assert_eq!(status, 400);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let error = error["error"].as_str().unwrap();
    assert!(
        error.starts_with("load of model 'only_a' failed on 1 of 2 endpoints of pool 'p': "),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "{}: failed to load 'only_a', failed to poll from model repository",
            b.http_addr
        )),
        "{error}"
    );
    assert!(!error.contains(&a.http_addr.to_string()), "{error}");
    assert_eq!(calls(&a, "load only_a"), 1);
    assert!(
        wait_metric(
            &trident,
            "trident_repository_calls_total{action=\"load\",pool=\"p\",result=\"error\"}",
            1.0
        )
        .await
    );
}

#[tokio::test]
async fn grpc_unload_and_load_reach_every_endpoint() {
    let (a, b, trident) = pool_of_two("", "").await;
    let mut grpc = client(trident.grpc_url()).await;
    for _ in 0..4 {
        grpc.repository_model_unload(unload("m"))
            .await
            .expect("unloaded everywhere");
    }
    assert_eq!((calls(&a, "unload m"), calls(&b, "unload m")), (4, 4));
    let metrics = trident.metrics().await;
    assert_eq!(metric(&metrics, &ready_series(&a, "m")), 0.0);
    assert_eq!(metric(&metrics, &ready_series(&b, "m")), 0.0);
    grpc.repository_model_load(load("m"))
        .await
        .expect("loaded everywhere");
    assert_eq!((calls(&a, "load m"), calls(&b, "load m")), (1, 1));
    let metrics = trident.metrics().await;
    assert_eq!(metric(&metrics, &ready_series(&b, "m")), 1.0);

    let status = grpc
        .repository_model_load(load("only_a"))
        .await
        .expect_err("missing on b");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("load of model 'only_a' failed on 1 of 2 endpoints of pool 'p': "),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains(&format!("{}: failed to load 'only_a'", b.grpc_addr)),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn index_merges_every_endpoint() {
    let (a, b, trident) = pool_of_two("", "").await;
    // Unloaded on a alone, behind Trident's back.
    let direct = format!("{}/v2/repository/models/m/unload", a.http_url());
    let (status, _, _) = post(&http1_client(), &direct, &[], "{}").await;
    assert_eq!(status, 200);

    let index = trident.http_url("/v2/repository/index");
    let (status, _, body) = post(&http1_client(), &index, &[], "{}").await;
    assert_eq!(status, 200, "{body:?}");
    let merged: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        merged,
        serde_json::json!([
            {
                "name": "m", "version": "1", "state": "UNAVAILABLE",
                "reason": format!("{}: UNAVAILABLE (unloaded)", a.http_addr),
            },
            {
                "name": "only_a", "version": "1", "state": "UNAVAILABLE",
                "reason": format!("{}: UNAVAILABLE (not in its index)", b.http_addr),
            },
        ])
    );
    // The client's `ready` asks for models ready everywhere: none here.
    let (_, _, body) = post(&http1_client(), &index, &[], r#"{"ready":true}"#).await;
    assert_eq!(&body[..], b"[]");

    let mut grpc = client(trident.grpc_url()).await;
    grpc.repository_model_load(load("m")).await.expect("loaded");
    let models = grpc
        .repository_index(RepositoryIndexRequest::default())
        .await
        .expect("index")
        .into_inner()
        .models;
    let states: Vec<(&str, &str)> = models
        .iter()
        .map(|m| (m.name.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(states, [("m", "READY"), ("only_a", "UNAVAILABLE")]);
    assert_eq!(
        models[1].reason,
        format!("{}: UNAVAILABLE (not in its index)", b.grpc_addr)
    );
}

#[tokio::test]
async fn mode_one_reaches_one_endpoint_and_deny_refuses() {
    let (a, b, trident) = pool_of_two("repository = \"one\"", "").await;
    let unload = trident.http_url("/v2/repository/models/only_a/unload");
    let (status, _, _) = post(&http1_client(), &unload, &[], "{}").await;
    assert_eq!(status, 200);
    assert_eq!(calls(&a, "unload only_a") + calls(&b, "unload only_a"), 1);
    drop(trident);

    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {}, {} ]\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\nrepository = \"deny\"\n",
        endpoint(&a),
        endpoint(&b)
    ))
    .await;
    let load = trident.http_url("/v2/repository/models/m/load");
    let (status, _, body) = post(&http1_client(), &load, &[], "{}").await;
    assert_eq!(status, 403);
    assert_eq!(
        &body[..],
        br#"{"error":"model repository calls are not allowed on route '*'"}"#
    );
    let mut grpc = client(trident.grpc_url()).await;
    let status = grpc
        .repository_index(RepositoryIndexRequest::default())
        .await
        .expect_err("denied");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(calls(&a, "load m") + calls(&b, "load m"), 0);
}

#[tokio::test]
async fn apis_outside_the_allow_list_are_refused() {
    let (_a, _b, trident) = pool_of_two("apis = [\"infer\", \"metadata\", \"health\"]", "").await;
    let http = http1_client();
    for path in ["/v2/repository/index", "/v2/systemsharedmemory/status"] {
        let (status, _, body) = post(&http, &trident.http_url(path), &[], "{}").await;
        assert_eq!(status, 403, "{path}");
        let api = if path.contains("repository") {
            "repository"
        } else {
            "shared_memory"
        };
        let expected = format!(r#"{{"error":"API '{api}' is not allowed on route '*'"}}"#);
        assert_eq!(String::from_utf8_lossy(&body), expected);
    }
    // The `*` route's list: a model routed there on its own keeps every API.
    let (status, _, _) = get(&http, &trident.http_url("/v2/health/ready")).await;
    assert_eq!(status, 200);
    let infer = trident.http_url("/v2/models/only_a/infer");
    // Forwarded, not refused: only `a` has the model, so the endpoint the balancer
    // picks answers 200 (a) or Triton's own 400 "unknown model" (b).
    let (status, _, body) = post(&http, &infer, &[], infer_body()).await;
    let body = String::from_utf8_lossy(&body);
    assert!(
        status == 200 || body.contains("unknown model"),
        "{status} {body}"
    );
    let stats = trident.http_url("/v2/models/only_a/stats");
    let (status, _, _) = get(&http, &stats).await;
    assert_eq!(status, 403);

    let mut grpc = client(trident.grpc_url()).await;
    let status = grpc
        .repository_model_unload(unload("only_a"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "API 'repository' is not allowed on route '*'"
    );
    grpc.server_ready(ServerReadyRequest {})
        .await
        .expect("health is allowed");
    assert!(
        wait_metric(
            &trident,
            "trident_filter_denials_total{filter=\"_apis\",reason=\"permission_denied\"}",
            4.0
        )
        .await
    );
}

#[tokio::test]
async fn a_repository_body_past_the_limit_is_refused() {
    let (a, b, trident) = pool_of_two("", "[server.repository]\nmax_body_bytes = 64").await;
    let load = trident.http_url("/v2/repository/models/m/load");
    let body = format!(r#"{{"parameters":{{"config":"{}"}}}}"#, "x".repeat(100));
    let (status, _, _) = post(&http1_client(), &load, &[], body).await;
    assert_eq!(status, 413);
    assert_eq!(calls(&a, "load m") + calls(&b, "load m"), 0);
}

#[tokio::test]
async fn a_one_endpoint_pool_forwards_repository_calls_as_they_are() {
    let a = mock("a", &["m"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(&a)
    ))
    .await;
    let load = trident.http_url("/v2/repository/models/missing/load");
    let (status, _, body) = post(&http1_client(), &load, &[], "{}").await;
    assert_eq!(status, 400);
    assert_eq!(
        &body[..],
        br#"{"error":"failed to load 'missing', failed to poll from model repository"}"#
    );
    assert_eq!(calls(&a, "load missing"), 1);
}
