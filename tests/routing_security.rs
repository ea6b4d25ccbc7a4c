//! Through the real binary: a request cannot be steered around a guarded
//! route. `resnet50` is guarded by an API key, `*` is open, and one pool serves
//! both; each request below, sent without a key, names `resnet50` the way the
//! upstream reads it (protobuf decoders keep a field's last occurrence, Triton
//! decodes compressed messages and normalises nothing) while showing Trident
//! something else. Each must be refused, never served as `resnet50`.

mod common;

use std::io::Write;

use bytes::Bytes;
use common::*;
use flate2::{write::GzEncoder, Compression};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use trident::protocol::kserve::{ModelInferResponse, ModelStreamInferResponse};

const GUARDED: &str = "resnet50";
const OPEN: &str = "simple";
/// Another open model, on the same route as `OPEN`.
const OTHER: &str = "other";
/// An open model with a route of its own, to the same pool through the same (no) filters.
const ALIKE: &str = "alike";

/// One mock serving both models, behind a Trident whose `resnet50` route needs a key.
async fn guarded() -> (MockTriton, Trident) {
    let a = mock("a1", &[GUARDED, OPEN, OTHER, ALIKE]).await;
    let trident = Trident::start(&format!(
        r#"
[filters.keys]
kind = "api_key"
keys = [ {{ tenant = "acme", key = "acme-key" }} ]

[[pools]]
name = "a"
endpoints = [ {} ]

[[routes]]
model = "{GUARDED}"
pool = "a"
filters = ["keys"]

[[routes]]
model = "{ALIKE}"
pool = "a"

[[routes]]
model = "*"
pool = "a"
"#,
        endpoint(&a)
    ))
    .await;
    (a, trident)
}

