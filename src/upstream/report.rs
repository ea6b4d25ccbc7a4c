//! A pool's state as the admin API's `GET /pools` shows it: what the balancer,
//! the readiness checks and outlier detection know of each endpoint, per model.
//! Read from the same atomics the proxy uses, taking no lock the hot path waits on.

use serde_json::{json, Map, Value};

use super::{ModelState, Pool};

impl Pool {
    /// The pool's endpoints, each with its addresses, drain and readiness flags,
    /// sequences bound to it, and per model: readiness, ejection (reason, time
    /// left), requests in flight, latency estimate, Triton-reported load and
    /// requests sent.
    pub fn report(&self) -> Value {
        let now = self.now_ns();
        let states = self.states();
        let sequences = self.sequences.per_endpoint(self.endpoints.len());
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .zip(self.settings.endpoints.iter())
            .enumerate()
            .map(|(i, (endpoint, written))| {
                let models: Map<String, Value> = states
                    .iter()
                    .map(|state| {
                        (
                            state.model_label().to_owned(),
                            self.model_report(state, i, now),
                        )
                    })
                    .collect();
                json!({
                    "address": endpoint.label,
                    "host": written.host,
                    "http": endpoint.http_addr.map(|a| a.to_string()),
                    "grpc": endpoint.grpc_addr.map(|a| a.to_string()),
                    "metrics": endpoint.metrics_addr.map(|a| a.to_string()),
                    "weight": written.weight,
                    "ready": endpoint.is_ready(),
                    "drained": endpoint.is_drained(),
                    "sequences": sequences[i],
                    "models": models,
                })
            })
            .collect();
        json!({
            "name": self.name,
            "sequence_placement": self.settings.sequences.placement,
            "sequences": self.sequences.len(),
            "endpoints": endpoints,
        })
    }

    fn model_report(&self, state: &ModelState, i: usize, now: u64) -> Value {
        let millis = |ns: u64| ns as f64 / 1e6;
        let ejection = state
            .outliers
            .ejection(i, now)
            .or_else(|| self.server.outliers.ejection(i, now));
        // The pool-wide state (`_all`) is the server's: its readiness is the endpoint's.
        let ready = if state.model.is_empty() {
            self.endpoints[i].is_ready()
        } else {
            state.is_ready(i)
        };
        let mut report = json!({
            "ready": ready,
            "ejected": ejection.is_some(),
            "in_flight": state.balancer.in_flight(i),
            "latency_estimate_ms": millis(state.balancer.rtt_estimate_ns(i, now)),
            "requests": state.sent(i),
        });
        if let Some((reason, until)) = ejection {
            report["ejection"] = json!({
                "reason": reason.label(),
                "remaining_ms": millis(until.saturating_sub(now)),
            });
        }
        if self.settings.load_metrics.is_some() {
            report["triton_load"] = match state.balancer.backend_load(i, now) {
                Some((pending, queue_ns)) => json!({
                    "pending": pending,
                    "queue_ms_per_request": millis(queue_ns),
                }),
                None => Value::Null,
            };
        }
        report
    }
}
