//! Upstream pools at run time: choosing an endpoint per request ([`pool`]),
//! and the background work that keeps that choice informed ([`health`] checks,
//! [`load_metrics`] scrapes, outlier detector intervals, sequence expiry), and
//! the [`client`] those and mirror copies speak to endpoints with.

pub(crate) mod client;
pub mod health;
pub mod load_metrics;
mod pool;
mod report;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use filters::outlier::Transition;

pub use pool::{Attempt, Endpoint, ModelState, NoEndpoint, Pool, TryOutcome};

use crate::telemetry::metrics::Metrics;

/// How often idle sequences are forgotten.
const SEQUENCE_SWEEP: Duration = Duration::from_secs(10);

/// Counts and logs an ejection or a return.
pub fn report_transition(
    metrics: &Metrics,
    pool: &Pool,
    state: &ModelState,
    transition: &Transition,
) {
    match transition {
        Transition::Ejected {
            endpoint,
            ejections,
            duration,
            reason,
        } => {
            let label = pool.endpoints.get(*endpoint).map_or("-", |e| &e.label);
            metrics.ejection(&pool.name, label, state.model_label(), reason.label());
            log::warn!(
                "pool '{}': endpoint {label} ejected for model {} for {duration:?} \
                 (ejection {ejections}, {})",
                pool.name,
                state.model_label(),
                reason.label()
            );
        }
        Transition::Returned { endpoint } => {
            let label = pool.endpoints.get(*endpoint).map_or("-", |e| &e.label);
            log::info!(
                "pool '{}': endpoint {label} back in service for model {}",
                pool.name,
                state.model_label()
            );
        }
    }
}

/// The pools of one config, indexed by [`crate::config::PoolId`]. A pool a
/// reload leaves unchanged is the same `Arc` in the next config's list.
pub type Pools = Arc<[Arc<Pool>]>;

/// The background work of every pool (health checks, load scrapes, outlier
/// intervals, sequence expiry), on its own thread and runtime so that it never
/// competes with the proxy's workers for their event loops.
pub struct Background {
    serve: tokio::sync::mpsc::UnboundedSender<Pools>,
}

impl Background {
    pub fn start(metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (serve, mut configs) = tokio::sync::mpsc::unbounded_channel::<Pools>();
        std::thread::Builder::new()
            .name("trident-upstream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Per pool (by identity), its tasks: dropping a `JoinSet` aborts them.
                    let mut running: Vec<(Arc<Pool>, tokio::task::JoinSet<()>)> = Vec::new();
                    while let Some(pools) = configs.recv().await {
                        let mut kept = Vec::with_capacity(pools.len());
                        for pool in pools.iter() {
                            let tasks = match running.iter().position(|(p, _)| Arc::ptr_eq(p, pool))
                            {
                                Some(i) => running.swap_remove(i).1,
                                None => spawn_pool_tasks(pool, &metrics),
                            };
                            kept.push((pool.clone(), tasks));
                        }
                        running = kept;
                    }
                })
            })?;
        Ok(Background { serve })
    }

    /// Runs the work of `pools` from now on: a pool no longer listed stops, a
    /// new one starts, the same one carries on.
    pub fn serve(&self, pools: &Pools) {
        // Fails only if the thread is gone, which its runtime's panic already reported.
        let _ = self.serve.send(pools.clone());
    }
}

fn spawn_pool_tasks(pool: &Arc<Pool>, metrics: &Arc<Metrics>) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let (p, m) = (pool.clone(), metrics.clone());
    tasks.spawn(async move { detect_outliers(&p, &m).await });
    let p = pool.clone();
    tasks.spawn(async move { sweep_sequences(&p).await });
    if pool.settings.health.is_some() {
        let (p, m) = (pool.clone(), metrics.clone());
        tasks.spawn(async move { health::run(&p, &m).await });
    }
    if pool.settings.load_metrics.is_some() {
        let p = pool.clone();
        tasks.spawn(async move { load_metrics::run(&p).await });
    }
    tasks
}

