//! TLS through the real binary: HTTP/1.1, h2 and gRPC to Trident over TLS,
//! client certificates, SNI, rotation, and TLS to endpoints that fail to
//! verify (expired, another CA, another name).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{self as pki, Ca, Leaf};
use common::*;
use http_body_util::Full;

const IDENTITY: &str = "spiffe://example.test/client-a";

/// `[server.tls]` with `cert`/`key` as the default certificate, then `extra` keys.
fn server_tls(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

/// A pool `p` on `mock`, routing everything (`*`) to it.
fn plain_pool(mock: &MockTriton) -> String {
    format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(mock)
    )
}

/// Trident with TLS on both listeners (`extra` more `[server.tls]` keys) in
/// front of a plain mock; the certificates' directory is kept with it.
async fn tls_trident(ca: &Ca, extra: &str) -> (MockTriton, Trident, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"])
        .write(dir.path(), "edge");
    let backend = mock("t1", &["m"]).await;
    let body = format!("{}{}", plain_pool(&backend), server_tls(&cert, &key, extra));
    let trident = Trident::start(&body).await;
    (backend, trident, dir)
}

#[tokio::test]
async fn http1_h2_and_grpc_are_served_over_tls() {
    let ca = Ca::new("edge CA");
    let (_backend, trident, _dir) = tls_trident(&ca, "").await;
    let h1 = ca.client_config(&[b"http/1.1"], None);
    let (status, _, body) = pki::get(trident.http, "localhost", h1, "/v2/models/m/ready")
        .await
        .expect("HTTP/1.1 over TLS");
    assert_eq!(status, 200, "{body:?}");
    let h2 = ca.client_config(&[b"h2", b"http/1.1"], None);
    let tls = pki::connect(trident.http, "localhost", h2.clone())
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN prefers h2"
    );
    let (status, _, _) = pki::get(trident.http, "localhost", h2, "/v2/health/ready")
        .await
        .expect("h2 over TLS");
    assert_eq!(status, 200);
    let grpc = ca.client_config(&[b"h2"], None);
    let mut client = pki::grpc_client(trident.grpc, "localhost", grpc)
        .await
        .expect("gRPC over TLS");
    let reply = client
        .model_infer(infer_request("m", "1", Bytes::from_static(b"abc")))
        .await
        .expect("infer over TLS");
    assert_eq!(backend(&reply), "t1");
    // Plain text on a TLS listener is no request: the handshake fails, and is counted.
    let plain = http1_client()
        .get(trident.http_url("/v2/health/ready").parse().unwrap())
        .await;
    assert!(plain.is_err(), "plain HTTP on the TLS listener must fail");
    assert!(
        wait_metric(
            &trident,
            "trident_downstream_tls_handshake_failures_total{listener=\"http\"}",
            1.0
        )
        .await
    );
}

#[tokio::test]
async fn the_grpc_listener_offers_only_h2() {
    let ca = Ca::new("edge CA");
    let (_backend, trident, _dir) = tls_trident(&ca, "").await;
    let h1_only = ca.client_config(&[b"http/1.1"], None);
    assert!(
        pki::connect(trident.grpc, "localhost", h1_only)
            .await
            .is_err(),
        "an HTTP/1.1-only client has no protocol in common with the gRPC listener"
    );
}

#[tokio::test]
async fn client_certificates_are_required_verified_and_named_upstream() {
    let ca = Ca::new("edge CA");
    let clients = Ca::new("clients CA");
    let dir = tempfile::tempdir().unwrap();
    let client_ca = clients.write(dir.path(), "clients");
    let extra = format!(
        "client_ca_file = \"{}\"\nclient_identity_header = \"x-client-identity\"\n",
        client_ca.display()
    );
    let (_backend, trident, _certs) = tls_trident(&ca, &extra).await;
    let good = clients.issue_client(IDENTITY, "client a");
    let ask = |config| async move {
        let request = http::Request::get("https://localhost/v2/health/ready")
            .header("x-mock-echo", "x-client-identity")
            // A client's own copy must never reach the upstream.
            .header("x-client-identity", "spiffe://example.test/admin")
            .body(Full::new(Bytes::new()))
            .unwrap();
        pki::request(trident.http, "localhost", config, request).await
    };
    let (status, headers, _) = ask(ca.client_config(&[b"http/1.1"], Some(&good)))
        .await
        .expect("a client with a good certificate is served");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-mock-echo-x-client-identity"), IDENTITY);
    // Over h2 too (the identity rides the connection's TLS digest).
    let (_, headers, _) = ask(ca.client_config(&[b"h2"], Some(&good))).await.unwrap();
    assert_eq!(header(&headers, "x-mock-echo-x-client-identity"), IDENTITY);
    // No certificate, or one from another CA: refused in the handshake (TLS 1.3
    // reports it at the first read, so the request fails either way).
    assert!(ask(ca.client_config(&[b"http/1.1"], None)).await.is_err());
    let stranger = Ca::new("other CA").issue_client(IDENTITY, "mallory");
    assert!(ask(ca.client_config(&[b"http/1.1"], Some(&stranger)))
        .await
        .is_err());
}

