//! The exporter: its own OS thread, fed by the request threads without waiting.
//! A request thread encodes each finished request's spans into its own slot
//! ([`Slots`]) and hands the slot's spans to the exporter thread through a
//! bounded queue every [`HANDOFF_SPANS`] or [`HANDOFF_BYTES`] (a full queue
//! drops them, counted);
//! the exporter thread also collects what the slots hold once an export
//! interval, so spans of a quiet thread wait no longer than that. It sleeps
//! between exports, woken only when the queue is half full ([`Doorbell`]). It batches
//! spans by count or interval and sends each batch to the collector over
//! OTLP/gRPC or OTLP/HTTP protobuf, within a timeout; a failed batch is dropped
//! and counted. A dead or slow collector therefore costs requests nothing but
//! lost spans.
//!
//! Encoding on the request's thread means a span's memory is freed by the
//! thread that allocated it (hot in its cache, no cross-thread free in the
//! allocator), and the queue carries one message per [`HANDOFF_SPANS`], not per
//! request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
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

use super::encode::{self, Envelope};
use super::span::RequestSpans;
use crate::config::{OtlpProtocol, Tracing};

/// What the request threads hand the exporter thread.
enum Message {
    /// Spans a thread gathered.
    Spans(Chunk),
    /// Export everything gathered now, then answer.
    Flush(SyncSender<()>),
}

/// Encoded spans (`ScopeSpans.spans` fields, see [`encode::write_request`]),
/// from slot `slot`, where the buffer goes back once they are sent.
struct Chunk {
    bytes: Vec<u8>,
    spans: usize,
    slot: usize,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A thread's spans on their way to the exporter: what it is gathering, and a
/// buffer the exporter thread gave back, for the next chunk. Buffers circulate
/// between a thread and the exporter: in a steady state no chunk is allocated,
/// none grows, and each is freed (at the end) by the thread that allocated it.
#[derive(Default)]
struct Slot {
    bytes: Vec<u8>,
    spans: usize,
    spare: Option<Vec<u8>>,
}

impl Slot {
    /// What slot `index` holds, leaving it empty with the spare buffer (or room
    /// for as much again).
    fn take(&mut self, index: usize) -> Chunk {
        let room = self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(self.bytes.len().min(HANDOFF_BYTES)));
        Chunk {
            bytes: std::mem::replace(&mut self.bytes, room),
            spans: std::mem::take(&mut self.spans),
            slot: index,
        }
    }
}

/// Where request threads write spans: a slot per thread (threads beyond
/// [`SLOTS`] share one). A slot's lock is taken by its thread once a request and
/// by the exporter thread once a chunk and an export interval: in practice never
/// waited on, and no lock is shared by every thread.
type Slots = Arc<[PaddedSlot]>;

/// A slot alone on its cache lines (128 bytes: x86 fetches lines in pairs):
/// threads writing their own slots, side by side, never contend for a line.
#[derive(Default)]
#[repr(align(128))]
struct PaddedSlot(Mutex<Slot>);

const SLOTS: usize = 32;

/// Spans a thread gathers before it hands them to the exporter thread.
const HANDOFF_SPANS: usize = 64;

/// Bytes a thread gathers before it hands them over whatever the count: long
/// attributes (a path, a user agent) make large spans. A buffer that grew past
/// twice this is freed once sent, not kept: what the slots keep stays bounded.
const HANDOFF_BYTES: usize = 64 * 1024;

/// This thread's slot.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|slot| *slot)
}

/// A slot, locked. Encoding cannot panic halfway, so a poisoned slot is whole.
fn lock(slot: &PaddedSlot) -> MutexGuard<'_, Slot> {
    slot.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The counters the exporter keeps.
#[derive(Clone)]
pub struct Counters {
    pub exported: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub dropped_export_failed: IntCounter,
}

/// The request path's side of the exporter. Dropping it ends the thread once
/// it has sent what it holds (within the export timeout).
pub struct Exporter {
    slots: Slots,
    queue: SyncSender<Message>,
    doorbell: Doorbell,
    /// Spans a slot gathers before they go to the queue.
    handoff: usize,
    /// Bytes a slot gathers before they go to the queue, whatever their count.
    handoff_bytes: usize,
    dropped_queue_full: IntCounter,
    dropped_export_failed: IntCounter,
}