/// Appends a length-delimited field.
fn bytes_field(number: u32, value: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// A `ModelInferRequest` starting with `fields` (number, value), then an id and one UINT8 input.
fn infer_message(fields: &[(u32, &[u8])]) -> Vec<u8> {
    let mut message = Vec::new();
    for (number, value) in fields {
        bytes_field(*number, value, &mut message);
    }
    let rest = infer_request("", "attack", Bytes::from_static(b"\x01\x02\x03\x04"));
    rest.encode(&mut message).expect("encodes");
    message
}

/// A gRPC call's outcome: the status (trailers-only or trailers), its message,
/// and the model each response message says served it.
struct Call {
    status: String,
    message: String,
    served: Vec<String>,
}

async fn call(trident: &Trident, method: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Call {
    let mut request = http::Request::post(format!(
        "{}/inference.GRPCInferenceService/{method}",
        trident.grpc_url()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = h2c_client()
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let mut data = collected.to_bytes();
    let status_in = |map: &http::HeaderMap| header(map, "grpc-status").to_owned();
    let carrier = match status_in(&parts.headers) {
        s if !s.is_empty() => &parts.headers,
        _ => &trailers,
    };
    let status = status_in(carrier);
    let message = percent_encoding::percent_decode_str(header(carrier, "grpc-message"))
        .decode_utf8_lossy()
        .into_owned();
    let mut served = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let message = data.slice(5..5 + len);
        data = data.slice(5 + len..);
        served.push(if method == "ModelStreamInfer" {
            let m = ModelStreamInferResponse::decode(message).expect("stream response");
            m.infer_response.map(|r| r.model_name).unwrap_or_default()
        } else {
            ModelInferResponse::decode(message)
                .expect("infer response")
                .model_name
        });
    }
    Call {
        status,
        message,
        served,
    }
}

/// Asserts Trident refused the call itself with `code`, the message mentioning `why`.
fn assert_refused(case: &str, call: &Call, code: &str, why: &str) {
    assert!(
        !call.served.iter().any(|m| m == GUARDED),
        "{case}: served as {GUARDED} without a key"
    );
    assert_eq!(
        (call.status.as_str(), call.served.len()),
        (code, 0),
        "{case}: {}",
        call.message
    );
    assert!(
        call.message.contains(why),
        "{case}: message {:?} does not mention {why:?}",
        call.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_holds_for_honest_requests() {
    let (_a, trident) = guarded().await;
    let frame = grpc_frame(0, &infer_message(&[(1, GUARDED.as_bytes())]));
    let denied = call(&trident, "ModelInfer", &[], frame.clone()).await;
    assert_eq!(denied.status, "16");
    let allowed = call(&trident, "ModelInfer", &[("x-api-key", "acme-key")], frame).await;
    assert_eq!(
        (allowed.status.as_str(), allowed.served),
        ("0", vec![GUARDED.to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_model_name_in_a_message_is_refused() {
    let (_a, trident) = guarded().await;
    for (case, first, why) in [
        ("duplicate name", OPEN, "more than once"),
        ("empty name first", "", "names no model"),
    ] {
        let body = infer_message(&[(1, first.as_bytes()), (1, GUARDED.as_bytes())]);
        let answer = call(&trident, "ModelInfer", &[], grpc_frame(0, &body)).await;
        assert_refused(case, &answer, "3", why);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_past_the_peek_limit_is_refused() {
    let (_a, trident) = guarded().await;
    // An unknown field first.
    let body = infer_message(&[(15, &vec![0u8; 64 * 1024]), (1, GUARDED.as_bytes())]);
    let answer = call(&trident, "ModelInfer", &[], grpc_frame(0, &body)).await;
    assert_refused("name after 64 KiB", &answer, "3", "KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cannot_switch_to_another_route() {
    let (_a, trident) = guarded().await;
    let stream = [OPEN, GUARDED].map(stream_message).concat();
    let answer = call(&trident, "ModelStreamInfer", &[], stream).await;
    assert!(
        !answer.served.iter().any(|m| m == GUARDED),
        "served as {GUARDED} without a key"
    );
    assert_eq!(answer.status, "7", "{}", answer.message);
    assert!(answer.message.contains(GUARDED), "{}", answer.message);
}

#[tokio::test]
async fn a_stream_may_name_a_model_routed_and_authorised_alike() {
    let (_a, trident) = guarded().await;
    let stream = [OPEN, ALIKE, OPEN].map(stream_message).concat();
    let answer = call(&trident, "ModelStreamInfer", &[], stream).await;
    assert_eq!(answer.served, [OPEN, ALIKE, OPEN], "{}", answer.message);
    assert_eq!(answer.status, "0", "{}", answer.message);
}

/// A `ModelStreamInfer` message for `model`.
fn stream_message(model: &str) -> Bytes {
    Bytes::from(grpc_frame(0, &infer_message(&[(1, model.as_bytes())])))
}

/// A live stream: the first message names `OPEN` and is answered; then one names `later`.
/// Returns the models served and the status the stream ends with.
async fn live_stream(trident: &Trident, later: &str) -> (Vec<String>, String, String) {
    type Sent = Result<Frame<Bytes>, std::convert::Infallible>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Sent>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<StreamBody<tokio_stream::wrappers::ReceiverStream<Sent>>>();
    let request = http::Request::post(format!(
        "{}/inference.GRPCInferenceService/ModelStreamInfer",
        trident.grpc_url()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body)
    .unwrap();
    tx.send(Ok(Frame::data(stream_message(OPEN))))
        .await
        .unwrap();
    let response = client.request(request).await.expect("response");
    let mut body = response.into_body();
    let mut data = Vec::new();
    let mut trailers = http::HeaderMap::new();
    let mut sent_later = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
        }
        if let Ok(t) = frame.into_trailers() {
            trailers = t;
        }
        // The first answer is in: the stream is under way.
        if !sent_later && data.len() >= 5 {
            tx.send(Ok(Frame::data(stream_message(later))))
                .await
                .unwrap();
            sent_later = true;
        }
        if sent_later && data_messages(&data).len() == 2 {
            drop(tx);
            break;
        }
    }
    let mut served = Vec::new();
    for message in data_messages(&data) {
        let m = ModelStreamInferResponse::decode(message).expect("stream response");
        served.push(m.infer_response.map(|r| r.model_name).unwrap_or_default());
    }
    let message = percent_encoding::percent_decode_str(header(&trailers, "grpc-message"))
        .decode_utf8_lossy()
        .into_owned();
    (served, header(&trailers, "grpc-status").to_owned(), message)
}

/// The whole length-prefixed messages in `data`.
fn data_messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut messages = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        let Some(message) = data.get(5..5 + len) else {
            break;
        };
        messages.push(message);
        data = &data[5 + len..];
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stream_ends_when_a_message_names_a_guarded_model() {
    let (_a, trident) = guarded().await;
    let (served, status, message) = live_stream(&trident, GUARDED).await;
    assert_eq!(served, [OPEN], "{message}");
    assert_eq!(status, "7", "{message}");
    assert!(message.contains(GUARDED), "{message}");
    // Another model of the same open route is served on the same stream.
    let (served, _, message) = live_stream(&trident, OTHER).await;
    assert_eq!(served, [OPEN, OTHER], "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_message_in_an_unknown_encoding_is_refused() {
    let (_a, trident) = guarded().await;
    let message = infer_message(&[(1, GUARDED.as_bytes())]);
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&message).unwrap();
    let body = grpc_frame(1, &gzip.finish().unwrap());
    let answer = call(&trident, "ModelInfer", &[("grpc-encoding", "GZIP")], body).await;
    assert_refused("GZIP", &answer, "12", "grpc-encoding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_a_c_string_would_cut_short_is_refused() {
    let (_a, trident) = guarded().await;
    let body = infer_message(&[(1, b"resnet50\0")]);
    let answer = call(&trident, "ModelInfer", &[], grpc_frame(0, &body)).await;
    assert_refused("NUL in name", &answer, "3", "control character");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_paths_an_upstream_could_normalise_are_refused() {
    let (_a, trident) = guarded().await;
    let client = http1_client();
    let body = r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1.0]}]}"#;
    for path in [
        "/v2/models/simple/../resnet50/infer",
        "/v2/models/simple/%2e%2E/resnet50/infer",
        "/v2/health/../models/resnet50/infer",
        "/v2/models/./resnet50/infer",
        "//v2/models/resnet50/infer",
        "/v2/models//resnet50/infer",
        "/v2/models/simple\\..\\resnet50/infer",
        "/v2/%6Dodels/resnet50/infer",
        "/v2/models/resnet50%00/infer",
    ] {
        let (status, _, answer) = post(&client, &trident.http_url(path), &[], body).await;
        let error: serde_json::Value =
            serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null);
        assert_eq!(status, 400, "{path}: {error}");
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains("path")),
            "{path}: {error}"
        );
    }
    // Plain paths still work, and the guard still holds on them.
    let (status, _, _) = post(
        &client,
        &trident.http_url("/v2/models/simple/infer"),
        &[],
        body,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = post(
        &client,
        &trident.http_url("/v2/models/resnet50/infer"),
        &[],
        body,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_paths_a_server_could_normalise_are_refused() {
    let (_a, trident) = guarded().await;
    let frame = grpc_frame(0, &infer_message(&[(1, GUARDED.as_bytes())]));
    for method in ["ServerLive/../ModelInfer", "ServerLive/%2e%2e/ModelInfer"] {
        let answer = call(&trident, method, &[], frame.clone()).await;
        assert_refused(method, &answer, "3", "path");
    }
}
