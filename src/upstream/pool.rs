//! A pool at run time: its endpoints' peers, and the balancing, ejection and
//! readiness state kept per endpoint for each model (a Triton serves models of
//! very different latencies, and one model can fail while the others work).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use filters::affinity::{rendezvous, SequenceTable};
use filters::balance::Balancer;
use filters::circuit_breaker::Limit;
use filters::outlier::{Outliers, Transition};
use filters::retry::RetryBudget;
use filters::split::sticky_hash;
use pingora::upstreams::peer::HttpPeer;
use prometheus::Histogram;

use crate::config;
use crate::protocol::grpc::GrpcCode;
use crate::protocol::Protocol;
use crate::telemetry::metrics::{upstream_latency, Outcome};

/// The `model` label of the state shared by wildcard-routed models without their own.
pub const OTHER_MODELS: &str = "_other";
/// The window the retry budget counts requests and retries over.
const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// One Triton server of a pool.
pub struct Endpoint {
    /// Its first address, as metrics and errors name it.
    pub label: Arc<str>,
    http: Option<HttpPeer>,
    grpc: Option<HttpPeer>,
    pub http_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// The name its TLS certificate is verified as, when the pool speaks TLS.
    pub tls_name: Option<String>,
    /// The server's readiness from active checks (true until a check says otherwise).
    ready: AtomicBool,
    /// Drained by the admin API: no new request or sequence, while sequences
    /// already bound to it finish there.
    drained: AtomicBool,
    /// The stable hash of its label that rendezvous placement of sequences scores it by.
    placement_hash: u64,
    /// Its tries' durations (`trident_upstream_request_duration_seconds`).
    pub latency: Histogram,
}

impl Endpoint {
    fn peer(&self, protocol: Protocol) -> Option<&HttpPeer> {
        match protocol {
            Protocol::Http => self.http.as_ref(),
            Protocol::Grpc => self.grpc.as_ref(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains or undrains; whether that changed anything.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed) != drained
    }
}

/// Balancing, ejection and readiness of every endpoint, for one model (or, in
/// [`Pool::server`], for calls naming no model and for endpoint-wide failures;
/// in [`Pool::other`], for wildcard-routed models without a state of their own).
pub struct ModelState {
    /// The model; empty for the pool-wide state, [`OTHER_MODELS`] for the shared one.
    pub model: Box<str>,
    pub balancer: Balancer,
    pub outliers: Outliers,
    /// Per endpoint: the model's readiness from active checks.
    ready: Box<[AtomicBool]>,
    /// Per endpoint: requests sent (retries included).
    sent: Box<[AtomicU64]>,
    /// Named by a route to this pool (kept whatever clients send); otherwise a
    /// wildcard-routed model, counted against `max_wildcard_models`.
    routed: AtomicBool,
}

impl ModelState {
    /// The state of `model`; endpoint `i` continues `previous`'s endpoint
    /// `from[i]` (balancing, ejection, readiness, counts) when `Some`.
    fn new(
        model: &str,
        pool: &config::Pool,
        routed: bool,
        previous: Option<&ModelState>,
        from: &[Option<usize>],
    ) -> Self {
        let weights: Vec<u32> = pool.endpoints.iter().map(|e| e.weight).collect();
        let n = weights.len();
        let old = |i: usize| Some((previous?, from.get(i).copied().flatten()?));
        ModelState {
            model: model.into(),
            balancer: Balancer::carried_over(
                &pool.balance,
                &weights,
                previous.map(|p| &p.balancer),
                from,
            ),
            outliers: Outliers::carried_over(n, &pool.outlier, previous.map(|p| &p.outliers), from),
            ready: (0..n)
                .map(|i| AtomicBool::new(old(i).is_none_or(|(p, j)| p.is_ready(j))))
                .collect(),
            sent: (0..n)
                .map(|i| AtomicU64::new(old(i).map_or(0, |(p, j)| p.sent(j))))
                .collect(),
            routed: AtomicBool::new(routed),
        }
    }

    fn is_routed(&self) -> bool {
        self.routed.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self, endpoint: usize) -> bool {
        self.ready
            .get(endpoint)
            .is_some_and(|r| r.load(Ordering::Relaxed))
    }

    pub fn set_ready(&self, endpoint: usize, ready: bool) {
        if let Some(r) = self.ready.get(endpoint) {
            r.store(ready, Ordering::Relaxed);
        }
    }