/// Runs the success-rate and failure-percentage detectors every interval.
async fn detect_outliers(pool: &Pool, metrics: &Metrics) {
    let mut ticks = tokio::time::interval(pool.settings.outlier.interval);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = pool.now_ns();
        for state in pool.states() {
            for transition in state.outliers.check_interval(now) {
                report_transition(metrics, pool, &state, &transition);
            }
        }
    }
}

async fn sweep_sequences(pool: &Pool) {
    let mut ticks = tokio::time::interval(SEQUENCE_SWEEP);
    loop {
        ticks.tick().await;
        pool.sequences.sweep(pool.now_ns());
    }
}

/// Prometheus lines for the state of every pool's endpoints, rendered when scraped.
pub fn render_state(pools: &[Arc<Pool>], out: &mut Vec<u8>) {
    let mut text = String::new();
    let families = [
        (
            "trident_endpoint_ready",
            "gauge",
            "1 when the endpoint (model _all) or the model on it passes readiness checks",
        ),
        (
            "trident_endpoint_ejected",
            "gauge",
            "1 while outlier detection keeps the endpoint out for the model (_all: every model)",
        ),
        (
            "trident_endpoint_in_flight",
            "gauge",
            "Requests in flight to the endpoint for the model",
        ),
        (
            "trident_endpoint_latency_seconds",
            "gauge",
            "The balancer's peak-EWMA latency estimate of the endpoint for the model",
        ),
        (
            "trident_endpoint_requests_total",
            "counter",
            "Tries sent to the endpoint for the model, retries included",
        ),
    ];
    for (index, (name, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in pools {
            let now = pool.now_ns();
            for state in pool.states() {
                for (i, endpoint) in pool.endpoints.iter().enumerate() {
                    let value = match index {
                        0 if state.model.is_empty() => f64::from(u8::from(endpoint.is_ready())),
                        0 => f64::from(u8::from(state.is_ready(i))),
                        1 => f64::from(u8::from(state.outliers.is_ejected(i, now))),
                        2 => f64::from(state.balancer.in_flight(i)),
                        3 => state.balancer.rtt_estimate_ns(i, now) as f64 / 1e9,
                        _ => state.sent(i) as f64,
                    };
                    let _ = writeln!(
                        text,
                        "{name}{{pool=\"{}\",endpoint=\"{}\",model=\"{}\"}} {value}",
                        escape(&pool.name),
                        escape(&endpoint.label),
                        escape(state.model_label()),
                    );
                }
            }
        }
    }
    let _ = writeln!(
        text,
        "# HELP trident_endpoint_drained 1 while the endpoint is drained through the admin API\n\
         # TYPE trident_endpoint_drained gauge"
    );
    for pool in pools {
        for endpoint in pool.endpoints.iter() {
            let _ = writeln!(
                text,
                "trident_endpoint_drained{{pool=\"{}\",endpoint=\"{}\"}} {}",
                escape(&pool.name),
                escape(&endpoint.label),
                u8::from(endpoint.is_drained())
            );
        }
    }
    render_per_pool(
        &mut text,
        pools,
        (
            "trident_sequences_active",
            "gauge",
            "Sequences bound to an endpoint",
        ),
        |pool| pool.sequences.len() as u64,
    );
    render_per_pool(
        &mut text,
        pools,
        (
            "trident_panic_picks_total",
            "counter",
            "Endpoints chosen while none of the pool passed readiness checks (panic routing)",
        ),
        Pool::panic_picks,
    );
    out.extend_from_slice(text.as_bytes());
    let histograms = pools
        .iter()
        .flat_map(|p| p.endpoints.iter().map(|e| &e.latency));
    crate::telemetry::metrics::render_upstream_latency(histograms, out);
}

/// One sample per pool of the family `(name, kind, help)`.
fn render_per_pool(
    text: &mut String,
    pools: &[Arc<Pool>],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&Pool) -> u64,
) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for pool in pools {
        let _ = writeln!(
            text,
            "{name}{{pool=\"{}\"}} {}",
            escape(&pool.name),
            value(pool)
        );
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
