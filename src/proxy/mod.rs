//! Trident's [`ProxyHttp`] implementation: one instance per listener, all
//! sharing the routing table, pools and telemetry.
//!
//! A request goes: `request_filter` (request id, model, route, endpoint — for
//! gRPC after peeking the first message) → `upstream_peer` (hands Pingora the
//! chosen endpoint) → Pingora streams both ways → `logging` (metrics, access log).
//! Every failure Trident answers itself goes through [`ErrorReply`].

mod chains;
mod client_errors;
mod discard;
mod edge;
mod fan_out;
mod overload;
mod peek;
mod tracing;
mod tries;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use filters::chain::Identity;
use filters::circuit_breaker::{Limit, Permit};
use filters::split::Roll;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, OkOrErr, Result};
use prometheus::IntCounter;

use crate::config::file::PlacementFile;
use crate::config::{Config, PoolId, RouteId, RouteSplit, Side};
use crate::mirror::{self, Mirror};
use crate::protocol::grpc::{self, Encoding, GrpcCode, Peek};
use crate::protocol::http_body::{self, INFERENCE_HEADER_CONTENT_LENGTH};
use crate::protocol::http_path;
use crate::protocol::json_batch::BatchPeek;
use crate::protocol::model_check::{ModelCheck, Violation};
use crate::protocol::reply::ErrorReply;
use crate::protocol::sequence::{self, SequenceControl, SequencePeek};
use crate::protocol::version_rewrite::{http_path_with_version, GrpcVersionRewriter, RewriteError};
use crate::protocol::Protocol;
use crate::reload::Live;
use crate::shutdown::Lifecycle;
use crate::telemetry::access_log::{self, AccessLog};
use crate::telemetry::metrics::{Metrics, Outcome, RouteMetrics};
use crate::telemetry::request_id;
use crate::telemetry::trace::context::{TraceId, TRACEPARENT, TRACESTATE};
use crate::telemetry::trace::{RequestTrace, TraceState, Tracer};
use crate::tls::identity::ClientIdentity;
use crate::upstream::{Attempt, ModelState, NoEndpoint, Pool, Pools, TryOutcome};

/// The `model` label of requests refused before routing.
const UNROUTED: &str = "_unrouted";

/// What one config runs on, shared by every listener and worker thread and
/// read-only: a reload builds a new one ([`crate::reload`]), and each request
/// keeps the one it started with to its end.
pub struct Shared {
    pub config: Config,
    /// Indexed by [`crate::config::PoolId`]; shared with the health checks and scrapes.
    pub pools: Pools,
    /// Indexed by [`RouteId`], then by protocol.
    route_metrics: Vec<[RouteMetrics; 2]>,
    /// Requests refused before a route was found (no route, malformed), by protocol.
    unrouted_metrics: [RouteMetrics; 2],
    pub metrics: Arc<Metrics>,
    access_log: AccessLog,
    /// Every `[filters.*]` instance, for the next reload to keep.
    filters: Vec<chains::StartedFilter>,
    /// Indexed by [`RouteId`].
    chains: Vec<chains::RouteChain>,
    /// Indexed by [`RouteId`]: the route's mirror, if it has one.
    mirrors: Vec<Option<Arc<Mirror>>>,
    /// Indexed by [`RouteId`]: requests taken by the route's own pool, then by each
    /// split side, then by the route's pool in place of each side (see [`TridentProxy::split_side`]).
    split_counters: Vec<Vec<IntCounter>>,
    /// `[tracing]`'s tracer; `None`: tracing is off.
    tracer: Option<Arc<Tracer>>,
}

impl Shared {
    /// Builds the running state; starts the filters (JWKS fetches among them).
    /// `running`: the state this one replaces on a reload, whose pools and
    /// filters carry over where the config leaves them alone.
    pub fn new(
        mut config: Config,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        running: Option<&Shared>,
    ) -> Self {
        let (filters, chains) = chains::build(
            &mut config,
            &metrics,
            running.map_or(&[], |r| r.filters.as_slice()),
        );
        let pools: Pools = config
            .pools
            .iter()
            .enumerate()
            .map(|(id, pool)| {
                let routed: Vec<&str> = config
                    .routes
                    .exact
                    .iter()
                    .filter(|(_, &route)| {
                        let target = config.routes.target(route);
                        let mirror = target.mirror.as_ref().map(|m| m.pool);
                        target.pools().chain(mirror).any(|p| p == id)
                    })
                    .map(|(model, _)| model.as_str())
                    .collect();
                let previous = running.and_then(|r| r.pools.iter().find(|p| *p.name == *pool.name));
                metrics.register_pool(pool, previous.map(|p| &p.settings));
                match previous {
                    // Unchanged: the same pool, its background work left running.
                    Some(same) if same.settings == *pool => {
                        same.route_models(&routed);
                        same.clone()
                    }
                    previous => Arc::new(Pool::carried_over(pool, &routed, previous.map(|p| &**p))),
                }
            })
            .collect();
        let pool_names: Arc<[String]> = config.pools.iter().map(|p| p.name.clone()).collect();
        let per_protocol = |key: &str| {
            [
                metrics.route(key, Protocol::Http, &pool_names),
                metrics.route(key, Protocol::Grpc, &pool_names),
            ]
        };
        let route_metrics = config
            .routes
            .targets
            .iter()
            .map(|t| per_protocol(&t.key))
            .collect();
        let unrouted_metrics = per_protocol(UNROUTED);
        let mirror_body_budget = Limit::new(config.server.mirror_body_budget_bytes);
        let mirrors = config
            .routes
            .targets
            .iter()
            .map(|t| {
                let settings = t.mirror.clone()?;
                Some(Arc::new(Mirror::new(
                    &t.key,
                    settings,
                    pools.clone(),
                    metrics.clone(),
                    mirror_body_budget.clone(),
                )))
            })
            .collect();
        let split_counters = config
            .routes
            .targets
            .iter()
            .map(|t| match &t.split {
                None => Vec::new(),
                Some(split) => std::iter::once(pools[t.pool].name.to_string())
                    .chain(split.sides.iter().map(|side| side.label.to_string()))
                    .chain(
                        split
                            .sides
                            .iter()
                            .map(|side| format!("fallback:{}", side.label)),
                    )
                    .map(|side| metrics.split_side(&t.key, &side))
                    .collect(),
            })
            .collect();
        let tracer = config
            .tracing
            .as_ref()
            .and_then(|settings| start_tracer(settings, &metrics, running));
        Shared {
            config,
            pools,
            route_metrics,
            unrouted_metrics,
            metrics,
            access_log,
            filters,
            chains,
            mirrors,
            split_counters,
            tracer,
        }
    }
}