    pub fn sent(&self, endpoint: usize) -> u64 {
        self.sent
            .get(endpoint)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// The label metrics use for this state's model.
    pub fn model_label(&self) -> &str {
        if self.model.is_empty() {
            "_all"
        } else {
            &self.model
        }
    }
}

fn wildcard_count(models: &HashMap<Box<str>, Arc<ModelState>>) -> usize {
    models.values().filter(|s| !s.is_routed()).count()
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// No endpoint of the pool speaks the protocol.
    NoProtocol,
    /// Every endpoint is unready, ejected, drained, or already tried.
    NoneUsable,
}

/// What [`Pool::usable`] asks an endpoint to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    /// A new request or sequence: not for a drained endpoint. `panic`: readiness
    /// checks are ignored ([`Pool::panicking`]).
    New { panic: bool },
    /// A request of a sequence bound to the endpoint: a drain lets it through, so the
    /// sequence finishes where its state is.
    Bound,
}

impl Traffic {
    const NEW: Traffic = Traffic::New { panic: false };
}

pub struct Pool {
    pub name: Arc<str>,
    pub endpoints: Box<[Endpoint]>,
    pub settings: config::Pool,
    /// Calls naming no model, and failures that concern the whole endpoint (it
    /// refuses connections): ejection here takes the endpoint out for every model.
    pub server: Arc<ModelState>,
    /// Wildcard-routed models without a state of their own: names not yet answered
    /// successfully (typos, junk), and those past `max_wildcard_models`.
    pub other: Arc<ModelState>,
    /// Per-model state of routed models and of admitted wildcard-routed ones (see
    /// [`Self::served`]), copied on write: a new model is rare, a lookup is one atomic
    /// load. Never evicted: a client cannot displace a model's state.
    models: ArcSwap<HashMap<Box<str>, Arc<ModelState>>>,
    /// Wildcard-routed models in `models`.
    wildcard_models: AtomicUsize,
    pub retry_budget: RetryBudget,
    pub sequences: SequenceTable,
    /// Circuit breaker: requests in flight to the pool, retries included.
    pub requests: Arc<Limit>,
    /// Circuit breaker: tries waiting for an upstream connection.
    pub pending: Arc<Limit>,
    /// Endpoints chosen while no endpoint of the protocol passed readiness checks.
    panic_picks: AtomicU64,
    epoch: Instant,
}

impl Pool {
    /// `models`: the models routed to this pool by name, tracked (and health-checked) from the start.
    pub fn new(pool: &config::Pool, models: &[&str]) -> Self {
        Self::carried_over(pool, models, None)
    }

