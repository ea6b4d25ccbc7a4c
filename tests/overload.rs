//! Through the real binary: a pool's circuit breakers (`[pools.circuit_breaker]`)
//! refuse what exceeds their caps at once, in protocol shape, and give every
//! place back however a request ends.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

const INFER: &str = r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[1.0]}]}"#;

/// `n` concurrent infer calls; their statuses, sorted, and the refusals' Retry-After.
async fn concurrent_infers(trident: &Trident, n: usize) -> (Vec<u16>, Vec<String>) {
    let client = http1_client();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), trident.http_url("/v2/models/m/infer"));
            tokio::spawn(async move { post(&client, &url, &[], INFER).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut retry_after = Vec::new();
    for call in calls {
        let (status, headers, body) = call.await.unwrap();
        if status == 503 {
            retry_after.push(header(&headers, "retry-after").to_owned());
            let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON error");
            assert!(
                json["error"].as_str().unwrap().contains("circuit_breaker"),
                "{json}"
            );
        }
        statuses.push(status.as_u16());
    }
    statuses.sort_unstable();
    (statuses, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_requests_are_refused_and_every_place_comes_back() {
    let mock = mock("a1", &["m"]).await;
    mock.control().set_latency(Duration::from_millis(1500));
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[pools.circuit_breaker]\nmax_requests = 2\n\
         [[routes]]\nmodel = \"*\"\npool = \"a\"\n",
        endpoint(&mock)
    ))
    .await;
    let (statuses, retry_after) = concurrent_infers(&trident, 6).await;
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
    assert_eq!(retry_after, ["1"; 4]);
    assert!(
        wait_metric(
            &trident,
            r#"trident_overflow_total{kind="requests",pool="a"}"#,
            4.0
        )
        .await
    );
    // gRPC callers get UNAVAILABLE while the pool is full.
    let client = http1_client();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), trident.http_url("/v2/models/m/infer"));
            tokio::spawn(async move { post(&client, &url, &[], INFER).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut grpc = common::client(trident.grpc_url()).await;
    let refused = grpc
        .model_infer(infer_request("m", "g1", bytes::Bytes::from_static(&[0; 4])))
        .await
        .expect_err("pool full");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Clients that hang up mid-call give their places back too.
    for call in slow {
        call.abort();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (statuses, _) = concurrent_infers(&trident, 2).await;
    assert_eq!(statuses, [200, 200], "a place was not given back");
}

/// A listener whose accept queue is full: connecting to it hangs.
fn unresponsive_listener() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        held.push(stream);
        assert!(held.len() < 10_000, "the accept queue never filled");
    }
    (listener, held, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_past_max_pending_are_refused_while_connects_hang() {
    let (_listener, _held, addr) = unresponsive_listener();
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {{ http = \"{addr}\" }} ]\nconnect_timeout_ms = 3000\n\
         [pools.health]\nenabled = false\n[pools.retry]\nmax_retries = 0\n\
         [pools.circuit_breaker]\nmax_pending = 1\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n"
    ))
    .await;
    let (statuses, retry_after) = concurrent_infers(&trident, 3).await;
    // One waits for its connection until the connect timeout; the others are refused.
    assert_eq!(statuses, [503, 503, 504]);
    assert_eq!(retry_after, ["1"; 2]);
    let metrics = trident.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"trident_overflow_total{kind="pending",pool="a"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trident_overflow_total{kind="requests",pool="a"}"#
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_past_the_body_budget_are_dropped_and_counted() {
    let primary = mock("p1", &["m"]).await;
    let canary = mock("c1", &["m"]).await;
    let trident = Trident::start(&format!(
        "mirror_body_budget_bytes = 1024\n\
         [[pools]]\nname = \"prod\"\nendpoints = [ {} ]\n\
         [[pools]]\nname = \"canary\"\nendpoints = [ {} ]\n\
         [[routes]]\nmodel = \"m\"\npool = \"prod\"\n\
         [routes.mirror]\npool = \"canary\"\ncompare = false\n",
        endpoint(&primary),
        endpoint(&canary)
    ))
    .await;
    let series = |result: &str| {
        format!("trident_mirror_requests_total{{pool=\"canary\",result=\"{result}\",route=\"m\"}}")
    };
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    // A small body fits the budget and is mirrored.
    let (status, _, _) = post(&client, &url, &[], INFER).await;
    assert_eq!(status, 200);
    assert!(wait_metric(&trident, &series("answered"), 1.0).await);
    // A 1 MB body does not: the primary is served, the copy dropped and counted.
    let data = vec!["1.0"; 250_000].join(",");
    let large = format!(
        r#"{{"inputs":[{{"name":"INPUT0","datatype":"FP32","shape":[1,250000],"data":[{data}]}}]}}"#
    );
    let (status, _, _) = post(&client, &url, &[], large).await;
    assert_eq!(status, 200);
    assert!(
        wait_metric(&trident, &series("dropped_budget"), 1.0).await,
        "{}",
        trident.metrics().await
    );
    // The budget is given back: small copies keep being mirrored.
    let (status, _, _) = post(&client, &url, &[], INFER).await;
    assert_eq!(status, 200);
    assert!(wait_metric(&trident, &series("answered"), 2.0).await);
}
