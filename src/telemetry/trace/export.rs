//! The exporter: its own OS thread, fed through a bounded queue the request
//! path never waits on (a full queue drops the span, counted). It batches spans
//! by count or interval and sends each batch to the collector over OTLP/gRPC or
//! OTLP/HTTP protobuf, within a timeout; a failed batch is dropped and counted.
//! A dead or slow collector therefore costs requests nothing but lost spans.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as proto, ResourceSpans, ScopeSpans};
use prometheus::IntCounter;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use super::span::{Attributes, Kind, SpanRecord, Value};
use crate::config::{OtlpProtocol, Tracing};

/// What the request path hands the exporter thread.
enum Message {
    Span(SpanRecord),
    /// Export what is batched now, then answer.
    Flush(SyncSender<()>),
}

/// The counters the exporter keeps.
#[derive(Clone)]
pub struct Counters {
    pub exported: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub dropped_export_failed: IntCounter,
}

/// The request path's side of the exporter. Dropping every handle ends the
/// thread once it has sent what it holds (within the export timeout).
pub struct Exporter {
    queue: SyncSender<Message>,
    dropped_queue_full: IntCounter,
    dropped_export_failed: IntCounter,
}

impl Exporter {
    pub fn start(settings: &Tracing, counters: Counters) -> std::io::Result<Exporter> {
        let (queue, received) = mpsc::sync_channel(settings.queue_spans);
        let dropped_queue_full = counters.dropped_queue_full.clone();
        let dropped_export_failed = counters.dropped_export_failed.clone();
        let sender = Sender::new(settings, counters)?;
        let batcher = Batcher::new(
            settings.batch_spans,
            settings.export_interval,
            Instant::now(),
        );
        std::thread::Builder::new()
            .name("trident-trace".into())
            .spawn(move || run(received, batcher, sender))?;
        Ok(Exporter {
            queue,
            dropped_queue_full,
            dropped_export_failed,
        })
    }

    /// Queues a finished span; never blocks.
    pub fn submit(&self, span: SpanRecord) {
        match self.queue.try_send(Message::Span(span)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped_queue_full.inc(),
            // The exporter thread is gone (it cannot be, short of a bug): nothing exports.
            Err(TrySendError::Disconnected(_)) => self.dropped_export_failed.inc(),
        }
    }

