//! Readiness that serves: a Triton that becomes ready is used at once (panic
//! routing, fast re-checks of failing endpoints), a split side without a usable
//! endpoint hands its share to the route's own pool, and `/ready` fails only
//! when a route's own pool has no usable endpoint.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use serde_json::json;

fn infer_json() -> String {
    json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }] })
        .to_string()
}

/// Whether `/metrics` says the endpoint `label` of `pool` passes (or fails) its server readiness check.
async fn endpoint_ready_is(trident: &Trident, pool: &str, label: &str, ready: bool) -> bool {
    let series = format!(
        "trident_endpoint_ready{{pool=\"{pool}\",endpoint=\"{label}\",model=\"_all\"}} {}",
        u8::from(ready)
    );
    trident.metrics().await.lines().any(|l| l == series)
}

/// The `/ready` JSON entry of `pool` for route `route`.
fn pool_entry<'a>(ready: &'a serde_json::Value, route: &str, pool: &str) -> &'a serde_json::Value {
    ready["routes"]
        .as_array()
        .and_then(|routes| {
            routes
                .iter()
                .find(|r| r["route"] == route && r["pool"] == pool)
        })
        .unwrap_or_else(|| panic!("no /ready entry for route {route}, pool {pool}: {ready}"))
}

/// Trident started first, over pool `p` of one Triton whose ports (returned,
/// HTTP then gRPC) are still closed, with `[pools.health]` keys `health`.
async fn trident_before_triton(health: &str) -> (Trident, SocketAddr, SocketAddr) {
    let (http_addr, grpc_addr) = (free_port(), free_port());
    let trident = Trident::start_live(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {{ http = \"{http_addr}\", grpc = \"{grpc_addr}\" }} ]\n\
         [pools.health]\n{health}\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n"
    ))
    .await;
    (trident, http_addr, grpc_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_call_after_triton_is_ready_succeeds() {
    // A failed check takes it out at once.
    let (trident, http_addr, grpc_addr) = trident_before_triton("unhealthy_threshold = 1").await;
    let label = http_addr.to_string();
    assert!(
        eventually(Duration::from_secs(10), || endpoint_ready_is(
            &trident, "p", &label, false
        ))
        .await,
        "the first readiness check fails while Triton is down"
    );
    assert_eq!(trident.readiness().await.0, 503);

    let triton = MockTriton::start_at(MockConfig::new("t1", ["m"]), http_addr, grpc_addr)
        .await
        .expect("mock starts on its ports");
    let up = Instant::now();
    let http = http1_client();
    let (status, _, _) = get(&http, &format!("{}/v2/health/ready", triton.http_url())).await;
    assert_eq!(status, 200, "Triton answers ready directly");

    // The very first calls, before any readiness check has seen Triton up.
    let (status, headers, body) = post(
        &http,
        &trident.http_url("/v2/models/m/infer"),
        &[("content-type", "application/json")],
        infer_json(),
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(header(&headers, "x-mock-backend"), "t1");
    println!("first call served {:?} after Triton came up", up.elapsed());
    let mut grpc = client(trident.grpc_url()).await;
    let answer = grpc
        .model_infer(infer_request("m", "1", Bytes::from_static(&[1, 2])))
        .await
        .expect("gRPC call served");
    assert_eq!(backend(&answer), "t1");

    // A failing endpoint is checked again within a second, not after the 5 s interval.
    assert!(
        eventually(Duration::from_secs(3), || endpoint_ready_is(
            &trident, "p", &label, true
        ))
        .await,
        "the recovered endpoint is ready again within the fast re-check"
    );
    println!(
        "endpoint ready again {:?} after Triton came up",
        up.elapsed()
    );
    assert_eq!(trident.readiness().await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_failing_while_triton_is_down_do_not_keep_it_out() {
    // Default checks: every 5 s, two failures in a row take an endpoint out.
    let (trident, http_addr, grpc_addr) = trident_before_triton("").await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    let call = || {
        post(
            &http,
            &url,
            &[("content-type", "application/json")],
            infer_json(),
        )
    };
    // Connection refused, five times in a row: the endpoint is ejected for 30 s.
    for _ in 0..6 {
        assert_ne!(call().await.0, 200);
    }
    let ejected = "trident_endpoint_ejected{pool=\"p\",endpoint=\"".to_owned()
        + &http_addr.to_string()
        + "\",model=\"_all\"} 1";
    assert!(trident.metrics().await.lines().any(|l| l == ejected));

    let _triton = MockTriton::start_at(MockConfig::new("t1", ["m"]), http_addr, grpc_addr)
        .await
        .expect("mock starts on its ports");
    let up = Instant::now();
    // The readiness check that sees it up (within a second) ends the ejection.
    assert!(
        eventually(Duration::from_secs(3), || async { call().await.0 == 200 }).await,
        "served within the fast re-check, not after the 30 s ejection"
    );
    println!(
        "ejected endpoint served again {:?} after Triton came up",
        up.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_endpoint_rejoins_within_a_second_while_others_serve() {
    let steady = mock("s1", &["m"]).await;
    let flaky = mock("f1", &["m"]).await;
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {}, {} ]\n\
         [pools.health]\nunhealthy_threshold = 1\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(&steady),
        endpoint(&flaky)
    ))
    .await;
    let label = flaky.http_addr.to_string();
    flaky.control().set_server_ready(false);
    assert!(
        eventually(Duration::from_secs(10), || endpoint_ready_is(
            &trident, "p", &label, false
        ))
        .await,
        "the unready endpoint is taken out"
    );
    flaky.control().set_server_ready(true);
    let up = Instant::now();
    assert!(
        eventually(Duration::from_millis(2500), || endpoint_ready_is(
            &trident, "p", &label, true
        ))
        .await,
        "a failing endpoint is re-checked every second, not every 5 s"
    );
    println!("endpoint rejoined {:?} after it turned ready", up.elapsed());
}

/// Pool `prod` over `stable`, pool `canary` over `canary`; route `m` to prod with
/// half its requests split to canary.
async fn split_proxy(stable: &MockTriton, canary: &MockTriton) -> Trident {
    Trident::start(&format!(
        "[[pools]]\nname = \"prod\"\nendpoints = [ {} ]\n[pools.health]\nunhealthy_threshold = 1\n\
         [[pools]]\nname = \"canary\"\nendpoints = [ {} ]\n[pools.health]\nunhealthy_threshold = 1\n\
         [[routes]]\nmodel = \"m\"\npool = \"prod\"\n\
         [[routes.splits]]\npool = \"canary\"\npercent = 50\n",
        endpoint(stable),
        endpoint(canary)
    ))
    .await
}

/// Sends `http_calls` HTTP and `grpc_calls` gRPC infer calls for `m`, one after
/// another: each must succeed on the route's own pool (mock `s1`).
async fn all_served_by_stable(trident: &Trident, http_calls: usize, grpc_calls: usize) {
    let http = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    for call in 0..http_calls {
        let (status, headers, body) = post(
            &http,
            &url,
            &[("content-type", "application/json")],
            infer_json(),
        )
        .await;
        assert_eq!(status, 200, "call {call}: {body:?}");
        assert_eq!(header(&headers, "x-mock-backend"), "s1");
    }
    let mut grpc = client(trident.grpc_url()).await;
    for call in 0..grpc_calls {
        let answer = grpc
            .model_infer(infer_request(
                "m",
                &call.to_string(),
                Bytes::from_static(&[1]),
            ))
            .await
            .unwrap_or_else(|status| panic!("gRPC call {call}: {status:?}"));
        assert_eq!(backend(&answer), "s1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_side_down_falls_back_to_the_route_pool() {
    let stable = mock("s1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = split_proxy(&stable, &canary).await;
    let canary_label = canary.http_addr.to_string();
    canary.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || endpoint_ready_is(
            &trident,
            "canary",
            &canary_label,
            false
        ))
        .await,
        "the canary's readiness check fails"
    );

    all_served_by_stable(&trident, 40, 10).await;
    let metrics = trident.metrics().await;
    let side = |s: &str| {
        metric(
            &metrics,
            &format!("trident_split_requests_total{{route=\"m\",side=\"{s}\"}}"),
        )
    };
    assert_eq!(side("canary"), 0.0, "no request went to the dead side");
    assert!(side("fallback:canary") > 0.0, "{metrics}");
    assert_eq!(side("prod") + side("fallback:canary"), 50.0);

    let (status, ready) = trident.readiness().await;
    assert_eq!(status, 200, "a split side does not fail readiness: {ready}");
    let entry = pool_entry(&ready, "m", "canary");
    assert_eq!(entry["usable_endpoints"], 0, "{ready}");
    assert_eq!(entry["role"], "split", "{ready}");
    assert_eq!(pool_entry(&ready, "m", "prod")["role"], "route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_split_side_fails_no_call_before_checks_notice() {
    let stable = mock("s1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = split_proxy(&stable, &canary).await;
    canary.stop().await;
    // At once: the side's endpoint still passes its last check and is not ejected.
    all_served_by_stable(&trident, 30, 10).await;
    let metrics = trident.metrics().await;
    assert!(
        metric(
            &metrics,
            "trident_retries_total{pool=\"prod\",reason=\"split_fallback\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_pool_down_fails_readiness() {
    let stable = mock("s1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = split_proxy(&stable, &canary).await;
    let label = stable.http_addr.to_string();
    stable.stop().await;
    assert!(
        eventually(Duration::from_secs(10), || endpoint_ready_is(
            &trident, "prod", &label, false
        ))
        .await,
        "the route pool's readiness check fails"
    );
    let (status, ready) = trident.readiness().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(pool_entry(&ready, "m", "prod")["usable_endpoints"], 0);
}
