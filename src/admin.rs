//! The admin listener: `/metrics` (Prometheus), `/live`, `/ready`,
//! `POST /reload` (`GET /reload`: the last reload's report), and `/config`
//! (the running config, defaults filled in, secrets redacted).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::proxy::Shared;
use crate::reload::{Live, ReloadError};
use crate::shutdown::Lifecycle;

/// The `role` of a route's own pool in `/ready`: the only one readiness depends on.
const ROUTE_POOL: &str = "route";

pub struct Admin {
    live: Arc<Live>,
    lifecycle: Arc<Lifecycle>,
}

impl Admin {
    pub fn new(live: Arc<Live>, lifecycle: Arc<Lifecycle>) -> Self {
        Admin { live, lifecycle }
    }

    /// Listeners that do not accept connections yet (Pingora binds them
    /// after the admin service may already answer).
    async fn closed_listeners(shared: &Shared) -> Vec<String> {
        let server = &shared.config.server;
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
    fn route_readiness(shared: &Shared) -> Vec<serde_json::Value> {
        let routes = &shared.config.routes;
        let mut entries = Vec::new();
        for target in &routes.targets {
            let model = routes
                .exact
                .contains_key(&*target.key)
                .then_some(&*target.key);
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
                let pool = &shared.pools[id];
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

impl Admin {
    /// Runs a reload off the admin thread (it reads files, and may wait for a JWKS fetch).
    async fn reload(&self) -> Response<Vec<u8>> {
        let live = self.live.clone();
        match tokio::task::spawn_blocking(move || live.reload()).await {
            Ok(Ok(report)) => json(StatusCode::OK, report),
            Ok(Err(ReloadError::NoFile)) => json(
                StatusCode::CONFLICT,
                serde_json::json!({ "error": ReloadError::NoFile.to_string() }),
            ),
            Ok(Err(e)) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "error": "the config file has errors; the running config stays",
                    "errors": e.to_string().lines().collect::<Vec<_>>(),
                }),
            ),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": format!("the reload did not finish: {e}") }),
            ),
        }
    }

    async fn ready(&self) -> Response<Vec<u8>> {
        let shared = self.live.current();
        let draining = self.lifecycle.is_draining();
        let closed = if draining {
            Vec::new()
        } else {
            Self::closed_listeners(&shared).await
        };
        let routes = Self::route_readiness(&shared);
        let ready = !draining
            && closed.is_empty()
            && routes
                .iter()
                .all(|r| r["role"] != ROUTE_POOL || r["usable_endpoints"].as_u64() != Some(0));
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(
            status,
            serde_json::json!({
                "ready": ready,
                "draining": draining,
                "closed_listeners": closed,
                "routes": routes,
            }),
        )
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        match (method, session.req_header().uri.path()) {
            (http::Method::POST, "/reload") => self.reload().await,
            (http::Method::GET, "/reload") => json(StatusCode::OK, self.live.last_report()),
            (http::Method::GET | http::Method::HEAD, "/metrics") => {
                let shared = self.live.current();
                let mut text = shared.metrics.render();
                crate::upstream::render_state(&shared.pools, &mut text);
                let mut response = respond(StatusCode::OK, "text/plain; version=0.0.4", text);
                // HEAD: the headers GET would get, Content-Length included, and no body.
                if session.req_header().method == http::Method::HEAD {
                    response.body_mut().clear();
                }
                response
            }
            (http::Method::GET | http::Method::HEAD, "/config") => {
                // TOML, as the file is written: diffable with it and checkable (`trident check`).
                let printed = self.live.current().config.printed.clone().into_bytes();
                let mut response = respond(StatusCode::OK, "text/plain; charset=utf-8", printed);
                if session.req_header().method == http::Method::HEAD {
                    response.body_mut().clear();
                }
                response
            }
            (http::Method::GET, "/live") => {
                json(StatusCode::OK, serde_json::json!({ "live": true }))
            }
            (http::Method::GET, "/ready") => self.ready().await,
            (_, "/metrics" | "/live" | "/ready" | "/config") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "only GET (and HEAD for /metrics and /config) is served here" }),
            ),
            (_, "/reload") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "POST /reload reloads; GET /reload reports the last" }),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not found; try /metrics, /live, /ready, /config or POST /reload" }),
            ),
        }
    }
}
