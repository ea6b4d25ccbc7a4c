//! The TLS connector of the auxiliary clients (health checks, load scrapes,
//! mirror copies): hyper-util's and tonic's, one per pool and protocol.
//!
//! A client is given an endpoint's IP address (its URIs are `https://IP:PORT`)
//! but must verify the endpoint's own name (`Endpoint::tls_name`: the pool's
//! `server_name`, or the host the endpoint was written with), which no URI
//! carries: the connector looks the address up in the pool's list of
//! endpoint addresses and names.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

/// TCP, then TLS verifying the name of the endpoint at the URI's address.
pub type TlsConnector = HttpsConnector<HttpConnector>;

/// A connector speaking TLS with `config` to the addresses of `names`, each
/// verified as its name. It refuses plain `http://` URIs, so a pool set to
/// speak TLS is never spoken to in plain text.
pub fn connector(
    config: Arc<ClientConfig>,
    names: Vec<(SocketAddr, ServerName<'static>)>,
) -> TlsConnector {
    let mut tcp = HttpConnector::new();
    // The scheme is `https`, which `HttpConnector` alone would refuse.
    tcp.enforce_http(false);
    let resolve = move |uri: &Uri| name_of(&names, uri);
    HttpsConnector::new(tcp, config, true, Arc::new(resolve))
}

/// The name the endpoint at `uri`'s address is verified as.
fn name_of(
    names: &[(SocketAddr, ServerName<'static>)],
    uri: &Uri,
) -> Result<ServerName<'static>, String> {
    let addr: SocketAddr = uri
        .authority()
        .and_then(|a| a.as_str().parse().ok())
        .ok_or_else(|| format!("{uri} does not name an endpoint address"))?;
    names
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, name)| name.clone())
        .ok_or_else(|| format!("no endpoint of the pool is at {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<(SocketAddr, ServerName<'static>)> {
        vec![
            (
                "10.0.0.1:8000".parse().unwrap(),
                ServerName::try_from("triton-a.test").unwrap(),
            ),
            (
                "[fd00::2]:8001".parse().unwrap(),
                ServerName::try_from("fd00::2").unwrap(),
            ),
        ]
    }

    #[test]
    fn the_name_verified_is_the_endpoints_not_the_uris_host() {
        let uri: Uri = "https://10.0.0.1:8000/v2/health/ready".parse().unwrap();
        assert_eq!(
            name_of(&names(), &uri).unwrap(),
            ServerName::try_from("triton-a.test").unwrap()
        );
        let uri: Uri = "https://[fd00::2]:8001".parse().unwrap();
        assert_eq!(
            name_of(&names(), &uri).unwrap(),
            ServerName::try_from("fd00::2").unwrap()
        );
    }

    #[test]
    fn an_address_of_no_endpoint_is_refused() {
        for uri in ["https://10.0.0.1:9999/", "https://triton-a.test:8000/"] {
            let uri: Uri = uri.parse().unwrap();
            assert!(name_of(&names(), &uri).is_err(), "{uri}");
        }
    }
}
