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
    failures: Mutex<Vec<String>>,
}

impl Tally {
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
}

/// A client that sends until told to stop, as one behind a load balancer would
/// until the balancer takes Trident out.
struct Load {
    stop: Arc<AtomicBool>,
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
                        tally.record(kind, http_status(&client, &url, INFER).await);
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
                    let request = infer_request(&model, "u", Bytes::from_static(b"x"));
                    let result = grpc.model_infer(request).await;
                    tally.record("grpc", result.map(|_| 200).map_err(|e| e.to_string()));
                }
            }));
        }
        let (stop_stream, tally_stream) = (stop.clone(), tally.clone());
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
        Load { stop, tally, tasks }
    }

    /// Stops sending and waits for every client; returns the tally.
    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        self.tally
    }
}

async fn ready_status(trident: &Trident) -> Option<u16> {
    let url = format!("http://{}/ready", trident.admin);
    let response = http1_client().get(url.parse().unwrap()).await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_failing_a_request() {
    let a = mock("a1", &["m"]).await;
    let mut trident = Trident::start_with_lifecycle(
        &format!("[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n", endpoint(&a)),
        2,
        "drain_delay_secs = 2\nshutdown_timeout_secs = 20",
    )
    .await;
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
    let (status, headers, _) = post(
        &http1_client(),
        &trident.http_url("/v2/models/m/infer"),
        &[],
        INFER,
    )
    .await;
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
    let failures = tally.failures();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(tally.ok.load(Ordering::Relaxed) > 20, "the load ran");
    // Listeners are closed after the drain delay; the process ends once the slow call did.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = trident.try_exit() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "trident did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let mut trident = Trident::start_with_lifecycle(
        &format!("[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n", endpoint(&a)),
        2,
        "drain_delay_secs = 0\nshutdown_timeout_secs = 1",
    )
    .await;
    let slow_url = trident.http_url("/v2/models/m/infer");
    let slow =
        tokio::spawn(async move { http_status(&http1_client(), &slow_url, SLOW_INFER).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    trident.signal("TERM");
    assert!(slow.await.unwrap().is_err(), "the slow call was cut");
    let line = trident.access_log_line("\"status\":\"cut\"").await;
    assert_eq!(line["model"], "m");
    let deadline = Instant::now() + Duration::from_secs(10);
    while trident.try_exit().is_none() {
        assert!(Instant::now() < deadline, "trident did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_signals_neither_stop_nor_fail_requests() {
    let a = mock("a1", &["m"]).await;
    let mut trident = Trident::start(&format!(
        "[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"a\"\n",
        endpoint(&a)
    ))
    .await;
    for signal in ["USR1", "USR2", "HUP"] {
        trident.signal(signal);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(trident.try_exit().is_none(), "trident still runs");
    let (status, _, _) = post(
        &http1_client(),
        &trident.http_url("/v2/models/m/infer"),
        &[],
        INFER,
    )
    .await;
    assert_eq!(status, 200);
}
