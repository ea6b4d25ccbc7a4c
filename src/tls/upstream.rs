//! TLS to Triton. Proxied calls go through Pingora's connector, configured
//! per endpoint by [`secure_peer`]; health checks, load scrapes and mirror
//! copies use [`client_config`] with the same roots, name and certificate.

use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;

use super::material;
use crate::config::UpstreamTls;

/// The name an endpoint is verified as: the pool's `server_name`, else the
/// host the endpoint was written with, else its IP address.
pub fn server_name(tls: &UpstreamTls, host: Option<&str>, addr: std::net::SocketAddr) -> String {
    tls.server_name
        .clone()
        .or_else(|| host.map(str::to_owned))
        .unwrap_or_else(|| addr.ip().to_string())
}

/// Makes `peer` speak TLS as `tls` says. The name is never empty: Pingora
/// skips verification for a peer without one.
pub fn secure_peer(peer: &mut HttpPeer, tls: &UpstreamTls, name: String) {
    peer.sni = name;
    let options = &mut peer.options;
    options.verify_cert = !tls.insecure_skip_verify;
    options.verify_hostname = !tls.insecure_skip_verify;
    options.ca = tls.roots.as_ref().map(|roots| {
        roots
            .iter()
            .map(|cert| WrappedX509::new(cert.to_vec(), pingora::utils::tls::parse_x509))
            .collect::<Vec<_>>()
            .into()
    });
    peer.client_cert_key = tls.client_cert.as_ref().map(|client| {
        let chain = client.chain.iter().map(|c| c.to_vec()).collect();
        Arc::new(CertKey::new(chain, client.key.to_vec()))
    });
}

/// A rustls client config for the auxiliary clients, offering `alpn`.
pub fn client_config(tls: &UpstreamTls, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(material::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(material::provider())))
    } else {
        let roots = match &tls.roots {
            Some(certs) => material::root_store(certs.iter().cloned())?,
            None => {
                let native = pingora::tls::load_native_certs()
                    .map_err(|e| format!("reading the system's CA certificates: {e}"))?;
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(native);
                roots
            }
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match &tls.client_cert {
        Some(client) => {
            let chain: Vec<CertificateDer<'static>> = client.chain.to_vec();
            let key = PrivateKeyDer::try_from(client.key.to_vec()).map_err(|e| e.to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name as rustls takes it (checked valid by the config).
pub fn rustls_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).ok()
}

/// `insecure_skip_verify`: every certificate accepted (signatures still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
