//! A gRPC `ModelInfer` call over h2c whose answer is checked down to its
//! `grpc-status` (a load tool counts any HTTP 200 as a success, even a
//! trailers-only error).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

pub type H2Client = Client<HttpConnector, Full<Bytes>>;

/// A client that multiplexes its calls on one h2c connection per address.
pub fn h2_client() -> H2Client {
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `frame` (one length-prefixed `ModelInferRequest`) to `addr`: `Ok` when
/// the answer has `grpc-status` 0 and a message.
pub async fn model_infer(client: &H2Client, addr: SocketAddr, frame: Bytes) -> Result<(), String> {
    let request = http::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(frame))
    .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let status = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
        .to_owned();
    match status.as_str() {
        "0" if body.to_bytes().len() > 5 => Ok(()),
        _ => Err(format!("grpc-status {status}, headers {headers:?}")),
    }
}