/// The tracer for `settings`: the running one when a reload left `[tracing]`
/// alone (its queue and connection carry over), else a new one, the old one
/// sending what it holds once the last request on the old config ends.
fn start_tracer(
    settings: &crate::config::Tracing,
    metrics: &Metrics,
    running: Option<&Shared>,
) -> Option<Arc<Tracer>> {
    let same = running
        .and_then(|r| r.tracer.as_ref())
        .filter(|t| t.settings() == settings);
    if let Some(same) = same {
        return Some(same.clone());
    }
    match Tracer::start(settings, metrics) {
        Ok(tracer) => Some(Arc::new(tracer)),
        Err(e) => {
            log::error!("tracing: cannot start the exporter thread ({e}); tracing is off");
            None
        }
    }
}

/// The proxy behind one listener.
pub struct TridentProxy {
    live: Arc<Live>,
    /// The same across reloads.
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    protocol: Protocol,
}

impl TridentProxy {
    pub fn new(live: Arc<Live>, lifecycle: Arc<Lifecycle>, protocol: Protocol) -> Self {
        TridentProxy {
            metrics: live.current().metrics.clone(),
            live,
            lifecycle,
            protocol,
        }
    }
}

impl Shared {
    /// Waits (briefly) until every access log line so far is written.
    pub fn flush_access_log(&self) {
        self.access_log.flush(ACCESS_LOG_FLUSH);
    }

    /// Waits (briefly) until the spans finished so far are exported.
    pub fn flush_traces(&self) {
        if let Some(tracer) = &self.tracer {
            tracer.flush(TRACE_FLUSH);
        }
    }

    /// Reopens the access log file (SIGUSR1).
    pub fn reopen_access_log(&self) {
        self.access_log.reopen();
    }

    /// Whether every filter of `old` is the same instance here.
    pub fn keeps_every_filter_of(&self, old: &Shared) -> bool {
        self.kept_filters(old).len() == old.filters.len()
    }

    /// Names of the filters that are the same instances in `self` as in `old`.
    pub fn kept_filters(&self, old: &Shared) -> Vec<String> {
        self.filters
            .iter()
            .filter(|f| old.filters.iter().any(|o| f.is_same(o)))
            .map(|f| f.name().to_owned())
            .collect()
    }
}

/// The longest the process waits for its access log before it exits.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);
/// The longest the process waits for its last spans' export before it exits.
const TRACE_FLUSH: Duration = Duration::from_secs(2);

/// Per-request state.
pub struct RequestCtx {
    /// The config the request runs on from start to end, whatever reloads happen meanwhile.
    shared: Arc<Shared>,
    /// Set once `logging` ran; a context dropped before is a request cut short
    /// by the end of a shutdown (see `Drop`).
    logged: bool,
    protocol: Protocol,
    started: Instant,
    request_id: String,
    model: Option<String>,
    route: Option<RouteId>,
    /// The pool the route's split (or the route itself) sent the request to.
    pool: Option<PoolId>,
    /// The model version the request is rewritten to, from its split side.
    version: Option<Arc<str>>,
    /// Rewrites the model version in gRPC messages, for a split side with a version.
    rewriter: Option<GrpcVersionRewriter>,
    /// Holds every gRPC message of the body to the model the call was routed for.
    model_check: Option<ModelCheck>,
    /// The answer Trident chose when it stopped the request mid-way (a body message
    /// it refuses, a try the circuit breaker refuses); `fail_to_proxy` sends it.
    refusal: Option<ErrorReply>,
    /// The request's mirror copy.
    mirror: Option<mirror::Copy>,
    /// The model's balancing and ejection state in the route's pool.
    state: Option<Arc<ModelState>>,
    /// The endpoint the next try goes to.
    next_endpoint: Option<usize>,
    /// The try in flight.
    attempt: Option<Attempt>,
    /// Endpoints tried so far, a bit per index.
    tried: u64,
    tries: u32,
    /// Time spent in finished tries, each from its start to its end (the access log's `upstream_us`).
    upstream_ns: u64,
    /// When the client stops waiting: the route's timeout or the call's `grpc-timeout`.
    deadline: Option<Instant>,
    /// The call's own `grpc-timeout`: all a streaming call keeps of its deadline
    /// once its answer started.
    client_deadline: Option<Instant>,
    /// Triton sequence control, for requests of stateful models.
    sequence: Option<SequenceControl>,
    /// Whether the body is small enough to replay after a response asked for a retry.
    replayable: bool,
    /// Set when `upstream_response_filter` turned an answer into a retry.
    retrying_answer: bool,
    /// The request's trace, when tracing is on.
    trace: Option<RequestTrace>,
    /// The trace id of a valid `traceparent` the client sent, when tracing is off.
    client_trace_id: Option<TraceId>,
    /// The split side the request went to: its index in the route's split.
    split_side: Option<usize>,
    upstream: Option<SocketAddr>,
    /// Set when Trident answered the request itself.
    reply: Option<ErrorReply>,
    /// A successful answer Trident gives itself (a fanned-out repository call), to send.
    local_answer: Option<crate::repository::Answer>,
    /// The gRPC status from response headers (trailers-only) or trailers.
    grpc_status: Option<u8>,
    /// Who the filters found the request is from.
    identity: Identity,
    /// Headers filters add to the response.
    response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Holds the body to the route's size limits as it streams.
    body_meter: Option<edge::BodyMeter>,
    /// The request's place among its pool's requests in flight (circuit breaker).
    request_permit: Option<Permit>,
    /// The try's place among those waiting for a connection (circuit breaker).
    pending_permit: Option<Permit>,
}

/// A request whose context goes without `logging` having run was dropped with
/// its task: the shutdown timeout ended while it ran (Pingora dropped the
/// runtimes). It is counted and logged, so that no request goes unrecorded.
impl Drop for RequestCtx {
    fn drop(&mut self) {
        if self.logged {
            return;
        }
        self.shared.metrics.requests_cut.inc();
        let log = &self.shared.access_log;
        if !log.enabled() || !self.route_logs() {
            return;
        }
        log.log(&self.access_entry(None, None, Some(CUT.to_owned())));
    }
}

/// The access log's `error` for a request cut at shutdown.
const CUT: &str = "cut: still running when the shutdown timeout ended";