#[tokio::test]
async fn optional_client_certificates_leave_anonymous_clients_without_identity() {
    let ca = Ca::new("edge CA");
    let clients = Ca::new("clients CA");
    let dir = tempfile::tempdir().unwrap();
    let client_ca = clients.write(dir.path(), "clients");
    let extra = format!(
        "client_ca_file = \"{}\"\nrequire_client_cert = false\nclient_identity_header = \"x-client-identity\"\n",
        client_ca.display()
    );
    let (_backend, trident, _certs) = tls_trident(&ca, &extra).await;
    let request = http::Request::get("https://localhost/v2/health/ready")
        .header("x-mock-echo", "x-client-identity")
        .header("x-client-identity", "spiffe://example.test/admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = pki::request(
        trident.http,
        "localhost",
        ca.client_config(&[b"http/1.1"], None),
        request,
    )
    .await
    .expect("anonymous clients are served");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "x-mock-echo-x-client-identity"),
        "",
        "the forged copy is removed"
    );
}

#[tokio::test]
async fn the_certificate_is_chosen_by_server_name() {
    let ca = Ca::new("edge CA");
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = ca.issue(&["a.test"]).write(dir.path(), "a");
    let (b_cert, b_key) = ca.issue(&["x.b.test"]).write(dir.path(), "b");
    let extra = format!(
        "[[server.tls.sni]]\nserver_names = [\"a.test\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [[server.tls.sni]]\nserver_names = [\"*.b.test\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        a_cert.display(),
        a_key.display(),
        b_cert.display(),
        b_key.display()
    );
    let (_backend, trident, _certs) = tls_trident(&ca, &extra).await;
    let config = ca.client_config(&[b"http/1.1"], None);
    // Each name verifies only if Trident presented the certificate for it.
    for name in ["a.test", "x.b.test", "localhost"] {
        let (status, _, _) = pki::get(trident.http, name, config.clone(), "/v2/health/live")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(status, 200, "{name}");
    }
    // An unknown name gets the default certificate, which does not name it.
    let err = pki::get(trident.http, "c.test", config, "/v2/health/live")
        .await
        .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn tls_1_3_only_refuses_a_tls_1_2_client() {
    let ca = Ca::new("edge CA");
    let (_backend, trident, _dir) = tls_trident(&ca, "min_version = \"1.3\"\n").await;
    let mut tls12 = (*ca.client_config(&[b"http/1.1"], None)).clone();
    tls12 = rustls::ClientConfig::builder_with_provider(tls12.crypto_provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    assert!(pki::connect(trident.http, "localhost", Arc::new(tls12))
        .await
        .is_err());
    let (status, _, _) = pki::get(
        trident.http,
        "localhost",
        ca.client_config(&[b"http/1.1"], None),
        "/v2/health/live",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
}

/// The certificate (DER) a new connection is served: a full handshake, by a
/// client with no session to resume (a resumed session shows the certificate
/// it began with).
async fn served_certificate(addr: std::net::SocketAddr, ca: &Ca) -> Option<Vec<u8>> {
    let config = ca.client_config(&[b"http/1.1"], None);
    let tls = pki::connect(addr, "localhost", config).await.ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

#[tokio::test]
async fn rotated_files_are_served_without_a_failed_handshake_and_a_bad_one_is_refused() {
    let ca = Ca::new("edge CA");
    let (_backend, trident, dir) = tls_trident(&ca, "watch_interval_ms = 100\n").await;
    let config = ca.client_config(&[b"http/1.1"], None);
    let first = served_certificate(trident.http, &ca).await.expect("served");

    // Clients keep handshaking while the files are replaced.
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (config, failures, done) = (config.clone(), failures.clone(), done.clone());
            let addr = trident.http;
            tokio::spawn(async move {
                let mut handshakes = 0;
                while !done.load(Ordering::Relaxed) {
                    match pki::get(addr, "localhost", config.clone(), "/v2/health/live").await {
                        Ok((status, _, _)) if status == 200 => handshakes += 1,
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                handshakes
            })
        })
        .collect();
    let next = ca.issue(&["localhost"]);
    // Rotate the way Kubernetes does it: new files renamed into place.
    write_atomically(&dir.path().join("edge-key.pem"), &next.key_pem);
    write_atomically(&dir.path().join("edge.pem"), &next.cert_pem);
    let rotated = eventually(Duration::from_secs(5), || async {
        served_certificate(trident.http, &ca)
            .await
            .is_some_and(|n| n != first)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    let mut handshakes = 0;
    for task in load {
        handshakes += task.await.unwrap();
    }
    assert!(rotated, "the new certificate is served");
    assert!(handshakes > 10, "load ran ({handshakes} handshakes)");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no failed handshake");
    assert!(
        wait_metric(
            &trident,
            "trident_tls_certificate_reloads_total{result=\"success\"}",
            1.0
        )
        .await
    );

    // A key that is not the certificate's is refused; the certificate in use stays.
    let current = served_certificate(trident.http, &ca).await.unwrap();
    write_atomically(
        &dir.path().join("edge-key.pem"),
        &ca.issue(&["localhost"]).key_pem,
    );
    assert!(
        wait_metric(
            &trident,
            "trident_tls_certificate_reloads_total{result=\"failure\"}",
            1.0
        )
        .await
    );
    assert_eq!(
        served_certificate(trident.http, &ca).await,
        Some(current.clone())
    );
    // A file gone is a failure too, counted once while it stays gone.
    std::fs::remove_file(dir.path().join("edge-key.pem")).unwrap();
    assert!(
        wait_metric(
            &trident,
            "trident_tls_certificate_reloads_total{result=\"failure\"}",
            2.0
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = metric(
        &trident.metrics().await,
        "trident_tls_certificate_reloads_total{result=\"failure\"}",
    );
    assert_eq!(failures, 2.0, "logged and counted once, not at every look");
    assert_eq!(served_certificate(trident.http, &ca).await, Some(current));
}

fn write_atomically(path: &Path, text: &str) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// A pool whose only endpoint is `mock` behind a TLS front with `leaf`,
/// verified against `ca`, named `name` (None: the default name, its IP).
async fn tls_pool_trident(
    mock: &MockTriton,
    leaf: &Leaf,
    ca: &Ca,
    name: Option<&str>,
) -> (Trident, tempfile::TempDir) {
    mtls_pool_trident(mock, leaf, ca, name, None).await
}

/// [`tls_pool_trident`], the front requiring client certificates from
/// `clients`' CA and Trident presenting `clients`' certificate.
async fn mtls_pool_trident(
    mock: &MockTriton,
    leaf: &Leaf,
    ca: &Ca,
    name: Option<&str>,
    clients: Option<(&Ca, &Leaf)>,
) -> (Trident, tempfile::TempDir) {
    let client_ca = clients.map(|(ca, _)| ca);
    let http = pki::front(mock.http_addr, leaf, &[b"http/1.1"], client_ca).await;
    let grpc = pki::front(mock.grpc_addr, leaf, &[b"h2"], client_ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "upstream-ca");
    let server_name = name.map_or(String::new(), |n| format!("server_name = \"{n}\"\n"));
    let client_cert = clients.map_or(String::new(), |(_, cert)| {
        let (cert, key) = cert.write(dir.path(), "proxy");
        format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    let body = format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {{ http = \"{http}\", grpc = \"{grpc}\" }} ]\n\
         [pools.health]\nenabled = false\n\
         [pools.tls]\nca_file = \"{}\"\n{server_name}{client_cert}\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        ca_file.display()
    );
    (Trident::start(&body).await, dir)
}

#[tokio::test]
async fn endpoints_are_reached_over_tls_with_pooled_connections() {
    let ca = Ca::new("triton CA");
    let triton = mock("t1", &["m"]).await;
    let leaf = ca.issue(&["triton.internal"]);
    let (trident, _dir) = tls_pool_trident(&triton, &leaf, &ca, Some("triton.internal")).await;
    let client = http1_client();
    for _ in 0..20 {
        let (status, headers, _) = get(&client, &trident.http_url("/v2/models/m/ready")).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-mock-backend"), "t1");
    }
    let mut grpc = client_for(&trident).await;
    for i in 0..20 {
        let reply = grpc
            .model_infer(infer_request("m", &i.to_string(), Bytes::from_static(b"x")))
            .await
            .expect("gRPC over TLS upstream");
        assert_eq!(backend(&reply), "t1");
    }
    // The front opens one plain connection to the mock per TLS connection.
    let (http, grpc) = triton.connections_accepted();
    assert!(
        http <= 3 && grpc <= 3,
        "TLS connections are reused: {http} HTTP and {grpc} gRPC connections for 20 calls each"
    );
}

async fn client_for(trident: &Trident) -> GrpcClient {
    client(trident.grpc_url()).await
}

#[tokio::test]
async fn endpoint_certificates_that_do_not_verify_give_502_and_unavailable_naming_why() {
    let ca = Ca::new("triton CA");
    let backend = mock("t1", &["m"]).await;
    let cases = [
        ("expired", ca.issue_expired(&["triton.internal"]), "expired"),
        (
            "another CA",
            Ca::new("rogue CA").issue(&["triton.internal"]),
            "UnknownIssuer",
        ),
        (
            "another name",
            ca.issue(&["other.internal"]),
            "not valid for name",
        ),
    ];
    for (case, leaf, reason) in cases {
        let (trident, _dir) = tls_pool_trident(&backend, &leaf, &ca, Some("triton.internal")).await;
        let (status, _, body) = get(&http1_client(), &trident.http_url("/v2/models/m/ready")).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 502, "{case}: {text}");
        assert!(
            text.contains("TLS with upstream") && text.contains(reason),
            "{case}: {text}"
        );
        let err = client_for(&trident)
            .await
            .model_infer(infer_request("m", "1", Bytes::from_static(b"x")))
            .await
            .expect_err(case);
        assert_eq!(err.code(), tonic::Code::Unavailable, "{case}: {err:?}");
        assert!(err.message().contains(reason), "{case}: {}", err.message());
    }
}

#[tokio::test]
async fn a_reload_loads_new_certificates_and_refuses_a_bad_pair() {
    let ca = Ca::new("edge CA");
    let (_backend, trident, dir) = tls_trident(&ca, "watch_interval_ms = 0\n").await;
    let first = served_certificate(trident.http, &ca).await.unwrap();
    ca.issue(&["localhost"]).write(dir.path(), "edge");
    // Not watched: the old certificate stays until the reload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_certificate(trident.http, &ca).await,
        Some(first.clone())
    );
    assert!(trident.reload_by_signal("success", 1.0).await);
    let second = served_certificate(trident.http, &ca).await.unwrap();
    assert_ne!(second, first, "the reload loaded the new certificate");

    std::fs::write(
        dir.path().join("edge-key.pem"),
        ca.issue(&["localhost"]).key_pem,
    )
    .unwrap();
    assert!(trident.reload_by_signal("failure", 1.0).await);
    assert_eq!(served_certificate(trident.http, &ca).await, Some(second));
}

#[tokio::test]
async fn an_endpoint_named_by_address_is_verified_as_it_and_mutual_tls_is_presented() {
    let ca = Ca::new("triton CA");
    let clients = Ca::new("proxies CA");
    let triton = mock("t1", &["m"]).await;
    let leaf = ca.issue(&["127.0.0.1"]);
    let proxy = clients.issue_client("spiffe://example.test/trident", "trident");
    let (trident, _dir) =
        mtls_pool_trident(&triton, &leaf, &ca, None, Some((&clients, &proxy))).await;
    let (status, _, body) = get(&http1_client(), &trident.http_url("/v2/models/m/ready")).await;
    assert_eq!(status, 200, "{body:?}");
    let reply = client_for(&trident)
        .await
        .model_infer(infer_request("m", "1", Bytes::from_static(b"x")))
        .await
        .expect("gRPC with mutual TLS");
    assert_eq!(backend(&reply), "t1");
    // An endpoint requiring a client certificate refuses a Trident without one.
    let strict = pki::front(triton.http_addr, &leaf, &[b"http/1.1"], Some(&clients)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "upstream-ca");
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {{ http = \"{strict}\" }} ]\n\
         [pools.health]\nenabled = false\n[pools.tls]\nca_file = \"{}\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        ca_file.display()
    ))
    .await;
    let (status, _, body) = get(&http1_client(), &trident.http_url("/v2/models/m/ready")).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains("received fatal alert: CertificateRequired"),
        "{text}"
    );
}
