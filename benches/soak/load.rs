//! The soak's clients: a steady mix of HTTP/1.1 JSON infer and gRPC
//! `ModelInfer` calls, and rounds of connections that make one call each and
//! then stay open, idle.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::grpc_call;
use crate::grpc_client::{self, H2Client};

/// A small FP32 tensor: the proxy's own cost dominates.
const JSON_BODY: &str = r#"{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}"#;
/// A call not answered by then has failed (a hung call must not stall the soak).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections being opened at once.
const OPENING_AT_ONCE: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// One call as the client saw it; times are from the soak's start.
#[derive(Debug)]
pub struct Call {
    pub protocol: Protocol,
    pub start: Duration,
    pub end: Duration,
    pub error: Option<String>,
}

/// Clients of one Trident: HTTP/1.1 (pooled keep-alive connections) and gRPC
/// (one multiplexed h2c connection).
pub struct Clients {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    http: H2Client,
    grpc: H2Client,
    infer_path: String,
    grpc_frame: Bytes,
}

impl Clients {
    pub fn new(http_addr: SocketAddr, grpc_addr: SocketAddr, model: &str) -> Clients {
        let values = (1..=16)
            .flat_map(|v: u8| f32::from(v).to_le_bytes())
            .collect();
        Clients {
            http_addr,
            grpc_addr,
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
            grpc: grpc_client::h2_client(),
            infer_path: format!("/v2/models/{model}/infer"),
            grpc_frame: grpc_call::fp32_infer_frame(model, "", vec![1, 16], values).into(),
        }
    }

    async fn call(&self, protocol: Protocol) -> Result<(), String> {
        let call = async {
            match protocol {
                Protocol::Http => self.http_infer().await,
                Protocol::Grpc => {
                    grpc_client::model_infer(&self.grpc, self.grpc_addr, self.grpc_frame.clone())
                        .await
                }
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer in {CALL_TIMEOUT:?}")))
    }

    async fn http_infer(&self) -> Result<(), String> {
        let request = http::Request::post(format!("http://{}{}", self.http_addr, self.infer_path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(JSON_BODY.as_bytes())))
            .map_err(|e| e.to_string())?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        if status == http::StatusCode::OK && text.contains("\"outputs\"") {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {text:.200}"))
        }
    }
}

/// Calls at `rate` per second for `duration`, taking turns between the
/// protocols, each call on its own task (an open loop: a slow answer does not
/// hold the next call back). Returns every call once all have ended.
pub async fn drive(clients: &Clients, rate: u64, duration: Duration, clock: Instant) -> Vec<Call> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = Instant::now() + duration;
    let mut calls = Vec::new();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut next = Protocol::Http;
    while Instant::now() < until {
        tokio::select! {
            _ = ticks.tick() => {
                let protocol = next;
                next = match next { Protocol::Http => Protocol::Grpc, Protocol::Grpc => Protocol::Http };
                running.push(async move {
                    let start = clock.elapsed();
                    let result = clients.call(protocol).await;
                    Call { protocol, start, end: clock.elapsed(), error: result.err() }
                });
            }
            Some(call) = running.next() => calls.push(call),
        }
    }
    while let Some(call) = running.next().await {
        calls.push(call);
    }
    calls
}

/// Opens `count` connections to the HTTP listener, each making one infer call
/// and then left open; returns them and the failures of those that could not.
pub async fn open_idle(clients: &Clients, count: usize) -> (Vec<TcpStream>, Vec<String>) {
    let request: Bytes = format!(
        "POST {} HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON_BODY}",
        clients.infer_path,
        JSON_BODY.len()
    )
    .into();
    let addr = clients.http_addr;
    let mut opened = Vec::with_capacity(count);
    let mut failures = Vec::new();
    let mut opening = JoinSet::new();
    for i in 0..count {
        if i >= OPENING_AT_ONCE {
            collect(opening.join_next().await, &mut opened, &mut failures);
        }
        let request = request.clone();
        opening.spawn(async move {
            let call = async {
                let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                one_call(&mut stream, &request).await?;
                Ok(stream)
            };
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| Err(format!("no answer in {CALL_TIMEOUT:?}")))
        });
    }
    while let Some(done) = opening.join_next().await {
        collect(Some(done), &mut opened, &mut failures);
    }
    (opened, failures)
}

fn collect(
    done: Option<Result<Result<TcpStream, String>, tokio::task::JoinError>>,
    opened: &mut Vec<TcpStream>,
    failures: &mut Vec<String>,
) {
    match done {
        Some(Ok(Ok(stream))) => opened.push(stream),
        Some(Ok(Err(e))) => failures.push(e),
        Some(Err(e)) => failures.push(e.to_string()),
        None => {}
    }
}

/// Writes `request` and reads its whole answer, which must be a 200 with a
/// `content-length` body; the connection stays usable.
async fn one_call(stream: &mut TcpStream, request: &[u8]) -> Result<(), String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the answer ended".to_owned());
        }
        answer.extend_from_slice(&chunk[..n]);
        let Some(head_len) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..head_len]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(head.lines().next().unwrap_or_default().to_owned());
        }
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("an answer without content-length")?;
        if answer.len() >= head_len + 4 + body_len {
            return Ok(());
        }
    }
}