impl RequestCtx {
    /// The request's trace id: whenever tracing is on (sampled or not), or the
    /// client sent a valid `traceparent`.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace
            .as_ref()
            .map(RequestTrace::trace_id)
            .or(self.client_trace_id)
    }

    /// Whether the request's route (if it has one yet) keeps an access log.
    fn route_logs(&self) -> bool {
        self.route
            .is_none_or(|r| self.shared.config.routes.target(r).access_log)
    }

    /// The request's access log line; `session` is `None` for a request cut at shutdown.
    fn access_entry<'a>(
        &'a self,
        session: Option<&'a Session>,
        outcome: Option<Outcome>,
        error: Option<String>,
    ) -> access_log::Entry<'a> {
        let elapsed = self.started.elapsed();
        let started_at = SystemTime::now().checked_sub(elapsed).unwrap_or(UNIX_EPOCH);
        let header = session.map(|s| s.req_header());
        access_log::Entry {
            ts_ms: started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            request_id: &self.request_id,
            client: session.and_then(|s| s.client_addr()).map(|a| a.to_string()),
            protocol: self.protocol.label(),
            method: header.map_or("-", |h| h.method.as_str()),
            path: header.map_or("-", |h| h.uri.path()),
            user_agent: header
                .and_then(|h| h.headers.get(http::header::USER_AGENT))
                .and_then(|v| v.to_str().ok()),
            model: self.model.as_deref(),
            route: self
                .route
                .map(|r| &*self.shared.config.routes.target(r).key),
            pool: self.shared.pool(self.pool).map(|p| &*p.name),
            tenant: self.identity.tenant.as_deref(),
            upstream: self.upstream.as_ref().map(|a| a.to_string()),
            status: session
                .and_then(|s| s.response_written())
                .map(|h| h.status.as_u16()),
            grpc_status: match outcome {
                Some(Outcome::Grpc(code)) => Some(code),
                _ => None,
            },
            request_bytes: session.map(|s| s.body_bytes_read()),
            response_bytes: session.map(|s| s.body_bytes_sent()),
            tries: self.tries,
            upstream_us: (self.tries > 0).then_some(u128::from(self.upstream_ns / 1000)),
            duration_us: elapsed.as_micros(),
            trace_id: self.trace_id().map(|id| id.to_string()),
            error,
        }
    }
}

impl TridentProxy {
    /// Decides model, route and endpoint, or the error that answers instead.
    async fn route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Result<(), ErrorReply>> {
        let shared = ctx.shared.clone();
        if let Some(tls) = &shared.config.server.tls {
            client_identity(session, tls);
        }
        let mut body = peek::BodyPeek::default();
        // gRPC methods are matched exactly, but a server that normalises paths first could
        // match an odd one as a model-scoped method Trident took for another call.
        if let Some(why) = http_path::ambiguity(session.req_header().uri.path()) {
            return Ok(Err(ErrorReply::new(
                400,
                GrpcCode::InvalidArgument,
                format!("request path refused: {why}"),
            )));
        }
        let model = match self.protocol {
            Protocol::Http => {
                http_path::model_from_path(session.req_header().uri.path()).map(|m| m.into_owned())
            }
            Protocol::Grpc => match self.grpc_model(session, &mut body, ctx).await? {
                Ok(model) => model,
                Err(reply) => return Ok(Err(reply)),
            },
        };
        ctx.model = model;
        let routes = &shared.config.routes;
        let Some(route) = routes.lookup(ctx.model.as_deref()) else {
            return Ok(Err(ErrorReply::new(
                404,
                GrpcCode::NotFound,
                format!(
                    "Request for unknown model: '{}' has no route in Trident",
                    ctx.model.as_deref().unwrap_or_default()
                ),
            )));
        };
        ctx.route = Some(route);
        let chain = &shared.chains[route];
        if let (Some(cors), Protocol::Http) = (&chain.cors, self.protocol) {
            cors.actual(&session.req_header().headers, &mut ctx.response_headers);
        }
        let limits = &routes.target(route).limits;
        // gRPC calls are held to their messages' size, not their stream's.
        let declared = match self.protocol {
            Protocol::Http => body_length(session.req_header()).map(|len| len as u64),
            Protocol::Grpc => None,
        };
        if let Some(reply) = declared.and_then(|len| edge::body_too_large(len, limits)) {
            return Ok(Err(reply));
        }
        let meter = edge::BodyMeter::new(*limits, self.protocol);
        // What was already read is checked now, before anything is forwarded; the
        // meter itself sees it again when it is replayed upstream.
        if let Err(reply) = meter.clone().feed(body.buffered()) {
            return Ok(Err(reply));
        }
        ctx.body_meter = Some(meter);
        if !chain.filters.is_empty() {
            let batch_size = if chain.filters.needs_batch_size() {
                self.batch_size(session, &mut body).await?
            } else {
                None
            };
            let client_ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let mut request = filters::chain::Request {
                header: session.req_header_mut(),
                client_ip,
                model: ctx.model.as_deref(),
                batch_size,
                identity: &mut ctx.identity,
                response_headers: &mut ctx.response_headers,
            };
            if let Err((position, denial)) = chain.filters.run(&mut request).await {
                chain.count_denial(position, denial.reason);
                if let Some(trace) = ctx.trace.as_mut().filter(|t| t.sampled()) {
                    let filter = shared.config.routes.target(route).filters[position];
                    trace.event(
                        "trident.filter.denied",
                        &[
                            ("trident.filter", shared.filters[filter].name()),
                            ("trident.filter.reason", chains::reason_label(denial.reason)),
                        ],
                    );
                }
                let headers = std::mem::take(&mut ctx.response_headers);
                let filter = chain.filter_name(position);
                return Ok(Err(ErrorReply::denied(denial, filter, headers)));
            }
        }
        let target = routes.target(route);
        if let Err(reply) = self.allow_api(&shared, target, session.req_header()) {
            return Ok(Err(reply));
        }
        let now = Instant::now();
        ctx.client_deadline = self.grpc_timeout(session.req_header()).map(|t| now + t);
        ctx.deadline = [target.timeout.map(|t| now + t), ctx.client_deadline]
            .into_iter()
            .flatten()
            .min();
        crate::deadline::set_request_deadline(ctx.deadline);
        if let Some(call) = self.repository_call(&shared, session.req_header(), target) {
            return self.fan_out(session, ctx, body, call, target).await;
        }
        let pools = &shared.pools;
        if target.pools().any(|p| pools[p].settings.sequences.enabled) {
            ctx.sequence = self.sequence(session, &mut body).await?;
        }
        // A sequence's requests roll the same number, so they all take the same side.
        let roll = match &ctx.sequence {
            Some(control) if target.split.is_some() || target.mirror.is_some() => Roll::Sticky(
                control
                    .id
                    .stable_hash(ctx.model.as_deref().unwrap_or_default()),
            ),
            _ => Roll::Random,
        };
        let claims = ctx.identity.claims.clone();
        let claims = claims.as_deref();
        let pool_id = match &target.split {
            None => target.pool,
            Some(split) => {
                let chosen = split
                    .choose
                    .choose(&session.req_header().headers, claims, roll);
                // A running sequence stays on its side: its state is on that side's server.
                let may_fall_back = ctx.sequence.as_ref().is_none_or(|c| c.start);
                match self.split_side(
                    &shared,
                    route,
                    split,
                    chosen,
                    ctx.model.as_deref(),
                    may_fall_back,
                ) {
                    None => target.pool,
                    Some(side) => {
                        ctx.split_side = chosen;
                        if let Some(version) = &side.version {
                            if let Err(reply) = self.rewrite_version(session, ctx, version) {
                                return Ok(Err(reply));
                            }
                        }
                        side.pool
                    }
                }
            }
        };
        ctx.pool = Some(pool_id);
        let pool = &pools[pool_id];
        match self.admit_request(pool) {
            Ok(permit) => ctx.request_permit = Some(permit),
            Err(reply) => return Ok(Err(reply)),
        }
        if !pool.settings.sequences.enabled {
            ctx.sequence = None;
        }
        let state = pool.model(ctx.model.as_deref());
        ctx.replayable = ctx.sequence.is_none()
            && body_length(session.req_header())
                .is_none_or(|len| len <= pool.settings.retry.max_body_bytes);
        let now_ns = pool.now_ns();
        let endpoint = match &ctx.sequence {
            Some(control) if !control.start => {
                self.bound_endpoint(pool, &state, ctx.model.as_deref(), control, now_ns)
            }
            control => {
                self.first_endpoint(pool, &state, ctx.model.as_deref(), control.as_ref(), now_ns)
            }
        };
        ctx.state = Some(state);
        let endpoint = match endpoint {
            Ok(i) => i,
            Err(reply) => return Ok(Err(reply)),
        };
        pool.retry_budget.deposit(now_ns);
        ctx.next_endpoint = Some(endpoint);
        if let Some(mirror) = &shared.mirrors[route] {
            let header = session.req_header();
            if is_infer(self.protocol, header) && mirror.selects(header, claims, roll) {
                ctx.mirror = mirror.start(
                    self.protocol,
                    header,
                    &ctx.request_id,
                    ctx.model.as_deref(),
                    ctx.sequence.as_ref(),
                );
            }
        }
        Ok(Ok(()))
    }

