//! The admin listener: `/metrics` (Prometheus), `/live`, `/ready`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::proxy::Shared;

pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    /// Listeners that do not accept connections yet (Pingora binds them
    /// after the admin service may already answer).
    async fn closed_listeners(&self) -> Vec<String> {
        let server = &self.shared.config.server;
        let mut closed = Vec::new();
        for addr in [server.http_listen, server.grpc_listen]
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
        {
            let connect = tokio::net::TcpStream::connect(addr);
            if !matches!(
                tokio::time::timeout(Duration::from_secs(1), connect).await,
                Ok(Ok(_))
            ) {
                closed.push(addr.to_string());
            }
        }
        closed
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", value.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().method != http::Method::GET {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "only GET is served here" }),
            );
        }
        match session.req_header().uri.path() {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(),
            ),
            "/live" => json(StatusCode::OK, serde_json::json!({ "live": true })),
            "/ready" => {
                let closed = self.closed_listeners().await;
                let status = if closed.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(
                    status,
                    serde_json::json!({ "ready": closed.is_empty(), "closed_listeners": closed }),
                )
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not found; try /metrics, /live or /ready" }),
            ),
        }
    }
}
