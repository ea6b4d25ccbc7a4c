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
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prometheus::IntCounter;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, EncodeBuf};
use tonic::transport::{Channel, Endpoint};

use super::encode::Encoder;
use super::span::RequestSpans;
use crate::config::{OtlpProtocol, Tracing};

/// What the request path hands the exporter thread.
enum Message {
    /// A finished request's spans.
    Request(Box<RequestSpans>),
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
        let (queue, received) = mpsc::sync_channel(queue_requests(settings.queue_spans));
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

    /// Queues a finished request's spans; never blocks.
    pub fn submit(&self, spans: Box<RequestSpans>) {
        let count = spans.span_count() as u64;
        match self.queue.try_send(Message::Request(spans)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped_queue_full.inc_by(count),
            // The exporter thread is gone (it cannot be, short of a bug): nothing exports.
            Err(TrySendError::Disconnected(_)) => self.dropped_export_failed.inc_by(count),
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

/// The requests the queue holds for `queue_spans` spans: a request that reached an
/// upstream has two (its server span and one try), and is queued as one message.
fn queue_requests(queue_spans: usize) -> usize {
    (queue_spans / 2).max(1)
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
                Ok(Message::Request(spans)) => {
                    if let Some(batch) = batcher.push(spans, Instant::now()) {
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

/// Spans waiting for export: a batch goes when it holds `max` spans or, once it
/// has some, when the interval since the last export has passed. Time comes in
/// as arguments, so tests drive it.
struct Batcher {
    requests: Vec<RequestSpans>,
    /// The spans in `requests`.
    spans: usize,
    max: usize,
    interval: Duration,
    next_export: Instant,
}

impl Batcher {
    fn new(max: usize, interval: Duration, now: Instant) -> Batcher {
        Batcher {
            requests: Vec::new(),
            spans: 0,
            max,
            interval,
            next_export: now + interval,
        }
    }

    /// Adds a request's spans; the batch to send when that filled it.
    fn push(&mut self, spans: Box<RequestSpans>, now: Instant) -> Option<Batch> {
        self.spans += spans.span_count();
        self.requests.push(*spans);
        (self.spans >= self.max).then(|| self.take(now))
    }

    /// The batch to send when the interval is over and spans wait.
    fn due(&mut self, now: Instant) -> Option<Batch> {
        if now < self.next_export {
            return None;
        }
        let batch = self.take(now);
        (batch.spans > 0).then_some(batch)
    }

    /// Every span waiting, the interval starting again.
    fn take(&mut self, now: Instant) -> Batch {
        self.next_export = now + self.interval;
        Batch {
            spans: std::mem::take(&mut self.spans),
            requests: std::mem::take(&mut self.requests),
        }
    }
}

/// The spans of one export.
struct Batch {
    requests: Vec<RequestSpans>,
    spans: usize,
}

/// Sends batches to the collector, on the exporter thread's own runtime.
struct Sender {
    runtime: tokio::runtime::Runtime,
    transport: Transport,
    timeout: Duration,
    encoder: Encoder,
    headers: http::HeaderMap,
    counters: Counters,
    /// Whether the last export failed: failures are logged when they start and end.
    failing: bool,
}

enum Transport {
    Grpc(tonic::client::Grpc<Channel>),
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
                Transport::Grpc(tonic::client::Grpc::new(channel))
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
            encoder: Encoder::new(&settings.service_name),
            headers: settings.headers.iter().cloned().collect(),
            counters,
            failing: false,
        })
    }

    fn send(&mut self, batch: Batch) {
        if batch.spans == 0 {
            return;
        }
        let count = batch.spans as u64;
        let request = Bytes::from(self.encoder.export_request(&batch.requests));
        // The spans' memory goes back here, on the thread that frees all of it.
        drop(batch);
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
    request: Bytes,
) -> Result<u64, String> {
    let status = |s: tonic::Status| format!("gRPC status {:?}: {}", s.code(), s.message());
    match transport {
        Transport::Grpc(client) => {
            let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
            let request =
                tonic::Request::from_parts(metadata, tonic::Extensions::default(), request);
            client
                .ready()
                .await
                .map_err(|e| status(tonic::Status::from_error(e.into())))?;
            let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH);
            let response: tonic::Response<ExportTraceServiceResponse> = client
                .unary(request, path, EncodedCodec)
                .await
                .map_err(status)?;
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
            let post = post.body(Full::new(request)).map_err(|e| e.to_string())?;
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

/// The OTLP/gRPC method that takes spans.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The gRPC codec of an export: the request is protobuf already (see
/// [`super::encode`]), the answer is decoded as usual.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> EncodedCodec {
        EncodedCodec
    }

    fn decoder(&mut self) -> EncodedCodec {
        EncodedCodec
    }
}

impl tonic::codec::Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for EncodedCodec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::span::SpanRecord;
    use std::borrow::Cow;

    /// A request's spans: a server span and `tries` client spans.
    fn request(id: u64, tries: usize) -> Box<RequestSpans> {
        Box::new(RequestSpans {
            trace_id: 0x0102030405060708090a0b0c0d0e0f10,
            flags: 1,
            remote_parent: false,
            trace_state: None,
            name: Cow::Borrowed("GET /v2/health/ready"),
            server: SpanRecord::new(id, 0, 1, 0),
            tries: (0..tries)
                .map(|t| SpanRecord::new(id + 1 + t as u64, id, 1, 0))
                .collect(),
        })
    }

    #[test]
    fn a_batch_goes_when_full() {
        let start = Instant::now();
        let mut batcher = Batcher::new(2, Duration::from_secs(1), start);
        assert!(batcher.push(request(1, 0), start).is_none());
        let batch = batcher.push(request(2, 0), start).expect("full");
        assert_eq!((batch.requests.len(), batch.spans), (2, 2));
        let batch = batcher
            .push(request(3, 1), start)
            .expect("its try fills it");
        assert_eq!((batch.requests.len(), batch.spans), (1, 2));
        assert!(
            batcher.due(start + Duration::from_secs(5)).is_none(),
            "nothing waits"
        );
    }

    #[test]
    fn a_partial_batch_goes_after_the_interval() {
        let start = Instant::now();
        let mut batcher = Batcher::new(10, Duration::from_secs(1), start);
        batcher.push(request(1, 1), start);
        assert!(batcher.due(start + Duration::from_millis(999)).is_none());
        let later = start + Duration::from_secs(1);
        assert_eq!(batcher.due(later).map(|b| b.spans), Some(2));
        batcher.push(request(3, 0), later);
        assert!(
            batcher.due(later + Duration::from_millis(999)).is_none(),
            "the interval restarts"
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
                exporter.submit(request(i + 1, 0));
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