    /// Sends the request to model version `version`: the HTTP path is rewritten
    /// in `upstream_request_filter`, gRPC messages as they are forwarded.
    fn rewrite_version(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        version: &Arc<str>,
    ) -> std::result::Result<(), ErrorReply> {
        if self.protocol == Protocol::Grpc {
            if body_encoding(session.req_header(), "grpc-encoding") != Encoding::Identity {
                return Err(ErrorReply::new(
                    400,
                    GrpcCode::Unimplemented,
                    "this route sends a share of its requests to another model version, which \
                     Trident cannot write into compressed gRPC messages: send them uncompressed",
                ));
            }
            ctx.rewriter = Some(GrpcVersionRewriter::new(version));
        }
        ctx.version = Some(version.clone());
        Ok(())
    }

    /// The split side `chosen` for a request (`None`: the route's own pool), counted
    /// in `trident_split_requests_total`. A side whose pool has no endpoint passing
    /// readiness checks and not ejected cannot serve the model now: the route's own
    /// pool takes its share meanwhile, counted as `fallback:<side>`.
    fn split_side<'a>(
        &self,
        shared: &Shared,
        route: RouteId,
        split: &'a RouteSplit,
        chosen: Option<usize>,
        model: Option<&str>,
        may_fall_back: bool,
    ) -> Option<&'a Side> {
        let counters = &shared.split_counters[route];
        let Some(i) = chosen else {
            counters[0].inc();
            return None;
        };
        let side = &split.sides[i];
        let own_pool = shared.config.routes.target(route).pool;
        let pool = &shared.pools[side.pool];
        if may_fall_back
            && side.pool != own_pool
            && !pool.serves(&pool.model(model), self.protocol, pool.now_ns())
        {
            counters[1 + split.sides.len() + i].inc();
            return None;
        }
        counters[1 + i].inc();
        Some(side)
    }

    fn no_endpoint(&self, pool: &Pool, model: Option<&str>, why: NoEndpoint) -> ErrorReply {
        let message = match why {
            NoEndpoint::NoProtocol => format!(
                "pool '{}' has no {} endpoint",
                pool.name,
                self.protocol.label()
            ),
            NoEndpoint::NoneUsable => format!(
                "pool '{}' has no usable endpoint for {}: every one is failing health checks, \
                 ejected, drained, or already tried",
                pool.name,
                model.map_or_else(|| "server calls".to_owned(), |m| format!("model '{m}'")),
            ),
        };
        ErrorReply::new(503, GrpcCode::Unavailable, message)
    }

    /// The endpoint for a request that is not bound anywhere yet: chosen by the
    /// balancer, or for a sequence in a pool with `placement = "hash"`, by hashing it.
    fn first_endpoint(
        &self,
        pool: &Pool,
        state: &ModelState,
        model: Option<&str>,
        sequence: Option<&SequenceControl>,
        now_ns: u64,
    ) -> std::result::Result<usize, ErrorReply> {
        match sequence {
            Some(control) if pool.settings.sequences.placement == PlacementFile::Hash => {
                let key = control.id.stable_hash(model.unwrap_or_default());
                pool.place(state, self.protocol, key, now_ns)
            }
            _ => pool.pick(state, self.protocol, 0, now_ns),
        }
        .map_err(|e| self.no_endpoint(pool, model, e))
    }

    /// The endpoint a running sequence is bound to. An error when it cannot be
    /// reached: moving a sequence would silently lose its state on the server.
    fn bound_endpoint(
        &self,
        pool: &Pool,
        state: &ModelState,
        model: Option<&str>,
        control: &SequenceControl,
        now_ns: u64,
    ) -> std::result::Result<usize, ErrorReply> {
        let model = model.unwrap_or_default();
        let Some(i) = pool.sequences.lookup(model, &control.id, now_ns) else {
            // Not started through this proxy (or forgotten after its idle timeout):
            // where its start would go (with `placement = "hash"`, where another proxy
            // started it), and Triton says whether it knows the sequence.
            return self.first_endpoint(pool, state, Some(model), Some(control), now_ns);
        };
        if pool.still_usable(i, state, self.protocol, now_ns) {
            return Ok(i);
        }
        pool.sequences.release(model, &control.id);
        Err(ErrorReply::new(
            503,
            GrpcCode::Unavailable,
            format!(
                "sequence {} of model '{model}' was started on endpoint {}, which is no longer \
                 available; its state there is lost: start the sequence again",
                control.id, pool.endpoints[i].label
            ),
        ))
    }

    /// The model a gRPC call names in its first message (`None` for
    /// server-level calls), and the check that will hold every message of the
    /// body to it; or the refusal of a call whose model cannot be known.
    async fn grpc_model(
        &self,
        session: &mut Session,
        body: &mut peek::BodyPeek,
        ctx: &mut RequestCtx,
    ) -> Result<Result<Option<String>, ErrorReply>> {
        let path = session.req_header().uri.path();
        let Some(field) = grpc::model_field_for_method(path) else {
            return Ok(Ok(None));
        };
        let name_is_optional = grpc::name_is_optional(path);
        let method = path.rsplit('/').next().unwrap_or_default().to_owned();
        let encoding = body_encoding(session.req_header(), "grpc-encoding");
        let peeked = body
            .until(session, |buffered, complete| {
                match grpc::peek_model(buffered, field, encoding, complete) {
                    Peek::NeedMore => None,
                    decided => Some(decided),
                }
            })
            .await?;
        let refuse = |code, message: String| Ok(Err(ErrorReply::new(400, code, message)));
        let model = match peeked {
            Some(Peek::Model(model)) => Some(model),
            Some(Peek::Absent) if name_is_optional => None,
            Some(Peek::Absent) => {
                return refuse(
                    GrpcCode::InvalidArgument,
                    format!("{method} request names no model"),
                )
            }
            Some(Peek::Malformed(reason)) => {
                return refuse(
                    GrpcCode::InvalidArgument,
                    format!("malformed gRPC request: {reason}"),
                )
            }
            Some(Peek::Unreadable) => return Ok(Err(Violation::UnreadableEncoding.into())),
            // Routing by default here would let the name a decoder reads go unchecked.
            Some(Peek::NeedMore) | None => {
                return refuse(
                    GrpcCode::InvalidArgument,
                    format!(
                        "the model name must come within the first {} KiB of the request message",
                        peek::H2_PEEK_LIMIT / 1024
                    ),
                )
            }
        };
        ctx.model_check = Some(ModelCheck::new(field, encoding));
        Ok(Ok(model))
    }

    /// Whether a later message of a call may name `name`: the model the call
    /// was routed and authorised for, or one that would have been routed and
    /// authorised the same way (the same route, or one that serves like it —
    /// Triton serves a stream's requests for several models of one server — whose
    /// filters ignore the model).
    fn may_name(
        &self,
        ctx: &RequestCtx,
        name: Option<&str>,
    ) -> std::result::Result<(), ErrorReply> {
        let routed = ctx.model.as_deref();
        if name == routed {
            return Ok(());
        }
        let Some(name) = name else {
            return Err(ErrorReply::new(
                400,
                GrpcCode::InvalidArgument,
                "a message of this call names no model",
            ));
        };
        let routes = &ctx.shared.config.routes;
        let alike = match (ctx.route, routes.lookup(Some(name))) {
            (Some(routed), Some(named)) => {
                (routed == named || routes.target(routed).serves_like(routes.target(named)))
                    && !ctx.shared.chains[routed].filters.reads_model()
            }
            _ => false,
        };
        if alike {
            return Ok(());
        }
        Err(ErrorReply::new(
            403,
            GrpcCode::PermissionDenied,
            format!(
                "this call was routed and authorised for model '{}'; a later message names '{name}': \
                 call it on its own",
                routed.unwrap_or_default()
            ),
        ))
    }

    /// The `grpc-timeout` of a gRPC call.
    fn grpc_timeout(&self, header: &RequestHeader) -> Option<Duration> {
        match self.protocol {
            Protocol::Grpc => grpc::timeout(&header.headers),
            Protocol::Http => None,
        }
    }

    /// Sequence control of an infer request, from the start of its body.
    async fn sequence(
        &self,
        session: &mut Session,
        body: &mut peek::BodyPeek,
    ) -> Result<Option<SequenceControl>> {
        let peeked = self
            .peek_infer(
                session,
                body,
                SequencePeek::NeedMore,
                sequence::peek_grpc,
                sequence::peek_http,
            )
            .await?;
        Ok(match peeked {
            Some(SequencePeek::Found(control)) => Some(control),
            _ => None,
        })
    }

    /// The batch size of an infer request, from the start of its body; `None`
    /// for other calls and when the part of the body Trident may read does not show it.
    async fn batch_size(
        &self,
        session: &mut Session,
        body: &mut peek::BodyPeek,
    ) -> Result<Option<u64>> {
        let peeked = self
            .peek_infer(
                session,
                body,
                BatchPeek::NeedMore,
                grpc::peek_batch_size,
                http_body::peek_batch_size,
            )
            .await?;
        Ok(match peeked {
            Some(BatchPeek::Found(size)) => Some(size),
            _ => None,
        })
    }

    /// Reads the start of an infer request's body until the protocol's `judge`
    /// answers something other than `need_more`; `None` for other calls, and when
    /// the part of the body Trident may read does not settle it.
    async fn peek_infer<T: PartialEq>(
        &self,
        session: &mut Session,
        body: &mut peek::BodyPeek,
        need_more: T,
        grpc_judge: fn(&[u8], Encoding, bool) -> T,
        http_judge: fn(&[u8], Option<usize>, Encoding, bool) -> T,
    ) -> Result<Option<T>> {
        let header = session.req_header();
        if !is_infer(self.protocol, header) {
            return Ok(None);
        }
        let decided = |answer: T| (answer != need_more).then_some(answer);
        Ok(match self.protocol {
            Protocol::Grpc => {
                let encoding = body_encoding(header, "grpc-encoding");
                body.until(session, |buffered, complete| {
                    decided(grpc_judge(buffered, encoding, complete))
                })
                .await?
            }
            Protocol::Http => {
                let json_len = json_header_length(header);
                let encoding = body_encoding(header, http::header::CONTENT_ENCODING.as_str());
                body.until(session, |buffered, complete| {
                    decided(http_judge(buffered, json_len, encoding, complete))
                })
                .await?
            }
        })
    }

    fn pool_name<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a str> {
        ctx.shared.pool(ctx.pool).map(|p| &*p.name)
    }

    /// A sequence whose first request failed was never started: forget its endpoint.
    fn release_failed_start(&self, ctx: &RequestCtx) {
        if let (Some(pool), Some(control)) = (ctx.shared.pool(ctx.pool), &ctx.sequence) {
            if control.start {
                let model = ctx.model.as_deref().unwrap_or_default();
                pool.sequences.release(model, &control.id);
            }
        }
    }

    /// Answers a request whose body was not forwarded, keeping an HTTP/1.1
    /// connection when the body can be dropped within bounds ([`discard`]).
    async fn answer_before_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reply: ErrorReply,
    ) {
        let limits = ctx.shared.config.server.connections;
        let discarded = discard::before_answer(session, &limits).await;
        self.answer(session, ctx, reply).await;
        discard::after_answer(session, discarded).await;
    }

    async fn answer(&self, session: &mut Session, ctx: &mut RequestCtx, mut reply: ErrorReply) {
        // Filters' headers (CORS, rate limits) belong on Trident's own answers too.
        reply.headers.append(&mut ctx.response_headers);
        if let Err(e) = reply.send(session, self.protocol, &ctx.request_id).await {
            log::debug!("writing error response: {e}");
        }
        ctx.reply = Some(reply);
    }
}