    /// A pool for `pool` that keeps what `previous` (the pool of the same name
    /// before a config reload) knows of every endpoint whose addresses did not
    /// change: readiness, per-model balancing, ejection and counts, the
    /// sequences bound to it, and its clock. Requests still running on
    /// `previous` are counted in flight here until they finish.
    pub fn carried_over(pool: &config::Pool, models: &[&str], previous: Option<&Pool>) -> Self {
        let addresses = |e: &config::Endpoint| (e.http, e.grpc, e.metrics);
        let from: Vec<Option<usize>> = pool
            .endpoints
            .iter()
            .map(|e| {
                previous?
                    .settings
                    .endpoints
                    .iter()
                    .position(|old| addresses(old) == addresses(e))
            })
            .collect();
        let endpoints = pool
            .endpoints
            .iter()
            .zip(&from)
            .map(|(e, &old)| Endpoint {
                // A histogram keeps counting across reloads, like the endpoint's other state.
                latency: match old.zip(previous) {
                    Some((i, p)) => p.endpoints[i].latency.clone(),
                    None => upstream_latency(&pool.name, &e.label()),
                },
                label: e.label().into(),
                placement_hash: sticky_hash(&[e.label().as_bytes()]),
                http: e.http.map(|a| peer(pool, e, a, Protocol::Http)),
                grpc: e.grpc.map(|a| peer(pool, e, a, Protocol::Grpc)),
                http_addr: e.http,
                grpc_addr: e.grpc,
                metrics_addr: e.metrics,
                tls_name: pool.tls.as_ref().map(|tls| {
                    let addr = e
                        .http
                        .or(e.grpc)
                        .or(e.metrics)
                        .expect("validated: an address");
                    crate::tls::upstream::server_name(tls, e.host.as_deref(), addr)
                }),
                ready: AtomicBool::new(
                    old.zip(previous)
                        .is_none_or(|(i, p)| p.endpoints[i].is_ready()),
                ),
                drained: AtomicBool::new(
                    old.zip(previous)
                        .is_some_and(|(i, p)| p.endpoints[i].is_drained()),
                ),
            })
            .collect();
        let carried = |model: &str, state: Option<&ModelState>, routed: bool| {
            Arc::new(ModelState::new(model, pool, routed, state, &from))
        };
        let old_models = previous.map(|p| p.models.load_full()).unwrap_or_default();
        let mut known: HashMap<Box<str>, Arc<ModelState>> = models
            .iter()
            .map(|&m| (m.into(), carried(m, old_models.get(m).map(|s| &**s), true)))
            .collect();
        // Wildcard-routed models (and those no longer routed) keep their state while
        // the bound allows.
        let wildcard = old_models
            .iter()
            .filter(|(m, _)| !known.contains_key(*m))
            .take(pool.max_wildcard_models)
            .map(|(m, state)| (m.clone(), carried(m, Some(state), false)))
            .collect::<Vec<_>>();
        let wildcard_models = wildcard.len();
        known.extend(wildcard);
        let retry = &pool.retry;
        let breaker = |limit: fn(&Pool) -> &Arc<Limit>, max: usize| match previous {
            Some(p) if p.settings.circuit_breaker == pool.circuit_breaker => limit(p).clone(),
            _ => Limit::new(max),
        };
        let sequences = &pool.sequences;
        Pool {
            name: pool.name.as_str().into(),
            endpoints,
            server: carried("", previous.map(|p| &*p.server), false),
            other: carried(OTHER_MODELS, previous.map(|p| &*p.other), false),
            models: ArcSwap::from_pointee(known),
            wildcard_models: AtomicUsize::new(wildcard_models),
            retry_budget: RetryBudget::new(
                retry.budget_ratio,
                retry.budget_min_per_second,
                RETRY_BUDGET_WINDOW,
            ),
            sequences: match previous {
                Some(p) => SequenceTable::carried_over(
                    sequences.idle_timeout,
                    sequences.max_sequences,
                    &p.sequences,
                    |old| from.iter().position(|&f| f == Some(old)),
                ),
                None => SequenceTable::new(sequences.idle_timeout, sequences.max_sequences),
            },
            requests: breaker(|p| &p.requests, pool.circuit_breaker.max_requests),
            pending: breaker(|p| &p.pending, pool.circuit_breaker.max_pending),
            // A counter: it must not go back when a reload rebuilds the pool.
            panic_picks: AtomicU64::new(previous.map_or(0, |p| p.panic_picks())),
            settings: pool.clone(),
            epoch: previous.map_or_else(Instant::now, |p| p.epoch),
        }
    }

    /// Nanoseconds on this pool's monotonic clock.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant a reading of [`Pool::now_ns`] stands for: a try's span is
    /// timed by the readings its metrics take.
    pub fn instant(&self, now_ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(now_ns)
    }

    /// The state of `model`: the pool-wide one for `None`, the shared [`Self::other`]
    /// for a model without its own. Never creates one: a client's names cannot grow
    /// the pool's state (see [`Self::served`]).
    pub fn model(&self, model: Option<&str>) -> Arc<ModelState> {
        match model.filter(|m| !m.is_empty()) {
            None => self.server.clone(),
            Some(model) => self.tracked(model).unwrap_or_else(|| self.other.clone()),
        }
    }

    /// The own state of `model`, if it has one.
    pub fn tracked(&self, model: &str) -> Option<Arc<ModelState>> {
        self.models.load().get(model).cloned()
    }

    /// A request for `model` served with `state` got a successful answer: a
    /// wildcard-routed model without its own state gets one, while fewer than
    /// `max_wildcard_models` have one. The model exists upstream then, so names
    /// clients merely try (mistyped, invented) never take a slot, a check or a series.
    pub fn served(&self, state: &Arc<ModelState>, model: Option<&str>) {
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return;
        };
        let max = self.settings.max_wildcard_models;
        if !Arc::ptr_eq(state, &self.other) || self.wildcard_models.load(Ordering::Relaxed) >= max {
            return;
        }
        self.models.rcu(|models| {
            let mut models = HashMap::clone(models);
            if wildcard_count(&models) < max && !models.contains_key(model) {
                let state = ModelState::new(model, &self.settings, false, None, &[]);
                models.insert(model.into(), Arc::new(state));
            }
            models
        });
        self.count_wildcard_models();
    }

