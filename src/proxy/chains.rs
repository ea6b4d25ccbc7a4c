//! The running filter chains: each `[filters.*]` instance is started once and
//! shared by every route that lists it (so a rate limit shared by two routes
//! shares its buckets).

use std::sync::Arc;

use filters::api_key::ApiKeyFilter;
use filters::chain::{Chain, DenyReason, Filter};
use filters::jwt::JwtFilter;
use filters::rate_limit::RateLimitFilter;
use prometheus::IntCounter;

use crate::config::{Config, FilterSpec};
use crate::telemetry::metrics::Metrics;

/// One route's chain and the denial counters of its filters.
pub struct RouteChain {
    pub filters: Chain,
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
}

const REASONS: [&str; 3] = ["unauthenticated", "permission_denied", "rate_limited"];

fn reason_slot(reason: DenyReason) -> usize {
    match reason {
        DenyReason::Unauthenticated => 0,
        DenyReason::PermissionDenied => 1,
        DenyReason::RateLimited { .. } => 2,
    }
}

/// Starts every filter the config declares and assembles each route's chain.
pub fn build(config: &mut Config, metrics: &Metrics) -> Vec<RouteChain> {
    let started: Vec<(Arc<dyn Filter>, [IntCounter; 3])> = std::mem::take(&mut config.filters)
        .into_iter()
        .map(|def| {
            let filter: Arc<dyn Filter> = match def.spec {
                FilterSpec::Jwt(settings) => Arc::new(JwtFilter::start(
                    settings,
                    Box::new(metrics.jwks_fetch_counter(&def.name)),
                )),
                FilterSpec::Claims(filter) => Arc::new(filter),
                FilterSpec::ApiKey(settings) => Arc::new(ApiKeyFilter::new(settings)),
                FilterSpec::RateLimit(settings) => Arc::new(RateLimitFilter::new(settings)),
            };
            let counters = REASONS.map(|reason| metrics.filter_denials(&def.name, reason));
            (filter, counters)
        })
        .collect();
    config
        .routes
        .targets
        .iter()
        .map(|target| RouteChain {
            filters: Chain::new(
                target
                    .filters
                    .iter()
                    .map(|&id| started[id].0.clone())
                    .collect(),
            ),
            denials: target
                .filters
                .iter()
                .map(|&id| started[id].1.clone())
                .collect(),
        })
        .collect()
}
