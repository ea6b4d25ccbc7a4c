//! Mirroring a route's infer requests to a mirror pool, and comparing answers.
//!
//! The primary request is never delayed: its body chunks are handed to the
//! copy as they are forwarded (shared `Bytes`, no copy) through a feed bounded
//! in bytes, and its answer is kept (shared chunks again) until it is
//! complete. The copy runs as its own task: it waits for a slot of the
//! mirror's [`Gate`], sends the request to an endpoint of the mirror pool (over
//! TLS where its `[pools.tls]` says), reads the answer and compares it with the
//! primary's. A copy that cannot be admitted, falls behind, or outlives its
//! timeout is dropped and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use filters::affinity::SequenceTable;
use filters::circuit_breaker::Limit;
use filters::mirror::compare::{self, Answer};
use filters::mirror::feed::{self, Abandoned, FeedReceiver, FeedSender};
use filters::mirror::gate::{Gate, Ticket};
use filters::split::Roll;
use futures::StreamExt;
use http::{HeaderMap, HeaderName};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use parking_lot::Mutex;
use pingora::http::{RequestHeader, ResponseHeader};
use prometheus::IntCounter;
use tokio::sync::oneshot;

use crate::config;
use crate::protocol::grpc;
use crate::protocol::http_body::INFERENCE_HEADER_CONTENT_LENGTH;
use crate::protocol::infer_response;
use crate::protocol::sequence::SequenceControl;
use crate::protocol::version_rewrite::{http_path_with_version, GrpcVersionRewriter};
use crate::protocol::Protocol;
use crate::telemetry::metrics::{ComparisonMetrics, Metrics, Outcome};
use crate::upstream::client::{Client, H2, HTTP1};
use crate::upstream::{Attempt, Pool, Pools, TryOutcome};

type MirrorBody = StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, Abandoned>>>;
/// A client to the mirror pool's endpoints, or why there is none (its TLS
/// settings cannot be used: copies fail with that reason).
type MirrorClient = Result<Client<MirrorBody>, String>;

/// Distinct (model, version) label sets one mirror reports before folding the rest into `_other`.
const MAX_COMPARISON_LABELS: usize = 256;

/// Request headers that belong to one connection and are not copied.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "expect",
];

/// One route's mirror: its settings, bounds, clients and counters.
pub struct Mirror {
    route: String,
    settings: config::Mirror,
    pools: Pools,
    gate: Arc<Gate>,
    http: MirrorClient,
    grpc: MirrorClient,
    /// The mirror pool's sequence bindings for copies: apart from the pool's own,
    /// which the primary may be using for the same sequences.
    sequences: SequenceTable,
    results: Results,
    metrics: Arc<Metrics>,
    /// Body bytes all copies of all mirrors hold, shared process-wide.
    body_budget: Arc<Limit>,
    comparisons: Mutex<HashMap<(String, String), Arc<ComparisonMetrics>>>,
    mismatch_log: Mutex<(Instant, u32)>,
}

/// `trident_mirror_requests_total` by result.
struct Results {
    answered: IntCounter,
    queue_full: IntCounter,
    slow: IntCounter,
    over_budget: IntCounter,
    timeout: IntCounter,
    failed: IntCounter,
    cancelled: IntCounter,
}

/// What the primary answered, kept for the comparison.
struct PrimaryAnswer {
    status: u16,
    headers: HeaderMap,
    grpc_status: Option<u8>,
    body: Vec<Bytes>,
    len: usize,
    too_large: bool,
}