    fn count_wildcard_models(&self) {
        let count = wildcard_count(&self.models.load());
        self.wildcard_models.store(count, Ordering::Relaxed);
    }

    /// After a reload that kept this pool as it was: `routed` are the models routes
    /// now name, given their state if new, and never counted as wildcard models.
    pub fn route_models(&self, routed: &[&str]) {
        self.models.rcu(|models| {
            let mut models = HashMap::clone(models);
            for &m in routed {
                models.entry(m.into()).or_insert_with(|| {
                    Arc::new(ModelState::new(m, &self.settings, true, None, &[]))
                });
            }
            for (m, state) in &models {
                state
                    .routed
                    .store(routed.contains(&&**m), Ordering::Relaxed);
            }
            models
        });
        self.count_wildcard_models();
    }

    /// Every own per-model state (routed and admitted wildcard models), for checks.
    pub fn models(&self) -> Vec<Arc<ModelState>> {
        self.models.load().values().cloned().collect()
    }

    /// Every state: pool-wide, shared, then per model, for outlier intervals and metrics.
    pub fn states(&self) -> Vec<Arc<ModelState>> {
        [self.server.clone(), self.other.clone()]
            .into_iter()
            .chain(self.models.load().values().cloned())
            .collect()
    }

    /// Whether endpoint `i` may take `traffic` of `protocol` for `state` now,
    /// readiness of the model aside.
    fn usable(
        &self,
        i: usize,
        state: &ModelState,
        protocol: Protocol,
        now_ns: u64,
        traffic: Traffic,
    ) -> bool {
        let endpoint = &self.endpoints[i];
        endpoint.peer(protocol).is_some()
            && (traffic == Traffic::Bound || !endpoint.is_drained())
            && (traffic == Traffic::New { panic: true } || endpoint.is_ready())
            && !self.server.outliers.is_ejected(i, now_ns)
            && !state.outliers.is_ejected(i, now_ns)
    }

    /// Envoy's panic routing: when no endpoint speaking `protocol` passes its
    /// readiness check, the checks are ignored and every endpoint is tried
    /// rather than every request refused. Checks lag behind the servers (a Triton
    /// started with Trident answers a request before the next check sees it), and
    /// a wrong check (a probe path blocked, a check timeout too short) must not
    /// take the whole pool out. Outlier ejection still holds: it comes from this
    /// pool's own requests failing, lasts a bounded time, and at most
    /// `max_ejection_percent` of the pool is out at once.
    fn panicking(&self, protocol: Protocol) -> bool {
        !self
            .endpoints
            .iter()
            .any(|e| e.peer(protocol).is_some() && e.is_ready())
    }

    /// Endpoints chosen in panic mode so far (`trident_panic_picks_total`).
    pub fn panic_picks(&self) -> u64 {
        self.panic_picks.load(Ordering::Relaxed)
    }

    /// Chooses the endpoint for one try of a request, skipping those in `tried`
    /// (a bit per endpoint index, for retries). Endpoints where the model is not
    /// ready are skipped too, unless it is ready nowhere: then Triton answers for
    /// itself (an unknown model gets Triton's own error, not Trident's). When no
    /// endpoint passes readiness checks at all, every one is tried ([`Self::panicking`]).
    pub fn pick(
        &self,
        state: &ModelState,
        protocol: Protocol,
        tried: u64,
        now_ns: u64,
    ) -> Result<usize, NoEndpoint> {
        self.choose(state, protocol, tried, now_ns, |eligible| {
            state.balancer.pick(now_ns, eligible)
        })
    }

    /// Where a sequence starts under `placement = "hash"`: the endpoint
    /// [`rendezvous`] hashing of `key` (the sequence's stable hash) chooses among
    /// those [`Self::pick`] would consider, so that every proxy of a fleet with the
    /// same view of the pool chooses the same one.
    pub fn place(
        &self,
        state: &ModelState,
        protocol: Protocol,
        key: u64,
        now_ns: u64,
    ) -> Result<usize, NoEndpoint> {
        let weights = &self.settings.endpoints;
        self.choose(state, protocol, 0, now_ns, |eligible| {
            let candidates = self
                .endpoints
                .iter()
                .enumerate()
                .filter(|&(i, _)| eligible(i));
            rendezvous(
                key,
                candidates.map(|(i, e)| (i, e.placement_hash, weights[i].weight)),
            )
        })
    }