/// Whether the call streams its answer (gRPC `ModelStreamInfer`, HTTP `generate_stream`).
fn is_streaming(protocol: Protocol, header: &RequestHeader) -> bool {
    let path = header.uri.path();
    match protocol {
        Protocol::Grpc => grpc::is_streaming_method(path),
        Protocol::Http => http_body::is_streaming_path(path),
    }
}

/// Whether the call is an inference: the only calls whose body is peeked, and mirrored.
fn is_infer(protocol: Protocol, header: &RequestHeader) -> bool {
    let path = header.uri.path();
    match protocol {
        Protocol::Grpc => grpc::is_infer_method(path),
        Protocol::Http => header.method == http::Method::POST && http_body::is_infer_path(path),
    }
}

/// The compression named by header `name` (`grpc-encoding`, `content-encoding`).
fn body_encoding(header: &RequestHeader, name: &str) -> Encoding {
    Encoding::from_header(header.headers.get(name).map(|v| v.as_bytes()))
}

/// The JSON part's length of a binary-tensor HTTP request.
fn json_header_length(header: &RequestHeader) -> Option<usize> {
    header
        .headers
        .get(INFERENCE_HEADER_CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// The request body's declared length.
fn body_length(header: &RequestHeader) -> Option<usize> {
    header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Stops a request whose body Trident refuses, keeping the answer for
/// `fail_to_proxy`. The error is the client's doing: it neither counts against
/// the endpoint nor is retried.
fn refuse_body(ctx: &mut RequestCtx, reply: ErrorReply) -> Result<()> {
    let mut e = Error::explain(
        ErrorType::HTTPStatus(reply.http_status),
        reply.message.clone(),
    );
    e.as_down();
    ctx.refusal = Some(reply);
    Err(e)
}

/// The answer for a proxying failure, and the metric kind of upstream failures.
/// Replaces any client-sent `client_identity_header` with the identity of the
/// connection's verified client certificate (or none), before filters see it.
fn client_identity(session: &mut Session, tls: &crate::config::ServerTls) {
    let Some(name) = &tls.client_identity_header else {
        return;
    };
    let identity = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|ssl| ssl.extension.get::<ClientIdentity>())
        .map(|identity| identity.0.clone());
    let header = session.req_header_mut();
    header.remove_header(name);
    if let Some(identity) = identity {
        // A valid header value: checked when the certificate was read.
        let _ = header.insert_header(name.clone(), identity);
    }
}

fn error_reply(
    e: &Error,
    pool: &str,
    upstream: &str,
) -> Option<(ErrorReply, Option<&'static str>)> {
    use ErrorType::*;
    let alert = tls_alert(e);
    let (status, code, kind, what) = match (e.esource(), e.etype()) {
        (_, HTTPStatus(status)) => (
            *status,
            GrpcCode::Internal,
            None,
            "request failed".to_owned(),
        ),
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
        (ErrorSource::Downstream, ReadTimedout | WriteTimedout) => return None,
        (ErrorSource::Downstream, _) => (
            400,
            GrpcCode::InvalidArgument,
            None,
            "malformed request".to_owned(),
        ),
        (ErrorSource::Upstream, ConnectTimedout) => (
            504,
            GrpcCode::Unavailable,
            Some("connect_timeout"),
            format!("upstream {upstream} in pool '{pool}' did not accept the connection in time"),
        ),
        (
            ErrorSource::Upstream,
            ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError,
        ) => (
            502,
            GrpcCode::Unavailable,
            Some("connect_error"),
            format!("cannot connect to upstream {upstream} in pool '{pool}'"),
        ),
        (ErrorSource::Upstream, TLSHandshakeFailure | InvalidCert | TLSWantX509Lookup) => (
            502,
            GrpcCode::Unavailable,
            Some("tls_error"),
            format!(
                "TLS with upstream {upstream} in pool '{pool}' failed: {}",
                tls_failure(e)
            ),
        ),
        (ErrorSource::Upstream, _) if alert.is_some() => (
            502,
            GrpcCode::Unavailable,
            Some("tls_error"),
            format!(
                "TLS with upstream {upstream} in pool '{pool}' failed: {} (the endpoint refused \
                 the connection: a client certificate missing or not accepted, say)",
                alert.unwrap_or_default()
            ),
        ),
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => (
            504,
            GrpcCode::DeadlineExceeded,
            Some("timeout"),
            format!("upstream {upstream} in pool '{pool}' timed out"),
        ),
        (ErrorSource::Upstream, _) => (
            502,
            GrpcCode::Unavailable,
            Some("broken_response"),
            format!(
                "upstream {upstream} in pool '{pool}' failed: {}",
                e.etype().as_str()
            ),
        ),
        (ErrorSource::Internal | ErrorSource::Unset, _) => (
            500,
            GrpcCode::Internal,
            Some("internal"),
            "internal proxy error".to_owned(),
        ),
    };
    Some((ErrorReply::new(status, code, what), kind))
}

/// Why a TLS handshake with an endpoint failed, as rustls says it (expired,
/// unknown issuer, name mismatch…), without Pingora's layers of context, which
/// carry it as text: `… cause: <rustls error>, SNI: <name> …`.
fn tls_failure(e: &Error) -> String {
    let text = e.to_string();
    let start = text.find("cause: ").map_or(0, |i| i + "cause: ".len());
    let rest = &text[start..];
    rest[..rest.find(", SNI:").unwrap_or(rest.len())].to_owned()
}

/// The TLS alert an endpoint sent, when that ended the call: with TLS 1.3, a
/// refused client certificate shows only at the first read, as a read error.
fn tls_alert(e: &Error) -> Option<String> {
    let text = e.to_string();
    let alert = &text[text.find("received fatal alert: ")?..];
    Some(alert[..alert.find(',').unwrap_or(alert.len())].to_owned())
}

#[async_trait]
impl ProxyHttp for TridentProxy {
    type CTX = RequestCtx;

    /// Runs first for every request, once its header is read: the clock for
    /// latency metrics starts here, and the connection's wait for the header ends.
    fn new_ctx(&self) -> RequestCtx {
        crate::deadline::header_read();
        RequestCtx {
            shared: self.live.current(),
            logged: false,
            protocol: self.protocol,
            started: Instant::now(),
            request_id: String::new(),
            model: None,
            route: None,
            pool: None,
            version: None,
            rewriter: None,
            model_check: None,
            refusal: None,
            mirror: None,
            state: None,
            next_endpoint: None,
            attempt: None,
            tried: 0,
            tries: 0,
            upstream_ns: 0,
            deadline: None,
            client_deadline: None,
            sequence: None,
            replayable: false,
            retrying_answer: false,
            trace: None,
            client_trace_id: None,
            split_side: None,
            upstream: None,
            reply: None,
            local_answer: None,
            grpc_status: None,
            identity: Identity::default(),
            response_headers: Vec::new(),
            body_meter: None,
            request_permit: None,
            pending_permit: None,
        }
    }

    /// Runs once the request header is read: assigns the request id, picks
    /// model and route, runs the route's filter chain and picks the endpoint.
    /// Unroutable and refused requests are answered here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.begin_trace(session.req_header(), ctx);
        ctx.request_id = request_id::resolve(
            session
                .req_header()
                .headers
                .get(request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        if let Some(reply) = client_errors::host_error(session.req_header()) {
            session.set_keepalive(None);
            self.answer(session, ctx, reply).await;
            return Ok(true);
        }
        let max_header = ctx.shared.config.server.max_request_header_bytes;
        if let Some(reply) = edge::header_too_large(session.req_header(), max_header) {
            self.answer_before_body(session, ctx, reply).await;
            return Ok(true);
        }
        if self.answer_preflight(session, ctx).await? {
            return Ok(true);
        }
        match self.route(session, ctx).await? {
            Ok(()) => match ctx.local_answer.take() {
                None => Ok(false),
                Some(answer) => {
                    self.send_local_answer(session, ctx, answer).await;
                    Ok(true)
                }
            },
            Err(reply) => {
                self.answer_before_body(session, ctx, reply).await;
                Ok(true)
            }
        }
    }

    /// Runs before each try: hands Pingora the endpoint chosen for it (by
    /// `request_filter` for the first, by the retry decision for later ones).
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.start_try(ctx).await
    }

    /// Propagates the request id upstream so Triton-side logs can be joined with
    /// ours, and points the request at its split side's model version.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(version) = &ctx.version {
            match self.protocol {
                Protocol::Http => {
                    let path = upstream_request
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str());
                    if let Some(uri) = http_path_with_version(path, version)
                        .and_then(|p| p.parse::<http::Uri>().ok())
                    {
                        upstream_request.set_uri(uri);
                    }
                }
                // The rewritten messages may differ in length.
                Protocol::Grpc => {
                    upstream_request.remove_header(&http::header::CONTENT_LENGTH);
                }
            }
        }
        if let Some(trace) = &ctx.trace {
            upstream_request.insert_header(TRACEPARENT.as_str(), trace.traceparent())?;
            match trace.tracestate() {
                TraceState::AsReceived => {}
                TraceState::Cut(kept) => {
                    upstream_request.insert_header(TRACESTATE.as_str(), kept.clone())?
                }
                TraceState::Dropped => {
                    upstream_request.remove_header(&TRACESTATE);
                }
            }
        }
        if let Some(route) = ctx.route {
            edge::rewrite_request(
                &ctx.shared.config.routes.target(route).headers,
                upstream_request,
            )?;
        }
        let request_id = request_id::upstream_value(&ctx.request_id)
            .or_err(ErrorType::InvalidHTTPHeader, "the request id")?;
        upstream_request.insert_header(request_id::HEADER, request_id)
    }

    /// Runs per request body chunk as it is forwarded (a retry replays the
    /// body from its start): holds gRPC messages to the routed model before
    /// anything of a chunk goes on, feeds the mirror copy, and writes the split
    /// side's model version into gRPC messages.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(meter) = ctx.body_meter.as_mut() {
            let metered = meter.feed(body.as_deref().unwrap_or_default());
            metered.or_else(|reply| refuse_body(ctx, reply))?;
        }
        if let Some(mut check) = ctx.model_check.take() {
            let chunk = body.as_deref().unwrap_or_default();
            let checked = check.feed(chunk, end_of_stream, |name| self.may_name(ctx, name));
            ctx.model_check = Some(check);
            checked.or_else(|reply| refuse_body(ctx, reply))?;
        }
        if let Some(copy) = ctx.mirror.as_mut() {
            copy.request_body(body.as_ref(), end_of_stream);
        }
        if let Some(rewriter) = ctx.rewriter.as_mut() {
            let chunk = body.take().unwrap_or_default();
            match rewriter.rewrite(chunk, end_of_stream) {
                Ok(rewritten) => *body = Some(rewritten),
                Err(why) => {
                    let reply = match why {
                        RewriteError::Compressed => ErrorReply::new(
                            400,
                            GrpcCode::Unimplemented,
                            "a split side cannot set the model version of a compressed gRPC message",
                        ),
                        RewriteError::Malformed(why) => Violation::Malformed(why).into(),
                    };
                    return refuse_body(ctx, reply);
                }
            }
        }
        Ok(())
    }

    /// Runs when a try could not connect: records it against the endpoint and
    /// retries on another one (see [`tries`]).
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        ctx.pending_permit = None;
        self.after_connect_error(session, ctx, e)
    }

    /// Runs once a try has its upstream connection: it no longer counts as pending.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.pending_permit = None;
        Ok(())
    }

    /// Runs when a try failed after connecting (by default: retry idempotent
    /// requests). Records the failure; retries only what the endpoint never processed.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        self.after_try_error(session, ctx, e, client_reused)
    }

    /// Runs when the endpoint's response header arrives, before any filter may
    /// change it: its latency feeds the balancer, and a retryable answer
    /// (default 503 / trailers-only UNAVAILABLE) is turned into a retry.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(pool), Some(attempt)) = (ctx.shared.pool(ctx.pool), ctx.attempt.as_mut()) {
            attempt.responded(pool.now_ns());
        }
        let grpc_status = match self.protocol {
            Protocol::Grpc => grpc::status(&upstream_response.headers),
            Protocol::Http => None,
        };
        if let Some(span) = ctx.trace.as_mut().and_then(RequestTrace::try_span) {
            span.set(
                "http.response.status_code",
                i64::from(upstream_response.status.as_u16()),
            );
            if let Some(code) = grpc_status {
                span.set("rpc.grpc.status_code", i64::from(code));
            }
        }
        self.retry_on_answer(session, ctx, upstream_response.status.as_u16(), grpc_status)?;
        // The route's timeout bounds a streaming call until its answer starts; the
        // stream then lasts as long as the client wants (up to its own deadline).
        if is_streaming(self.protocol, session.req_header()) {
            ctx.deadline = ctx.client_deadline;
            crate::deadline::set_request_deadline(ctx.deadline);
        }
        Ok(())
    }

    /// Runs per response body chunk: ends a response still streaming past the
    /// request's deadline (the per-read timeout bounds the waits in between).
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(copy) = ctx.mirror.as_mut() {
            copy.response_body(body.as_ref());
        }
        match ctx.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(tries::deadline_passed()),
            _ => Ok(None),
        }
    }

    /// Tags the response with the request id and the filters' headers, and
    /// notes a trailers-only gRPC status.
    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A drain began while the request ran: close its HTTP/1 connection after
        // this answer, rather than leave the client a socket about to close.
        if self.lifecycle.is_draining() {
            session.set_keepalive(None);
        }
        if self.protocol == Protocol::Grpc {
            ctx.grpc_status = grpc::status(&response.headers);
        }
        if let Some(copy) = ctx.mirror.as_mut() {
            copy.response_header(response);
        }
        for (name, value) in ctx.response_headers.drain(..) {
            response.append_header(name, value)?;
        }
        if let Some(route) = ctx.route {
            let rules = &ctx.shared.config.routes.target(route).headers;
            let served_by = ctx.shared.config.server.served_by_header.as_ref();
            // Formatted only when asked for: the one allocation this header costs.
            let endpoint = served_by.and(ctx.upstream.as_ref()).map(|a| a.to_string());
            edge::rewrite_response(rules, served_by.zip(endpoint.as_deref()), response)?;
        }
        response.insert_header(request_id::HEADER, ctx.request_id.as_str())
    }

    /// Notes the gRPC status that ends a normal response.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        if let Some(status) = grpc::status(trailers) {
            ctx.grpc_status = Some(status);
        }
        Ok(None)
    }

    /// Answers a failed request in protocol shape, unless the response had already started
    /// (then the stream is reset and the client sees the break, except for a gRPC
    /// message Trident refused: its status ends the response in trailers).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let pool = self.pool_name(ctx).unwrap_or("-").to_owned();
        let upstream = ctx
            .upstream
            .as_ref()
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        // Past the deadline the client connection's read fails (see `crate::deadline`),
        // and the upstream's may fail too: answer either as the timeout it is.
        let deadline_error;
        let e = if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            deadline_error = tries::deadline_passed();
            &*deadline_error
        } else {
            e
        };
        let refusal = ctx.refusal.take();
        let refused = refusal.is_some();
        let reply = match refusal {
            Some(reply) => Some((reply, None)),
            None => client_errors::body_cut_short(session, e)
                .map(|reply| (reply, None))
                .or_else(|| error_reply(e, &pool, &upstream)),
        };
        let Some((mut reply, kind)) = reply else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Some(control) = ctx.sequence.as_ref().filter(|c| !c.start) {
            if matches!(kind, Some("connect_error" | "connect_timeout")) {
                reply.message.push_str(&format!(
                    "; sequence {} was started there and its state is lost: start the sequence again",
                    control.id
                ));
            }
        }
        if let Some(kind) = kind {
            self.metrics.upstream_error(&pool, kind);
        }
        let code = reply.http_status;
        if session.response_written().is_none() {
            // The connection is not reused after a failure: say so (HTTP/1 `Connection:
            // close`), or keep-alive clients send their next request into a closing socket.
            session.set_keepalive(None);
            self.answer(session, ctx, reply).await;
        } else {
            // A refused stream message ends the call with its status, after the
            // answers to the messages before it.
            if refused && self.protocol == Protocol::Grpc {
                if let Err(e) = reply.end_grpc_response(session) {
                    log::debug!("writing error trailers: {e}");
                }
            }
            ctx.reply = Some(reply);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Runs before Pingora logs a failed request at error level (by default:
    /// every one). A client that hung up or sent a broken request did it
    /// itself, and under load that is routine (a load tool stopping closes
    /// every stream at once): it stays in the access log and the metrics, and
    /// the error log only gets it at debug level, so it cannot flood it.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        let clients_doing = matches!(error.esource(), ErrorSource::Downstream);
        if clients_doing {
            log::debug!("request {}: client side: {error}", ctx.request_id.as_str());
        }
        clients_doing
    }

    /// Records metrics and the access log line once the request is over.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.logged = true;
        let outcome = match (&ctx.reply, self.protocol, session.response_written()) {
            (Some(reply), protocol, _) => reply.outcome(protocol),
            (None, Protocol::Grpc, Some(_)) => {
                ctx.grpc_status.map_or(Outcome::NoResponse, Outcome::Grpc)
            }
            (None, Protocol::Http, Some(header)) => Outcome::Http(header.status.as_u16()),
            (None, _, None) => Outcome::NoResponse,
        };
        if matches!(outcome, Outcome::Http(200..=299) | Outcome::Grpc(0)) {
            if let (Some(state), Some(pool)) = (&ctx.state, ctx.shared.pool(ctx.pool)) {
                pool.served(state, ctx.model.as_deref());
            }
        }
        if ctx.attempt.is_some() {
            // The client's own failure (it hung up, or Trident refused its broken
            // request) says nothing about the endpoint.
            let clients_failure = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream)
                && (ctx.reply.is_some() || session.response_written().is_none());
            let try_outcome = if clients_failure {
                TryOutcome::Cancelled
            } else {
                TryOutcome::of_answer(outcome)
            };
            if try_outcome != TryOutcome::Success {
                self.release_failed_start(ctx);
            }
            self.finish_try(ctx, try_outcome);
        }
        if let Some(copy) = ctx.mirror.take() {
            let answered =
                e.is_none() && ctx.reply.is_none() && session.response_written().is_some();
            copy.finish(answered, ctx.grpc_status);
        }
        // Read once its try is finished: a request lasts at least as long as
        // its try, in the metrics and in its trace.
        let elapsed = ctx.started.elapsed();
        let route_metrics = match ctx.route {
            Some(route) => &ctx.shared.route_metrics[route],
            None => &ctx.shared.unrouted_metrics,
        };
        let downstream = session.as_downstream();
        let bytes = (downstream.body_bytes_read(), downstream.body_bytes_sent());
        route_metrics[self.protocol as usize].record(outcome, ctx.pool, elapsed, bytes);
        log_access(session, ctx, e, outcome);
        // Last: the server span ends when everything it reports is known. It
        // spans the time the metrics above recorded.
        self.end_trace(session, ctx, outcome, ctx.started + elapsed);
    }
}

/// Writes the request's access-log line, if the log and its sampling want it.
fn log_access(session: &Session, ctx: &RequestCtx, e: Option<&Error>, outcome: Outcome) {
    let log = &ctx.shared.access_log;
    if !log.enabled() || !ctx.route_logs() {
        return;
    }
    let failed = e.is_some() || !matches!(outcome, Outcome::Http(..400) | Outcome::Grpc(0));
    if !access_log::sampled(&ctx.shared.config.server.access_log, failed) {
        return;
    }
    let error = match &ctx.reply {
        Some(reply) => Some(reply.log_text()),
        None => e.map(|e| e.to_string()),
    };
    log.log(&ctx.access_entry(Some(session), Some(outcome), error));
}