impl Exporter {
    pub fn start(settings: &Tracing, counters: Counters) -> std::io::Result<Exporter> {
        let handoff = HANDOFF_SPANS.min(settings.batch_spans).max(1);
        // A chunk is at most a quarter of a batch (and one request's spans): it
        // never takes a batch far past its bytes.
        let handoff_bytes = HANDOFF_BYTES.min(settings.batch_bytes / 4);
        let capacity = (settings.queue_spans / handoff).max(1);
        let (queue, received) = mpsc::sync_channel(capacity);
        let handed_over = Arc::new(HandedOver::default());
        let slots: Slots = (0..SLOTS).map(|_| PaddedSlot::default()).collect();
        let dropped_queue_full = counters.dropped_queue_full.clone();
        let dropped_export_failed = counters.dropped_export_failed.clone();
        let envelope = Envelope::new(&settings.service_name);
        let batcher = Batcher::new(
            settings.batch_spans,
            envelope.room_for_spans(settings.batch_bytes),
            settings.export_interval,
            Instant::now(),
        );
        let sender = Sender::new(settings, envelope, counters, slots.clone())?;
        let thread = {
            let handed_over = handed_over.clone();
            std::thread::Builder::new()
                .name("trident-trace".into())
                .spawn(move || run(received, &handed_over, batcher, sender))?
                .thread()
                .clone()
        };
        Ok(Exporter {
            slots,
            queue,
            doorbell: Doorbell {
                handed_over,
                thread,
                ring_at: capacity.div_ceil(2),
            },
            handoff,
            handoff_bytes,
            dropped_queue_full,
            dropped_export_failed,
        })
    }

    /// Encodes a finished request's spans into this thread's slot, handing the
    /// slot's spans over when there are enough; never blocks.
    pub fn submit(&self, spans: &RequestSpans) {
        let index = thread_slot();
        let full = {
            let mut slot = lock(&self.slots[index]);
            encode::write_request(&mut slot.bytes, spans);
            slot.spans += spans.span_count();
            let full = slot.spans >= self.handoff || slot.bytes.len() >= self.handoff_bytes;
            full.then(|| slot.take(index))
        };
        let Some(chunk) = full else {
            return;
        };
        let count = chunk.spans as u64;
        // Counted before it is sent, so that the count is never below what the
        // queue holds; the bell rings once it is in, or the thread would not find it.
        let rings = self.doorbell.count_chunk();
        let lost = match self.queue.try_send(Message::Spans(chunk)) {
            Ok(()) if rings => return self.doorbell.ring(),
            Ok(()) => return,
            Err(TrySendError::Full(_)) => &self.dropped_queue_full,
            // The exporter thread is gone (it cannot be, short of a bug): nothing exports.
            Err(TrySendError::Disconnected(_)) => &self.dropped_export_failed,
        };
        self.doorbell.uncount_chunk();
        lost.inc_by(count);
    }

