//! Client-facing TLS: one rustls server config per TLS listener, swapped whole
//! when the certificate, key or CA files change (checked every
//! `watch_interval_ms`) or a reload brings new settings. A connection takes
//! the config current when it arrives, so rotation never breaks a handshake;
//! a bad new file is reported and the config in use stays.
//!
//! The handshake itself runs in `crate::connection`, which bounds it by the
//! header timeout and counts failures, rather than in Pingora's listener
//! (60 s and an error log line per failure).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use prometheus::IntCounterVec;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::identity::ClientIdentity;
use super::material::{self, CertKeyError};
use crate::config::{ServerTls, TlsVersion};
use crate::protocol::Protocol;

/// TLS sessions each listener remembers for resumption (about 1 KiB each).
const SESSION_CACHE_SIZE: usize = 4096;
/// How often the watcher looks at its settings while watching is off.
const WATCH_OFF_RECHECK: Duration = Duration::from_secs(1);

/// The TLS of both proxy listeners, as loaded now.
pub struct DownstreamTls {
    current: ArcSwapOption<Loaded>,
    /// Held while loading, so the watcher and a reload never interleave.
    loading: Mutex<()>,
    /// Kept across certificate changes, so sessions still resume after one.
    sessions: [Arc<ServerSessionMemoryCache>; 2],
    reloads: IntCounterVec,
}

/// Settings and the server configs built from the files' contents.
struct Loaded {
    settings: ServerTls,
    /// Every file read, with the bytes it had.
    files: Snapshot,
    http: Option<Arc<ServerConfig>>,
    grpc: Option<Arc<ServerConfig>>,
}

type Snapshot = HashMap<PathBuf, Vec<u8>>;

/// What the watcher read: every file, or why one could not be read.
type Seen = Result<Snapshot, String>;

impl DownstreamTls {
    /// Loads `settings` (`None`: no TLS) and, when files are to be watched,
    /// starts the thread that does it.
    pub fn start(
        settings: Option<&ServerTls>,
        reloads: IntCounterVec,
    ) -> Result<Arc<Self>, String> {
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let tls = Arc::new(Self {
            current: ArcSwapOption::empty(),
            loading: Mutex::new(()),
            sessions: [0, 1].map(|_| ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)),
            reloads,
        });
        tls.apply(settings)?;
        let weak = Arc::downgrade(&tls);
        std::thread::Builder::new()
            .name("trident-tls-watch".to_owned())
            .spawn(move || watch(weak))
            .map_err(|e| format!("starting the certificate watcher: {e}"))?;
        Ok(tls)
    }

    /// Takes new settings (a reload), reading their files now; on an error the
    /// settings in use stay.
    pub fn apply(&self, settings: Option<&ServerTls>) -> Result<(), String> {
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        let Some(settings) = settings else {
            self.current.store(None);
            return Ok(());
        };
        let files =
            read_snapshot(settings).map_err(|(file, why)| format!("{}: {why}", file.display()))?;
        let loaded = self.build(settings.clone(), files)?;
        self.current.store(Some(Arc::new(loaded)));
        Ok(())
    }

    /// A handshake acceptor for a new connection on `protocol`'s listener;
    /// `None`: that listener speaks plain text.
    pub fn acceptor(&self, protocol: Protocol) -> Option<Acceptor> {
        let loaded = self.current.load();
        let config = match protocol {
            Protocol::Http => loaded.as_ref()?.http.clone(),
            Protocol::Grpc => loaded.as_ref()?.grpc.clone(),
        }?;
        Some(Acceptor::from_server_config(config))
    }

    /// Reads the files again and, if any changed, loads them: on success new
    /// connections get them; on failure (a file gone or unreadable, a
    /// half-written file, a key not yet matching its certificate) the ones in
    /// use stay, and the failure is counted and logged once for as long as the
    /// files stay as they are.
    fn reload_changed_files(&self, last_failure: &mut Option<Seen>) {
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        let Some(loaded) = self.current.load_full() else {
            return;
        };
        let seen: Seen = read_snapshot(&loaded.settings)
            .map_err(|(file, why)| format!("{}: {why}", file.display()));
        if seen.as_ref().is_ok_and(|files| *files == loaded.files) {
            *last_failure = None;
            return;
        }
        if last_failure.as_ref() == Some(&seen) {
            return;
        }
        let built = seen
            .clone()
            .and_then(|files| self.build(loaded.settings.clone(), files));
        match built {
            Ok(new) => {
                self.current.store(Some(Arc::new(new)));
                self.reloads.with_label_values(&["success"]).inc();
                *last_failure = None;
                log::info!("TLS: changed certificate files loaded; new connections use them");
            }
            Err(why) => {
                self.reloads.with_label_values(&["failure"]).inc();
                *last_failure = Some(seen);
                log::error!(
                    "TLS: changed certificate files not loaded, the ones in use stay: {why}"
                );
            }
        }
    }

    fn build(&self, settings: ServerTls, files: Snapshot) -> Result<Loaded, String> {
        let resolver = Arc::new(SniResolver::new(&settings, &files)?);
        let roots = match &settings.client_auth {
            Some(auth) => {
                let roots = material::certs_from_pem(&files[&auth.ca_file])
                    .and_then(material::root_store)
                    .map_err(|why| format!("{}: {why}", auth.ca_file.display()))?;
                Some((Arc::new(roots), auth.required))
            }
            None => None,
        };
        let config = |alpn: &[&[u8]], sessions: &Arc<ServerSessionMemoryCache>| {
            let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
                TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
                TlsVersion::V1_3 => &[&rustls::version::TLS13],
            };
            let builder = ServerConfig::builder_with_provider(material::provider())
                .with_protocol_versions(versions)
                .map_err(|e| format!("TLS versions: {e}"))?;
            let builder = match &roots {
                Some((roots, required)) => {
                    let verifier = WebPkiClientVerifier::builder_with_provider(
                        roots.clone(),
                        material::provider(),
                    );
                    let verifier = if *required {
                        verifier
                    } else {
                        verifier.allow_unauthenticated()
                    };
                    let verifier = verifier
                        .build()
                        .map_err(|e| format!("client certificate verification: {e}"))?;
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(resolver.clone());
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            config.session_storage = sessions.clone();
            Ok::<_, String>(Arc::new(config))
        };
        let [http_sessions, grpc_sessions] = &self.sessions;
        Ok(Loaded {
            http: settings
                .on_http
                .then(|| config(&[b"h2", b"http/1.1"], http_sessions))
                .transpose()?,
            // gRPC over TLS is h2, negotiated by ALPN (gRPC's HTTP/2 spec).
            grpc: settings
                .on_grpc
                .then(|| config(&[b"h2"], grpc_sessions))
                .transpose()?,
            settings,
            files,
        })
    }
}

