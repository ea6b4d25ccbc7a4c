//! End-to-end tests of the mock over real sockets, plus robustness checks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::{MockConfig, MockTriton, BACKEND_HEADER, REQUEST_ID_ECHO_HEADER, SLEEP_PARAM};
use crate::protocol::kserve::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::protocol::kserve::grpc_inference_service_server::SERVICE_NAME;
use crate::protocol::kserve::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::protocol::kserve::*;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

async fn start(name: &str, models: &[&str]) -> MockTriton {
    MockTriton::start(MockConfig::new(name, models.iter().copied()))
        .await
        .expect("mock starts")
}

fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(8 << 20)
        .http2_initial_connection_window_size(16 << 20)
        .build_http()
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: String,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

async fn get(m: &MockTriton, path: &str) -> Reply {
    send(
        &http1(),
        Method::GET,
        format!("{}{path}", m.http_url()),
        &[],
        Bytes::new(),
    )
    .await
}

async fn post_json(m: &MockTriton, path: &str, body: &Value) -> Reply {
    let body = serde_json::to_vec(body).expect("json");
    send(
        &http1(),
        Method::POST,
        format!("{}{path}", m.http_url()),
        &[],
        body,
    )
    .await
}

/// A binary-extension body: JSON header followed by the raw tensors.
fn binary_body(header: &Value, tensors: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).expect("json");
    let header_len = body.len();
    for t in tensors {
        body.extend_from_slice(t);
    }
    (body, header_len)
}

/// Splits a binary-extension response into its JSON header and binary part.
fn split_binary(reply: &Reply) -> (Value, Bytes) {
    let len: usize = reply
        .headers
        .get("inference-header-content-length")
        .expect("header length")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    let header = serde_json::from_slice(&reply.body[..len]).expect("json header");
    (header, reply.body.slice(len..))
}

async fn grpc(m: &MockTriton) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(m.grpc_url())
        .await
        .expect("grpc connect")
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

fn raw_request(model: &str, id: &str, data: Bytes) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "UINT8".into(),
            shape: vec![1, data.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![data],
        ..Default::default()
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Deterministic pseudo-random bytes, so large payload mismatches are caught.
fn pattern(len: usize) -> Bytes {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn http_health_metadata_and_repository() {
    let m = start("meta", &["simple"]).await;
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/simple/ready",
    ] {
        let r = get(&m, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(r.body.is_empty(), "{path}");
    }
    assert_eq!(
        get(&m, "/v2/models/nope/ready").await.status,
        StatusCode::BAD_REQUEST
    );

    let server = get(&m, "/v2").await.json();
    assert_eq!(server["name"], "triton");
    assert_eq!(server["version"], "2.51.0");
    assert!(server["extensions"]
        .as_array()
        .expect("array")
        .contains(&json!("binary_tensor_data")));

    for path in ["/v2/models/simple", "/v2/models/simple/versions/1"] {
        let r = get(&m, path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["name"], "simple");
        assert_eq!(r.json()["versions"], json!(["1"]));
    }
    let r = get(&m, "/v2/models/simple/versions/7").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json()["error"],
        "Request for unknown model: 'simple' version 7 is not found"
    );

    let config = get(&m, "/v2/models/simple/config").await.json();
    assert_eq!(config["name"], "simple");
    assert_eq!(config["backend"], "identity");

    let index = post_json(&m, "/v2/repository/index", &json!({})).await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(
        index.json(),
        json!([{ "name": "simple", "version": "1", "state": "READY" }])
    );

    let r = get(&m, "/v2/nothing/here").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());
    assert_eq!(r.headers[BACKEND_HEADER], "meta");
}

