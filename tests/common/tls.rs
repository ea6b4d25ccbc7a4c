//! TLS for tests: a CA made in the test, certificates it issues (good,
//! expired, for other names), a TLS front that terminates TLS and relays to a
//! plain mock Triton, and clients (HTTP/1.1, h2, gRPC) over rustls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME-key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert PEM")
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }
}

/// A CA made for one test.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub cert_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        Ca {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    /// Writes the CA certificate as `NAME.pem` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.cert_pem).expect("write CA");
        path
    }

    /// A certificate for `names` (DNS names or IP addresses), valid now.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |_| {})
    }

    /// A certificate for `names` that expired yesterday.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    /// A client certificate naming `uri` (a SPIFFE id, say) and common name `cn`.
    pub fn issue_client(&self, uri: &str, cn: &str) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("URI"))];
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, cn);
        params.distinguished_name = subject;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("client cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn issue_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        edit(&mut params);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A root store holding this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        roots
    }

    /// A client config trusting this CA, offering `alpn`, presenting `client` if given.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        client: Option<&Leaf>,
    ) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots());
        let mut config = match client {
            Some(leaf) => builder
                .with_client_auth_cert(leaf.chain(), leaf.key())
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS server in front of `backend`: terminates TLS with `leaf` (offering
/// `alpn`; requiring client certificates from `client_ca` if given) and relays
/// the plain bytes. Returns its address; runs until the test's runtime ends.
pub async fn front(
    backend: SocketAddr,
    leaf: &Leaf,
    alpn: &[&[u8]],
    client_ca: Option<&Ca>,
) -> SocketAddr {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider(),
            )
            .build()
            .expect("verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(leaf.chain(), leaf.key())
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = listener.local_addr().expect("front addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// A TLS connection to `addr`, verifying `name`.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// One HTTP request over a new TLS connection (h2 if ALPN chose it, else
/// HTTP/1.1): status, headers and body.
pub async fn request(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
    mut request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    if let Some(authority) = request.uri().authority().cloned() {
        let host = http::HeaderValue::from_str(authority.as_str()).expect("host");
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert(host);
    }
    let tls = connect(addr, name, config)
        .await
        .map_err(|e| e.to_string())?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// A GET of `path` over a new TLS connection.
pub async fn get(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    let uri = format!("https://{name}{path}");
    let req = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .expect("request");
    request(addr, name, config, req).await
}

/// A gRPC client to `addr` over TLS (ALPN h2), verifying `name`.
pub async fn grpc_client(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<super::GrpcClient, String> {
    let name = name.to_owned();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, name) = (config.clone(), name.clone());
        async move { connect(addr, &name, config).await.map(TokioIo::new) }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    Ok(super::GrpcClient::new(channel))
}
