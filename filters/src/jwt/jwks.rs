//! A JWKS URL, fetched at start and refreshed in the background.
//!
//! The refresher runs on its own thread with a single-threaded runtime, so it
//! neither depends on nor burdens the proxy's workers. A failed fetch keeps
//! the last good key set. A token with an unknown `kid` asks for an immediate
//! refresh, at most once per `min_refresh_interval`; concurrent askers share it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::{watch, Notify};

use super::keys::KeySet;
use super::verify::Verifier;

/// Larger JWKS documents are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Reads PEM CA certificates (for `JwksUrlSettings::extra_roots`).
pub fn parse_ca_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("no CERTIFICATE in the PEM file".to_owned());
    }
    Ok(certificates)
}

#[derive(Debug, Clone)]
pub struct JwksUrlSettings {
    /// `https://host/path` or `http://host:port/path`.
    pub url: String,
    /// CAs trusted for an https URL besides the public web roots (e.g. an internal CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub refresh_interval: Duration,
    /// Least time between refreshes asked for by unknown key ids.
    pub min_refresh_interval: Duration,
    /// Bound on one fetch.
    pub timeout: Duration,
}

impl JwksUrlSettings {
    /// Checks the URL without fetching it.
    pub fn validate(&self) -> Result<(), String> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| format!("invalid URL {:?}: {e}", self.url))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => Ok(()),
            _ => Err(format!(
                "invalid URL {:?}: expected https://host/path or http://host/path",
                self.url
            )),
        }
    }
}

/// Refreshes one verifier's key set from a URL.
pub struct JwksRefresher {
    settings: JwksUrlSettings,
    verifier: Arc<Verifier>,
    on_fetch: Box<dyn Fn(bool) + Send + Sync>,
    wake: Notify,
    /// Counts finished fetch attempts; waiters watch it change.
    attempts: watch::Sender<u64>,
    /// When an unknown key id last asked for a refresh.
    last_asked: Mutex<Option<Instant>>,
    key_sets_installed: AtomicU64,
    /// Set when the filter is dropped (a config reload replaced it): fetching ends.
    stopped: AtomicBool,
}

/// A fetched JWKS document and the key set it holds.
struct Fetched {
    document: Bytes,
    keys: KeySet,
}

impl JwksRefresher {
    /// Starts the refresh thread and waits (at most `timeout`) for the first fetch.
    pub fn start(
        verifier: Arc<Verifier>,
        settings: JwksUrlSettings,
        on_fetch: Box<dyn Fn(bool) + Send + Sync>,
    ) -> Arc<JwksRefresher> {
        let refresher = Arc::new(JwksRefresher {
            settings,
            verifier,
            on_fetch,
            wake: Notify::new(),
            attempts: watch::channel(0).0,
            last_asked: Mutex::new(None),
            key_sets_installed: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let (first_done, first) = std::sync::mpsc::sync_channel(1);
        let runner = refresher.clone();
        let spawned = std::thread::Builder::new()
            .name("jwks-refresh".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(runner.run(first_done)),
                    Err(e) => {
                        log::error!("JWKS refresh for {} cannot start: {e}", runner.settings.url)
                    }
                }
            });
        let answered = spawned.is_ok()
            && first
                .recv_timeout(refresher.settings.timeout + Duration::from_millis(100))
                .is_ok();
        if !answered {
            log::warn!(
                "JWKS {}: no key set yet; tokens are refused until a fetch succeeds",
                refresher.settings.url
            );
        }
        refresher
    }

    /// Key sets installed so far (the first fetch included).
    pub fn key_sets_installed(&self) -> u64 {
        self.key_sets_installed.load(Ordering::Relaxed)
    }

    /// Fetches forever; `first_done` hears of the first attempt.
    async fn run(self: Arc<Self>, first_done: std::sync::mpsc::SyncSender<()>) {
        let client = match self.client() {
            Ok(client) => client,
            Err(e) => {
                log::error!("JWKS {}: cannot set up TLS: {e}", self.settings.url);
                return;
            }
        };
        // An unchanged document is not installed again: that would make every
        // cached token pay for a new signature check.
        let mut installed: Option<Bytes> = None;
        loop {
            let ok = match self.fetch(&client).await {
                Ok(fetched) => {
                    if installed.as_ref() != Some(&fetched.document) {
                        self.verifier.replace_keys(fetched.keys);
                        self.key_sets_installed.fetch_add(1, Ordering::Relaxed);
                        installed = Some(fetched.document);
                    }
                    true
                }
                Err(reason) => {
                    log::warn!(
                        "JWKS {}: {reason}; keeping the last good key set",
                        self.settings.url
                    );
                    false
                }
            };
            (self.on_fetch)(ok);
            self.attempts.send_modify(|n| *n += 1);
            // Only `start` listens, for the first attempt; later sends fail harmlessly.
            let _ = first_done.try_send(());
            tokio::select! {
                _ = tokio::time::sleep(self.settings.refresh_interval) => {}
                _ = self.wake.notified() => {}
            }
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// Ends fetching (its thread exits at its next wake-up, which this causes).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// An http and https client trusting the public web roots and `extra_roots`.
    fn client(&self) -> Result<HttpClient, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let (_added, _ignored) = roots.add_parsable_certificates(self.settings.extra_roots.clone());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Client::builder(TokioExecutor::new()).build(connector))
    }