    /// [`Self::pick`]'s rules, with `among` choosing one of the endpoints its
    /// argument says are eligible.
    fn choose(
        &self,
        state: &ModelState,
        protocol: Protocol,
        tried: u64,
        now_ns: u64,
        among: impl Fn(&dyn Fn(usize) -> bool) -> Option<usize>,
    ) -> Result<usize, NoEndpoint> {
        if self.endpoints.iter().all(|e| e.peer(protocol).is_none()) {
            return Err(NoEndpoint::NoProtocol);
        }
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let panic = self.panicking(protocol);
        // A probe after ejection is claimed by `admit`; losing that race skips the endpoint.
        let mut lost_probe = 0u64;
        for _ in 0..=self.endpoints.len() {
            let open = |i: usize| {
                untried(i)
                    && (i >= 64 || lost_probe & (1 << i) == 0)
                    && self.usable(i, state, protocol, now_ns, Traffic::New { panic })
            };
            let chosen = among(&|i| open(i) && state.is_ready(i)).or_else(|| among(&open));
            let Some(i) = chosen else { break };
            if self.server.outliers.admit(i, now_ns) && state.outliers.admit(i, now_ns) {
                if panic {
                    self.panic_picks.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(i);
            }
            if i < 64 {
                lost_probe |= 1 << i;
            }
        }
        Err(NoEndpoint::NoneUsable)
    }

    /// Endpoint `i` can take `protocol` traffic for `state` at all (for sequences bound to it).
    pub fn still_usable(
        &self,
        i: usize,
        state: &ModelState,
        protocol: Protocol,
        now_ns: u64,
    ) -> bool {
        i < self.endpoints.len() && self.usable(i, state, protocol, now_ns, Traffic::Bound)
    }

    /// The indexes of the endpoints `name` names: its address (`ip:port`, any of
    /// its HTTP, gRPC or metrics ones), or the `host:port` it was written as,
    /// which names every address the host resolved to.
    pub fn endpoints_named(&self, name: &str) -> Vec<usize> {
        let written = |e: &config::Endpoint| {
            let ports = [e.http, e.grpc, e.metrics].into_iter().flatten();
            let addr = ports.clone().any(|a| a.to_string() == name);
            let host = e.host.as_deref().is_some_and(|host| {
                ports
                    .map(|a| format!("{host}:{}", a.port()))
                    .any(|w| w == name)
            });
            addr || host
        };
        (0..self.endpoints.len())
            .filter(|&i| written(&self.settings.endpoints[i]))
            .collect()
    }

    /// Whether some endpoint passes readiness checks for `state` (the server, and
    /// the model on it) and is not ejected: what a split side needs to take its share.
    pub fn serves(&self, state: &ModelState, protocol: Protocol, now_ns: u64) -> bool {
        (0..self.endpoints.len())
            .any(|i| self.usable(i, state, protocol, now_ns, Traffic::NEW) && state.is_ready(i))
    }

    /// The peer to hand Pingora for endpoint `i`, with `read_timeout` when the
    /// request has a deadline sooner than the pool's own read timeout.
    pub fn peer(
        &self,
        i: usize,
        protocol: Protocol,
        read_timeout: Option<Duration>,
    ) -> Option<Box<HttpPeer>> {
        let mut peer = Box::new(self.endpoints.get(i)?.peer(protocol)?.clone());
        if let Some(limit) = read_timeout {
            let options = &mut peer.options;
            options.read_timeout = Some(options.read_timeout.map_or(limit, |t| t.min(limit)));
            options.write_timeout = Some(options.write_timeout.map_or(limit, |t| t.min(limit)));
        }
        Some(peer)
    }

    /// Endpoints that could take a request for `model` of either protocol now:
    /// ready (the model on them, for a named model) and not ejected.
    pub fn usable_count(&self, model: Option<&str>) -> usize {
        let state = model
            .and_then(|m| self.tracked(m))
            .unwrap_or_else(|| self.server.clone());
        let now = self.now_ns();
        let usable = |i: usize| {
            [Protocol::Http, Protocol::Grpc]
                .into_iter()
                .any(|p| self.usable(i, &state, p, now, Traffic::NEW))
        };
        // The pool-wide state has no per-model readiness: it is always ready there.
        (0..self.endpoints.len())
            .filter(|&i| usable(i) && state.is_ready(i))
            .count()
    }
}

/// How one try of a request ended, as balancing and ejection see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    Success,
    /// 429 / RESOURCE_EXHAUSTED: the endpoint works but is busy.
    Overloaded,
    /// A 5xx, a failing gRPC status, a timeout or a broken response.
    Failure,
    /// The endpoint could not be reached at all.
    ConnectFailure,
    /// The client went away first: says nothing about the endpoint.
    Cancelled,
}

