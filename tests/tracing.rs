//! Tracing through the real binary against mock Triton, exporting to the
//! in-process collector (`common::otlp`): span trees joined to the client's
//! trace, attributes, `traceparent` into the upstream request, retries as
//! sibling client spans, parent-based sampling, both OTLP protocols, and a
//! dead or silent collector that costs clients nothing.

mod common;

use std::time::{Duration, Instant};

use common::otlp::{self, attribute, span_id_bytes, trace_id_bytes, Collector, Silent, Span};
use common::*;
use serde_json::json;
use tonic::metadata::MetadataValue;
use trident::mock::Fault;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, flags: &str) -> String {
    format!("00-{trace}-{PARENT_SPAN}-{flags}")
}

fn infer_json() -> String {
    json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }] })
        .to_string()
}

/// `[tracing]` exporting to `endpoint` quickly (small batches, short interval).
fn tracing_section(endpoint: &str, protocol: &str, ratio: f64) -> String {
    format!(
        "[tracing]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nsample_ratio = {ratio}\n\
         batch_spans = 8\nqueue_spans = 64\nexport_interval_ms = 50\nexport_timeout_ms = 500\n\
         service_name = \"trident-test\"\n[tracing.headers]\nauthorization = \"Bearer t0ken\"\n"
    )
}

/// Trident with pool `p` over `mocks` (`sections` after its keys), every model routed to it.
async fn traced(mocks: &[&MockTriton], sections: &str, tracing: &str) -> Trident {
    let endpoints: Vec<String> = mocks.iter().map(|m| endpoint(m)).collect();
    Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n{sections}\n[[routes]]\nmodel = \"*\"\npool = \"p\"\n{tracing}",
        endpoints.join(", ")
    ))
    .await
}

async fn infer(trident: &Trident, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    post(
        &http1_client(),
        &trident.http_url("/v2/models/m/infer"),
        &headers,
        infer_json(),
    )
    .await
}

/// The collector, mock `a1` serving `m`, and a Trident tracing to the collector
/// over `protocol` ("grpc" or "http/protobuf") at `ratio`.
async fn collected(protocol: &str, ratio: f64) -> (Collector, MockTriton, Trident) {
    let collector = Collector::start().await;
    let a = mock("a1", &["m"]).await;
    let receiver = match protocol {
        "grpc" => collector.grpc,
        _ => collector.http,
    };
    let tracing = tracing_section(&format!("http://{receiver}"), protocol, ratio);
    let trident = traced(&[&a], "", &tracing).await;
    (collector, a, trident)
}

