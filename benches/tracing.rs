//! What tracing adds to one request: parse the client's `traceparent`, decide
//! sampling, begin the server span, a client span for one try with its
//! attributes, the `traceparent` sent upstream, end both and queue them for
//! the exporter thread: encoded into the thread's slot, handed over every 64
//! spans (the exporter is running, exporting to a closed port: it fails fast
//! and keeps the queue drained, like a live collector would).
//!
//! `cargo bench --bench tracing`. Targets (issue 17): ≤ 1 µs a request not
//! sampled, ≤ 5 µs sampled. The attributes set are those `src/proxy/tracing.rs` sets.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};
use trident::config::{OtlpProtocol, Tracing};
use trident::telemetry::metrics::Metrics;
use trident::telemetry::trace::{names, RequestTrace, Tracer};

fn tracer() -> Tracer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let settings = Tracing {
        endpoint: format!("http://127.0.0.1:{port}").parse().unwrap(),
        protocol: OtlpProtocol::HttpProtobuf,
        sample_ratio: 0.0,
        service_name: "trident".into(),
        queue_spans: 1 << 16,
        batch_spans: 512,
        batch_bytes: 1 << 20,
        attribute_value_bytes: 256,
        export_interval: Duration::from_millis(100),
        export_timeout: Duration::from_millis(100),
        headers: Vec::new(),
    };
    Tracer::start(&settings, &Metrics::new()).expect("exporter starts")
}

fn headers(flags: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
    headers.insert("traceparent", HeaderValue::from_str(&parent).unwrap());
    headers.insert("user-agent", HeaderValue::from_static("bench/1"));
    headers
}

/// What the config owns: pool, route and endpoint names.
struct Names {
    pool: &'static str,
    route: &'static str,
    endpoint: &'static str,
}

/// A request's own strings, made whether tracing is on or not: its model name
/// and request id, dropped with the request.
struct Owned {
    model: String,
    request_id: String,
}

fn owned() -> Owned {
    Owned {
        model: "resnet50".to_owned(),
        request_id: "0123456789abcdef".to_owned(),
    }
}

/// One request's tracing work, as the proxy does it. Its times are the
/// proxy's clock readings, taken for its metrics whether tracing is on or not
/// (one here stands for them all).
fn request(tracer: &Tracer, names: &Names, headers: &HeaderMap, owned: Owned) -> HeaderValue {
    let now = Instant::now();
    let mut trace: RequestTrace = tracer.begin(headers, now, |name| {
        names::http_span_name(name, "POST", "/v2/models/resnet50/infer")
    });
    trace.start_try(now);
    if let Some(span) = trace.try_span() {
        span.set("server.address", IpAddr::from([10, 0, 0, 5]));
        span.set("server.port", 8000i64);
        span.set("trident.endpoint", names.endpoint);
        span.set("trident.pool", names.pool);
        span.set("trident.try", 1i64);
    }
    let upstream = trace.traceparent();
    if let Some(span) = trace.try_span() {
        span.set("http.response.status_code", 200i64);
        span.set("trident.try.outcome", "Success");
    }
    trace.end_try(None, now);
    if let Some(span) = trace.server_span() {
        span.set("server.address", "trident");
        span.set("client.address", IpAddr::from([10, 0, 0, 9]));
        span.set("network.protocol.version", "1.1");
        span.set("user_agent.original", "bench/1");
        span.set("http.request.method", "POST");
        span.set("url.path", "/v2/models/resnet50/infer");
        span.set("http.response.status_code", 200i64);
        span.set("trident.model", owned.model.as_str());
        span.set("trident.route", names.route);
        span.set("trident.pool", names.pool);
        span.set("trident.mirror", false);
        span.set("trident.request_id", owned.request_id.as_str());
        span.set("trident.tries", 1i64);
    }
    trace.end(tracer, None, now);
    upstream
}

fn tracing(c: &mut Criterion) {
    let tracer = tracer();
    let names = Names {
        pool: "resnet",
        route: "resnet50",
        endpoint: "10.0.0.5:8000",
    };
    let mut group = c.benchmark_group("tracing");
    let unsampled = headers("00");
    group.bench_function("request_unsampled", |b| {
        b.iter_batched(
            owned,
            |owned| black_box(request(&tracer, &names, black_box(&unsampled), owned)),
            BatchSize::SmallInput,
        )
    });
    let sampled = headers("01");
    group.bench_function("request_sampled", |b| {
        b.iter_batched(
            owned,
            |owned| black_box(request(&tracer, &names, black_box(&sampled), owned)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, tracing);
criterion_main!(benches);
