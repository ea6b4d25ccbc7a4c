//! The admin listener: `/metrics` (Prometheus), `/live`, `/ready`, `GET /config`
//! (the running config, defaults filled in, secrets redacted), `GET /pools`
//! (each pool's endpoints as the balancer sees them), `POST
//! /pools/{pool}/endpoints/{addr}/drain` and `/undrain`, and `POST /reload`
//! (`GET /reload`: the last reload's report). `HEAD` is answered wherever
//! `GET` is. `[server.admin_auth]` may ask for a bearer token and a client network.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use filters::api_key::{digest, matches};
use http::{header, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::admin_auth::AdminAuth;
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

fn error(status: StatusCode, message: impl Into<String>) -> Response<Vec<u8>> {
    json(status, serde_json::json!({ "error": message.into() }))
}

fn not_allowed(allow: &'static str) -> Response<Vec<u8>> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this path answers {allow} only"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// The answer refusing a request `auth` does not let through; `None`: let through.
/// The client network is checked first: a client from elsewhere learns nothing of
/// whether its token would do.
fn refusal(
    auth: &AdminAuth,
    path: &str,
    client: Option<IpAddr>,
    authorization: Option<&[u8]>,
) -> Option<Response<Vec<u8>>> {
    if auth.is_open(path) {
        return None;
    }
    let allowed = match client {
        Some(ip) => auth.allows(ip),
        None => auth.allow_networks.is_empty(),
    };
    if !allowed {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the admin API does not take requests from this client's network",
        ));
    }
    let token = auth.token.as_ref()?;
    let presented = authorization.and_then(|value| {
        let (scheme, credentials) = value.split_at_checked(7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then_some(credentials)
    });
    if presented.is_some_and(|p| matches(token, &digest(p))) {
        return None;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "the admin API needs `Authorization: Bearer <token>` with the token of server.admin_auth.token_file",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"trident-admin\""),
    );
    Some(response)
}

/// A path segment, percent-decoded (an IPv6 endpoint's brackets may come encoded).
fn segment(raw: &str) -> Cow<'_, str> {
    percent_decode_str(raw).decode_utf8_lossy()
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

impl Admin {
    fn metrics(&self) -> Response<Vec<u8>> {
        let shared = self.live.current();
        let mut text = shared.metrics.render();
        crate::upstream::render_state(&shared.pools, &mut text);
        respond(StatusCode::OK, "text/plain; version=0.0.4", text)
    }

    /// `GET /pools` (every pool) or `GET /pools/{name}` (one).
    fn pools(&self, name: Option<&str>) -> Response<Vec<u8>> {
        let shared = self.live.current();
        match name {
            None => {
                let pools: Vec<_> = shared.pools.iter().map(|p| p.report()).collect();
                json(StatusCode::OK, serde_json::json!({ "pools": pools }))
            }
            Some(name) => match shared.pools.iter().find(|p| *p.name == *name) {
                Some(pool) => json(StatusCode::OK, pool.report()),
                None => error(StatusCode::NOT_FOUND, format!("no pool named '{name}'")),
            },
        }
    }

    /// Drains (or undrains) the endpoints of pool `pool` that `addr` names: no new
    /// request or sequence goes to them, while their sequences finish there.
    fn drain(&self, pool: &str, addr: &str, drained: bool) -> Response<Vec<u8>> {
        let shared = self.live.current();
        let Some(pool) = shared.pools.iter().find(|p| *p.name == *pool) else {
            return error(StatusCode::NOT_FOUND, format!("no pool named '{pool}'"));
        };
        let named = pool.endpoints_named(addr);
        if named.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "pool '{}' has no endpoint {addr}: name it host:port as configured, or by \
                     one of its addresses",
                    pool.name
                ),
            );
        }
        let mut endpoints = Vec::new();
        for i in named {
            let endpoint = &pool.endpoints[i];
            if endpoint.set_drained(drained) {
                log::info!(
                    "pool '{}': endpoint {} {} through the admin API",
                    pool.name,
                    endpoint.label,
                    if drained { "drained" } else { "undrained" }
                );
            }
            endpoints.push(endpoint.label.clone());
        }
        json(
            StatusCode::OK,
            serde_json::json!({ "pool": pool.name, "endpoints": endpoints, "drained": drained }),
        )
    }

    /// The answer to a GET-or-POST `method` on `path` (HEAD comes here as GET).
    async fn route(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match (method, segments.as_slice()) {
            (&Method::POST, ["reload"]) => self.reload().await,
            (&Method::GET, ["reload"]) => json(StatusCode::OK, self.live.last_report()),
            (_, ["reload"]) => not_allowed("GET, HEAD, POST"),
            (&Method::GET, ["metrics"]) => self.metrics(),
            (&Method::GET, ["live"]) => json(StatusCode::OK, serde_json::json!({ "live": true })),
            (&Method::GET, ["ready"]) => self.ready().await,
            (&Method::GET, ["config"]) => {
                // TOML, as the file is written: diffable with it and checkable (`trident check`).
                let printed = self.live.current().config.printed.clone().into_bytes();
                respond(StatusCode::OK, "text/plain; charset=utf-8", printed)
            }
            (&Method::GET, ["pools"]) => self.pools(None),
            (&Method::GET, ["pools", name]) => self.pools(Some(&segment(name))),
            (_, ["metrics" | "live" | "ready" | "config" | "pools"] | ["pools", _]) => {
                not_allowed("GET, HEAD")
            }
            (&Method::POST, ["pools", pool, "endpoints", addr, action @ ("drain" | "undrain")]) => {
                self.drain(&segment(pool), &segment(addr), *action == "drain")
            }
            (_, ["pools", _, "endpoints", _, "drain" | "undrain"]) => not_allowed("POST"),
            _ => error(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /live, /ready, /config, /pools, \
                 POST /pools/{pool}/endpoints/{addr}/drain or POST /reload",
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        // HEAD: the headers GET would get, Content-Length included, and no body.
        let head = request.method == Method::HEAD;
        let method = if head {
            Method::GET
        } else {
            request.method.clone()
        };
        let path = request.uri.path().to_owned();
        let refused = self
            .live
            .current()
            .config
            .server
            .admin_auth
            .as_ref()
            .and_then(|auth| {
                let client = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip());
                let authorization = session
                    .get_header(header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                refusal(auth, &path, client, authorization)
            });
        let mut response = match refused {
            Some(refusal) => refusal,
            None => self.route(&method, &path).await,
        };
        if head {
            response.body_mut().clear();
        }
        response
    }
}