#[tokio::test]
async fn http_json_infer_echoes_inputs_id_and_headers() {
    let m = start("json-backend", &["simple"]).await;
    let body = json!({
        "id": "req-42",
        "inputs": [
            { "name": "INPUT0", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]] },
            { "name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"] },
        ],
    });
    let r = send(
        &http1(),
        Method::POST,
        format!("{}/v2/models/simple/infer", m.http_url()),
        &[("x-request-id", "trace-1".to_string())],
        serde_json::to_vec(&body).expect("json"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers[BACKEND_HEADER], "json-backend");
    assert_eq!(r.headers[REQUEST_ID_ECHO_HEADER], "trace-1");
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["id"], "req-42");
    assert_eq!(v["model_name"], "simple");
    assert_eq!(v["model_version"], "1");
    assert_eq!(
        v["outputs"],
        json!([
            { "name": "OUTPUT0", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4] },
            { "name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"] },
        ])
    );

    // Only the requested outputs come back, in the requested order.
    let body = json!({
        "inputs": [
            { "name": "INPUT0", "datatype": "FP64", "shape": [1], "data": [0.5] },
            { "name": "INPUT1", "datatype": "BOOL", "shape": [1], "data": [true] },
        ],
        "outputs": [{ "name": "OUTPUT1" }],
    });
    let v = post_json(&m, "/v2/models/simple/versions/1/infer", &body)
        .await
        .json();
    assert_eq!(
        v["outputs"],
        json!([{ "name": "OUTPUT1", "datatype": "BOOL", "shape": [1], "data": [true] }])
    );
    assert!(v.get("id").is_none());
}

#[tokio::test]
async fn http_binary_infer_roundtrips_both_ways() {
    let m = start("bin", &["simple"]).await;
    let fp32 = f32_bytes(&[1.0, -2.5, 3.25, 4.0]);
    let header = json!({
        "id": "b1",
        "inputs": [
            { "name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
              "parameters": { "binary_data_size": fp32.len() } },
            { "name": "INPUT1", "datatype": "INT64", "shape": [2], "data": [7, -8] },
        ],
        "outputs": [
            { "name": "OUTPUT0", "parameters": { "binary_data": true } },
            { "name": "OUTPUT1", "parameters": { "binary_data": true } },
        ],
    });
    let (body, header_len) = binary_body(&header, &[&fp32]);
    let url = format!("{}/v2/models/simple/infer", m.http_url());
    let hl = [("inference-header-content-length", header_len.to_string())];
    let r = send(&http1(), Method::POST, url.clone(), &hl, body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    let (v, binary) = split_binary(&r);
    assert_eq!(v["id"], "b1");
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 16);
    assert!(v["outputs"][0].get("data").is_none());
    let mut expected = fp32.clone();
    expected.extend(7i64.to_le_bytes());
    expected.extend((-8i64).to_le_bytes());
    assert_eq!(&binary[..], &expected[..]);

    // Binary in, JSON out (no outputs listed, no binary_data_output).
    let header = json!({
        "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [4],
                     "parameters": { "binary_data_size": fp32.len() } }],
    });
    let (body, header_len) = binary_body(&header, &[&fp32]);
    let hl = [("inference-header-content-length", header_len.to_string())];
    let r = send(&http1(), Method::POST, url.clone(), &hl, body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("inference-header-content-length").is_none());
    assert_eq!(
        r.json()["outputs"][0]["data"],
        json!([1.0, -2.5, 3.25, 4.0])
    );

    // binary_data_output makes every output binary.
    let header = json!({
        "parameters": { "binary_data_output": true },
        "inputs": [{ "name": "INPUT0", "datatype": "UINT16", "shape": [2], "data": [1, 65535] }],
    });
    let r = post_json(&m, "/v2/models/simple/infer", &header).await;
    let (_, binary) = split_binary(&r);
    assert_eq!(&binary[..], &[1, 0, 255, 255]);
}

