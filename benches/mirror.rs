//! The primary's latency with mirroring off, on (to a live, comparing mirror),
//! on to a dead pool, and on to a mirror slower than the primary.
//!
//! Each mode runs the release `trident` binary over in-process mock Tritons
//! and sends JSON infer calls at a fixed rate, timing each from when it was
//! due (so a stall counts, as `oha`/`wrk2` do). Run:
//! `cargo bench --bench mirror` (`-- --rate 400 --secs 10` to change the load).
//! Under `cargo test` (no `--bench` argument) it runs a one-second smoke pass.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use trident::mock::{MockConfig, MockTriton};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

struct Proxy {
    child: Child,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_proxy(body: &str) -> Proxy {
    let (http, admin) = (free_port(), free_port());
    let config = format!(
        "[server]\nhttp_listen = \"{http}\"\nadmin_listen = \"{admin}\"\nthreads = 1\n\
         access_log = \"off\"\ndrain_delay_secs = 0\nshutdown_timeout_secs = 0\n\n{body}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trident.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(config.as_bytes()))
        .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn trident");
    let proxy = Proxy {
        child,
        http,
        _dir: dir,
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let ready: http::Uri = format!("http://{admin}/ready").parse().expect("url");
    for _ in 0..200 {
        if matches!(client.get(ready.clone()).await, Ok(r) if r.status() == 200) {
            return proxy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("trident did not become ready");
}

/// Latencies of `rate` calls per second for `secs`, each timed from when it was due.
async fn load(client: &HttpClient, url: &str, rate: u64, secs: u64) -> (Vec<Duration>, usize) {
    let body = Bytes::from(
        r#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}"#,
    );
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let calls: Vec<_> = (0..rate * secs)
        .map(|i| {
            let due = start + interval * i as u32;
            let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                let request = http::Request::post(url)
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("request");
                let ok = match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.is_ok() && status == 200
                    }
                    Err(_) => false,
                };
                (due.elapsed(), ok)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(calls.len());
    let mut failed = 0;
    for call in calls {
        let (latency, ok) = call.await.expect("call task");
        latencies.push(latency);
        failed += usize::from(!ok);
    }
    latencies.sort_unstable();
    (latencies, failed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let rate = arg("--rate", if smoke { 50 } else { 300 });
    let secs = arg("--secs", if smoke { 1 } else { 8 });
    let primary = MockTriton::start(MockConfig::new("primary", ["m"]))
        .await
        .expect("mock");
    let mirror = MockTriton::start(MockConfig::new("mirror", ["m"]))
        .await
        .expect("mock");
    let slow = MockTriton::start(MockConfig::new("slow", ["m"]))
        .await
        .expect("mock");
    slow.control().set_latency(Duration::from_millis(500));
    let dead = free_port();
    let pools = format!(
        "[[pools]]\nname = \"prod\"\nendpoints = [ {{ http = \"{}\" }} ]\n\
         [[pools]]\nname = \"mirror\"\nendpoints = [ {{ http = \"{}\" }} ]\n\
         [[pools]]\nname = \"slow\"\nendpoints = [ {{ http = \"{}\" }} ]\n\
         [[pools]]\nname = \"dead\"\nendpoints = [ {{ http = \"{dead}\" }} ]\n[pools.health]\nenabled = false\n",
        primary.http_addr, mirror.http_addr, slow.http_addr
    );
    let modes = [
        ("mirroring off", String::new()),
        (
            "mirror to a live pool, compared",
            "[routes.mirror]\npool = \"mirror\"\n".to_owned(),
        ),
        (
            "mirror to a dead pool",
            "[routes.mirror]\npool = \"dead\"\n".to_owned(),
        ),
        (
            "mirror to a 500 ms pool",
            "[routes.mirror]\npool = \"slow\"\n".to_owned(),
        ),
    ];
    println!("primary latency, {rate} calls/s for {secs} s, JSON infer, trident threads = 1");
    println!("| mode | p50 | p90 | p99 | max | failed |");
    println!("|---|---|---|---|---|---|");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let client = Arc::new(client);
    for (name, mirror_section) in modes {
        let proxy = start_proxy(&format!(
            "{pools}[[routes]]\nmodel = \"m\"\npool = \"prod\"\n{mirror_section}"
        ))
        .await;
        let url = format!("http://{}/v2/models/m/infer", proxy.http);
        // Warm the connections before measuring.
        let _ = load(&client, &url, rate, 1).await;
        let (latencies, failed) = load(&client, &url, rate, secs).await;
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {name} | {} | {} | {} | {} | {failed} |",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.90)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0)),
        );
        drop(proxy);
    }
}