/// Copies a client's request headers onto a request Trident sends itself,
/// minus those of the client's connection.
pub(crate) fn copy_end_to_end_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from.iter() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        // h2 allows `te` only as "trailers", which gRPC servers require.
        if name == http::header::TE && value != "trailers" {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// One request's copy, held in the primary request's context.
pub struct Copy {
    feed: Option<FeedSender>,
    /// Body bytes handed to the copy so far: a retry replays the body from its
    /// first byte, and only what goes past this is new.
    fed: u64,
    /// Where the current try is in the body.
    position: u64,
    primary: Option<(oneshot::Sender<PrimaryAnswer>, PrimaryAnswer)>,
    max_response_bytes: usize,
    slow: IntCounter,
    over_budget: IntCounter,
}

/// Why a copy did not get an answer.
enum Failure {
    Cut,
    Slow,
    Other(String),
}

impl Mirror {
    pub fn new(
        route: &str,
        settings: config::Mirror,
        pools: Pools,
        metrics: Arc<Metrics>,
        body_budget: Arc<Limit>,
    ) -> Self {
        let pool_name = pools[settings.pool].name.clone();
        let result = |r| metrics.mirror_result(route, &pool_name, r);
        let results = Results {
            answered: result("answered"),
            queue_full: result("dropped_queue_full"),
            slow: result("dropped_slow"),
            over_budget: result("dropped_budget"),
            timeout: result("timeout"),
            failed: result("error"),
            cancelled: result("cancelled"),
        };
        let pool_settings = &pools[settings.pool].settings;
        let sequences = SequenceTable::new(
            pool_settings.sequences.idle_timeout,
            pool_settings.sequences.max_sequences,
        );
        let mut builder =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
        let pool = &pools[settings.pool];
        let http = Client::for_pool(&builder, pool, |tls| tls.on_http, HTTP1);
        let grpc = Client::for_pool(builder.http2_only(true), pool, |tls| tls.on_grpc, H2);
        if let Err(why) = http.as_ref().and(grpc.as_ref()) {
            log::error!("mirror of route '{route}' to pool '{pool_name}': copies fail: {why}");
        }
        Mirror {
            route: route.to_owned(),
            gate: Gate::new(settings.max_concurrent, settings.queue),
            http,
            grpc,
            sequences,
            results,
            comparisons: Mutex::new(HashMap::new()),
            mismatch_log: Mutex::new((Instant::now(), 0)),
            pools,
            metrics,
            body_budget,
            settings,
        }
    }

    /// Whether this request is copied.
    pub fn selects(
        &self,
        header: &RequestHeader,
        claims: Option<&filters::jwt::Claims>,
        roll: Roll,
    ) -> bool {
        self.settings.select.selects(&header.headers, claims, roll)
    }

    /// Starts a copy of the request whose header is `header`: `None` when the
    /// gate turns it away (counted).
    pub fn start(
        self: &Arc<Self>,
        protocol: Protocol,
        header: &RequestHeader,
        request_id: &str,
        model: Option<&str>,
        sequence: Option<&SequenceControl>,
    ) -> Option<Copy> {
        let Some(ticket) = self.gate.admit() else {
            self.results.queue_full.inc();
            return None;
        };
        let (feed, body) = feed::channel(self.settings.buffer_bytes, self.body_budget.clone());
        let (primary_tx, primary_rx) = oneshot::channel();
        let comparing = self.settings.compare.is_some();
        let request = self.request(protocol, header, request_id);
        let job = Job {
            mirror: self.clone(),
            protocol,
            model: model.map(str::to_owned),
            sequence: sequence.cloned(),
            request_id: request_id.to_owned(),
            stream: header.uri.path().ends_with("/ModelStreamInfer"),
        };
        tokio::spawn(job.run(ticket, request, body, comparing.then_some(primary_rx)));
        Some(Copy {
            feed: Some(feed),
            fed: 0,
            position: 0,
            primary: comparing.then(|| {
                (
                    primary_tx,
                    PrimaryAnswer {
                        status: 0,
                        headers: HeaderMap::new(),
                        grpc_status: None,
                        body: Vec::new(),
                        len: 0,
                        too_large: false,
                    },
                )
            }),
            max_response_bytes: self.settings.max_response_bytes,
            slow: self.results.slow.clone(),
            over_budget: self.results.over_budget.clone(),
        })
    }

    /// The copy's request head: the client's, minus per-connection headers,
    /// with the mirror's model version when it has one.
    fn request(
        &self,
        protocol: Protocol,
        header: &RequestHeader,
        request_id: &str,
    ) -> http::request::Parts {
        let path = header.uri.path_and_query().map_or("/", |p| p.as_str());
        let path = match (&self.settings.version, protocol) {
            (Some(version), Protocol::Http) => {
                http_path_with_version(path, version).unwrap_or_else(|| path.to_owned())
            }
            _ => path.to_owned(),
        };
        let mut request = http::Request::new(());
        *request.method_mut() = header.method.clone();
        // The authority is replaced by the endpoint's address once it is chosen.
        *request.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let headers = request.headers_mut();
        copy_end_to_end_headers(&header.headers, headers);
        if protocol == Protocol::Grpc && self.settings.version.is_some() {
            // The rewritten message may differ in length.
            headers.remove(http::header::CONTENT_LENGTH);
        }
        if let Some(id) = crate::telemetry::request_id::upstream_value(request_id) {
            headers.insert(crate::telemetry::request_id::HEADER, id);
        }
        request.into_parts().0
    }

    fn comparison_metrics(&self, model: &str, version: &str) -> Arc<ComparisonMetrics> {
        let mut known = self.comparisons.lock();
        let key = (model.to_owned(), version.to_owned());
        if let Some(metrics) = known.get(&key) {
            return metrics.clone();
        }
        let key = if known.len() < MAX_COMPARISON_LABELS {
            key
        } else {
            ("_other".to_owned(), "_other".to_owned())
        };
        known
            .entry(key)
            .or_insert_with_key(|(model, version)| {
                Arc::new(self.metrics.mirror_comparison(&self.route, model, version))
            })
            .clone()
    }

    /// Whether one more mismatch may be logged this minute.
    fn may_log_mismatch(&self) -> bool {
        let mut log = self.mismatch_log.lock();
        if log.0.elapsed() >= Duration::from_secs(60) {
            *log = (Instant::now(), 0);
        }
        log.1 += 1;
        log.1 <= self.settings.log_mismatches_per_minute
    }
}

impl Copy {
    /// A new try of the primary starts: its body is replayed from the first byte.
    pub fn new_try(&mut self) {
        self.position = 0;
    }

    /// A chunk of the primary's request body is being forwarded.
    pub fn request_body(&mut self, chunk: Option<&Bytes>, end_of_body: bool) {
        let Some(feed) = self.feed.as_mut() else {
            return;
        };
        if let Some(chunk) = chunk {
            let start = self.position;
            self.position += chunk.len() as u64;
            if self.position > self.fed {
                let new = chunk.slice((self.fed - start) as usize..);
                self.fed = self.position;
                if let Err(why) = feed.send(new) {
                    match why {
                        Abandoned::Overflow => self.slow.inc(),
                        Abandoned::OverBudget => self.over_budget.inc(),
                        Abandoned::Cut | Abandoned::MirrorGone => {}
                    }
                    self.feed = None;
                    return;
                }
            }
        }
        if end_of_body {
            if let Some(feed) = self.feed.take() {
                feed.finish();
            }
        }
    }

    /// The primary's response header, as sent to the client.
    pub fn response_header(&mut self, header: &ResponseHeader) {
        if let Some((_, answer)) = self.primary.as_mut() {
            answer.status = header.status.as_u16();
            for name in [
                http::header::CONTENT_ENCODING.as_str(),
                INFERENCE_HEADER_CONTENT_LENGTH,
                "grpc-encoding",
            ] {
                if let Some(value) = header.headers.get(name) {
                    answer
                        .headers
                        .insert(HeaderName::from_static(name), value.clone());
                }
            }
        }
    }

    /// A chunk of the primary's response body.
    pub fn response_body(&mut self, chunk: Option<&Bytes>) {
        if let (Some((_, answer)), Some(chunk)) = (self.primary.as_mut(), chunk) {
            if answer.too_large {
                return;
            }
            answer.len += chunk.len();
            if answer.len > self.max_response_bytes {
                answer.too_large = true;
                answer.body = Vec::new();
            } else {
                answer.body.push(chunk.clone());
            }
        }
    }

    /// The primary is over, with `grpc_status` from its headers or trailers: a
    /// complete answer goes to the comparison; an incomplete one leaves it
    /// nothing to compare.
    pub fn finish(mut self, answered: bool, grpc_status: Option<u8>) {
        if let Some((tx, mut answer)) = self.primary.take() {
            if answered && answer.status != 0 {
                answer.grpc_status = grpc_status;
                let _ = tx.send(answer);
            }
        }
    }
}

/// A copy's own task.
struct Job {
    mirror: Arc<Mirror>,
    protocol: Protocol,
    model: Option<String>,
    sequence: Option<SequenceControl>,
    request_id: String,
    /// A `ModelStreamInfer` call: answers are a stream of messages.
    stream: bool,
}

/// The mirror's answer, as read.
struct MirrorAnswer {
    status: u16,
    headers: HeaderMap,
    grpc_status: Option<u8>,
    body: Bytes,
    too_large: bool,
}

impl Job {
    async fn run(
        self,
        ticket: Ticket,
        request: http::request::Parts,
        body: FeedReceiver,
        primary: Option<oneshot::Receiver<PrimaryAnswer>>,
    ) {
        let mirror = &self.mirror;
        let timeout = mirror.settings.timeout;
        let started = tokio::time::Instant::now();
        let exchange = tokio::time::timeout(timeout, self.exchange(ticket, request, body)).await;
        let answer = match exchange {
            Err(_) => {
                mirror.results.timeout.inc();
                return;
            }
            Ok(Err(Failure::Cut)) => {
                mirror.results.cancelled.inc();
                return;
            }
            // Counted by the primary's side when it gave up feeding.
            Ok(Err(Failure::Slow)) => return,
            Ok(Err(Failure::Other(why))) => {
                mirror.results.failed.inc();
                log::debug!(
                    "mirror of route '{}' failed for request {}: {why}",
                    mirror.route,
                    self.request_id
                );
                return;
            }
            Ok(Ok(answer)) => answer,
        };
        mirror.results.answered.inc();
        let Some(primary) = primary else { return };
        // The primary may still be streaming its answer; it gets the rest of the timeout.
        let primary = tokio::time::timeout_at(started + timeout, primary).await;
        self.compare(primary.ok().and_then(Result::ok), answer);
    }

    /// Sends the copy and reads the answer, once the gate gives it a slot.
    async fn exchange(
        &self,
        ticket: Ticket,
        mut request: http::request::Parts,
        body: FeedReceiver,
    ) -> Result<MirrorAnswer, Failure> {
        let _slot = ticket
            .slot()
            .await
            .ok_or_else(|| Failure::Other("the mirror's gate is closed".into()))?;
        let mirror = &self.mirror;
        let pool = &mirror.pools[mirror.settings.pool];
        let state = pool.model(self.model.as_deref());
        let now_ns = pool.now_ns();
        let endpoint = self.endpoint(pool, &state, now_ns).ok_or_else(|| {
            Failure::Other(format!("pool '{}' has no usable endpoint", pool.name))
        })?;
        let address = match self.protocol {
            Protocol::Http => pool.endpoints[endpoint].http_addr,
            Protocol::Grpc => pool.endpoints[endpoint].grpc_addr,
        }
        .ok_or_else(|| Failure::Other("endpoint has no address for the protocol".into()))?;
        let client = match self.protocol {
            Protocol::Http => &mirror.http,
            Protocol::Grpc => &mirror.grpc,
        }
        .as_ref()
        .map_err(|why| Failure::Other(why.clone()))?;
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        request.uri = client.uri(address, path).map_err(Failure::Other)?;
        let stream = body_stream(body, self.rewriter());
        let request = http::Request::from_parts(request, StreamBody::new(stream));
        let mut attempt = Attempt::start(pool, state, endpoint, now_ns);
        let result = read_answer(client.request(request), mirror.settings.max_response_bytes).await;
        let outcome = match &result {
            Ok(answer) => TryOutcome::of_answer(match (self.protocol, answer.grpc_status) {
                (Protocol::Grpc, Some(code)) => Outcome::Grpc(code),
                (Protocol::Grpc, None) => Outcome::NoResponse,
                (Protocol::Http, _) => Outcome::Http(answer.status),
            }),
            Err(Failure::Cut | Failure::Slow) => TryOutcome::Cancelled,
            Err(Failure::Other(_)) => TryOutcome::Failure,
        };
        attempt.finish(outcome, pool.now_ns());
        result
    }

    /// The endpoint for the copy: a sequence's own, else the balancer's pick.
    fn endpoint(
        &self,
        pool: &Pool,
        state: &crate::upstream::ModelState,
        now_ns: u64,
    ) -> Option<usize> {
        let table = &self.mirror.sequences;
        let model = self.model.as_deref().unwrap_or_default();
        let bound = self
            .sequence
            .as_ref()
            .filter(|c| !c.start)
            .and_then(|c| table.lookup(model, &c.id, now_ns));
        let endpoint = match bound {
            Some(i) => i,
            None => pool.pick(state, self.protocol, 0, now_ns).ok()?,
        };
        if let Some(control) = &self.sequence {
            if control.end {
                table.release(model, &control.id);
            } else if control.start {
                let _ = table.bind(model, &control.id, endpoint, now_ns);
            }
        }
        Some(endpoint)
    }

    fn rewriter(&self) -> Option<GrpcVersionRewriter> {
        match (&self.mirror.settings.version, self.protocol) {
            (Some(version), Protocol::Grpc) => Some(GrpcVersionRewriter::new(version)),
            _ => None,
        }
    }

    /// Decodes both answers, compares them and records the result.
    fn compare(&self, primary: Option<PrimaryAnswer>, mirror_answer: MirrorAnswer) {
        let mirror = &self.mirror;
        let Some(tolerance) = mirror.settings.compare else {
            return;
        };
        let model = self.model.as_deref().unwrap_or("-");
        let decoded = primary
            .ok_or_else(|| "the primary did not answer in full".to_owned())
            .and_then(|primary| {
                if primary.too_large || mirror_answer.too_large {
                    return Err("answer larger than max_response_bytes".to_owned());
                }
                let primary_body = join(&primary.body, primary.len);
                let primary = self.decode(
                    primary.status,
                    &primary.headers,
                    primary.grpc_status,
                    &primary_body,
                )?;
                let canary = self.decode(
                    mirror_answer.status,
                    &mirror_answer.headers,
                    mirror_answer.grpc_status,
                    &mirror_answer.body,
                )?;
                Ok((primary, canary))
            });
        let (primary, canary) = match decoded {
            Ok(answers) => answers,
            Err(why) => {
                mirror.comparison_metrics(model, "-").uncomparable.inc();
                log::debug!(
                    "mirror of route '{}': request {} not compared: {why}",
                    mirror.route,
                    self.request_id
                );
                return;
            }
        };
        let version = canary
            .iter()
            .map(|a| a.model_version.as_str())
            .find(|v| !v.is_empty())
            .unwrap_or("-");
        let metrics = mirror.comparison_metrics(model, version);
        let result = compare::compare(&primary, &canary, tolerance);
        if result.max_abs_error > metrics.max_abs_error.get() {
            metrics.max_abs_error.set(result.max_abs_error);
        }
        if result.max_rel_error > metrics.max_rel_error.get() {
            metrics.max_rel_error.set(result.max_rel_error);
        }
        match result.mismatch {
            None => metrics.matched.inc(),
            Some(detail) => {
                metrics.mismatched.inc();
                if mirror.may_log_mismatch() {
                    log::warn!(
                        "mirror of route '{}' to pool '{}' disagrees with the primary on request {} \
                         (model '{model}', mirror version '{version}'): {detail}",
                        mirror.route,
                        mirror.pools[mirror.settings.pool].name,
                        self.request_id
                    );
                }
            }
        }
    }

    fn decode(
        &self,
        status: u16,
        headers: &HeaderMap,
        grpc_status: Option<u8>,
        body: &[u8],
    ) -> Result<Vec<Answer>, String> {
        match self.protocol {
            Protocol::Http => infer_response::decode_http(status, headers, body).map(|a| vec![a]),
            Protocol::Grpc => {
                let status = grpc_status.ok_or("no grpc-status")?;
                let encoding = headers.get("grpc-encoding").map(|v| v.as_bytes());
                infer_response::decode_grpc(status, encoding, body, self.stream)
            }
        }
    }
}

/// The copy's body: the feed's chunks, with the mirror's model version written
/// into gRPC messages when it has one.
fn body_stream(
    body: FeedReceiver,
    rewriter: Option<GrpcVersionRewriter>,
) -> futures::stream::BoxStream<'static, Result<Frame<Bytes>, Abandoned>> {
    futures::stream::unfold((body, rewriter), |(mut body, mut rewriter)| async move {
        let chunk = match body.next().await? {
            Ok(chunk) => chunk,
            Err(why) => return Some((Err(why), (body, rewriter))),
        };
        let chunk = match rewriter.as_mut() {
            Some(r) => match r.rewrite(chunk, false) {
                Ok(chunk) => chunk,
                Err(_) => return Some((Err(Abandoned::Cut), (body, None))),
            },
            None => chunk,
        };
        Some((Ok(Frame::data(chunk)), (body, rewriter)))
    })
    .boxed()
}