#[tokio::test]
async fn http_errors_look_like_triton() {
    let m = start("err", &["simple"]).await;
    let input =
        json!({ "inputs": [{ "name": "INPUT0", "datatype": "INT8", "shape": [1], "data": [1] }] });
    let r = post_json(&m, "/v2/models/x/infer", &input).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json(),
        json!({ "error": "Request for unknown model: 'x' is not found" })
    );
    assert_eq!(r.headers[BACKEND_HEADER], "err");

    let url = format!("{}/v2/models/simple/infer", m.http_url());
    let r = send(&http1(), Method::POST, url.clone(), &[], "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"]
        .as_str()
        .expect("message")
        .contains("JSON"));

    let cases = [
        json!({ "inputs": [{ "name": "I", "datatype": "INT8", "shape": [2], "data": [1] }] }),
        json!({ "inputs": [{ "name": "I", "datatype": "NOPE", "shape": [1], "data": [1] }] }),
        json!({ "inputs": [{ "name": "I", "datatype": "INT8", "shape": [1], "data": [300] }],
                "outputs": [{ "name": "I", "parameters": { "binary_data": true } }] }),
        json!({ "inputs": [{ "name": "I", "datatype": "FP16", "shape": [1], "data": [1.0] }] }),
        json!({ "inputs": [{ "name": "I", "datatype": "INT8", "shape": [1], "data": [1] }],
                "outputs": [{ "name": "missing" }] }),
        json!({ "inputs": [{ "name": "I", "datatype": "INT8", "shape": [-1], "data": [1] }] }),
        json!({ "inputs": [{ "name": "I", "datatype": "INT8", "shape": [1],
                             "parameters": { "binary_data_size": 1 } }] }),
    ];
    for case in cases {
        let r = post_json(&m, "/v2/models/simple/infer", &case).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{case}");
        assert!(r.json()["error"].is_string(), "{case}");
    }

    let bad_len = [("inference-header-content-length", "999999".to_string())];
    let r = send(&http1(), Method::POST, url.clone(), &bad_len, "{}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    for (coding, body) in [("gzip", "x"), ("br", "{}")] {
        let headers = [("content-encoding", coding.to_string())];
        let r = send(&http1(), Method::POST, url.clone(), &headers, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{coding}");
    }
}