/// gRPC codes that say the server failed (Envoy's outlier detection maps them to 5xx).
const GRPC_FAILURES: [u8; 5] = [2, 4, 13, 14, 15];

impl TryOutcome {
    /// How traces name it.
    pub fn name(self) -> &'static str {
        match self {
            TryOutcome::Success => "Success",
            TryOutcome::Overloaded => "Overloaded",
            TryOutcome::Failure => "Failure",
            TryOutcome::ConnectFailure => "ConnectFailure",
            TryOutcome::Cancelled => "Cancelled",
        }
    }

    /// What a final answer says about the endpoint that gave it.
    pub fn of_answer(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Http(429) => TryOutcome::Overloaded,
            Outcome::Http(status) if status >= 500 => TryOutcome::Failure,
            Outcome::Grpc(code) if code == GrpcCode::ResourceExhausted as u8 => {
                TryOutcome::Overloaded
            }
            Outcome::Grpc(code) if GRPC_FAILURES.contains(&code) => TryOutcome::Failure,
            Outcome::Http(_) | Outcome::Grpc(_) => TryOutcome::Success,
            Outcome::NoResponse => TryOutcome::Failure,
        }
    }
}

/// One try of a request on one endpoint: counted in flight until it is finished
/// or dropped, so an abandoned request never leaves the balancer's count high.
pub struct Attempt {
    pub state: Arc<ModelState>,
    server: Arc<ModelState>,
    latency: Histogram,
    pub endpoint: usize,
    started_ns: u64,
    rtt_seen: bool,
    finished: bool,
}

impl Attempt {
    pub fn start(pool: &Pool, state: Arc<ModelState>, endpoint: usize, now_ns: u64) -> Self {
        state.balancer.start(endpoint);
        if let Some(sent) = state.sent.get(endpoint) {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        Attempt {
            state,
            server: pool.server.clone(),
            latency: pool.endpoints[endpoint].latency.clone(),
            endpoint,
            started_ns: now_ns,
            rtt_seen: false,
            finished: false,
        }
    }

    /// Time since the try started.
    pub fn elapsed_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.started_ns)
    }

    /// The response started: its latency feeds the endpoint's estimate. Later
    /// stream messages do not, so long streams do not read as slow endpoints.
    pub fn responded(&mut self, now_ns: u64) {
        if !self.rtt_seen {
            self.rtt_seen = true;
            let rtt = self.elapsed_ns(now_ns);
            self.state.balancer.observe_rtt(self.endpoint, rtt, now_ns);
        }
    }

    /// Records the outcome; returns the ejections and returns it caused.
    pub fn finish(
        &mut self,
        outcome: TryOutcome,
        now_ns: u64,
    ) -> Vec<(Arc<ModelState>, Transition)> {
        if std::mem::replace(&mut self.finished, true) {
            return Vec::new();
        }
        let i = self.endpoint;
        let balancer = &self.state.balancer;
        balancer.finish(i);
        let elapsed_ns = self.elapsed_ns(now_ns);
        self.latency.observe(elapsed_ns as f64 / 1e9);
        let mut transitions = Vec::new();
        let mut record = |state: &Arc<ModelState>, success: bool| {
            if let Some(t) = state.outliers.record(i, success, now_ns) {
                transitions.push((state.clone(), t));
            }
        };
        match outcome {
            TryOutcome::Success => {
                if !self.rtt_seen {
                    balancer.observe_rtt(i, elapsed_ns, now_ns);
                }
                record(&self.state, true);
                if !Arc::ptr_eq(&self.state, &self.server) {
                    record(&self.server, true);
                }
            }
            TryOutcome::Overloaded => balancer.observe_failure(i, now_ns),
            TryOutcome::Failure => {
                balancer.observe_failure(i, now_ns);
                record(&self.state, false);
            }
            TryOutcome::ConnectFailure => {
                balancer.observe_failure(i, now_ns);
                record(&self.server, false);
            }
            TryOutcome::Cancelled => {}
        }
        transitions
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            self.state.balancer.finish(self.endpoint);
        }
    }
}

