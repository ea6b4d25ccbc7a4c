//! The HTTP edge through the real binary, against mock Triton: CORS (preflights
//! answered by Trident before any filter, CORS headers on every answer), request
//! size limits (body, header, gRPC message), header rules and the served-by header.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const ORIGIN: &str = "https://app.example.com";

fn infer_json() -> String {
    json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }] })
        .to_string()
}

fn error_message(body: &Bytes) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    value["error"].as_str().expect("error string").to_owned()
}

fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> http::request::Builder {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// A mock `a1` (model `m`) behind a Trident: `sections` are `[server]` keys and
/// filters, `route` the keys of its one route to the mock's pool.
async fn behind(sections: &str, route: &str) -> (MockTriton, Trident) {
    let a = mock("a1", &["m"]).await;
    let pool = format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n",
        endpoint(&a)
    );
    let trident = Trident::start(&format!(
        "{sections}\n{pool}\n[[routes]]\npool = \"a\"\n{route}"
    ))
    .await;
    (a, trident)
}

/// The `*` route runs an `api_key` filter, then (listed last, run first) a `cors` filter.
async fn behind_cors() -> (MockTriton, Trident) {
    let filters = format!(
        r#"
[filters.keys]
kind = "api_key"
keys = [ {{ tenant = "acme", key = "acme-key" }} ]

[filters.browsers]
kind = "cors"
allow_origins = ["{ORIGIN}"]
"#
    );
    behind(
        &filters,
        "model = \"*\"\nfilters = [\"keys\", \"browsers\"]\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_before_filters_and_never_forwarded() {
    let (a, trident) = behind_cors().await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    let preflight = |origin: &'static str, request_id: &'static str| {
        request(
            "OPTIONS",
            &url,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type, x-api-key"),
                ("x-request-id", request_id),
            ],
        )
        .body(Full::default())
        .unwrap()
    };

    let (status, headers, _) = send(&http, preflight(ORIGIN, "preflight-ok")).await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), ORIGIN);
    assert_eq!(
        header(&headers, "access-control-allow-methods"),
        "GET, POST"
    );
    assert!(header(&headers, "access-control-allow-headers").contains("x-api-key"));
    assert_eq!(header(&headers, "access-control-max-age"), "600");
    let logged = trident.access_log_line("preflight-ok").await;
    assert_eq!(logged["status"], 204);
    assert_eq!(
        logged["tries"], 0,
        "a preflight is never forwarded: {logged}"
    );

    let (status, headers, body) = send(
        &http,
        preflight("https://evil.example", "preflight-refused"),
    )
    .await;
    assert_eq!(status, 403);
    assert!(headers.get("access-control-allow-origin").is_none());
    assert!(error_message(&body).contains("origin not allowed"));
    let logged = trident.access_log_line("preflight-refused").await;
    assert_eq!(logged["tries"], 0, "{logged}");
    assert_eq!(a.control().infer_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_are_on_upstream_answers_and_on_refusals() {
    let (a, trident) = behind_cors().await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m/infer");

    // The API key filter refuses it: the browser must still be able to read why.
    let (status, headers, _) = post(&http, &url, &[("origin", ORIGIN)], infer_json()).await;
    assert_eq!(status, 401);
    assert_eq!(header(&headers, "access-control-allow-origin"), ORIGIN);
    assert_eq!(header(&headers, "vary"), "origin");

    let (status, headers, _) = post(
        &http,
        &url,
        &[("origin", ORIGIN), ("x-api-key", "acme-key")],
        infer_json(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), ORIGIN);
    assert!(header(&headers, "access-control-expose-headers")
        .contains("inference-header-content-length"));

    // Another origin is served (CORS is the browser's check), without the headers.
    let (status, headers, _) = post(
        &http,
        &url,
        &[
            ("origin", "https://evil.example"),
            ("x-api-key", "acme-key"),
        ],
        infer_json(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("access-control-allow-origin").is_none());

    // gRPC is no browser protocol: the filter leaves it alone.
    let mut grpc = client(trident.grpc_url()).await;
    let mut call = tonic::Request::new(infer_request("m", "g", Bytes::from_static(b"x")));
    call.metadata_mut()
        .insert("origin", ORIGIN.parse().unwrap());
    call.metadata_mut()
        .insert("x-api-key", "acme-key".parse().unwrap());
    let answer = grpc.model_infer(call).await.expect("gRPC passes");
    assert!(answer
        .metadata()
        .get("access-control-allow-origin")
        .is_none());
    assert_eq!(a.control().infer_calls(), 3);
}

/// Route `m` holds requests to small limits; the serving endpoint is named in `x-served-by`.
async fn limited() -> (MockTriton, Trident) {
    behind(
        "max_request_header_bytes = 2048\nserved_by_header = \"x-served-by\"\n",
        "model = \"m\"\nmax_request_bytes = 1000\nmax_grpc_message_bytes = 1024\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_and_headers_over_the_limits_are_refused() {
    let (a, trident) = limited().await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m/infer");

    let (status, headers, body) = post(&http, &url, &[], vec![b' '; 2000]).await;
    assert_eq!(status, 413);
    assert_eq!(
        error_message(&body),
        "request body of 2000 bytes is larger than the limit of 1000 bytes"
    );
    assert!(
        headers.get("x-served-by").is_none(),
        "not on Trident's own answers"
    );
    assert_eq!(a.control().infer_calls(), 0, "refused before forwarding");

    let (status, _, body) = post(&http, &url, &[], infer_json()).await;
    assert_eq!(status, 200, "{body:?}");

    // A chunked body declares no length: it is cut once past the limit.
    let mut socket = tokio::net::TcpStream::connect(trident.http).await.unwrap();
    let chunk = format!("258\r\n{}\r\n", " ".repeat(600));
    socket
        .write_all(
            b"POST /v2/models/m/infer HTTP/1.1\r\nhost: trident\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    for _ in 0..2 {
        // The peer may close once it answered: later writes may fail.
        let _ = socket.write_all(chunk.as_bytes()).await;
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("larger than the limit of 1000 bytes"),
        "{answer}"
    );

    let big = "x".repeat(3000);
    let (status, _, body) = send(
        &http,
        request("GET", &trident.http_url("/v2/models/m"), &[("x-big", &big)])
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 431);
    assert!(error_message(&body).contains("larger than the limit of 2048 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_over_the_limit_are_resource_exhausted() {
    let (a, trident) = limited().await;
    let mut grpc = client(trident.grpc_url()).await;

    let small = infer_request("m", "small", Bytes::from(vec![1; 100]));
    grpc.model_infer(small.clone())
        .await
        .expect("under the limit");
    let calls = a.control().infer_calls();

    let large = infer_request("m", "large", Bytes::from(vec![1; 2000]));
    let status = grpc.model_infer(large.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .starts_with("Received message larger than max ("),
        "{}",
        status.message()
    );
    assert!(
        status.message().ends_with(" vs. 1024)"),
        "{}",
        status.message()
    );
    assert_eq!(
        a.control().infer_calls(),
        calls,
        "refused before forwarding"
    );

    // A stream's second message, sent once the first was answered: the call
    // ends with the status in trailers.
    let (messages, outgoing) = tokio::sync::mpsc::channel(2);
    messages.send(small).await.unwrap();
    let response = grpc
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("the stream opens");
    let mut answers = response.into_inner();
    let first = answers.message().await.expect("first answer");
    assert!(first.is_some_and(|m| m.error_message.is_empty()));
    messages.send(large).await.unwrap();
    let status = answers.message().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status
        .message()
        .contains("Received message larger than max"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_apply_both_ways_on_both_protocols() {
    let (a, trident) = behind(
        "served_by_header = \"x-served-by\"\n",
        r#"model = "*"

[routes.headers]
request_set = { "x-team" = "vision" }
request_remove = ["x-internal"]
response_set = { "cache-control" = "no-store" }
response_remove = ["x-mock-backend"]
"#,
    )
    .await;
    let sent = [
        ("x-team", "client"),
        ("x-internal", "secret"),
        ("x-mock-echo", "x-team, x-internal"),
    ];

    let (status, headers, _) = post(
        &http1_client(),
        &trident.http_url("/v2/models/m/infer"),
        &sent,
        infer_json(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-mock-echo-x-team"), "vision");
    assert!(headers.get("x-mock-echo-x-internal").is_none());
    assert_eq!(header(&headers, "cache-control"), "no-store");
    assert!(headers.get("x-mock-backend").is_none());
    assert_eq!(header(&headers, "x-served-by"), a.http_addr.to_string());

    let mut grpc = client(trident.grpc_url()).await;
    let mut call = tonic::Request::new(infer_request("m", "g", Bytes::from_static(b"x")));
    for (name, value) in sent {
        call.metadata_mut().insert(name, value.parse().unwrap());
    }
    let answer = grpc.model_infer(call).await.expect("gRPC passes");
    let metadata = answer.metadata();
    assert_eq!(metadata.get("x-mock-echo-x-team").unwrap(), "vision");
    assert!(metadata.get("x-mock-echo-x-internal").is_none());
    assert_eq!(metadata.get("cache-control").unwrap(), "no-store");
    assert!(metadata.get("x-mock-backend").is_none());
    assert_eq!(
        metadata.get("x-served-by").unwrap(),
        a.grpc_addr.to_string().as_str()
    );
}