    /// Sends every span queued so far; waits at most `within`. Whether it finished.
    pub fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (done, finished) = mpsc::sync_channel(1);
        let mut message = Message::Flush(done);
        // The queue may be full of spans: wait for room, within the bound.
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// How long the exporter thread sleeps once the queue is empty. It polls rather
/// than waits on the queue, so that queuing a span never wakes it: a wake-up is a
/// system call on the request's thread and a context switch on the exporter's, per
/// span (as for the access log's writer, `access_log::WRITER_POLL`). Spans wait at
/// most this long beyond their batch's interval; the queue holds far more than a
/// busy proxy finishes meanwhile.
const POLL: Duration = Duration::from_millis(10);

/// Takes every span queued, sending batches as they fill and when their interval
/// is over, then sleeps [`POLL`]; ends once every handle is gone and what was
/// left is sent.
fn run(received: Receiver<Message>, mut batcher: Batcher, mut sender: Sender) {
    loop {
        let open = loop {
            match received.try_recv() {
                Ok(Message::Span(span)) => {
                    if let Some(batch) = batcher.push(span, Instant::now()) {
                        sender.send(batch);
                    }
                }
                Ok(Message::Flush(done)) => {
                    sender.send(batcher.take(Instant::now()));
                    let _ = done.try_send(());
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        if !open {
            sender.send(batcher.take(Instant::now()));
            return;
        }
        if let Some(batch) = batcher.due(Instant::now()) {
            sender.send(batch);
        }
        std::thread::sleep(POLL);
    }
}

/// Spans waiting for export: a batch goes when it is full or, once it has
/// spans, when the interval since the last export has passed. Time comes in
/// as arguments, so tests drive it.
struct Batcher {
    spans: Vec<SpanRecord>,
    max: usize,
    interval: Duration,
    next_export: Instant,
}

impl Batcher {
    fn new(max: usize, interval: Duration, now: Instant) -> Batcher {
        Batcher {
            spans: Vec::with_capacity(max),
            max,
            interval,
            next_export: now + interval,
        }
    }

    /// Adds a span; the batch to send when that filled it.
    fn push(&mut self, span: SpanRecord, now: Instant) -> Option<Vec<SpanRecord>> {
        self.spans.push(span);
        (self.spans.len() >= self.max).then(|| self.take(now))
    }

    /// The batch to send when the interval is over and spans wait.
    fn due(&mut self, now: Instant) -> Option<Vec<SpanRecord>> {
        if now < self.next_export {
            return None;
        }
        let batch = self.take(now);
        (!batch.is_empty()).then_some(batch)
    }

    /// Every span waiting, the interval starting again.
    fn take(&mut self, now: Instant) -> Vec<SpanRecord> {
        self.next_export = now + self.interval;
        std::mem::replace(&mut self.spans, Vec::with_capacity(self.max))
    }
}

/// Sends batches to the collector, on the exporter thread's own runtime.
struct Sender {
    runtime: tokio::runtime::Runtime,
    transport: Transport,
    timeout: Duration,
    resource: Resource,
    headers: http::HeaderMap,
    counters: Counters,
    /// Whether the last export failed: failures are logged when they start and end.
    failing: bool,
}

enum Transport {
    Grpc(TraceServiceClient<Channel>),
    /// Boxed: far larger than the gRPC client, and made once.
    Http(Box<Client<HttpConnector, Full<Bytes>>>, http::Uri),
}

/// The OTLP/HTTP path of traces under a base URL.
const HTTP_TRACES_PATH: &str = "/v1/traces";

impl Sender {
    fn new(settings: &Tracing, counters: Counters) -> std::io::Result<Sender> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let transport = match settings.protocol {
            OtlpProtocol::Grpc => {
                // The channel's worker task is spawned on this runtime, and runs while exports do.
                let _context = runtime.enter();
                let channel = Endpoint::from(settings.endpoint.clone())
                    .connect_timeout(settings.export_timeout)
                    .connect_lazy();
                Transport::Grpc(TraceServiceClient::new(channel))
            }
            OtlpProtocol::HttpProtobuf => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(settings.export_timeout));
                let client = Client::builder(TokioExecutor::new()).build(connector);
                Transport::Http(Box::new(client), http_traces_url(&settings.endpoint))
            }
        };
        Ok(Sender {
            runtime,
            transport,
            timeout: settings.export_timeout,
            resource: Resource {
                attributes: vec![key_value(
                    "service.name",
                    Value::from(settings.service_name.clone()),
                )],
                ..Default::default()
            },
            headers: settings.headers.iter().cloned().collect(),
            counters,
            failing: false,
        })
    }

    fn send(&mut self, spans: Vec<SpanRecord>) {
        if spans.is_empty() {
            return;
        }
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "trident".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let export = export(&mut self.transport, &self.headers, request);
        let timeout = self.timeout;
        // The timer is made inside the runtime: it needs its clock.
        let outcome = match self
            .runtime
            .block_on(async move { tokio::time::timeout(timeout, export).await })
        {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match outcome {
            Ok(rejected) => {
                let rejected = rejected.min(count);
                self.counters.exported.inc_by(count - rejected);
                self.counters.dropped_export_failed.inc_by(rejected);
                if std::mem::take(&mut self.failing) {
                    log::warn!("tracing: the collector takes spans again");
                }
            }
            Err(why) => {
                self.counters.dropped_export_failed.inc_by(count);
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!(
                        "tracing: exporting spans failed, they are dropped until it works \
                         again (trident_trace_spans_dropped_total): {why}"
                    );
                }
            }
        }
    }
}

/// One export request; the number of spans the collector said it rejected.
async fn export(
    transport: &mut Transport,
    headers: &http::HeaderMap,
    request: ExportTraceServiceRequest,
) -> Result<u64, String> {
    match transport {
        Transport::Grpc(client) => {
            let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
            let request =
                tonic::Request::from_parts(metadata, tonic::Extensions::default(), request);
            let response = client
                .export(request)
                .await
                .map_err(|s| format!("gRPC status {:?}: {}", s.code(), s.message()))?;
            Ok(response
                .into_inner()
                .partial_success
                .map_or(0, |p| p.rejected_spans.max(0) as u64))
        }
        Transport::Http(client, url) => {
            let mut post = http::Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf");
            for (name, value) in headers {
                post = post.header(name, value);
            }
            let post = post
                .body(Full::new(Bytes::from(request.encode_to_vec())))
                .map_err(|e| e.to_string())?;
            let response = client.request(post).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP status {}", response.status()));
            }
            // Partial success is in the body; a collector that takes the request took the spans.
            Ok(0)
        }
    }
}

/// `endpoint` with `/v1/traces` when it has no path of its own.
fn http_traces_url(endpoint: &http::Uri) -> http::Uri {
    if endpoint.path() != "/" {
        return endpoint.clone();
    }
    let mut parts = endpoint.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(HTTP_TRACES_PATH));
    http::Uri::from_parts(parts).unwrap_or_else(|_| endpoint.clone())
}

fn key_value(key: &str, value: Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.into_owned()),
        Value::Int(i) => any_value::Value::IntValue(i),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn attributes(attributes: Attributes) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(k, v)| key_value(k, v))
        .collect()
}

/// OTLP span flags: the W3C trace flags, and whether the parent is remote.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