fn peer(
    pool: &config::Pool,
    endpoint: &config::Endpoint,
    addr: SocketAddr,
    protocol: Protocol,
) -> HttpPeer {
    let tls = pool.tls.as_ref().filter(|tls| match protocol {
        Protocol::Http => tls.on_http,
        Protocol::Grpc => tls.on_grpc,
    });
    let mut peer = HttpPeer::new(addr, tls.is_some(), String::new());
    if let Some(tls) = tls {
        let name = crate::tls::upstream::server_name(tls, endpoint.host.as_deref(), addr);
        crate::tls::upstream::secure_peer(&mut peer, tls, name);
    }
    let options = &mut peer.options;
    options.connection_timeout = Some(pool.connect_timeout);
    options.read_timeout = pool.read_timeout;
    options.idle_timeout = Some(pool.idle_timeout);
    options.tcp_keepalive = None;
    match protocol {
        // Triton's HTTP endpoint speaks HTTP/1.1 only; h2 clients are translated.
        Protocol::Http => options.set_http_version(1, 1),
        Protocol::Grpc => {
            options.set_http_version(2, 2);
            // Pingora's default of one stream per connection would open a
            // connection per concurrent call; multiplex instead.
            options.max_h2_streams = pool.max_h2_streams;
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_of(endpoints: &str) -> config::Pool {
        let text = format!(
            "[server]\nhttp_listen = \"127.0.0.1:1\"\n[[pools]]\nname = \"p\"\n\
             endpoints = [ {endpoints} ]\n[pools.outlier]\nconsecutive_failures = 1\n\
             [[routes]]\nmodel = \"*\"\npool = \"p\"\n"
        );
        let mut config = config::parse(&text, std::path::Path::new(".")).expect("valid");
        config.pools.remove(0)
    }

    #[test]
    fn a_reload_keeps_the_state_of_the_endpoints_whose_addresses_stay() {
        let old = Pool::new(
            &pool_of(r#"{ http = "10.0.0.1:80" }, { http = "10.0.0.2:80" }"#),
            &["m"],
        );
        let model = old.model(Some("m"));
        assert!(model.outliers.record(1, false, old.now_ns()).is_some());
        model.balancer.start(1);
        old.endpoints[1].set_ready(false);
        let new = Pool::carried_over(
            &pool_of(r#"{ http = "10.0.0.3:80" }, { http = "10.0.0.2:80" }"#),
            &["m"],
            Some(&old),
        );
        let model = new.model(Some("m"));
        let now = new.now_ns();
        assert!(model.outliers.is_ejected(1, now), "10.0.0.2 stays ejected");
        assert!(!model.outliers.is_ejected(0, now), "10.0.0.3 starts afresh");
        assert_eq!(model.balancer.in_flight(1), 1);
        assert!(new.endpoints[0].is_ready());
        assert!(!new.endpoints[1].is_ready(), "10.0.0.2 stays unready");
    }

    #[test]
    fn wildcard_models_get_their_own_state_once_served_and_within_the_bound() {
        let mut settings = pool_of(r#"{ http = "10.0.0.1:80" }"#);
        settings.max_wildcard_models = 2;
        let pool = Pool::new(&settings, &["routed"]);
        let routed = pool.model(Some("routed"));
        assert!(!Arc::ptr_eq(&routed, &pool.other));
        for name in ["junk", "w1", "w2", "w3"] {
            assert!(Arc::ptr_eq(&pool.model(Some(name)), &pool.other), "{name}");
        }
        for name in ["w1", "w2", "w3"] {
            pool.served(&pool.other.clone(), Some(name));
        }
        let own = |name| !Arc::ptr_eq(&pool.model(Some(name)), &pool.other);
        assert!(own("w1") && own("w2"));
        assert!(
            !own("w3") && !own("junk"),
            "past the bound, and never served"
        );
        assert!(Arc::ptr_eq(&pool.model(Some("routed")), &routed));
        assert_eq!(pool.states().len(), 2 + 3);
    }

    fn pool(endpoints: usize) -> Pool {
        let list: Vec<String> = (0..endpoints)
            .map(|i| format!("{{ http = \"127.0.0.1:{}\" }}", 9000 + i))
            .collect();
        Pool::new(&pool_of(&list.join(", ")), &[])
    }

    #[test]
    fn unready_endpoints_are_skipped_while_another_is_ready() {
        let pool = pool(2);
        pool.endpoints[0].set_ready(false);
        let state = pool.model(Some("m"));
        for _ in 0..20 {
            assert_eq!(pool.pick(&state, Protocol::Http, 0, pool.now_ns()), Ok(1));
        }
        assert_eq!(pool.panic_picks(), 0);
        assert!(pool.serves(&state, Protocol::Http, pool.now_ns()));
    }

    #[test]
    fn drained_endpoints_take_no_new_request_but_keep_their_sequences_and_reloads() {
        let pool = pool(3);
        assert!(pool.endpoints[1].set_drained(true));
        assert!(!pool.endpoints[1].set_drained(true), "already drained");
        let state = pool.model(Some("m"));
        let now = pool.now_ns();
        for key in 0..50 {
            assert_ne!(pool.pick(&state, Protocol::Http, 0, now), Ok(1));
            assert_ne!(pool.place(&state, Protocol::Http, key, now), Ok(1));
        }
        assert!(pool.still_usable(1, &state, Protocol::Http, now));
        assert_eq!(pool.usable_count(Some("m")), 2);
        let reloaded = Pool::carried_over(&pool.settings, &[], Some(&pool));
        assert!(reloaded.endpoints[1].is_drained());
        assert!(!reloaded.endpoints[0].is_drained());
        for endpoint in pool.endpoints.iter() {
            endpoint.set_drained(true);
        }
        assert_eq!(
            pool.pick(&state, Protocol::Http, 0, now),
            Err(NoEndpoint::NoneUsable)
        );
        assert_eq!(pool.usable_count(Some("m")), 0);
    }

    #[test]
    fn hash_placement_ignores_load_and_listing_order() {
        let forward = pool(4);
        let state = forward.model(Some("m"));
        let now = forward.now_ns();
        let list: Vec<String> = (0..4)
            .rev()
            .map(|i| format!("{{ http = \"127.0.0.1:{}\" }}", 9000 + i))
            .collect();
        let reversed = Pool::new(&pool_of(&list.join(", ")), &[]);
        let label = |pool: &Pool, i: usize| pool.endpoints[i].label.clone();
        for key in 0..100u64 {
            let placed = forward.place(&state, Protocol::Http, key, now).unwrap();
            state.balancer.start(placed);
            let other = reversed
                .place(&reversed.model(Some("m")), Protocol::Http, key, now)
                .unwrap();
            assert_eq!(
                label(&forward, placed),
                label(&reversed, other),
                "key {key}"
            );
        }
        assert_eq!(forward.endpoints_named("127.0.0.1:9002"), vec![2]);
        assert!(forward.endpoints_named("127.0.0.1:1").is_empty());
    }

    #[test]
    fn with_no_endpoint_ready_every_one_is_tried_and_counted() {
        let pool = pool(2);
        for endpoint in pool.endpoints.iter() {
            endpoint.set_ready(false);
        }
        let state = pool.model(Some("m"));
        let now = pool.now_ns();
        let first = pool
            .pick(&state, Protocol::Http, 0, now)
            .expect("panic pick");
        let second = pool
            .pick(&state, Protocol::Http, 1 << first, now)
            .expect("the other endpoint on retry");
        assert_ne!(first, second);
        assert_eq!(
            pool.pick(&state, Protocol::Http, 0b11, now),
            Err(NoEndpoint::NoneUsable)
        );
        assert_eq!(pool.panic_picks(), 2);
        // Panic routing serves requests; it does not make the pool usable for
        // `/ready` or a split side.
        assert!(!pool.serves(&state, Protocol::Http, now));
        assert_eq!(pool.usable_count(Some("m")), 0);
        assert_eq!(
            pool.pick(&state, Protocol::Grpc, 0, now),
            Err(NoEndpoint::NoProtocol)
        );
    }
}