fn of_kind(spans: &[Span], kind: i32) -> Vec<&Span> {
    spans.iter().filter(|s| s.kind == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_joins_the_clients_trace_and_reaches_the_upstream() {
    let (collector, a, trident) = collected("grpc", 0.0).await;
    let parent = traceparent(TRACE, "01");
    let (status, headers, _) = infer(
        &trident,
        &[
            ("traceparent", &parent),
            ("tracestate", "vendor=1"),
            ("user-agent", "trace-test/1"),
            ("x-mock-echo", "traceparent, tracestate"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let spans = collector.trace(&trace_id_bytes(TRACE), 2).await;
    let server = of_kind(&spans, otlp::SERVER)[0];
    let client = of_kind(&spans, otlp::CLIENT)[0];
    assert_eq!(
        server.parent_span_id,
        span_id_bytes(PARENT_SPAN),
        "the client's span is the parent"
    );
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(server.name, "POST /v2/models/{model}/infer");
    assert_eq!(server.trace_state, "vendor=1");
    // The upstream got the trace, with the try's span as its parent, and the client's state.
    let upstream = header(&headers, "x-mock-echo-traceparent");
    assert_eq!(
        upstream,
        format!("00-{TRACE}-{}-01", hex(&client.span_id)),
        "traceparent sent upstream"
    );
    assert_eq!(header(&headers, "x-mock-echo-tracestate"), "vendor=1");
    for (key, value) in [
        ("http.request.method", "POST"),
        ("url.path", "/v2/models/m/infer"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("client.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("user_agent.original", "trace-test/1"),
        ("trident.model", "m"),
        ("trident.route", "*"),
        ("trident.pool", "p"),
        ("trident.mirror", "false"),
        ("trident.tries", "1"),
    ] {
        assert_eq!(
            attribute(server, key).as_deref(),
            Some(value),
            "server span {key}"
        );
    }
    let request_id = header(&headers, "x-request-id");
    assert_eq!(
        attribute(server, "trident.request_id").as_deref(),
        Some(request_id)
    );
    let line = trident.access_log_line(request_id).await;
    assert_eq!(line["trace_id"], TRACE, "the access log names the trace");
    for (key, value) in [
        ("server.address", "127.0.0.1".to_owned()),
        ("server.port", a.http_addr.port().to_string()),
        ("trident.endpoint", a.http_addr.to_string()),
        ("trident.try", "1".to_owned()),
        ("http.response.status_code", "200".to_owned()),
    ] {
        assert_eq!(attribute(client, key), Some(value), "client span {key}");
    }
    assert!(server.end_time_unix_nano >= client.end_time_unix_nano);
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert_eq!(collector.services()[0], "trident-test");
    let auth = collector.request_headers()[0].get("authorization").cloned();
    assert_eq!(
        auth.unwrap(),
        "Bearer t0ken",
        "configured headers reach the collector"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_sibling_client_spans() {
    let collector = Collector::start().await;
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    a.control().set_fault(Fault::Unavailable);
    let trident = traced(
        &[&a, &b],
        "[pools.balancer]\nstrategy = \"round_robin\"\n[pools.outlier]\nconsecutive_failures = 0\n",
        &tracing_section(&format!("http://{}", collector.grpc), "grpc", 1.0),
    )
    .await;
    // Round robin: of two requests, one goes to a1 first, answers 503, and is retried on b1.
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    ];
    for trace in traces {
        let (status, _, _) = infer(&trident, &[("traceparent", &traceparent(trace, "01"))]).await;
        assert_eq!(status, 200);
    }
    let mut retried = None;
    for trace in traces {
        let spans = collector.trace(&trace_id_bytes(trace), 2).await;
        if of_kind(&spans, otlp::CLIENT).len() == 2 {
            retried = Some(spans);
        }
    }
    // Each request's server span arrives last: wait for the retried one's three spans.
    let retried = retried.expect("one of the requests was retried");
    let spans = collector.trace(&retried[0].trace_id, 3).await;
    let server = of_kind(&spans, otlp::SERVER)[0];
    let mut tries = of_kind(&spans, otlp::CLIENT);
    tries.sort_by_key(|s| attribute(s, "trident.try"));
    assert_eq!(tries.len(), 2);
    for try_span in &tries {
        assert_eq!(
            try_span.parent_span_id, server.span_id,
            "tries are siblings"
        );
    }
    assert_eq!(
        attribute(tries[0], "trident.endpoint"),
        Some(a.http_addr.to_string())
    );
    assert_eq!(
        attribute(tries[0], "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(tries[0].status.as_ref().unwrap().code, otlp::ERROR);
    assert_eq!(
        attribute(tries[1], "trident.endpoint"),
        Some(b.http_addr.to_string())
    );
    assert_ne!(tries[1].status.as_ref().unwrap().code, otlp::ERROR);
    assert_eq!(attribute(server, "trident.tries").as_deref(), Some("2"));
    assert_ne!(server.status.as_ref().unwrap().code, otlp::ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_traced_with_rpc_attributes_and_propagated_in_metadata() {
    let (collector, _mock, trident) = collected("grpc", 0.0).await;
    let mut grpc = client(trident.grpc_url()).await;
    let mut request =
        tonic::Request::new(infer_request("m", "r1", bytes::Bytes::from_static(b"x")));
    let parent = traceparent(TRACE, "01");
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(parent.as_str()).unwrap(),
    );
    request
        .metadata_mut()
        .insert("x-mock-echo", MetadataValue::from_static("traceparent"));
    let response = grpc.model_infer(request).await.expect("call succeeds");
    let spans = collector.trace(&trace_id_bytes(TRACE), 2).await;
    let server = of_kind(&spans, otlp::SERVER)[0];
    let client_span = of_kind(&spans, otlp::CLIENT)[0];
    assert_eq!(server.name, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(server.parent_span_id, span_id_bytes(PARENT_SPAN));
    assert_eq!(client_span.parent_span_id, server.span_id);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "inference.GRPCInferenceService"),
        ("rpc.method", "ModelInfer"),
        ("rpc.grpc.status_code", "0"),
        ("network.protocol.version", "2"),
        ("trident.model", "m"),
    ] {
        assert_eq!(
            attribute(server, key).as_deref(),
            Some(value),
            "server span {key}"
        );
    }
    let echoed = response
        .metadata()
        .get("x-mock-echo-traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        echoed,
        format!("00-{TRACE}-{}-01", hex(&client_span.span_id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_parent_and_unsampled_requests_still_propagate() {
    let (collector, _mock, trident) = collected("grpc", 0.0).await;
    let unsampled = "33333333333333333333333333333333";
    let (status, headers, _) = infer(
        &trident,
        &[
            ("traceparent", &traceparent(unsampled, "00")),
            ("x-mock-echo", "traceparent"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let upstream = header(&headers, "x-mock-echo-traceparent");
    assert!(
        upstream.starts_with(&format!("00-{unsampled}-")) && upstream.ends_with("-00"),
        "the unsampled context goes on: {upstream}"
    );
    assert!(
        !upstream.contains(PARENT_SPAN),
        "with Trident's span as the parent"
    );
    // A root at ratio 0: not sampled, but a trace id still goes upstream.
    let (_, headers, _) = infer(&trident, &[("x-mock-echo", "traceparent")]).await;
    let root = header(&headers, "x-mock-echo-traceparent").to_owned();
    assert!(root.ends_with("-00"), "{root}");
    // A sampled parent at ratio 0 is sampled; spans leave in order, so once its
    // spans arrived, the others' would have too.
    let (status, _, _) = infer(&trident, &[("traceparent", &traceparent(TRACE, "01"))]).await;
    assert_eq!(status, 200);
    collector.trace(&trace_id_bytes(TRACE), 2).await;
    let spans = collector.spans();
    assert_eq!(
        spans.len(),
        2,
        "only the sampled request's spans: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exporter_delivers_spans() {
    let (collector, _mock, trident) = collected("http/protobuf", 1.0).await;
    let (status, _, _) = infer(&trident, &[("traceparent", &traceparent(TRACE, "01"))]).await;
    assert_eq!(status, 200);
    let spans = collector.trace(&trace_id_bytes(TRACE), 2).await;
    assert_eq!(of_kind(&spans, otlp::SERVER).len(), 1);
    let headers = &collector.request_headers()[0];
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(headers["authorization"], "Bearer t0ken");
    assert!(
        wait_metric(&trident, "trident_trace_spans_exported_total", 2.0).await,
        "{}",
        trident.metrics().await
    );
}

/// Spans dropped, for either reason.
fn dropped(metrics: &str) -> f64 {
    ["queue_full", "export_failed"]
        .iter()
        .map(|reason| {
            metric(
                metrics,
                &format!("trident_trace_spans_dropped_total{{reason=\"{reason}\"}}"),
            )
        })
        .sum()
}

/// `rounds` rounds of 8 concurrent inference requests with `headers`, each answered 200.
async fn rounds_of_8(trident: &Trident, rounds: usize, headers: &[(&str, &str)]) {
    let client = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    for _ in 0..rounds {
        let calls = (0..8).map(|_| post(&client, &url, headers, infer_json()));
        for (status, _, _) in futures::future::join_all(calls).await {
            assert_eq!(status, 200);
        }
    }
}

/// 200 requests, 8 at a time; how long they took.
async fn load(trident: &Trident) -> Duration {
    let started = Instant::now();
    rounds_of_8(trident, 25, &[("content-type", "application/json")]).await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_silent_collector_changes_nothing_for_clients() {
    let a = mock("a1", &["m"]).await;
    let dead = free_port();
    let silent = Silent::start().await;
    let baseline = traced(&[&a], "", "").await;
    let to_dead = traced(
        &[&a],
        "",
        &tracing_section(&format!("http://{dead}"), "grpc", 1.0),
    )
    .await;
    let to_silent = traced(
        &[&a],
        "",
        &tracing_section(&format!("http://{}", silent.addr), "http/protobuf", 1.0),
    )
    .await;
    let untraced = load(&baseline).await;
    for trident in [&to_dead, &to_silent] {
        let took = load(trident).await;
        // Loose on purpose (a shared 2-core machine): a request waiting on the
        // collector would take its 500 ms export timeout, 25 rounds of it 12 s.
        assert!(
            took < untraced * 5 + Duration::from_secs(5),
            "{took:?} against {untraced:?} untraced"
        );
        let counted = eventually(Duration::from_secs(10), || async {
            dropped(&trident.metrics().await) >= 100.0
        })
        .await;
        let text = trident.metrics().await;
        assert!(counted, "drops are counted: {}", dropped(&text));
        assert_eq!(metric(&text, "trident_trace_spans_exported_total"), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_off_passes_headers_untouched_and_a_reload_turns_it_on() {
    let collector = Collector::start().await;
    let a = mock("a1", &["m"]).await;
    let trident = traced(&[&a], "", "").await;
    let parent = traceparent(TRACE, "01");
    let echo = [
        ("traceparent", parent.as_str()),
        ("tracestate", "vendor=1"),
        ("x-mock-echo", "traceparent, tracestate"),
    ];
    let (_, headers, _) = infer(&trident, &echo).await;
    assert_eq!(header(&headers, "x-mock-echo-traceparent"), parent);
    assert_eq!(header(&headers, "x-mock-echo-tracestate"), "vendor=1");

    let path = trident.config_path();
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(&tracing_section(
        &format!("http://{}", collector.grpc),
        "grpc",
        0.0,
    ));
    std::fs::write(&path, config).unwrap();
    trident.signal("HUP");
    // Once reloaded, Trident's own span is the upstream's parent.
    let reloaded = eventually(Duration::from_secs(10), || async {
        let (_, headers, _) = infer(&trident, &echo).await;
        let upstream = header(&headers, "x-mock-echo-traceparent").to_owned();
        upstream.starts_with(&format!("00-{TRACE}-")) && !upstream.contains(PARENT_SPAN)
    })
    .await;
    assert!(reloaded, "the reload turned tracing on");
    collector.trace(&trace_id_bytes(TRACE), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_events_and_sequences_and_split_sides_are_named() {
    let collector = Collector::start().await;
    let a = mock("a1", &["m"]).await;
    let tracing = tracing_section(&format!("http://{}", collector.grpc), "grpc", 1.0);
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {a} ]\n\
         [[pools]]\nname = \"canary\"\nendpoints = [ {a} ]\n\
         [filters.keys]\nkind = \"api_key\"\nkeys = [ {{ tenant = \"acme\", key = \"acme-key\" }} ]\n\
         [[routes]]\nmodel = \"m\"\npool = \"p\"\nfilters = [\"keys\"]\n\
         [[routes.splits]]\npool = \"canary\"\npercent = 100\n{tracing}",
        a = endpoint(&a)
    ))
    .await;
    let denied_trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, _, _) = infer(
        &trident,
        &[("traceparent", &traceparent(denied_trace, "01"))],
    )
    .await;
    assert_eq!(status, 401);
    let spans = collector.trace(&trace_id_bytes(denied_trace), 1).await;
    let event = &spans[0].events[0];
    assert_eq!(event.name, "trident.filter.denied");
    assert!(event.time_unix_nano >= spans[0].start_time_unix_nano);
    let text = |key: &str| {
        let kv = event.attributes.iter().find(|kv| kv.key == key).unwrap();
        match kv.value.as_ref().unwrap().value.as_ref().unwrap() {
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => s.clone(),
            other => panic!("{key}: {other:?}"),
        }
    };
    assert_eq!(text("trident.filter"), "keys");
    assert_eq!(text("trident.filter.reason"), "unauthenticated");

    let body = json!({
        "parameters": { "sequence_id": 7, "sequence_start": true },
        "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }]
    });
    let (status, _, _) = post(
        &http1_client(),
        &trident.http_url("/v2/models/m/infer"),
        &[
            ("content-type", "application/json"),
            ("x-api-key", "acme-key"),
            ("traceparent", &traceparent(TRACE, "01")),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let spans = collector.trace(&trace_id_bytes(TRACE), 2).await;
    let server = of_kind(&spans, otlp::SERVER)[0];
    assert!(server.events.is_empty());
    for (key, value) in [
        ("trident.sequence_id", "7"),
        ("trident.split_side", "canary"),
        ("trident.pool", "canary"),
        ("trident.route", "m"),
    ] {
        assert_eq!(
            attribute(server, key).as_deref(),
            Some(value),
            "server span {key}"
        );
    }
}

/// The collector and a Trident tracing every request to it (`[tracing]` keys
/// `keys` added; a batch goes only when full, never by the interval), once
/// `rounds` rounds of 8 requests with user agent `agent` are answered.
async fn sent_with_agent(
    keys: &str,
    agent: &str,
    rounds: usize,
) -> (Collector, MockTriton, Trident) {
    let collector = Collector::start().await;
    let a = mock("a1", &["m"]).await;
    let tracing = format!(
        "[tracing]\nendpoint = \"http://{}\"\nsample_ratio = 1.0\nexport_interval_ms = 60000\n{keys}\n",
        collector.grpc
    );
    let trident = traced(&[&a], "", &tracing).await;
    let headers = [("content-type", "application/json"), ("user-agent", agent)];
    rounds_of_8(&trident, rounds, &headers).await;
    (collector, a, trident)
}

/// Clients choose how long some attribute values are (a user agent, a path):
/// long ones are cut, and an export request stays under what collectors take
/// (4 MiB by default, as this one), so that a batch of them is not refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_client_values_are_cut_and_no_export_is_too_large_for_the_collector() {
    // Batches go only when full (512 spans), as soon as the queue is half full
    // (512 of 1024). 400 requests make 800 spans, of which a request thread
    // holds fewer than 64 back: a batch fills.
    let agent = format!("agent/{}", "x".repeat(20 * 1024));
    let (collector, _mock, trident) = sent_with_agent("queue_spans = 1024", &agent, 50).await;
    let exported = wait_metric(&trident, "trident_trace_spans_exported_total", 512.0).await;
    let metrics = trident.metrics().await;
    assert!(exported, "a full batch exported: {metrics}");
    assert_eq!(dropped(&metrics), 0.0);
    let spans = collector.spans();
    let server = of_kind(&spans, otlp::SERVER)[0];
    let sent = attribute(server, "user_agent.original").unwrap();
    assert_eq!(sent.len(), 256, "cut to 256 bytes");
    assert!(agent.starts_with(&sent));
}

/// Spans made large on purpose (long values allowed) are exported in requests
/// of at most `batch_bytes`, as soon as that much waits: never one the
/// collector refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_spans_are_exported_in_requests_the_collector_takes() {
    // The queue wakes the exporter once half full: 64 handoffs, about 6 MiB of
    // spans here, where 512 spans (a batch by count) would be 25 MiB.
    let agent = "x".repeat(50 * 1024);
    let keys = "queue_spans = 8192\nattribute_value_bytes = 65536";
    let (collector, _mock, trident) = sent_with_agent(keys, &agent, 20).await;
    let exported = wait_metric(&trident, "trident_trace_spans_exported_total", 200.0).await;
    let metrics = trident.metrics().await;
    assert!(
        exported,
        "exported without waiting for the interval: {metrics}"
    );
    assert_eq!(dropped(&metrics), 0.0);
    let exports = collector.request_headers().len();
    assert!(exports >= 5, "in requests of at most 1 MiB: {exports}");
    let spans = collector.spans();
    let server = of_kind(&spans, otlp::SERVER)[0];
    assert_eq!(
        attribute(server, "user_agent.original").map(|a| a.len()),
        Some(agent.len())
    );
}
