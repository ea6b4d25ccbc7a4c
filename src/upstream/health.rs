//! Active readiness checks: every interval, each endpoint's `/v2/health/ready`
//! and, for every model the pool knows, `/v2/models/{m}/ready` — or the gRPC
//! `ServerReady` / `ModelReady` calls for endpoints without an HTTP address;
//! over TLS where the pool's `[pools.tls]` says, verified as proxied calls are.
//! A verdict flips only after `unhealthy_threshold` failures (or
//! `healthy_threshold` passes) in a row, so one lost probe moves nothing.
//! Endpoints with a failing verdict, a failed check in their last round, or
//! ejected for every model are checked again every `unhealthy_interval` (1 s by
//! default) rather than every `interval`, so a Triton that comes up rejoins
//! within about a second (and one going down is taken out sooner).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tonic::transport::Channel;

use super::client::{http_builder, http_get, tls_connector, Client, HttpClient, H2, HTTP1};
use super::{Endpoint, ModelState, Pool};
use crate::config::HealthChecks;
use crate::protocol::kserve::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::protocol::kserve::{ModelReadyRequest, ServerReadyRequest};
use crate::telemetry::metrics::Metrics;
use crate::tls::connector::TlsConnector;

/// How one endpoint is asked.
enum Prober {
    Http(HttpClient, SocketAddr),
    Grpc(GrpcInferenceServiceClient<Channel>),
}

/// The pool's TLS connectors for HTTP and gRPC checks; `None`: plain text.
struct Connectors {
    http: Option<TlsConnector>,
    grpc: Option<TlsConnector>,
}

impl Prober {
    fn new(endpoint: &Endpoint, tls: &Connectors, timeout: Duration) -> Option<Self> {
        if let Some(addr) = endpoint.http_addr {
            let client = Client::new(&http_builder(), tls.http.clone());
            return Some(Prober::Http(client, addr));
        }
        let addr = endpoint.grpc_addr?;
        let scheme = if tls.grpc.is_some() { "https" } else { "http" };
        let channel = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .ok()?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = match &tls.grpc {
            None => channel.connect_lazy(),
            Some(connector) => channel.connect_with_connector_lazy(connector.clone()),
        };
        Some(Prober::Grpc(GrpcInferenceServiceClient::new(channel)))
    }

    /// Whether the server (`model` None) or the model is ready; a failure to ask counts as not.
    async fn ready(&self, model: Option<&str>, timeout: Duration) -> bool {
        match self {
            Prober::Http(client, addr) => {
                let path = match model {
                    None => "/v2/health/ready".to_owned(),
                    Some(m) => format!(
                        "/v2/models/{}/ready",
                        utf8_percent_encode(m, NON_ALPHANUMERIC)
                    ),
                };
                matches!(http_get(client, *addr, &path, timeout).await, Ok((s, _)) if s.is_success())
            }
            Prober::Grpc(client) => {
                let mut client = client.clone();
                let asked = async {
                    match model {
                        None => client
                            .server_ready(ServerReadyRequest {})
                            .await
                            .is_ok_and(|r| r.get_ref().ready),
                        Some(m) => client
                            .model_ready(ModelReadyRequest {
                                name: m.to_owned(),
                                version: String::new(),
                            })
                            .await
                            .is_ok_and(|r| r.get_ref().ready),
                    }
                };
                tokio::time::timeout(timeout, asked).await.unwrap_or(false)
            }
        }
    }
}

impl Connectors {
    fn of(pool: &Pool) -> Result<Self, String> {
        Ok(Connectors {
            http: tls_connector(pool, |tls| tls.on_http, HTTP1)?,
            grpc: tls_connector(pool, |tls| tls.on_grpc, H2)?,
        })
    }
}

/// Checks `model` on every endpoint of `pool` now, out of turn, and takes each
/// answer as its verdict at once: after a repository load or unload through
/// Trident, traffic follows without waiting for the next round or a streak
/// (the checks' streaks judge from the verdict, so they carry on from it).
/// Nothing when the pool checks no models or does not track this one.
pub async fn recheck_model(pool: &Pool, model: &str) {
    let Some(checks) = pool.settings.health.as_ref().filter(|c| c.models) else {
        return;
    };
    let Some(state) = pool.tracked(model) else {
        return;
    };
    let connectors = match Connectors::of(pool) {
        Ok(connectors) => connectors,
        Err(why) => {
            log::error!("pool '{}': cannot check model {model}: {why}", pool.name);
            return;
        }
    };
    let probes = pool.endpoints.iter().map(|endpoint| {
        let prober = Prober::new(endpoint, &connectors, checks.timeout);
        async move { Some(prober?.ready(Some(model), checks.timeout).await) }
    });
    let verdicts = futures::future::join_all(probes).await;
    for (i, ready) in verdicts.into_iter().enumerate() {
        if let Some(ready) = ready {
            state.set_ready(i, ready);
        }
    }
}

/// Consecutive results of one check, turned into a verdict with hysteresis.
#[derive(Default)]
struct Streak {
    passes: u32,
    failures: u32,
}

impl Streak {
    /// The new verdict, if this result completes a streak long enough to change it.
    fn record(&mut self, passed: bool, ready: bool, checks: &HealthChecks) -> Option<bool> {
        if passed {
            self.passes += 1;
            self.failures = 0;
            (!ready && self.passes >= checks.healthy_threshold).then_some(true)
        } else {
            self.failures += 1;
            self.passes = 0;
            (ready && self.failures >= checks.unhealthy_threshold).then_some(false)
        }
    }
}

