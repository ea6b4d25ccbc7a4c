//! The admin listener: `/metrics` (Prometheus), `/live`, `/ready`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::proxy::Shared;

/// The `role` of a route's own pool in `/ready`: the only one readiness depends on.
const ROUTE_POOL: &str = "route";

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

impl Admin {
    /// Each route, for each pool it sends requests to (`role`: `route` for its
    /// own, `split` for a split side's, `mirror` for its mirror's), with the number
    /// of endpoints that could serve it now (passing readiness checks and not
    /// ejected). Only a route's own pool decides readiness: a split side without
    /// endpoints hands its share to the route's pool, and the primary never waits
    /// for a mirror.
    fn route_readiness(&self) -> Vec<serde_json::Value> {
        let routes = &self.shared.config.routes;
        let mut entries = Vec::new();
        for target in &routes.targets {
            let model = routes
                .exact
                .contains_key(&target.key)
                .then_some(target.key.as_str());
            let roles = target
                .pools()
                .enumerate()
                .map(|(i, id)| (id, if i == 0 { ROUTE_POOL } else { "split" }))
                .chain(target.mirror.iter().map(|m| (m.pool, "mirror")));
            let mut seen = Vec::new();
            for (id, role) in roles {
                if seen.contains(&id) {
                    continue;
                }
                seen.push(id);
                let pool = &self.shared.pools[id];
                entries.push(serde_json::json!({
                    "route": target.key,
                    "pool": pool.name,
                    "role": role,
                    "usable_endpoints": pool.usable_count(model),
                }));
            }
        }
        entries
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
            "/metrics" => {
                let mut text = self.shared.metrics.render();
                crate::upstream::render_state(&self.shared.pools, &mut text);
                respond(StatusCode::OK, "text/plain; version=0.0.4", text)
            }
            "/live" => json(StatusCode::OK, serde_json::json!({ "live": true })),
            "/ready" => {
                let closed = self.closed_listeners().await;
                let routes = self.route_readiness();
                let ready = closed.is_empty()
                    && routes.iter().all(|r| {
                        r["role"] != ROUTE_POOL || r["usable_endpoints"].as_u64() != Some(0)
                    });
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(
                    status,
                    serde_json::json!({
                        "ready": ready,
                        "closed_listeners": closed,
                        "routes": routes,
                    }),
                )
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not found; try /metrics, /live or /ready" }),
            ),
        }
    }
}
