//! `[server.tls]` and `[pools.tls]`: checked here whole — every file read,
//! every certificate parsed, every key matched to its certificate — so that a
//! mistake is reported with its key path (by `trident check` too) instead of
//! failing a handshake, or a panic inside Pingora, later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use rustls::pki_types::{CertificateDer, ServerName};

use super::file::{PoolTlsFile, ServerTlsFile};
use super::Errors;
use crate::tls::material::{self, CertKeyError};

/// Client-facing TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    /// For clients whose server name no SNI entry names.
    pub default: CertFiles,
    pub sni: Vec<SniCert>,
    pub min_version: TlsVersion,
    /// Whether the HTTP listener speaks TLS.
    pub on_http: bool,
    /// Whether the gRPC listener speaks TLS.
    pub on_grpc: bool,
    pub client_auth: Option<ClientAuth>,
    pub client_identity_header: Option<HeaderName>,
    /// How often files are checked for changes; `None`: only at a reload.
    pub watch_interval: Option<Duration>,
}

/// A certificate chain and its key, as files (read again when they change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A certificate chosen by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lower-case names; `*.example.com` matches one label.
    pub names: Vec<String>,
    pub files: CertFiles,
}

/// Verifying client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca_file: PathBuf,
    /// Whether a client without a certificate is refused.
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// TLS to one pool's endpoints, with its certificates loaded: a pool whose
/// files changed is a changed pool at a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// SNI and the name verified; `None`: the endpoint's host as written.
    pub server_name: Option<String>,
    /// CA certificates endpoints are verified against; `None`: the system's.
    pub roots: Option<Arc<[CertificateDer<'static>]>>,
    pub client_cert: Option<ClientCert>,
    pub insecure_skip_verify: bool,
    pub on_http: bool,
    pub on_grpc: bool,
    pub on_metrics: bool,
}

/// The certificate chain and key Trident presents to endpoints.
#[derive(Clone, PartialEq)]
pub struct ClientCert {
    pub chain: Arc<[CertificateDer<'static>]>,
    /// The private key, DER.
    pub key: Arc<[u8]>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientCert({} certificates, key redacted)",
            self.chain.len()
        )
    }
}

pub(super) fn server_tls(
    file: ServerTlsFile,
    listeners: (bool, bool),
    base: &Path,
    errors: &mut Errors,
) -> Option<ServerTls> {
    let at = |key: &str| format!("server.tls.{key}");
    let default = cert_files("server.tls", &file.cert_file, &file.key_file, base, errors);
    let mut sni: Vec<SniCert> = Vec::new();
    for (i, entry) in file.sni.iter().flatten().enumerate() {
        let path = format!("server.tls.sni[{i}]");
        let files = cert_files(&path, &entry.cert_file, &entry.key_file, base, errors);
        if entry.server_names.is_empty() {
            errors.push(&format!("{path}.server_names"), "name at least one server");
        }
        let mut names = Vec::new();
        for (j, name) in entry.server_names.iter().enumerate() {
            let name_path = format!("{path}.server_names[{j}]");
            let name = name.to_ascii_lowercase();
            let plain = name.strip_prefix("*.").unwrap_or(&name);
            if plain.contains('*')
                || ServerName::try_from(plain).is_err()
                || plain.parse::<std::net::IpAddr>().is_ok()
            {
                errors.push(
                    &name_path,
                    format!("{name:?} is not a DNS name (or `*.` and one)"),
                );
            } else if sni
                .iter()
                .flat_map(|s| &s.names)
                .chain(&names)
                .any(|n| *n == name)
            {
                errors.push(&name_path, format!("{name:?} is named twice"));
            } else {
                names.push(name);
            }
        }
        if let Some(files) = files {
            sni.push(SniCert { names, files });
        }
    }
    let min_version = match file.min_version.as_str() {
        "1.2" => TlsVersion::V1_2,
        "1.3" => TlsVersion::V1_3,
        other => {
            errors.push(
                &at("min_version"),
                format!("expected \"1.2\" or \"1.3\", found {other:?}"),
            );
            TlsVersion::V1_2
        }
    };
    let (has_http, has_grpc) = listeners;
    let (on_http, on_grpc) = match &file.listeners {
        None => (has_http, has_grpc),
        Some(names) => {
            let mut on = (false, false);
            for (i, name) in names.iter().enumerate() {
                let path = format!("server.tls.listeners[{i}]");
                match name.as_str() {
                    "http" if !has_http => errors.push(&path, "server.http_listen is not set"),
                    "grpc" if !has_grpc => errors.push(&path, "server.grpc_listen is not set"),
                    "http" => on.0 = true,
                    "grpc" => on.1 = true,
                    other => errors.push(
                        &path,
                        format!("expected \"http\" or \"grpc\", found {other:?}"),
                    ),
                }
            }
            if names.is_empty() {
                errors.push(
                    &at("listeners"),
                    "name at least one listener, or remove [server.tls]",
                );
            }
            on
        }
    };
    let client_auth = match (&file.client_ca_file, file.require_client_cert) {
        (Some(ca), required) => {
            let ca_file = base.join(ca);
            match material::read_certs(&ca_file).and_then(material::root_store) {
                Ok(_) => Some(ClientAuth {
                    ca_file,
                    required: required.unwrap_or(true),
                }),
                Err(why) => {
                    errors.push(&at("client_ca_file"), why);
                    None
                }
            }
        }
        (None, Some(true)) => {
            errors.push(
                &at("require_client_cert"),
                "set `client_ca_file`: client certificates are verified against it",
            );
            None
        }
        (None, _) => None,
    };
    let client_identity_header = file.client_identity_header.as_deref().and_then(|name| {
        let path = at("client_identity_header");
        if file.client_ca_file.is_none() {
            errors.push(
                &path,
                "set `client_ca_file`: the identity is a verified client certificate's",
            );
        }
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| errors.push(&path, format!("invalid header name {name:?}")))
            .ok()
    });
    let watch_interval = match file.watch_interval_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    Some(ServerTls {
        default: default?,
        sni,
        min_version,
        on_http,
        on_grpc,
        client_auth,
        client_identity_header,
        watch_interval,
    })
}

