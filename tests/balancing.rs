//! Latency-aware balancing through the real binary: three mock Tritons answering
//! in 5, 5 and 20 ms, the second slowing to 150 ms half way through, loaded by 16
//! concurrent HTTP clients; peak-EWMA against round robin. Prints each backend's
//! share of traffic and the p99 per phase (`-- --nocapture`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use serde_json::json;

const CLIENTS: usize = 16;
const PHASE: Duration = Duration::from_millis(1500);

struct Phase {
    share: [f64; 3],
    p99_ms: f64,
    mean_ms: f64,
}

async fn run(strategy: &str) -> [Phase; 2] {
    let mocks = [
        mock("b1", &["m"]).await,
        mock("b2", &["m"]).await,
        mock("b3", &["m"]).await,
    ];
    for (m, ms) in mocks.iter().zip([5, 5, 20]) {
        m.control().set_latency(Duration::from_millis(ms));
    }
    let endpoints: Vec<String> = mocks.iter().map(endpoint).collect();
    let trident = Trident::start(&format!(
        "access_log = \"off\"\n[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n\
         [pools.balancer]\nstrategy = \"{strategy}\"\nhalf_life_ms = 1000\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoints.join(", ")
    ))
    .await;
    let url = trident.http_url("/v2/models/m/infer");
    let body = json!({ "inputs": [{ "name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0] }] })
        .to_string();
    let mut phases = Vec::new();
    for phase in 0..2 {
        if phase == 1 {
            mocks[1].control().set_latency(Duration::from_millis(150));
        }
        let samples = Arc::new(Mutex::new(Vec::new()));
        let until = Instant::now() + PHASE;
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (url, body, samples) = (url.clone(), body.clone(), samples.clone());
                tokio::spawn(async move {
                    let client = http1_client();
                    while Instant::now() < until {
                        let started = Instant::now();
                        let (status, headers, _) = post(&client, &url, &[], body.clone()).await;
                        assert_eq!(status, 200);
                        let backend = header(&headers, "x-mock-backend").to_owned();
                        samples.lock().push((backend, started.elapsed()));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        let samples = samples.lock();
        let total = samples.len().max(1) as f64;
        let share = ["b1", "b2", "b3"]
            .map(|b| samples.iter().filter(|(s, _)| s == b).count() as f64 / total);
        let mut latencies: Vec<Duration> = samples.iter().map(|(_, d)| *d).collect();
        latencies.sort_unstable();
        let p99 = latencies[((latencies.len() - 1) as f64 * 0.99) as usize];
        let mean = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
        phases.push(Phase {
            share,
            p99_ms: p99.as_secs_f64() * 1e3,
            mean_ms: mean.as_secs_f64() * 1e3,
        });
    }
    let [first, second]: [Phase; 2] = phases.try_into().ok().unwrap();
    [first, second]
}

fn row(strategy: &str, phases: &[Phase; 2]) {
    let share = |p: &Phase| p.share.map(|s| format!("{:4.1}%", s * 100.0)).join(" ");
    println!(
        "| {strategy} | {} | {:.1} ms | {} | {:.1} ms |",
        share(&phases[0]),
        phases[0].p99_ms,
        share(&phases[1]),
        phases[1].p99_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_follows_latency_where_round_robin_does_not() {
    let ewma = run("peak_ewma").await;
    let round_robin = run("round_robin").await;
    println!("| strategy | share 5/5/20 ms | p99 | share after b2 → 150 ms | p99 |");
    println!("|---|---|---|---|---|");
    row("peak_ewma", &ewma);
    row("round_robin", &round_robin);
    assert!(
        ewma[0].share[2] < 0.25,
        "the 20 ms backend gets less traffic"
    );
    assert!(
        ewma[1].share[1] < round_robin[1].share[1] / 2.0,
        "the degraded backend is avoided"
    );
    // Not the p99: with even 1% of calls still probing the 150 ms backend, both
    // p99s are that backend's latency, and which is lower is noise. The mean
    // shows what avoiding it saves (about 13 ms against 58 ms).
    assert!(
        ewma[1].mean_ms < round_robin[1].mean_ms / 2.0,
        "mean latency: peak_ewma {:.1} ms, round_robin {:.1} ms",
        ewma[1].mean_ms,
        round_robin[1].mean_ms
    );
}
