//! Through the real binary, with raw TCP clients: requests that break HTTP/1.1
//! are the client's error (400, Triton-style JSON), never Trident's (500), and
//! never counted against the pool.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a new connection, half-closes it if `half_close`, and
/// returns everything the proxy writes back until it closes (or 10 s pass).
async fn raw_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    if half_close {
        stream.shutdown().await.expect("half-close");
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP/1.1 answer, 0 when there is none.
fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Asserts a 400 with a Triton-style `{"error": ...}` body.
fn assert_client_error(answer: &str, what: &str) {
    assert_eq!(status_of(answer), 400, "{what}: {answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body {body:?}: {e}"));
    assert!(json["error"].is_string(), "{what}: {json}");
}

/// Upstream errors of every kind counted against pool `a`.
fn upstream_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("trident_upstream_errors_total{") && l.contains("pool=\"a\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_request_bodies_are_client_errors_on_every_path() {
    let (_a, _b, trident) = two_pools().await;
    let chunked = |path: &str, size_line: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\
             Content-Type: application/json\r\n\r\n{size_line}\r\n{{\"inputs\":[]}}\r\n0\r\n\r\n"
        )
    };
    for path in ["/v2/repository/index", "/v2/models/m_a/infer"] {
        for (what, size_line) in [
            ("invalid chunk size", "zz"),
            ("negative chunk size", "-5"),
            ("overflowing chunk size", "ffffffffffffffffffff"),
        ] {
            let answer =
                raw_exchange(trident.http, chunked(path, size_line).as_bytes(), false).await;
            assert_client_error(&answer, &format!("{path}: {what}"));
        }
        let short = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\
             Content-Type: application/json\r\n\r\n{{\"inputs\":[]}}"
        );
        let answer = raw_exchange(trident.http, short.as_bytes(), true).await;
        assert_client_error(
            &answer,
            &format!("{path}: body shorter than Content-Length"),
        );
    }
    assert_eq!(upstream_errors(&trident.metrics().await), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_requests_need_exactly_one_host() {
    let (_a, _b, trident) = two_pools().await;
    let without_host = "GET /v2/health/ready HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_client_error(
        &raw_exchange(trident.http, without_host.as_bytes(), false).await,
        "no Host",
    );
    // Pingora refuses an ambiguous authority itself, while parsing the header
    // (a bare 400, before Trident sees the request).
    let two_hosts = "GET /v2/health/ready HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    let answer = raw_exchange(trident.http, two_hosts.as_bytes(), false).await;
    assert_eq!(status_of(&answer), 400, "two Hosts: {answer}");
    // HTTP/1.0 may leave it out; one Host is what every client sends.
    for request in [
        "GET /v2/health/ready HTTP/1.0\r\n\r\n",
        "GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(trident.http, request.as_bytes(), false).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "{request:?}: {answer}"
        );
    }
}