/// Checks a certificate/key pair, reporting each file's problem at its own key.
fn cert_files(
    path: &str,
    cert: &str,
    key: &str,
    base: &Path,
    errors: &mut Errors,
) -> Option<CertFiles> {
    let files = CertFiles {
        cert_file: base.join(cert),
        key_file: base.join(key),
    };
    match material::read_pair(&files.cert_file, &files.key_file) {
        Ok(_) => Some(files),
        Err(CertKeyError::Cert(why)) => {
            errors.push(&format!("{path}.cert_file"), why);
            None
        }
        Err(CertKeyError::Key(why)) => {
            errors.push(&format!("{path}.key_file"), why);
            None
        }
    }
}

pub(super) fn upstream_tls(
    path: &str,
    file: &PoolTlsFile,
    base: &Path,
    errors: &mut Errors,
) -> Option<UpstreamTls> {
    let at = |key: &str| format!("{path}.tls.{key}");
    let roots = file.ca_file.as_ref().and_then(|ca| {
        let certs = material::read_certs(&base.join(ca)).and_then(|certs| {
            material::root_store(certs.iter().cloned())?;
            Ok(certs)
        });
        certs
            .map_err(|why| errors.push(&at("ca_file"), why))
            .ok()
            .map(Arc::from)
    });
    let client_cert = match (&file.client_cert_file, &file.client_key_file) {
        (Some(cert), Some(key)) => {
            let (cert_file, key_file) = (base.join(cert), base.join(key));
            match material::read_pair(&cert_file, &key_file) {
                Ok((chain, key)) => Some(ClientCert {
                    chain: Arc::from(chain),
                    key: Arc::from(key.secret_der()),
                }),
                Err(CertKeyError::Cert(why)) => {
                    errors.push(&at("client_cert_file"), why);
                    None
                }
                Err(CertKeyError::Key(why)) => {
                    errors.push(&at("client_key_file"), why);
                    None
                }
            }
        }
        (Some(_), None) => {
            errors.push(
                &at("client_key_file"),
                "set it too: `client_cert_file` needs its key",
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                &at("client_cert_file"),
                "set it too: `client_key_file` needs its certificate",
            );
            None
        }
        (None, None) => None,
    };
    if let Some(name) = &file.server_name {
        if ServerName::try_from(name.as_str()).is_err() {
            errors.push(
                &at("server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
    }
    let (mut on_http, mut on_grpc, mut on_metrics) = (false, false, false);
    for (i, name) in file.protocols.iter().enumerate() {
        match name.as_str() {
            "http" => on_http = true,
            "grpc" => on_grpc = true,
            "metrics" => on_metrics = true,
            other => errors.push(
                &format!("{path}.tls.protocols[{i}]"),
                format!("expected \"http\", \"grpc\" or \"metrics\", found {other:?}"),
            ),
        }
    }
    if file.protocols.is_empty() {
        errors.push(&at("protocols"), "name at least one, or remove [pools.tls]");
    }
    Some(UpstreamTls {
        server_name: file.server_name.clone(),
        roots,
        client_cert,
        insecure_skip_verify: file.insecure_skip_verify,
        on_http,
        on_grpc,
        on_metrics,
    })
}
