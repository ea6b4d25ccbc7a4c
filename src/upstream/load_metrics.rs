//! Triton-aware load: scrapes each endpoint's metrics port every interval and
//! hands each model's pending requests and recent queue time to its balancer.
//! The balancer ignores figures older than `stale_after_ms`, so an endpoint
//! whose scrape fails falls back to latency alone instead of old numbers.
//! Scrapes speak TLS when the pool's `[pools.tls]` names "metrics".

use filters::triton_load::LoadTracker;

use super::client::{http_builder, http_get, Client, HTTP1};
use super::Pool;

/// Scrapes `pool`'s endpoints forever (only returns when scraping is off, or
/// when the pool's TLS settings cannot be used).
pub async fn run(pool: &Pool) {
    let Some(settings) = pool.settings.load_metrics.clone() else {
        return;
    };
    let client = match Client::for_pool(&http_builder(), pool, |tls| tls.on_metrics, HTTP1) {
        Ok(client) => client,
        Err(why) => {
            log::error!("pool '{}': no load scrapes: {why}", pool.name);
            return;
        }
    };
    let mut trackers: Vec<LoadTracker> =
        pool.endpoints.iter().map(|_| LoadTracker::new()).collect();
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let scrapes = pool.endpoints.iter().map(|endpoint| {
            let client = &client;
            async move {
                let addr = endpoint.metrics_addr?;
                match http_get(client, addr, "/metrics", settings.timeout).await {
                    Ok((status, body)) if status.is_success() => Some(body),
                    Ok((status, _)) => {
                        log::debug!("metrics of {}: status {status}", endpoint.label);
                        None
                    }
                    Err(e) => {
                        log::debug!("metrics of {}: {e}", endpoint.label);
                        None
                    }
                }
            }
        });
        let bodies = futures::future::join_all(scrapes).await;
        let now = pool.now_ns();
        for (i, (body, tracker)) in bodies.into_iter().zip(&mut trackers).enumerate() {
            let Some(body) = body else { continue };
            let text = String::from_utf8_lossy(&body);
            // Models without their own state share the balancer of `_other`, where
            // one model's queue says nothing about the next request's.
            for (model, load) in tracker.update(&text) {
                if let Some(state) = pool.tracked(&model) {
                    state.balancer.set_backend_load(
                        i,
                        load.pending,
                        load.queue_ns_per_request,
                        now,
                    );
                }
            }
        }
    }
}
