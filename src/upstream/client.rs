//! The auxiliary clients' HTTP client to a pool's endpoints (health checks,
//! load scrapes, mirror copies): plain, or TLS with the pool's `[pools.tls]`
//! settings where they say so.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Body;
use hyper_util::client::legacy::{self, connect::HttpConnector, Builder, ResponseFuture};

use super::Pool;
use crate::config::UpstreamTls;
use crate::tls::connector::{connector, TlsConnector};
use crate::tls::upstream::{client_config, rustls_name};

/// ALPN of HTTP/1.1: health checks, scrapes and HTTP copies.
pub(crate) const HTTP1: &[&[u8]] = &[b"http/1.1"];
/// ALPN of h2: gRPC.
pub(crate) const H2: &[&[u8]] = &[b"h2"];

/// Which addresses speak TLS, of a pool that has `[pools.tls]`.
pub(crate) type TlsOn = fn(&UpstreamTls) -> bool;

/// The connector to `pool`'s endpoints, offering `alpn`, if the pool speaks
/// TLS where `on` says; `None`: plain text.
pub(crate) fn tls_connector(
    pool: &Pool,
    on: TlsOn,
    alpn: &[&[u8]],
) -> Result<Option<TlsConnector>, String> {
    let Some(tls) = pool.settings.tls.as_ref().filter(|tls| on(tls)) else {
        return Ok(None);
    };
    let config = client_config(tls, alpn)?;
    let names = pool
        .endpoints
        .iter()
        .flat_map(|e| {
            let name = e.tls_name.as_deref().and_then(rustls_name);
            [e.http_addr, e.grpc_addr, e.metrics_addr]
                .into_iter()
                .flatten()
                .filter_map(move |addr| Some((addr, name.clone()?)))
        })
        .collect();
    Ok(Some(connector(config, names)))
}

/// A hyper client to a pool's endpoints. Plain text is hyper's own client, as
/// if TLS did not exist: no TLS layer under pools that have none.
pub(crate) enum Client<B> {
    Plain(legacy::Client<HttpConnector, B>),
    Tls(legacy::Client<TlsConnector, B>),
}

impl<B> Client<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(builder: &Builder, tls: Option<TlsConnector>) -> Self {
        match tls {
            None => Client::Plain(builder.build_http()),
            Some(connector) => Client::Tls(builder.build(connector)),
        }
    }

    /// A client to `pool`'s endpoints, TLS where `on` says.
    pub fn for_pool(
        builder: &Builder,
        pool: &Pool,
        on: TlsOn,
        alpn: &[&[u8]],
    ) -> Result<Self, String> {
        Ok(Self::new(builder, tls_connector(pool, on, alpn)?))
    }

    /// The URI of `path` on the endpoint address `addr`.
    pub fn uri(&self, addr: SocketAddr, path: &str) -> Result<http::Uri, String> {
        let scheme = match self {
            Client::Plain(_) => "http",
            Client::Tls(_) => "https",
        };
        format!("{scheme}://{addr}{path}")
            .parse()
            .map_err(|e| format!("bad URL: {e}"))
    }

    pub fn request(&self, request: http::Request<B>) -> ResponseFuture {
        match self {
            Client::Plain(client) => client.request(request),
            Client::Tls(client) => client.request(request),
        }
    }
}

/// The client health checks and scrapes share: HTTP/1.1 with kept-alive connections.
pub(crate) type HttpClient = Client<Empty<Bytes>>;

/// A builder of [`HttpClient`]s.
pub(crate) fn http_builder() -> Builder {
    legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
}

/// GETs `path` from `addr`: the status and body, or why not within `timeout`.
pub(crate) async fn http_get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    use http_body_util::BodyExt;
    let request = http::Request::get(client.uri(addr, path)?)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