/// Reads the mirror's answer: header, body (up to `limit` bytes kept) and trailers.
async fn read_answer(
    response: impl std::future::Future<
        Output = Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    >,
    limit: usize,
) -> Result<MirrorAnswer, Failure> {
    let response = response.await.map_err(|e| {
        // The feed's reason, if the body stream is what broke the request.
        let mut cause = std::error::Error::source(&e);
        let mut abandoned = None;
        while let Some(source) = cause {
            abandoned = abandoned.or_else(|| source.downcast_ref::<Abandoned>().copied());
            cause = source.source();
        }
        match abandoned {
            Some(Abandoned::Overflow | Abandoned::OverBudget) => Failure::Slow,
            Some(_) => Failure::Cut,
            None => Failure::Other(format!("{e:?}")),
        }
    })?;
    let (parts, mut body) = response.into_parts();
    let mut answer = MirrorAnswer {
        status: parts.status.as_u16(),
        grpc_status: grpc::status(&parts.headers),
        headers: parts.headers,
        body: Bytes::new(),
        too_large: false,
    };
    let mut chunks = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Failure::Other(format!("reading the mirror's answer: {e}")))?;
        match frame.into_data() {
            Ok(data) => {
                len += data.len();
                if len > limit {
                    answer.too_large = true;
                    chunks.clear();
                } else if !answer.too_large {
                    chunks.push(data);
                }
            }
            Err(frame) => {
                if let Some(status) = frame.trailers_ref().and_then(grpc::status) {
                    answer.grpc_status = Some(status);
                }
            }
        }
    }
    answer.body = Bytes::from(join(&chunks, len.min(limit)));
    Ok(answer)
}

/// One contiguous copy of an answer's chunks, for decoding (off the hot path).
fn join(chunks: &[Bytes], len: usize) -> Vec<u8> {
    let mut joined = Vec::with_capacity(len);
    for chunk in chunks {
        joined.extend_from_slice(chunk);
    }
    joined
}