    /// Sends every span recorded so far; waits at most `within`. Whether it finished.
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
                    // Emptying a full queue is the exporter thread's work.
                    self.doorbell.ring();
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        self.doorbell.ring();
        finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

impl Drop for Exporter {
    /// The thread sends what it holds and ends.
    fn drop(&mut self) {
        self.doorbell.close();
    }
}

/// What the request threads and the exporter thread share besides the queue.
#[derive(Default)]
struct HandedOver {
    /// Chunks in the queue, or about to be: never fewer than it holds.
    chunks: AtomicUsize,
    /// Set when the [`Exporter`] is dropped.
    closed: AtomicBool,
}

impl HandedOver {
    fn chunk_taken(&self) {
        self.chunks.fetch_sub(1, Ordering::Relaxed);
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Wakes the exporter thread when its work cannot wait for the next export:
/// the queue half full, a flush, the exporter dropped. Otherwise the thread
/// sleeps until its next export is due, so an idle or lightly loaded proxy wakes
/// it about once an export interval. Waiting on the queue instead would wake it
/// for every chunk; polling it every 10 ms, as it did, woke it ≈ 100 times a
/// second whatever the load: 0.6–0.9 µs of the thread's CPU a request at 4000
/// requests a second, all sampled (`benches/results/tracing.md`). Handing a
/// chunk over costs one atomic add; the wake-up's system call falls on one
/// handoff in `capacity / 2`.
struct Doorbell {
    handed_over: Arc<HandedOver>,
    thread: Thread,
    /// The queued chunks that wake the thread: half the queue, so that the
    /// other half takes what comes while it wakes.
    ring_at: usize,
}

impl Doorbell {
    /// Counts a chunk about to be queued; whether it is the one to ring for.
    fn count_chunk(&self) -> bool {
        self.handed_over.chunks.fetch_add(1, Ordering::Relaxed) + 1 == self.ring_at
    }

    /// Takes back the count of a chunk that did not go into the queue.
    fn uncount_chunk(&self) {
        self.handed_over.chunk_taken();
    }

    fn ring(&self) {
        self.thread.unpark();
    }

    fn close(&self) {
        self.handed_over.closed.store(true, Ordering::Release);
        self.ring();
    }
}

/// Takes every chunk queued, sending batches as they fill; when the interval is
/// over, collects the slots too and sends what waits; then sleeps until the
/// next export is due or the [`Doorbell`] rings. Ends once the exporter is
/// dropped and what was left is sent.
fn run(
    received: Receiver<Message>,
    handed_over: &HandedOver,
    mut batcher: Batcher,
    mut sender: Sender,
) {
    loop {
        // Read before the queue is: once closed, everything sent is in it.
        let closed = handed_over.closed();
        let open = loop {
            match received.try_recv() {
                Ok(Message::Spans(chunk)) => {
                    handed_over.chunk_taken();
                    if let Some(batch) = batcher.push(chunk, Instant::now()) {
                        sender.send(batch);
                    }
                }
                Ok(Message::Flush(done)) => {
                    send_all(&mut batcher, &mut sender);
                    let _ = done.try_send(());
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        if closed || !open {
            send_all(&mut batcher, &mut sender);
            return;
        }
        if batcher.due(Instant::now()) {
            send_all(&mut batcher, &mut sender);
        }
        std::thread::park_timeout(batcher.until_due(Instant::now()));
    }
}

/// Sends what the batch and every slot hold.
fn send_all(batcher: &mut Batcher, sender: &mut Sender) {
    for index in 0..sender.slots.len() {
        let chunk = {
            let mut slot = lock(&sender.slots[index]);
            if slot.spans == 0 {
                continue;
            }
            slot.take(index)
        };
        if let Some(batch) = batcher.push(chunk, Instant::now()) {
            sender.send(batch);
        }
    }
    sender.send(batcher.take(Instant::now()));
}

/// Spans waiting for export: a batch goes when it holds `max_spans` spans or
/// `max_bytes` of them (or the next chunk would take it beyond; a chunk larger
/// than that alone goes alone) or, once it has some, when the interval since the
/// last export has passed. Time comes in as arguments, so tests drive it.
struct Batcher {
    chunks: Vec<Chunk>,
    /// The spans in `chunks`, and their bytes.
    spans: usize,
    bytes: usize,
    max_spans: usize,
    max_bytes: usize,
    interval: Duration,
    next_export: Instant,
}

impl Batcher {
    fn new(max_spans: usize, max_bytes: usize, interval: Duration, now: Instant) -> Batcher {
        Batcher {
            chunks: Vec::new(),
            spans: 0,
            bytes: 0,
            max_spans,
            max_bytes,
            interval,
            next_export: now + interval,
        }
    }

    /// Adds a chunk of spans; the batch to send when that filled it.
    fn push(&mut self, chunk: Chunk, now: Instant) -> Option<Batch> {
        let beyond = self.spans + chunk.spans > self.max_spans
            || self.bytes + chunk.bytes.len() > self.max_bytes;
        let before = (self.spans > 0 && beyond).then(|| self.take(now));
        self.spans += chunk.spans;
        self.bytes += chunk.bytes.len();
        self.chunks.push(chunk);
        let full = self.spans >= self.max_spans || self.bytes >= self.max_bytes;
        before.or_else(|| full.then(|| self.take(now)))
    }

    /// Whether the interval is over: what waits goes now.
    fn due(&self, now: Instant) -> bool {
        now >= self.next_export
    }

    /// How long until the interval is over.
    fn until_due(&self, now: Instant) -> Duration {
        self.next_export.saturating_duration_since(now)
    }

    /// Every span waiting, the interval starting again.
    fn take(&mut self, now: Instant) -> Batch {
        self.next_export = now + self.interval;
        self.bytes = 0;
        Batch {
            spans: std::mem::take(&mut self.spans),
            chunks: std::mem::take(&mut self.chunks),
        }
    }
}

/// The spans of one export.
#[derive(Default)]
struct Batch {
    chunks: Vec<Chunk>,
    spans: usize,
}

impl Batch {
    /// Gives each chunk's buffer, emptied, back to its slot (unless it has one,
    /// or the buffer grew too large to keep).
    fn recycle(self, slots: &Slots) {
        for Chunk {
            mut bytes, slot, ..
        } in self.chunks
        {
            if bytes.capacity() > 2 * HANDOFF_BYTES {
                continue;
            }
            bytes.clear();
            lock(&slots[slot]).spare.get_or_insert(bytes);
        }
    }
}

/// Sends batches to the collector, on the exporter thread's own runtime.
struct Sender {
    runtime: tokio::runtime::Runtime,
    transport: Transport,
    timeout: Duration,
    envelope: Arc<Envelope>,
    /// Where sent chunks' buffers go back to.
    slots: Slots,
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
    fn new(
        settings: &Tracing,
        envelope: Envelope,
        counters: Counters,
        slots: Slots,
    ) -> std::io::Result<Sender> {
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
            envelope: Arc::new(envelope),
            slots,
            headers: settings.headers.iter().cloned().collect(),
            counters,
            failing: false,
        })
    }

    /// Sends `batch`; its buffers go back to the slots.
    fn send(&mut self, batch: Batch) {
        if batch.spans == 0 {
            return;
        }
        let count = batch.spans as u64;
        let request = Export {
            envelope: self.envelope.clone(),
            batch,
            slots: self.slots.clone(),
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

/// One export's spans, written out where the transport needs them (into
/// tonic's buffer for gRPC: no request of their own is made first); their
/// buffers go back to the slots when it is dropped.
struct Export {
    envelope: Arc<Envelope>,
    batch: Batch,
    slots: Slots,
}

impl Export {
    fn len(&self) -> usize {
        self.envelope.request_len(&self.batch.chunks)
    }

    fn write(&self, dst: &mut impl bytes::BufMut) {
        self.envelope.export_request(&self.batch.chunks, dst);
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        std::mem::take(&mut self.batch).recycle(&self.slots);
    }
}

/// One export request; the number of spans the collector said it rejected.
async fn export(
    transport: &mut Transport,
    headers: &http::HeaderMap,
    request: Export,
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
            let mut body = Vec::with_capacity(request.len());
            request.write(&mut body);
            drop(request);
            let post = post
                .body(Full::new(Bytes::from(body)))
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

/// The OTLP/gRPC method that takes spans.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The gRPC codec of an export: the request's spans are protobuf already (see
/// [`super::encode`]) and are copied into tonic's buffer; the answer is decoded
/// as usual.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Export;
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
    type Item = Export;
    type Error = tonic::Status;

    fn encode(&mut self, item: Export, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.reserve(item.len());
        item.write(dst);
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

    /// A request's spans: a server span and `tries` client spans.
    fn request(id: u64, tries: usize) -> RequestSpans {
        RequestSpans {
            trace_id: 0x0102030405060708090a0b0c0d0e0f10,
            flags: 1,
            remote_parent: false,
            trace_state: None,
            name: "GET /v2/health/ready".into(),
            server: SpanRecord::new(id, 0, 1, 0, usize::MAX),
            tries: (0..tries)
                .map(|t| SpanRecord::new(id + 1 + t as u64, id, 1, 0, usize::MAX))
                .collect(),
            kept_tries: Vec::new(),
        }
    }

    /// A chunk of `spans` spans (their bytes do not matter here).
    fn chunk(spans: usize) -> Chunk {
        Chunk {
            bytes: vec![0; spans],
            spans,
            slot: 0,
        }
    }

    #[test]
    fn a_batch_goes_when_full() {
        let start = Instant::now();
        let mut batcher = Batcher::new(4, usize::MAX, Duration::from_secs(1), start);
        assert!(batcher.push(chunk(2), start).is_none());
        let batch = batcher.push(chunk(2), start).expect("full");
        assert_eq!((batch.chunks.len(), batch.spans), (2, 4));
        assert!(batcher.push(chunk(3), start).is_none());
        let batch = batcher
            .push(chunk(2), start)
            .expect("the next chunk would take it beyond");
        assert_eq!((batch.chunks.len(), batch.spans), (1, 3));
        assert_eq!(batcher.spans, 2, "the chunk waits for the next batch");
    }

    #[test]
    fn a_batch_goes_before_its_bytes_would_pass_the_bound() {
        let start = Instant::now();
        let mut batcher = Batcher::new(100, 10, Duration::from_secs(1), start);
        assert!(batcher.push(chunk(4), start).is_none());
        let batch = batcher
            .push(chunk(7), start)
            .expect("11 bytes would be too many");
        assert_eq!((batch.chunks.len(), batch.spans), (1, 4));
        let batch = batcher.push(chunk(3), start).expect("10 bytes: full");
        assert_eq!((batch.chunks.len(), batch.spans), (2, 10));
        let batch = batcher.push(chunk(25), start).expect("too large: alone");
        assert_eq!((batch.chunks.len(), batch.spans), (1, 25));
        assert_eq!((batcher.spans, batcher.bytes), (0, 0));
    }

    #[test]
    fn a_partial_batch_is_due_after_the_interval() {
        let start = Instant::now();
        let mut batcher = Batcher::new(10, usize::MAX, Duration::from_secs(1), start);
        batcher.push(chunk(2), start);
        assert!(!batcher.due(start + Duration::from_millis(999)));
        let later = start + Duration::from_secs(1);
        assert!(batcher.due(later));
        assert_eq!(batcher.take(later).spans, 2);
        assert!(
            !batcher.due(later + Duration::from_millis(999)),
            "the interval restarts"
        );
    }

    #[test]
    fn large_spans_are_handed_over_by_size_and_their_buffers_not_kept() {
        let slots: Slots = (0..1).map(|_| PaddedSlot::default()).collect();
        let huge = Chunk {
            bytes: Vec::with_capacity(4 * HANDOFF_BYTES),
            spans: 1,
            slot: 0,
        };
        Batch {
            chunks: vec![huge],
            spans: 1,
        }
        .recycle(&slots);
        assert!(lock(&slots[0]).spare.is_none(), "too large to keep");
        let mut slot = lock(&slots[0]);
        slot.bytes = vec![0; 3 * HANDOFF_BYTES];
        slot.spans = 1;
        let taken = slot.take(0);
        assert_eq!(taken.bytes.len(), 3 * HANDOFF_BYTES);
        assert!(
            slot.bytes.capacity() <= HANDOFF_BYTES,
            "room made is bounded"
        );
    }

    #[test]
    fn buffers_go_round_between_a_slot_and_the_exporter() {
        let slots: Slots = (0..2).map(|_| PaddedSlot::default()).collect();
        let chunk = {
            let mut slot = lock(&slots[1]);
            slot.bytes.extend_from_slice(b"spans");
            slot.spans = 3;
            slot.take(1)
        };
        assert_eq!(
            (chunk.bytes.as_slice(), chunk.spans, chunk.slot),
            (&b"spans"[..], 3, 1)
        );
        let sent = chunk.bytes.as_ptr();
        {
            let slot = lock(&slots[1]);
            assert_eq!(slot.spans, 0);
            assert!(
                slot.bytes.is_empty() && slot.bytes.capacity() >= 5,
                "room kept"
            );
        }
        Batch {
            chunks: vec![chunk],
            spans: 3,
        }
        .recycle(&slots);
        let mut slot = lock(&slots[1]);
        slot.bytes.push(1);
        slot.spans = 1;
        let next = slot.take(1);
        assert_eq!(next.bytes, [1]);
        assert!(slot.bytes.is_empty());
        assert_eq!(
            slot.bytes.as_ptr(),
            sent,
            "the sent chunk's buffer is the next"
        );
        assert!(lock(&slots[0]).spare.is_none());
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
            batch_bytes: 1 << 20,
            attribute_value_bytes: 256,
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
        let port = dead_port();
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let counters = counters();
            let exporter = Exporter::start(
                &settings(&format!("http://127.0.0.1:{port}"), protocol),
                counters.clone(),
            )
            .unwrap();
            let started = Instant::now();
            for i in 0..100 {
                exporter.submit(&request(i + 1, 0));
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

    /// A port nothing listens on: bound, then released.
    fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Waits up to 5 s for `counter` to reach `want`; whether it did.
    fn reaches(counter: &IntCounter, want: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while counter.get() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        counter.get() == want
    }

    /// Settings whose interval never comes in a test: the exporter thread only
    /// works when woken. Exports fail fast (nothing listens).
    fn sleepy_settings() -> Tracing {
        let mut settings = settings(
            &format!("http://127.0.0.1:{}", dead_port()),
            OtlpProtocol::HttpProtobuf,
        );
        settings.export_interval = Duration::from_secs(600);
        // A chunk is 16 spans; the queue holds 4, half of it wakes the thread.
        (settings.batch_spans, settings.queue_spans) = (16, 64);
        settings
    }

    #[test]
    fn a_half_full_queue_wakes_the_exporter_before_its_interval() {
        let counters = counters();
        let exporter = Exporter::start(&sleepy_settings(), counters.clone()).unwrap();
        // Once the thread has answered a flush and gone to sleep, nothing but the doorbell wakes it.
        assert!(exporter.flush(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..16 {
            exporter.submit(&request(i + 1, 0));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            counters.dropped_export_failed.get(),
            0,
            "a chunk alone waits for the interval"
        );
        for i in 16..32 {
            exporter.submit(&request(i + 1, 0));
        }
        assert!(
            reaches(&counters.dropped_export_failed, 32),
            "two chunks woke the thread: exported (and failed)"
        );
        assert_eq!(counters.dropped_queue_full.get(), 0);
    }

    #[test]
    fn a_dropped_exporter_sends_what_it_holds_at_once() {
        let counters = counters();
        let exporter = Exporter::start(&sleepy_settings(), counters.clone()).unwrap();
        exporter.submit(&request(1, 1));
        drop(exporter);
        assert!(
            reaches(&counters.dropped_export_failed, 2),
            "the slot's spans were sent on drop, not at the interval"
        );
    }

    #[test]
    fn spans_of_every_thread_are_collected_on_flush_and_at_the_interval() {
        let counters = counters();
        let mut settings = settings(
            &format!("http://127.0.0.1:{}", dead_port()),
            OtlpProtocol::HttpProtobuf,
        );
        (settings.batch_spans, settings.queue_spans) = (16, 64);
        let exporter = Arc::new(Exporter::start(&settings, counters.clone()).unwrap());
        // Fewer spans than a handoff, on four threads: they wait in the slots.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let exporter = exporter.clone();
                std::thread::spawn(move || exporter.submit(&request(t * 10 + 1, 1)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // Collected once the interval (50 ms) is over: every span is dropped (no collector) and counted.
        assert!(reaches(&counters.dropped_export_failed, 8));
        exporter.submit(&request(100, 0));
        assert!(exporter.flush(Duration::from_secs(5)));
        assert_eq!(
            counters.dropped_export_failed.get(),
            9,
            "a flush collects the slots"
        );
    }
}