/// Every file `settings` names, read now.
fn read_snapshot(settings: &ServerTls) -> Result<Snapshot, (PathBuf, String)> {
    let pairs = std::iter::once(&settings.default).chain(settings.sni.iter().map(|s| &s.files));
    let paths = pairs
        .flat_map(|files| [&files.cert_file, &files.key_file])
        .chain(settings.client_auth.as_ref().map(|auth| &auth.ca_file));
    let mut snapshot = Snapshot::new();
    for path in paths {
        let bytes = material::read_file(path).map_err(|why| (path.clone(), why))?;
        snapshot.insert(path.clone(), bytes);
    }
    Ok(snapshot)
}

/// Checks the files every `watch_interval` until the TLS state is dropped.
fn watch(tls: Weak<DownstreamTls>) {
    let mut last_failure = None;
    loop {
        let interval = match tls.upgrade() {
            None => return,
            Some(tls) => tls
                .current
                .load()
                .as_ref()
                .and_then(|l| l.settings.watch_interval),
        };
        std::thread::sleep(interval.unwrap_or(WATCH_OFF_RECHECK));
        if interval.is_some() {
            match tls.upgrade() {
                None => return,
                Some(tls) => tls.reload_changed_files(&mut last_failure),
            }
        }
    }
}

/// Picks the certificate by the server name the client asked for: an exact
/// name first, then a `*.` wildcard for its parent, else the default.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    fn new(settings: &ServerTls, files: &Snapshot) -> Result<Self, String> {
        let load = |pair: &crate::config::CertFiles| {
            material::certified_key(&files[&pair.cert_file], &files[&pair.key_file])
                .map(Arc::new)
                .map_err(|e| match e {
                    CertKeyError::Cert(why) => format!("{}: {why}", pair.cert_file.display()),
                    CertKeyError::Key(why) => format!("{}: {why}", pair.key_file.display()),
                })
        };
        let mut resolver = Self {
            default: load(&settings.default)?,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for entry in &settings.sni {
            let key = load(&entry.files)?;
            for name in &entry.names {
                match name.strip_prefix("*.") {
                    Some(parent) => resolver.wildcard.insert(parent.to_owned(), key.clone()),
                    None => resolver.exact.insert(name.clone(), key.clone()),
                };
            }
        }
        Ok(resolver)
    }

    fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Puts the verified client certificate's identity into the connection's
/// TLS digest, where the proxy reads it per request.
pub struct IdentityCallback;

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let identity = ClientIdentity::from_der(tls.peer_certificate_der()?)?;
        Some(Arc::new(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CertFiles, SniCert};

    /// A resolver over self-signed certificates: the default, `a.test`, `*.b.test`.
    fn resolver() -> SniResolver {
        let mut files = Snapshot::new();
        let mut pair = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let pair = CertFiles {
                cert_file: PathBuf::from(format!("{name}.pem")),
                key_file: PathBuf::from(format!("{name}-key.pem")),
            };
            files.insert(pair.cert_file.clone(), cert.pem().into_bytes());
            files.insert(pair.key_file.clone(), key.serialize_pem().into_bytes());
            pair
        };
        let settings = ServerTls {
            default: pair("default.test"),
            sni: vec![
                SniCert {
                    names: vec!["a.test".to_owned()],
                    files: pair("a.test"),
                },
                SniCert {
                    names: vec!["*.b.test".to_owned()],
                    files: pair("x.b.test"),
                },
            ],
            min_version: TlsVersion::V1_2,
            on_http: true,
            on_grpc: true,
            client_auth: None,
            client_identity_header: None,
            watch_interval: None,
        };
        SniResolver::new(&settings, &files).unwrap()
    }

    #[test]
    fn names_pick_exact_then_one_label_wildcards_else_the_default() {
        let resolver = resolver();
        let is = |name: Option<&str>, expected: &Arc<CertifiedKey>| {
            Arc::ptr_eq(resolver.pick(name), expected)
        };
        assert!(is(Some("a.test"), &resolver.exact["a.test"]));
        assert!(
            is(Some("A.Test"), &resolver.exact["a.test"]),
            "names are case-insensitive"
        );
        assert!(is(Some("x.b.test"), &resolver.wildcard["b.test"]));
        assert!(
            is(Some("b.test"), &resolver.default),
            "a wildcard does not name its parent"
        );
        assert!(
            is(Some("y.x.b.test"), &resolver.default),
            "nor two labels down"
        );
        assert!(is(Some("c.test"), &resolver.default));
        assert!(is(None, &resolver.default));
    }
}