fn to_proto(span: SpanRecord) -> proto::Span {
    let remote = if span.remote_parent {
        FLAGS_HAS_IS_REMOTE | FLAGS_IS_REMOTE
    } else {
        FLAGS_HAS_IS_REMOTE
    };
    proto::Span {
        trace_id: span.trace_id.to_be_bytes().to_vec(),
        span_id: span.span_id.to_be_bytes().to_vec(),
        trace_state: span.trace_state.unwrap_or_default(),
        parent_span_id: if span.parent_span_id == 0 {
            Vec::new()
        } else {
            span.parent_span_id.to_be_bytes().to_vec()
        },
        flags: u32::from(span.flags) | remote,
        name: span.name.into_owned(),
        kind: match span.kind {
            Kind::Server => proto::span::SpanKind::Server,
            Kind::Client => proto::span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns,
        attributes: attributes(span.attributes),
        events: span
            .events
            .into_iter()
            .map(|e| proto::span::Event {
                time_unix_nano: e.time_unix_ns,
                name: e.name.to_owned(),
                attributes: attributes(e.attributes),
                dropped_attributes_count: 0,
            })
            .collect(),
        status: Some(match span.error {
            Some(message) => proto::Status {
                message,
                code: proto::status::StatusCode::Error as i32,
            },
            None => proto::Status::default(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn span(id: u64) -> SpanRecord {
        SpanRecord {
            trace_id: 0x0102030405060708090a0b0c0d0e0f10,
            span_id: id,
            parent_span_id: 0,
            remote_parent: false,
            flags: 1,
            trace_state: None,
            name: Cow::Borrowed("GET /v2/health/ready"),
            kind: Kind::Server,
            start_unix_ns: 1,
            end_unix_ns: 2,
            attributes: vec![("http.response.status_code", Value::Int(200))],
            events: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn a_batch_goes_when_full() {
        let start = Instant::now();
        let mut batcher = Batcher::new(2, Duration::from_secs(1), start);
        assert!(batcher.push(span(1), start).is_none());
        let batch = batcher.push(span(2), start).expect("full");
        assert_eq!(batch.len(), 2);
        assert!(
            batcher.due(start + Duration::from_secs(5)).is_none(),
            "nothing waits"
        );
    }

    #[test]
    fn a_partial_batch_goes_after_the_interval() {
        let start = Instant::now();
        let mut batcher = Batcher::new(10, Duration::from_secs(1), start);
        batcher.push(span(1), start);
        assert!(batcher.due(start + Duration::from_millis(999)).is_none());
        let later = start + Duration::from_secs(1);
        assert_eq!(batcher.due(later).map(|b| b.len()), Some(1));
        batcher.push(span(2), later);
        assert!(
            batcher.due(later + Duration::from_millis(999)).is_none(),
            "the interval restarts"
        );
    }

    #[test]
    fn spans_convert_to_otlp() {
        let mut record = span(0xab);
        record.parent_span_id = 7;
        record.remote_parent = true;
        record.error = Some("HTTP 503".into());
        let proto = to_proto(record);
        assert_eq!(proto.trace_id.len(), 16);
        assert_eq!(proto.trace_id[15], 0x10);
        assert_eq!(proto.span_id, 0xabu64.to_be_bytes());
        assert_eq!(proto.parent_span_id, 7u64.to_be_bytes());
        assert_eq!(proto.flags, 0x301);
        assert_eq!(proto.kind, proto::span::SpanKind::Server as i32);
        assert_eq!(
            proto.status.unwrap().code,
            proto::status::StatusCode::Error as i32
        );
        assert_eq!(proto.attributes[0].key, "http.response.status_code");
        assert!(
            to_proto(span(1)).parent_span_id.is_empty(),
            "a root has no parent id"
        );
    }

    #[test]
    fn http_url_gets_the_traces_path_when_it_has_none() {
        let base: http::Uri = "http://127.0.0.1:4318".parse().unwrap();
        assert_eq!(
            http_traces_url(&base).to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        let own: http::Uri = "http://127.0.0.1:4318/custom/traces".parse().unwrap();
        assert_eq!(http_traces_url(&own), own);
    }

    fn settings(endpoint: &str, protocol: OtlpProtocol) -> Tracing {
        Tracing {
            endpoint: endpoint.parse().unwrap(),
            protocol,
            sample_ratio: 1.0,
            service_name: "trident".into(),
            queue_spans: 4,
            batch_spans: 2,
            export_interval: Duration::from_millis(50),
            export_timeout: Duration::from_millis(500),
            headers: Vec::new(),
        }
    }

    fn counters() -> Counters {
        Counters {
            exported: IntCounter::new("e", "e").unwrap(),
            dropped_queue_full: IntCounter::new("q", "q").unwrap(),
            dropped_export_failed: IntCounter::new("f", "f").unwrap(),
        }
    }

    #[test]
    fn a_dead_collector_drops_and_counts_without_blocking() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let counters = counters();
            let exporter = Exporter::start(
                &settings(&format!("http://127.0.0.1:{port}"), protocol),
                counters.clone(),
            )
            .unwrap();
            let started = Instant::now();
            for i in 0..100 {
                exporter.submit(span(i + 1));
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "submitting never waits"
            );
            assert!(exporter.flush(Duration::from_secs(5)));
            let lost = counters.dropped_queue_full.get() + counters.dropped_export_failed.get();
            assert_eq!(lost, 100, "{protocol:?}: every span is dropped and counted");
            assert_eq!(counters.exported.get(), 0);
        }
    }
}
