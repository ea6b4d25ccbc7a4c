//! Through the real binary, under a bounded mixed load (HTTP/1.1 keep-alive,
//! h2c, gRPC unary, one long gRPC stream, one 6 s call): SIGTERM drains and
//! SIGHUP reloads without failing a request.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

const INFER: &str = r#"{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[1.0]}]}"#;
const SLOW_INFER: &str = r#"{"parameters":{"mock_sleep_ms":6000},"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[1.0]}]}"#;

/// Requests sent, and what went wrong with any that failed.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Calls an h2 client started as Trident's GOAWAY arrived, which the server
    /// never saw (RFC 9113 §6.8), sent again as gRPC's transparent retry does
    /// (grpc-core, so `tritonclient.grpc`); hyper and tonic leave that to callers.
    /// Counted, and printed with each event's figures.
    resent: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// Whether a client error is a call that never reached Trident because of a
/// GOAWAY: refused by it (streams past its last stream id), or still queued in
/// hyper when the connection it was meant for closed after it (hyper's
/// `Canceled`: such a request was never written; one that was written fails
/// as an incomplete message instead).
fn refused_by_goaway(error: &str) -> bool {
    (error.contains("GoAway(") && error.contains("NO_ERROR"))
        || error.contains("Canceled, \"connection closed\"")
}

impl Tally {
    /// Whether `result` is a GOAWAY refusal to send again (counted).
    fn resend(&self, result: &Result<u16, String>) -> bool {
        let refused = matches!(result, Err(e) if refused_by_goaway(e));
        if refused {
            self.resent.fetch_add(1, Ordering::Relaxed);
        }
        refused
    }

    fn record(&self, what: &str, result: Result<u16, String>) {
        match result {
            Ok(200) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => self.fail(format!("{what}: status {status}")),
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    fn fail(&self, failure: String) {
        self.failures.lock().unwrap().push(failure);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// The load ran, and not one request failed; says so (`-- --nocapture`).
    fn assert_none_failed(&self, event: &str) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}",
            failures.len()
        );
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(ok > 20, "the load ran");
        eprintln!(
            "{event}: {ok} calls answered, 0 failed, {} refused by GOAWAY and sent again",
            self.resent.load(Ordering::Relaxed)
        );
    }
}

/// A client that sends until told to stop, as one behind a load balancer would
/// until the balancer takes Trident out.
struct Load {
    stop: Arc<AtomicBool>,
    /// Ends the stream alone (it ends with the rest otherwise).
    stream_stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn http_status(client: &HttpClient, url: &str, body: &'static str) -> Result<u16, String> {
    let request = http::Request::post(url)
        .body(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
        .unwrap();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

impl Load {
    /// 4 HTTP/1.1 keep-alive clients, 2 h2c clients and 2 gRPC unary clients on
    /// `model`, plus a gRPC stream sending a message every 100 ms.
    async fn start(trident: &Trident, model: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        let url = trident.http_url(&format!("/v2/models/{model}/infer"));
        for (kind, client, count) in [("http1", http1_client(), 4), ("h2c", h2c_client(), 2)] {
            for _ in 0..count {
                let (stop, tally, client, url) =
                    (stop.clone(), tally.clone(), client.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let mut result = http_status(&client, &url, INFER).await;
                        while tally.resend(&result) {
                            result = http_status(&client, &url, INFER).await;
                        }
                        tally.record(kind, result);
                    }
                }));
            }
        }
        for _ in 0..2 {
            let (stop, tally) = (stop.clone(), tally.clone());
            let mut grpc = client(trident.grpc_url()).await;
            let model = model.to_owned();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut result = Err(String::new());
                    for _ in 0..3 {
                        let request = infer_request(&model, "u", Bytes::from_static(b"x"));
                        result = grpc
                            .model_infer(request)
                            .await
                            .map(|_| 200)
                            .map_err(|e| format!("{e:?}"));
                        if !tally.resend(&result) {
                            break;
                        }
                    }
                    tally.record("grpc", result);
                }
            }));
        }
        let stream_stop = Arc::new(AtomicBool::new(false));
        let (stop_stream, tally_stream) = (stream_stop.clone(), tally.clone());
        let mut grpc = client(trident.grpc_url()).await;
        let model = model.to_owned();
        tasks.push(tokio::spawn(async move {
            let (send, messages) = tokio::sync::mpsc::channel(4);
            let outcome = async {
                // Trident routes a call on its first message: it must be on its way.
                let first = infer_request(&model, "first", Bytes::from_static(b"s"));
                send.send(first).await.map_err(|e| e.to_string())?;
                let mut answers = grpc
                    .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(messages))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                let mut sent = 1;
                loop {
                    match answers.message().await {
                        Ok(Some(answer)) if answer.error_message.is_empty() => {}
                        other => return Err(format!("stream message {sent}: {other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if stop_stream.load(Ordering::Relaxed) {
                        break;
                    }
                    let request =
                        infer_request(&model, &sent.to_string(), Bytes::from_static(b"s"));
                    send.send(request).await.map_err(|e| e.to_string())?;
                    sent += 1;
                }
                drop(send);
                match answers.message().await {
                    Ok(None) => Ok(sent),
                    other => Err(format!("stream end: {other:?}")),
                }
            }
            .await;
            match outcome {
                Ok(sent) if sent > 0 => tally_stream.record("stream", Ok(200)),
                Ok(_) => tally_stream.fail("stream: no message sent".into()),
                Err(e) => tally_stream.fail(format!("stream: {e}")),
            }
        }));
        Load {
            stop,
            stream_stop,
            tally,
            tasks,
        }
    }

    /// Ends the stream call (the client half-closes it and awaits its end).
    fn end_stream(&self) {
        self.stream_stop.store(true, Ordering::Relaxed);
    }

    /// Stops sending and waits for every client; returns the tally.
    async fn finish(self) -> Arc<Tally> {
        self.end_stream();
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        self.tally
    }
}