    async fn fetch(&self, client: &HttpClient) -> Result<Fetched, String> {
        let uri: http::Uri = self.settings.url.parse().map_err(|e| format!("{e}"))?;
        let fetch = async {
            let response = client
                .get(uri)
                .await
                .map_err(|e| format!("fetch failed: {e}"))?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            let text = std::str::from_utf8(&body).map_err(|_| "body is not UTF-8".to_owned())?;
            let keys = KeySet::from_jwks(text)?;
            Ok(Fetched {
                document: body,
                keys,
            })
        };
        tokio::time::timeout(self.settings.timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {:?}", self.settings.timeout))?
    }

    /// For a token whose key id is unknown: refreshes now unless a refresh was
    /// asked for within `min_refresh_interval`, waits for the fetch in flight
    /// (bounded by `timeout`), and says whether the key set changed.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let generation = self.verifier.generation();
        let mut attempts = self.attempts.subscribe();
        attempts.borrow_and_update();
        {
            let mut last = self.last_asked.lock();
            let now = Instant::now();
            match *last {
                // Asked recently: a fetch may still be in flight; share it.
                Some(at) if now.duration_since(at) < self.settings.min_refresh_interval => {
                    if now.duration_since(at) > self.settings.timeout {
                        return false;
                    }
                }
                _ => {
                    *last = Some(now);
                    self.wake.notify_one();
                }
            }
        }
        let _ = tokio::time::timeout(self.settings.timeout, attempts.changed()).await;
        self.verifier.generation() != generation
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use jsonwebtoken::Algorithm;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::*;
    use crate::jwt::tests::*;
    use crate::jwt::verify::{JwtError, ValidationSettings};
    use crate::testing::block_on;

    /// A tiny HTTP server whose answer the test swaps, counting requests.
    struct JwksServer {
        url: String,
        answer: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
        _runtime: tokio::runtime::Runtime,
    }

    impl JwksServer {
        fn start(body: &str) -> JwksServer {
            Self::start_with(body, None)
        }

        /// Serves https with the fixture certificate for 127.0.0.1 (signed by `tls-ca.pem`).
        fn start_tls(body: &str) -> JwksServer {
            let certs = CertificateDer::pem_slice_iter(&fixture("tls-cert.pem"))
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key =
                rustls::pki_types::PrivateKeyDer::from_pem_slice(&fixture("tls-key.pem")).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            Self::start_with(
                body,
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            )
        }

        fn start_with(body: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> JwksServer {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let scheme = if tls.is_some() { "https" } else { "http" };
            let url = format!("{scheme}://{}/jwks.json", listener.local_addr().unwrap());
            let answer = Arc::new(Mutex::new((200, body.to_owned())));
            let hits = Arc::new(AtomicUsize::new(0));
            let (served, counted) = (answer.clone(), hits.clone());
            runtime.spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let (status, body) = served.lock().clone();
                    counted.fetch_add(1, Ordering::SeqCst);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(socket).await {
                                    answer_once(stream, status, &body).await;
                                }
                            }
                            None => answer_once(socket, status, &body).await,
                        }
                    });
                }
            });
            JwksServer {
                url,
                answer,
                hits,
                _runtime: runtime,
            }
        }

        fn serve(&self, status: u16, body: &str) {
            *self.answer.lock() = (status, body.to_owned());
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    async fn answer_once<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        status: u16,
        body: &str,
    ) {
        let mut request = [0u8; 2048];
        let _ = stream.read(&mut request).await;
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/testdata/jwt/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn refresher(
        server: &JwksServer,
        min_refresh: Duration,
    ) -> (Arc<Verifier>, Arc<JwksRefresher>) {
        refresher_trusting(server, min_refresh, Vec::new())
    }

    fn refresher_trusting(
        server: &JwksServer,
        min_refresh: Duration,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> (Arc<Verifier>, Arc<JwksRefresher>) {
        let verifier = Arc::new(Verifier::new(
            ValidationSettings::default(),
            KeySet::default(),
        ));
        let settings = JwksUrlSettings {
            url: server.url.clone(),
            extra_roots,
            refresh_interval: Duration::from_secs(3600),
            min_refresh_interval: min_refresh,
            timeout: Duration::from_secs(2),
        };
        settings.validate().unwrap();
        let refresher = JwksRefresher::start(verifier.clone(), settings, Box::new(|_| {}));
        (verifier, refresher)
    }

    #[test]
    fn first_fetch_installs_keys_before_start_returns() {
        let server = JwksServer::start(JWKS);
        let (verifier, _refresher) = refresher(&server, Duration::from_secs(10));
        assert_eq!(verifier.key_count(), 4);
        let token = sign(Algorithm::ES384, &claims(NOW + 60));
        assert!(verifier.verify(&token, NOW).is_ok());
    }

    #[test]
    fn unknown_kid_refreshes_once_per_interval_and_failures_keep_the_last_set() {
        let server = JwksServer::start(JWKS);
        let (verifier, refresher) = refresher(&server, Duration::from_secs(10));
        assert_eq!(server.hits(), 1);
        // Rotation: the provider now publishes rsa-2 only.
        server.serve(200, JWKS_ROTATED);
        let token = sign_with(
            Algorithm::RS256,
            Some("rsa-2"),
            &rotated_key(),
            &claims(NOW + 60),
        );
        assert_eq!(
            verifier.verify(&token, NOW),
            Err(JwtError::UnknownKey {
                kid: Some("rsa-2".into())
            })
        );
        assert!(block_on(refresher.refresh_for_unknown_kid()));
        assert!(verifier.verify(&token, NOW).is_ok());
        assert_eq!(server.hits(), 2);
        // Within the interval, another unknown kid does not fetch again.
        // (An unchanged document is not installed again either; see below.)
        assert!(!block_on(refresher.refresh_for_unknown_kid()));
        assert_eq!(server.hits(), 2);
        assert_eq!(refresher.key_sets_installed(), 2);
    }

    #[test]
    fn failed_fetches_keep_the_last_good_set() {
        let server = JwksServer::start(JWKS);
        let (verifier, refresher) = refresher(&server, Duration::ZERO);
        for (status, body) in [
            (500, JWKS_ROTATED),
            (200, "not json"),
            (200, r#"{"keys": []}"#),
        ] {
            server.serve(status, body);
            assert!(
                !block_on(refresher.refresh_for_unknown_kid()),
                "{status} {body}"
            );
            assert_eq!(verifier.key_count(), 4, "{status} {body}");
        }
        assert_eq!(server.hits(), 4);
        server.serve(200, JWKS);
        assert!(
            !block_on(refresher.refresh_for_unknown_kid()),
            "same document: no change"
        );
        assert_eq!(refresher.key_sets_installed(), 1);
    }

    #[test]
    fn a_provider_down_at_start_is_retried_on_the_first_token() {
        let server = JwksServer::start(JWKS);
        server.serve(503, "starting");
        let (verifier, refresher) = refresher(&server, Duration::from_secs(10));
        assert_eq!(verifier.key_count(), 0);
        let token = sign(Algorithm::EdDSA, &claims(NOW + 60));
        assert!(matches!(
            verifier.verify(&token, NOW),
            Err(JwtError::UnknownKey { .. })
        ));
        server.serve(200, JWKS);
        assert!(block_on(refresher.refresh_for_unknown_kid()));
        assert!(verifier.verify(&token, NOW).is_ok());
    }

    #[test]
    fn https_urls_are_verified_against_the_trusted_roots() {
        let server = JwksServer::start_tls(JWKS);
        let ca = parse_ca_pem(&fixture("tls-ca.pem")).unwrap();
        let (verifier, _refresher) = refresher_trusting(&server, Duration::from_secs(10), ca);
        assert_eq!(verifier.key_count(), 4);
        // Without the internal CA, the server's certificate is not trusted.
        let (untrusting, _refresher) = refresher(&server, Duration::from_secs(10));
        assert_eq!(untrusting.key_count(), 0);
        assert!(parse_ca_pem(b"not pem").is_err());
    }

    #[test]
    fn urls_are_checked_without_fetching() {
        let with = |url: &str| JwksUrlSettings {
            url: url.to_owned(),
            extra_roots: Vec::new(),
            refresh_interval: Duration::from_secs(1),
            min_refresh_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        assert!(with("http://idp.internal:8080/jwks").validate().is_ok());
        assert!(with("https://idp.example.com/jwks").validate().is_ok());
        assert!(with("idp/jwks").validate().is_err());
        assert!(with("ftp://x/jwks").validate().is_err());
        assert!(with("http:// bad").validate().is_err());
    }
}
