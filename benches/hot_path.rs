//! Micro-benchmarks of what every request pays before it is forwarded: the
//! model from the HTTP path (and the check that no upstream reads it
//! differently), the route lookup, the gRPC model-name peek and the check of
//! every message as it streams, and the JSON header of a binary-tensor body
//! (sequence and batch peeks), the access-log line, and the request's metrics.
//!
//! `cargo bench --bench hot_path`. The load harness (`--bench load`) measures
//! the whole path; these show which piece moved when it does.

#[path = "common/grpc.rs"]
mod grpc_call;

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use trident::protocol::grpc::{self, Encoding};
use trident::protocol::model_check::{ModelCheck, Violation};
use trident::protocol::{http_body, http_path, sequence};
use trident::telemetry::access_log::Entry;
use trident::telemetry::metrics::{Metrics, Outcome};

/// A config with a hundred exact routes and a default one.
fn routes_config() -> String {
    let mut toml = String::from(
        "[server]\nhttp_listen = \"127.0.0.1:0\"\n[[pools]]\nname = \"p\"\nendpoints = [ { http = \"127.0.0.1:8000\", grpc = \"127.0.0.1:8001\" } ]\n",
    );
    for i in 0..100 {
        toml.push_str(&format!(
            "[[routes]]\nmodel = \"model_{i}\"\npool = \"p\"\n"
        ));
    }
    toml.push_str("[[routes]]\nmodel = \"*\"\npool = \"p\"\n");
    toml
}

fn routing(c: &mut Criterion) {
    let config = trident::config::parse(&routes_config(), Path::new(".")).expect("config");
    let routes = &config.routes;
    let mut group = c.benchmark_group("routing");
    group.bench_function("model_from_path", |b| {
        b.iter(|| http_path::model_from_path(black_box("/v2/models/model_42/versions/3/infer")))
    });
    group.bench_function("path_ambiguity", |b| {
        b.iter(|| http_path::ambiguity(black_box("/v2/models/model_42/versions/3/infer")))
    });
    group.bench_function("route_lookup_exact_of_100", |b| {
        b.iter(|| routes.lookup(black_box(Some("model_42"))))
    });
    group.bench_function("route_lookup_default", |b| {
        b.iter(|| routes.lookup(black_box(Some("not_routed"))))
    });
    group.finish();
}

/// A `ModelInfer` call with `raw` bytes of tensor, as a gRPC message.
fn grpc_infer(raw: usize) -> Vec<u8> {
    grpc_call::fp32_infer_frame("resnet50", "1", vec![8, (raw / 32) as i64], vec![7u8; raw])
}

fn grpc_peek(c: &mut Criterion) {
    let field = grpc::model_field_for_method("/inference.GRPCInferenceService/ModelInfer")
        .expect("ModelInfer names its model");
    let small = grpc_infer(64);
    // Only the first frame's worth of a 4 MiB call has arrived when the peek runs.
    let large = grpc_infer(4 << 20);
    let first_frame = &large[..16 << 10];
    let mut group = c.benchmark_group("grpc_peek");
    group.bench_function("model_name_small_call", |b| {
        b.iter(|| grpc::peek_model(black_box(&small), field, Encoding::Identity, true))
    });
    group.bench_function("model_name_first_16k_of_4mib", |b| {
        b.iter(|| grpc::peek_model(black_box(first_frame), field, Encoding::Identity, false))
    });
    group.bench_function("sequence_first_16k_of_4mib", |b| {
        b.iter(|| sequence::peek_grpc(black_box(first_frame), Encoding::Identity, false))
    });
    // The whole call, as the proxy forwards it: in 16 KiB h2 frames.
    group.bench_function("model_check_4mib_in_16k_chunks", |b| {
        b.iter(|| {
            let mut check = ModelCheck::new(field, Encoding::Identity);
            for chunk in large.chunks(16 << 10) {
                let fed = check.feed(black_box(chunk), false, |name| {
                    black_box(name);
                    Ok::<_, Violation>(())
                });
                black_box(fed).expect("a valid call");
            }
        })
    });
    group.finish();
}

fn binary_header(c: &mut Criterion) {
    let json = br#"{"inputs":[{"name":"INPUT0","shape":[8,131072],"datatype":"FP32","parameters":{"binary_data_size":4194304}}],"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}],"parameters":{"sequence_id":42,"sequence_start":true}}"#;
    let mut body = json.to_vec();
    body.resize(json.len() + (4 << 20), 7);
    let json_len = Some(json.len());
    let mut group = c.benchmark_group("binary_header");
    group.bench_function("sequence_of_4mib_binary_body", |b| {
        b.iter(|| sequence::peek_http(black_box(&body), json_len, Encoding::Identity, true))
    });
    group.bench_function("batch_size_of_4mib_binary_body", |b| {
        b.iter(|| http_body::peek_batch_size(black_box(&body), json_len, Encoding::Identity, true))
    });
    group.finish();
}

/// What a request's thread pays for its access-log line: the JSON of a typical
/// entry (queueing it is one `try_send`; the writer thread writes in batches).
fn access_log_line(c: &mut Criterion) {
    let entry = Entry {
        ts_ms: 1_764_000_000_000,
        request_id: "0f8e2b7c-5d1a-4c3e-9b6f-2a7d9e1c4b3a",
        client: Some("10.1.2.3:54321".to_owned()),
        protocol: "http",
        method: "POST",
        path: "/v2/models/resnet50/infer",
        user_agent: Some("python-requests/2.32.3"),
        model: Some("resnet50"),
        route: Some("resnet50"),
        pool: Some("gpu-a"),
        tenant: None,
        upstream: Some("10.0.0.7:8000".to_owned()),
        status: Some(200),
        grpc_status: None,
        request_bytes: Some(602_112),
        response_bytes: Some(4_123),
        tries: 1,
        upstream_us: Some(1100),
        duration_us: 1234,
        trace_id: None,
        error: None,
    };
    c.bench_function("access_log/entry_to_json", |b| {
        b.iter(|| serde_json::to_string(black_box(&entry)))
    });
}

/// What `logging` records per request: its status count, duration histogram and bytes.
fn request_metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let pools: std::sync::Arc<[String]> = ["gpu-a".to_owned()].into();
    let route = metrics.route("resnet50", trident::protocol::Protocol::Http, &pools);
    let elapsed = std::time::Duration::from_micros(800);
    c.bench_function("metrics/route_record", |b| {
        b.iter(|| {
            route.record(
                black_box(Outcome::Http(200)),
                Some(0),
                elapsed,
                (1024, 4096),
            )
        })
    });
}

criterion_group!(
    benches,
    routing,
    grpc_peek,
    binary_header,
    access_log_line,
    request_metrics
);
criterion_main!(benches);
