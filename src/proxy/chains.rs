//! The running filter chains: each `[filters.*]` instance is started once and
//! shared by every route that lists it (so a rate limit shared by two routes
//! shares its buckets).

use std::sync::Arc;

use filters::api_key::ApiKeyFilter;
use filters::chain::{Chain, DenyReason, Filter};
use filters::cors::Cors;
use filters::jwt::JwtFilter;
use filters::rate_limit::RateLimitFilter;
use prometheus::IntCounter;

use crate::config::{Config, FilterSpec};
use crate::telemetry::metrics::Metrics;

/// One route's chain and the denial counters of its filters.
pub struct RouteChain {
    pub filters: Chain,
    /// The chain's `cors` filter, which runs before all the others.
    pub cors: Option<Arc<Cors>>,
    /// By position in the chain: the filters' `[filters.*]` names (shared: a
    /// denial's answer carries one).
    names: Vec<Arc<str>>,
    /// By position in the chain, then [`reason_slot`].
    denials: Vec<[IntCounter; 3]>,
}

impl RouteChain {
    /// Counts a denial by the filter at `position` in the chain.
    pub fn count_denial(&self, position: usize, reason: DenyReason) {
        if let Some(counters) = self.denials.get(position) {
            counters[reason_slot(reason)].inc();
        }
    }

    /// The name of the filter at `position` in the chain.
    pub fn filter_name(&self, position: usize) -> Option<Arc<str>> {
        self.names.get(position).cloned()
    }
}

const REASONS: [&str; 3] = ["unauthenticated", "permission_denied", "rate_limited"];

/// A denial's reason as metrics and traces name it.
pub fn reason_label(reason: DenyReason) -> &'static str {
    REASONS[reason_slot(reason)]
}

fn reason_slot(reason: DenyReason) -> usize {
    match reason {
        DenyReason::Unauthenticated => 0,
        DenyReason::PermissionDenied => 1,
        DenyReason::RateLimited { .. } => 2,
    }
}

/// A running `[filters.*]` instance, kept across reloads that leave its section alone.
#[derive(Clone)]
pub struct StartedFilter {
    name: String,
    fingerprint: u64,
    filter: Arc<dyn Filter>,
    cors: Option<Arc<Cors>>,
    denials: [IntCounter; 3],
}

impl StartedFilter {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `other` is this very instance (kept by a reload).
    pub fn is_same(&self, other: &StartedFilter) -> bool {
        Arc::ptr_eq(&self.filter, &other.filter)
    }
}

/// Starts every filter the config declares and assembles each route's chain.
/// A filter whose section and files are as in `running` (the filters of the
/// config being replaced) is that same instance: a reload neither refills a
/// rate limit's buckets nor forgets a JWT filter's cache and key set.
pub fn build(
    config: &mut Config,
    metrics: &Metrics,
    running: &[StartedFilter],
) -> (Vec<StartedFilter>, Vec<RouteChain>) {
    let started: Vec<StartedFilter> = std::mem::take(&mut config.filters)
        .into_iter()
        .map(|def| {
            if let Some(same) = running
                .iter()
                .find(|f| f.name == def.name && f.fingerprint == def.fingerprint)
            {
                return same.clone();
            }
            let cors = match &def.spec {
                FilterSpec::Cors(cors) => Some(cors.clone()),
                _ => None,
            };
            let filter: Arc<dyn Filter> = match def.spec {
                FilterSpec::Jwt(settings) => Arc::new(JwtFilter::start(
                    settings,
                    Box::new(metrics.jwks_fetch_counter(&def.name)),
                )),
                FilterSpec::Claims(filter) => Arc::new(filter),
                FilterSpec::ApiKey(settings) => Arc::new(ApiKeyFilter::new(settings)),
                FilterSpec::RateLimit(settings) => Arc::new(RateLimitFilter::new(settings)),
                FilterSpec::Cors(cors) => cors,
            };
            let denials = REASONS.map(|reason| metrics.filter_denials(&def.name, reason));
            StartedFilter {
                name: def.name,
                fingerprint: def.fingerprint,
                filter,
                cors,
                denials,
            }
        })
        .collect();
    let chains = config
        .routes
        .targets
        .iter()
        .map(|target| RouteChain {
            filters: Chain::new(
                target
                    .filters
                    .iter()
                    .map(|&id| started[id].filter.clone())
                    .collect(),
            ),
            cors: target
                .filters
                .iter()
                .find_map(|&id| started[id].cors.clone()),
            names: target
                .filters
                .iter()
                .map(|&id| Arc::from(started[id].name.as_str()))
                .collect(),
            denials: target
                .filters
                .iter()
                .map(|&id| started[id].denials.clone())
                .collect(),
        })
        .collect();
    (started, chains)
}