#[tokio::test]
async fn http_json_values_are_typed_like_triton() {
    // Triton parses JSON into a typed tensor, so FP32 integers come back as floats.
    let m = start("typed", &["simple"]).await;
    let body = json!({ "inputs": [{ "name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4] }] });
    let v = post_json(&m, "/v2/models/simple/infer", &body).await.json();
    assert_eq!(v["outputs"][0]["data"], json!([1.0, 2.0, 3.0, 4.0]));
    let body = json!({ "inputs": [{ "name": "INPUT0", "datatype": "INT32", "shape": [1], "data": ["1"] }] });
    assert_eq!(
        post_json(&m, "/v2/models/simple/infer", &body).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn http_compressed_requests_and_responses() {
    let m = start("gz", &["simple"]).await;
    let url = format!("{}/v2/models/simple/infer", m.http_url());
    let body = json!({ "id": "z", "inputs": [{ "name": "INPUT0", "datatype": "INT16", "shape": [2], "data": [5, -6] }] });
    let plain = serde_json::to_vec(&body).expect("json");
    let expected =
        json!([{ "name": "OUTPUT0", "datatype": "INT16", "shape": [2], "data": [5, -6] }]);
    for coding in [
        super::compress::Coding::Gzip,
        super::compress::Coding::Deflate,
    ] {
        let packed =
            super::compress::deflate(coding, &[Bytes::from(plain.clone())]).expect("compress");
        let headers = [("content-encoding", coding.name().to_string())];
        let r = send(&http1(), Method::POST, url.clone(), &headers, packed).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.json()["outputs"], expected);

        let headers = [("accept-encoding", coding.name().to_string())];
        let r = send(&http1(), Method::POST, url.clone(), &headers, plain.clone()).await;
        assert_eq!(r.headers["content-encoding"], coding.name());
        let unpacked = super::compress::inflate(coding, &r.body).expect("inflate");
        let v: Value = serde_json::from_slice(&unpacked).expect("json");
        assert_eq!(v["outputs"], expected);
    }
}

#[tokio::test]
async fn http_h2c_prior_knowledge() {
    let m = start("h2", &["simple"]).await;
    let client = h2c();
    let r = send(
        &client,
        Method::GET,
        format!("{}/v2/health/ready", m.http_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[BACKEND_HEADER], "h2");

    let body = json!({ "id": "h2", "inputs": [{ "name": "INPUT0", "datatype": "UINT32", "shape": [3], "data": [1, 2, 3] }] });
    let r = send(
        &client,
        Method::POST,
        format!("{}/v2/models/simple/infer", m.http_url()),
        &[],
        serde_json::to_vec(&body).expect("json"),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["outputs"][0]["data"], json!([1, 2, 3]));
}

#[tokio::test]
async fn http_fail_model_and_sleep_hook() {
    let m = start("hooks", &["simple", "fail"]).await;
    let r = post_json(&m, "/v2/models/fail/infer", &json!({ "inputs": [] })).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json(), json!({ "error": "mock failure" }));
    assert_eq!(r.headers[BACKEND_HEADER], "hooks");

    let body = json!({
        "parameters": { SLEEP_PARAM: 150 },
        "inputs": [{ "name": "INPUT0", "datatype": "INT8", "shape": [1], "data": [1] }],
    });
    let started = Instant::now();
    let r = post_json(&m, "/v2/models/simple/infer", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let stats = get(&m, "/v2/models/stats").await.json();
    let stats = stats["model_stats"].as_array().expect("array").clone();
    let of = |name: &str| {
        stats
            .iter()
            .find(|s| s["name"] == name)
            .expect("model")
            .clone()
    };
    assert_eq!(of("simple")["inference_count"], 1);
    assert_eq!(of("fail")["inference_stats"]["fail"]["count"], 1);
    assert_eq!(
        get(&m, "/v2/models/simple/stats").await.json()["model_stats"][0]["name"],
        "simple"
    );
}

#[tokio::test]
async fn http_64mib_binary_echo() {
    let m = start("big", &["simple"]).await;
    let data = pattern(64 << 20);
    let header = json!({
        "inputs": [{ "name": "INPUT0", "datatype": "UINT8", "shape": [data.len()],
                     "parameters": { "binary_data_size": data.len() } }],
        "outputs": [{ "name": "OUTPUT0", "parameters": { "binary_data": true } }],
    });
    let (body, header_len) = binary_body(&header, &[&data]);
    let hl = [("inference-header-content-length", header_len.to_string())];
    let url = format!("{}/v2/models/simple/infer", m.http_url());
    for client in [http1(), h2c()] {
        let r = send(&client, Method::POST, url.clone(), &hl, body.clone()).await;
        assert_eq!(r.status, StatusCode::OK);
        let (_, binary) = split_binary(&r);
        assert!(binary == data, "64 MiB echo differs");
    }
}

#[tokio::test]
async fn grpc_infer_raw_and_typed() {
    let m = start("g1", &["simple"]).await;
    let mut client = grpc(&m).await;

    let mut req = tonic::Request::new(raw_request("simple", "r1", Bytes::from_static(b"abc")));
    req.metadata_mut()
        .insert("x-request-id", "grpc-trace".parse().expect("ascii"));
    let resp = client.model_infer(req).await.expect("infer");
    assert_eq!(resp.metadata().get(BACKEND_HEADER).expect("backend"), "g1");
    assert_eq!(
        resp.metadata().get(REQUEST_ID_ECHO_HEADER).expect("echo"),
        "grpc-trace"
    );
    let resp = resp.into_inner();
    assert_eq!(resp.id, "r1");
    assert_eq!(resp.model_version, "1");
    assert_eq!(resp.outputs[0].name, "OUTPUT0");
    assert_eq!(resp.outputs[0].shape, vec![1, 3]);
    assert_eq!(resp.raw_output_contents, vec![Bytes::from_static(b"abc")]);

    let typed = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT7".into(),
            datatype: "FP32".into(),
            shape: vec![2],
            contents: Some(InferTensorContents {
                fp32_contents: vec![1.5, 2.5],
                ..Default::default()
            }),
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "OUTPUT7".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = client.model_infer(typed).await.expect("infer").into_inner();
    assert!(resp.raw_output_contents.is_empty());
    assert_eq!(resp.outputs[0].name, "OUTPUT7");
    assert_eq!(
        resp.outputs[0]
            .contents
            .as_ref()
            .expect("contents")
            .fp32_contents,
        vec![1.5, 2.5]
    );

    let mismatch = ModelInferRequest {
        raw_input_contents: vec![],
        ..raw_request("simple", "", Bytes::from_static(b"abc"))
    };
    let err = client.model_infer(mismatch).await.expect_err("no data");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn grpc_errors_unknown_model_and_fail() {
    let m = start("g2", &["simple", "fail"]).await;
    let mut client = grpc(&m).await;
    let err = client
        .model_infer(raw_request("x", "", Bytes::from_static(b"a")))
        .await
        .expect_err("unknown model");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "Request for unknown model: 'x' is not found");
    assert_eq!(err.metadata().get(BACKEND_HEADER).expect("backend"), "g2");

    let mut versioned = raw_request("simple", "", Bytes::from_static(b"a"));
    versioned.model_version = "3".into();
    let err = client
        .model_infer(versioned)
        .await
        .expect_err("unknown version");
    assert_eq!(err.code(), tonic::Code::NotFound);

    let err = client
        .model_infer(raw_request("fail", "", Bytes::from_static(b"a")))
        .await
        .expect_err("fail model");
    assert_eq!(err.code(), tonic::Code::Internal);
    assert_eq!(err.message(), "mock failure");
    assert_eq!(err.metadata().get(BACKEND_HEADER).expect("backend"), "g2");

    // The connection stays usable after errors.
    let ok = client
        .model_infer(raw_request("simple", "after", Bytes::from_static(b"a")))
        .await
        .expect("infer");
    assert_eq!(ok.into_inner().id, "after");
}

#[tokio::test]
async fn grpc_stream_infer_three_messages() {
    let m = start("gs", &["simple"]).await;
    let mut client = grpc(&m).await;
    let requests: Vec<ModelInferRequest> = (0..3)
        .map(|i| raw_request("simple", &format!("s{i}"), Bytes::from(vec![i as u8; 4])))
        .collect();
    let resp = client
        .model_stream_infer(futures::stream::iter(requests))
        .await
        .expect("stream");
    assert_eq!(resp.metadata().get(BACKEND_HEADER).expect("backend"), "gs");
    let mut stream = resp.into_inner();
    for i in 0..3u8 {
        let msg = stream.message().await.expect("message").expect("some");
        assert!(msg.error_message.is_empty());
        let r = msg.infer_response.expect("response");
        assert_eq!(r.id, format!("s{i}"));
        assert_eq!(r.raw_output_contents, vec![Bytes::from(vec![i; 4])]);
    }
    assert!(stream.message().await.expect("clean end").is_none());
}

#[tokio::test]
async fn grpc_stream_errors_are_in_band() {
    let m = start("gs2", &["simple", "fail"]).await;
    let mut client = grpc(&m).await;
    let requests = vec![
        raw_request("nope", "a", Bytes::from_static(b"1")),
        raw_request("fail", "b", Bytes::from_static(b"1")),
        raw_request("simple", "c", Bytes::from_static(b"1")),
    ];
    let mut stream = client
        .model_stream_infer(futures::stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("ok").expect("some");
    assert_eq!(
        first.error_message,
        "Request for unknown model: 'nope' is not found"
    );
    let second = stream.message().await.expect("ok").expect("some");
    assert_eq!(second.error_message, "mock failure");
    let third = stream.message().await.expect("ok").expect("some");
    assert_eq!(third.infer_response.expect("response").id, "c");
}

#[tokio::test]
async fn grpc_64mib_echo() {
    let m = start("gbig", &["simple"]).await;
    let mut client = grpc(&m).await;
    let data = pattern(64 << 20);
    let resp = client
        .model_infer(raw_request("simple", "big", data.clone()))
        .await
        .expect("infer")
        .into_inner();
    assert_eq!(resp.raw_output_contents.len(), 1);
    assert!(resp.raw_output_contents[0] == data, "64 MiB echo differs");
}

#[tokio::test]
async fn grpc_sleep_hook_and_deadline() {
    let m = start("gsleep", &["simple"]).await;
    let mut client = grpc(&m).await;
    let mut req = raw_request("simple", "", Bytes::from_static(b"z"));
    req.parameters
        .insert(SLEEP_PARAM.into(), InferParameter::int64(120));
    let started = Instant::now();
    client.model_infer(req.clone()).await.expect("infer");
    assert!(started.elapsed() >= Duration::from_millis(120));

    // The server itself enforces grpc-timeout, as real gRPC servers do; a raw request
    // keeps tonic's client-side timer out of the picture.
    let message = prost::Message::encode_to_vec(&req);
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    let raw = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "{}/inference.GRPCInferenceService/ModelInfer",
            m.grpc_url()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "30m")
        .body(Full::new(Bytes::from(frame)))
        .expect("request");
    let resp = h2c().request(raw).await.expect("response");
    // Without enforcement the call would succeed (status 0) after the sleep.
    assert_eq!(resp.headers()["grpc-status"], "4");
    assert_eq!(resp.headers()[BACKEND_HEADER], "gsleep");
}

#[tokio::test]
async fn grpc_metadata_rpcs() {
    let m = start("gmeta", &["simple", "other"]).await;
    let mut c = grpc(&m).await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .expect("ready")
            .into_inner()
            .ready
    );
    let ready = |name: &str| ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(
        c.model_ready(ready("simple"))
            .await
            .expect("rpc")
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope"))
            .await
            .expect("rpc")
            .into_inner()
            .ready
    );

    let server = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(
        (server.name.as_str(), server.version.as_str()),
        ("triton", "2.51.0")
    );
    let meta = c
        .model_metadata(ModelMetadataRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(meta.versions, vec!["1".to_string()]);
    let err = c
        .model_metadata(ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let config = c
        .model_config(ModelConfigRequest {
            name: "other".into(),
            version: "1".into(),
        })
        .await
        .expect("rpc")
        .into_inner()
        .config
        .expect("config");
    assert_eq!(
        (config.name.as_str(), config.backend.as_str()),
        ("other", "identity")
    );

    c.model_infer(raw_request("simple", "", Bytes::from_static(b"q")))
        .await
        .expect("infer");
    let stats = c
        .model_statistics(ModelStatisticsRequest::default())
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(stats.model_stats.len(), 2);
    let simple = stats
        .model_stats
        .iter()
        .find(|s| s.name == "simple")
        .expect("simple");
    assert_eq!(simple.inference_count, 1);
    assert!(simple.last_inference > 0);

    let index = c
        .repository_index(RepositoryIndexRequest::default())
        .await
        .expect("rpc")
        .into_inner();
    let names: Vec<&str> = index.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["simple", "other"]);
}

fn grpc_frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Compressed gRPC messages (which tritonclient can send) are accepted, uncompressed ones
/// on the same call too; answers are uncompressed, as with Triton's defaults.
#[tokio::test]
async fn grpc_accepts_compressed_messages() {
    let m = start("ggz", &["simple"]).await;
    let data = Bytes::from(vec![3u8; 100_000]);
    let message = prost::Message::encode_to_vec(&raw_request("simple", "gz", data.clone()));
    for coding in [
        super::compress::Coding::Gzip,
        super::compress::Coding::Deflate,
    ] {
        let packed =
            super::compress::deflate(coding, &[Bytes::from(message.clone())]).expect("compress");
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!(
                "{}/inference.GRPCInferenceService/ModelInfer",
                m.grpc_url()
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-encoding", coding.name())
            .body(Full::new(Bytes::from(grpc_frame(1, &packed))))
            .expect("request");
        let resp = h2c().request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
        let body = collected.to_bytes();
        assert_eq!(body[0], 0, "uncompressed answer");
        let answer: ModelInferResponse = prost::Message::decode(&body[5..]).expect("message");
        assert_eq!(answer.id, "gz");
        assert_eq!(answer.raw_output_contents, vec![data.clone()]);
    }
}

/// Checks the wire route independently of the generated client, which shares the
/// generated route strings with the server.
#[tokio::test]
async fn grpc_route_names_match_triton() {
    assert_eq!(SERVICE_NAME, "inference.GRPCInferenceService");
    let m = start("route", &["simple"]).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "{}/inference.GRPCInferenceService/ServerLive",
            m.grpc_url()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request");
    let resp = h2c().request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[BACKEND_HEADER], "route");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    // One uncompressed frame holding ServerLiveResponse { live: true }.
    assert_eq!(&collected.to_bytes()[..], &[0, 0, 0, 0, 2, 0x08, 0x01]);
}

#[tokio::test]
async fn several_mocks_on_port_zero_and_shutdown() {
    let a = start("a", &["simple"]).await;
    let b = start("b", &["simple"]).await;
    assert_ne!(a.http_addr, b.http_addr);
    assert_ne!(a.grpc_addr, a.http_addr);
    assert_eq!(
        get(&a, "/v2/health/live").await.headers[BACKEND_HEADER],
        "a"
    );
    assert_eq!(
        get(&b, "/v2/health/live").await.headers[BACKEND_HEADER],
        "b"
    );

    // An open keep-alive connection is closed by stop() too.
    let mut client = grpc(&b).await;
    client
        .server_live(ServerLiveRequest {})
        .await
        .expect("live");
    let (http_addr, grpc_addr) = (b.http_addr, b.grpc_addr);
    b.stop().await;
    assert!(tokio::net::TcpStream::connect(http_addr).await.is_err());
    assert!(tokio::net::TcpStream::connect(grpc_addr).await.is_err());
    assert!(client.server_live(ServerLiveRequest {}).await.is_err());

    let addr = a.http_addr;
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still open after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Garbage must produce errors, never panics.
#[test]
fn malformed_inputs_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let templates = [
        r#"{"inputs":[{"name":"INPUT0","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":6}}],"outputs":[{"name":"OUTPUT0"}]}"#,
        r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}],"parameters":{"binary_data_output":true}}"#,
        r#"{"inputs":[{"name":"INPUT0","datatype":"INT64","shape":[9223372036854775807,2],"data":[1]}]}"#,
    ];
    for round in 0..3000u32 {
        let template = templates[round as usize % templates.len()].as_bytes();
        let mut body = template.to_vec();
        for _ in 0..(next() % 12) {
            body.push((next() & 0xff) as u8);
        }
        if round % 3 == 0 {
            let i = (next() as usize) % body.len();
            body[i] = (next() & 0xff) as u8;
        }
        let mut headers = HeaderMap::new();
        let len = match round % 4 {
            0 => template.len(),
            1 => (next() as usize) % (body.len() + 2),
            _ => usize::MAX,
        };
        if len != usize::MAX {
            headers.insert(
                "inference-header-content-length",
                http::HeaderValue::from(len),
            );
        }
        let _ = super::http::infer_now("simple", &headers, Bytes::from(body));
    }

    for _ in 0..3000 {
        let len = (next() % 64) as usize;
        let garbage: Vec<u8> = (0..len).map(|_| (next() & 0xff) as u8).collect();
        if let Ok(req) = <ModelInferRequest as prost::Message>::decode(&garbage[..]) {
            let _ = super::grpc::echo(req);
        }
    }
    let odd = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP64".into(),
            shape: vec![i64::MAX, i64::MAX, -3],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from_static(b"1234567")],
        ..Default::default()
    };
    assert!(super::grpc::echo(odd).is_err());
}

#[tokio::test]
async fn reset_connections_drops_open_connections_with_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = start("b1", &["m"]).await;
    let mut stream = tokio::net::TcpStream::connect(m.http_addr)
        .await
        .expect("connect");
    let request = b"GET /v2/health/ready HTTP/1.1\r\nhost: mock\r\n\r\n";
    stream.write_all(request).await.expect("write");
    let mut answer = [0u8; 1024];
    let n = stream.read(&mut answer).await.expect("first answer");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // Once the connection's task has been polled it waits for a reset.
    tokio::time::sleep(Duration::from_millis(50)).await;

    m.control().reset_connections();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("the connection ends");
    let error = read.expect_err("a reset, not an orderly close");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    // New connections are served as before.
    assert_eq!(get(&m, "/v2/health/ready").await.status, StatusCode::OK);
}

#[tokio::test]
async fn start_at_serves_again_on_a_stopped_mocks_ports() {
    let first = start("b1", &["m"]).await;
    let (http_addr, grpc_addr) = (first.http_addr, first.grpc_addr);
    first.stop().await;
    assert!(tokio::net::TcpStream::connect(http_addr).await.is_err());

    let again = MockTriton::start_at(MockConfig::new("b1", ["m"]), http_addr, grpc_addr)
        .await
        .expect("the ports are free again");
    assert_eq!((again.http_addr, again.grpc_addr), (http_addr, grpc_addr));
    assert_eq!(get(&again, "/v2/health/ready").await.status, StatusCode::OK);
}