/// Checks `pool` forever (only returns when checks are off, or when the pool's
/// TLS settings cannot be used: its system CA certificates unreadable).
pub async fn run(pool: &Pool, metrics: &Metrics) {
    let Some(checks) = pool.settings.health.clone() else {
        return;
    };
    let connectors = match Connectors::of(pool) {
        Ok(connectors) => connectors,
        Err(why) => {
            log::error!("pool '{}': no readiness checks: {why}", pool.name);
            return;
        }
    };
    let probers: Vec<Option<Prober>> = pool
        .endpoints
        .iter()
        .map(|e| Prober::new(e, &connectors, checks.timeout))
        .collect();
    let mut streaks: HashMap<(usize, Box<str>), Streak> = HashMap::new();
    let mut ticks = tokio::time::interval(checks.unhealthy_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_round = None;
    // Per endpoint: whether one of its checks failed in its last round.
    let mut failed_last = vec![false; probers.len()];
    loop {
        let tick = ticks.tick().await;
        // Every endpoint at each interval; in between, only those failing.
        let full_round = next_round.is_none_or(|next| tick >= next);
        if full_round {
            next_round = Some(tick + checks.interval);
        }
        let models: Vec<std::sync::Arc<ModelState>> = if checks.models {
            pool.models()
        } else {
            Vec::new()
        };
        let now = pool.now_ns();
        let due: Vec<bool> = (0..probers.len())
            .map(|i| full_round || failed_last[i] || failing(pool, &models, i, now))
            .collect();
        let rounds = probers.iter().enumerate().map(|(i, prober)| {
            let models = &models;
            let due = due[i];
            async move {
                let Some(prober) = prober.as_ref().filter(|_| due) else {
                    return Vec::new();
                };
                let mut results = vec![(None, prober.ready(None, checks.timeout).await)];
                for state in models {
                    let ready = prober.ready(Some(&state.model), checks.timeout).await;
                    results.push((Some(state.clone()), ready));
                }
                results
                    .into_iter()
                    .map(|(s, r)| (i, s, r))
                    .collect::<Vec<_>>()
            }
        });
        let results = futures::future::join_all(rounds).await;
        for (failed, results) in failed_last
            .iter_mut()
            .zip(&results)
            .filter(|(_, r)| !r.is_empty())
        {
            *failed = results.iter().any(|(_, _, passed)| !passed);
        }
        for (i, state, passed) in results.into_iter().flatten() {
            let endpoint = &pool.endpoints[i];
            let model = state.as_ref().map_or("", |s| &s.model);
            let label = state.as_ref().map_or("_all", |s| s.model_label());
            metrics.health_check(&pool.name, &endpoint.label, label, passed);
            let ready = state
                .as_ref()
                .map_or(endpoint.is_ready(), |s| s.is_ready(i));
            let streak = streaks.entry((i, model.into())).or_default();
            let verdict = streak.record(passed, ready, &checks);
            // A server that answers its check is reachable: an ejection for failed
            // connections (made while it was down) need not run its course. A model
            // ejected for failing requests is cut short only when it turns ready
            // again (reloaded), since a model can pass checks and fail requests.
            let outliers = state
                .as_ref()
                .map_or(&pool.server.outliers, |s| &s.outliers);
            let back = if state.is_none() {
                passed
            } else {
                verdict == Some(true)
            };
            if back && outliers.probe_now(i, pool.now_ns()) {
                log::info!(
                    "pool '{}': endpoint {} passes readiness checks: its ejection (model {label}) \
                     ends with one probe request",
                    pool.name,
                    endpoint.label
                );
            }
            let Some(verdict) = verdict else {
                continue;
            };
            match &state {
                None => endpoint.set_ready(verdict),
                Some(state) => state.set_ready(i, verdict),
            }
            let now = if verdict { "ready" } else { "not ready" };
            log::warn!(
                "pool '{}': endpoint {} is {now} (model {label})",
                pool.name,
                endpoint.label
            );
        }
    }
}

/// Whether endpoint `i` is out: failing its server check or one of the `models`
/// checks, or ejected for every model (its connections failed) — then a passing
/// check ends the ejection, so it is asked often.
fn failing(pool: &Pool, models: &[std::sync::Arc<ModelState>], i: usize, now_ns: u64) -> bool {
    !pool.endpoints[i].is_ready()
        || pool.server.outliers.is_ejected(i, now_ns)
        || models.iter().any(|state| !state.is_ready(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(unhealthy: u32, healthy: u32) -> HealthChecks {
        HealthChecks {
            interval: Duration::from_secs(1),
            unhealthy_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            models: true,
        }
    }

    #[test]
    fn verdict_flips_only_after_a_streak() {
        let checks = checks(2, 2);
        let mut streak = Streak::default();
        assert_eq!(streak.record(false, true, &checks), None);
        assert_eq!(streak.record(true, true, &checks), None);
        assert_eq!(streak.record(false, true, &checks), None);
        assert_eq!(streak.record(false, true, &checks), Some(false));
        assert_eq!(streak.record(true, false, &checks), None);
        assert_eq!(streak.record(true, false, &checks), Some(true));
        assert_eq!(streak.record(true, true, &checks), None);
    }
}