/// Pool `a` of `mock`, the default route to it.
fn one_pool(mock: &MockTriton) -> String {
    format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n",
        endpoint(mock)
    )
}

/// Trident started on [`one_pool`] with `lifecycle` keys.
async fn start_one_pool(mock: &MockTriton, lifecycle: &str) -> Trident {
    Trident::start_with_lifecycle(&one_pool(mock), 2, lifecycle).await
}

/// Waits up to 10 s for the process to end.
async fn exit_of(trident: &mut Trident) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = trident.try_exit() {
            return status;
        }
        assert!(Instant::now() < deadline, "trident did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One inference call for model `m` on a new connection.
async fn infer_m(trident: &Trident) -> Response {
    post(
        &http1_client(),
        &trident.http_url("/v2/models/m/infer"),
        &[],
        INFER,
    )
    .await
}

async fn ready_status(trident: &Trident) -> Option<u16> {
    let url = format!("http://{}/ready", trident.admin);
    let response = http1_client().get(url.parse().unwrap()).await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_failing_a_request() {
    let a = mock("a1", &["m"]).await;
    let mut trident = start_one_pool(&a, "drain_delay_secs = 2\nshutdown_timeout_secs = 20").await;
    let load = Load::start(&trident, "m").await;
    let slow_url = trident.http_url("/v2/models/m/infer");
    let slow =
        tokio::spawn(async move { http_status(&http1_client(), &slow_url, SLOW_INFER).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let signalled = Instant::now();
    trident.signal("TERM");
    let mut not_ready_after = None;
    while signalled.elapsed() < Duration::from_secs(1) {
        if ready_status(&trident).await == Some(503) {
            not_ready_after = Some(signalled.elapsed());
            break;
        }
    }
    let not_ready_after = not_ready_after.expect("/ready turned 503");
    assert!(
        not_ready_after < Duration::from_millis(100),
        "/ready 503 only after {not_ready_after:?}"
    );
    // Within the drain delay, a new client is still served (its connection then closed).
    let (status, headers, _) = infer_m(&trident).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "connection"), "close");
    // The load balancer takes Trident out: clients stop sending new requests.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tally = load.finish().await;
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the load outlived the drain delay"
    );

    assert_eq!(slow.await.unwrap(), Ok(200), "the 6 s call completes");
    tally.assert_none_failed("SIGTERM drain");
    assert_eq!(
        tally.resent.load(Ordering::Relaxed),
        0,
        "no GOAWAY met a client still sending"
    );
    // Listeners are closed after the drain delay; the process ends once the slow call did.
    let status = exit_of(&mut trident).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(12),
        "exit took {:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cuts_logs_and_counts_what_still_runs() {
    let a = mock("a1", &["m"]).await;
    let mut trident = start_one_pool(&a, "drain_delay_secs = 0\nshutdown_timeout_secs = 1").await;
    let slow_url = trident.http_url("/v2/models/m/infer");
    let slow =
        tokio::spawn(async move { http_status(&http1_client(), &slow_url, SLOW_INFER).await });
    // Signalled before the call reaches the upstream, the call would be refused, not cut.
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.control().infer_calls() >= 1
        })
        .await,
        "the upstream never got the call"
    );
    trident.signal("TERM");
    assert!(slow.await.unwrap().is_err(), "the slow call was cut");
    let line = trident.access_log_line("\"error\":\"cut: ").await;
    assert_eq!(line["model"], "m");
    exit_of(&mut trident).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_signals_neither_stop_nor_fail_requests() {
    let a = mock("a1", &["m"]).await;
    let mut trident = Trident::start(&one_pool(&a)).await;
    for signal in ["USR1", "USR2", "HUP"] {
        trident.signal(signal);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(trident.try_exit().is_none(), "trident still runs");
    let (status, _, _) = infer_m(&trident).await;
    assert_eq!(status, 200);
}

/// Polls `/metrics` until `series` reads `value` (true), for up to 10 s.
async fn metric_becomes(trident: &Trident, series: &str, value: f64) -> bool {
    eventually(Duration::from_secs(10), || async {
        metric(&trident.metrics().await, series) == value
    })
    .await
}

/// Pools `a` and `b` (and `extra_pool`, TOML of further pools), and routes:
/// `limited` (rate limited) and `*` to `a`, `n` to `n_pool`.
fn reload_config(a: &[&MockTriton], b: &MockTriton, extra_pool: &str, n_pool: &str) -> String {
    let endpoints = |mocks: &[&MockTriton]| {
        mocks
            .iter()
            .map(|m| endpoint(m))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[filters.limit]\nkind = \"rate_limit\"\nrate_per_second = 0.001\nburst = 3\nkey = [\"header:x-user\"]\n\n\
         [[pools]]\nname = \"a\"\nendpoints = [ {} ]\n\
         [pools.outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 600000\nmax_ejection_ms = 600000\nmax_ejection_percent = 50\n\
         [pools.retry]\nmax_retries = 0\n[pools.balancer]\nstrategy = \"round_robin\"\n\
         [[pools]]\nname = \"b\"\nendpoints = [ {} ]\n{extra_pool}\n\
         [[routes]]\nmodel = \"limited\"\npool = \"a\"\nfilters = [\"limit\"]\n\
         [[routes]]\nmodel = \"n\"\npool = \"{n_pool}\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"a\"\n",
        endpoints(a),
        endpoints(&[b]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_keeping_the_state_of_what_did_not_change() {
    let models = ["m", "n", "limited"];
    let (a1, a2, a3) = (
        mock("a1", &models).await,
        mock("a2", &models).await,
        mock("a3", &models).await,
    );
    let b1 = mock("b1", &models).await;
    let v1 = reload_config(&[&a1, &a2, &a3], &b1, "", "a");
    let trident = Trident::start_with_lifecycle(&v1, 2, FAST_STOP).await;
    let http = http1_client();
    let infer = |model: &str| trident.http_url(&format!("/v2/models/{model}/infer"));

    // a2 fails until ejected for model m (for 10 minutes).
    a2.control().set_fault(trident::mock::Fault::Unavailable);
    let ejected = format!(
        "trident_endpoint_ejected{{pool=\"a\",endpoint=\"{}\",model=\"m\"}}",
        a2.http_addr
    );
    for _ in 0..30 {
        post(&http, &infer("m"), &[], INFER).await;
    }
    assert!(metric_becomes(&trident, &ejected, 1.0).await, "a2 ejected");
    a2.control().set_fault(trident::mock::Fault::None);
    // The bucket of user u is drained.
    for _ in 0..3 {
        assert_eq!(
            post(&http, &infer("limited"), &[("x-user", "u")], INFER)
                .await
                .0,
            200
        );
    }
    assert_eq!(
        post(&http, &infer("limited"), &[("x-user", "u")], INFER)
            .await
            .0,
        429
    );
    // Model `limited` has no traffic from here on (its calls are refused before
    // any endpoint), so its estimate only moves if a reload resets it (to 30 ms).
    let latency = format!(
        "trident_endpoint_latency_seconds{{pool=\"a\",endpoint=\"{}\",model=\"limited\"}}",
        a1.http_addr
    );
    let latency_before = metric(&trident.metrics().await, &latency);
    assert!(
        latency_before > 0.0 && latency_before < 0.02,
        "{latency_before}"
    );

    let load = Load::start(&trident, "m").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // v2: a3 removed, a new pool c (of c1), and n moves to it.
    let c1 = mock("c1", &models).await;
    let server = std::fs::read_to_string(trident.config_path())
        .unwrap()
        .replace(&v1, "");
    let pool_c = format!(
        "[[pools]]\nname = \"c\"\nendpoints = [ {} ]\n",
        endpoint(&c1)
    );
    let v2 = reload_config(&[&a1, &a2], &b1, &pool_c, "c");
    std::fs::write(trident.config_path(), format!("{server}{v2}")).unwrap();
    trident.signal("HUP");
    assert!(
        metric_becomes(
            &trident,
            "trident_config_reloads_total{result=\"success\"}",
            1.0
        )
        .await,
        "reloaded"
    );
    let (status, headers, _) = post(&http, &infer("n"), &[], INFER).await;
    assert_eq!(
        (status.as_u16(), header(&headers, "x-mock-backend")),
        (200, "c1")
    );
    let (_, _, report) = get(&http, &format!("http://{}/reload", trident.admin)).await;
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(
        report["pools"],
        serde_json::json!({ "a": "changed", "b": "unchanged", "c": "added" })
    );
    assert_eq!(report["filters_kept"], serde_json::json!(["limit"]));
    assert_eq!(
        post(&http, &infer("limited"), &[("x-user", "u")], INFER)
            .await
            .0,
        429,
        "a reload must not refill a rate limit"
    );
    let text = trident.metrics().await;
    assert_eq!(metric(&text, &ejected), 1.0, "a2 stays ejected");
    let latency_after = metric(&text, &latency);
    assert!(
        (latency_after - latency_before).abs() <= latency_before / 2.0,
        "EWMA kept: {latency_before} then {latency_after}"
    );
    let a3_state = format!(
        "trident_endpoint_ready{{pool=\"a\",endpoint=\"{}\"",
        a3.http_addr
    );
    assert!(!text.contains(&a3_state), "a3 is gone");

    // A bad file: the running config stays, every error is reported.
    std::fs::write(
        trident.config_path(),
        format!("{server}{v2}\n[[routes]]\nmodel = 7\n"),
    )
    .unwrap();
    let reload = format!("http://{}/reload", trident.admin);
    let (status, _, body) = post(&http, &reload, &[], "").await;
    assert_eq!(status, 422);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["errors"][0].as_str().unwrap().contains("routes[3]"),
        "{body}"
    );
    // A listener address cannot be reloaded.
    let moved = server.replace(&trident.http.to_string(), &free_port().to_string());
    std::fs::write(trident.config_path(), format!("{moved}{v2}")).unwrap();
    let (status, _, body) = post(&http, &reload, &[], "").await;
    assert_eq!(status, 422);
    assert!(String::from_utf8_lossy(&body).contains("server.http_listen"));
    let (status, headers, _) = post(&http, &infer("n"), &[], INFER).await;
    assert_eq!(
        (status.as_u16(), header(&headers, "x-mock-backend")),
        (200, "c1")
    );
    assert_eq!(
        metric(
            &trident.metrics().await,
            "trident_config_reloads_total{result=\"failure\"}"
        ),
        2.0
    );

    load.finish().await.assert_none_failed("SIGHUP reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_hands_the_listeners_to_an_upgrade_without_failing_a_request() {
    let a = mock("a1", &["m"]).await;
    let socket_dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket_dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = socket_dir.path().join("upgrade.sock");
    let old = start_one_pool(
        &a,
        &format!(
            "drain_delay_secs = 0\nshutdown_timeout_secs = 10\nupgrade_socket = \"{}\"",
            socket.display()
        ),
    )
    .await;
    let mut old = old;
    let load = Load::start(&old, "m").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_trident"))
        .args(["run", "--upgrade", "--config"])
        .arg(old.config_path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the new trident");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process does not wait at {socket:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.signal("QUIT");
    // The stream open on the old process keeps it until it ends: it ends soon.
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.end_stream();
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.try_exit().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        assert!(new.try_wait().unwrap().is_none(), "the new process exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The load carries on, on the new process alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.finish().await;
    let ready = http1_client()
        .get(format!("http://{}/ready", old.admin).parse().unwrap())
        .await
        .map(|r| r.status().as_u16());
    let _ = new.kill();
    let _ = new.wait();
    tally.assert_none_failed("SIGQUIT upgrade");
    assert_eq!(
        ready.ok(),
        Some(200),
        "the new process serves the admin listener"
    );
}
