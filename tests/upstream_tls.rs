//! TLS to Triton for the auxiliary clients, through the real binary: health
//! checks (HTTP and gRPC), mirror copies (both protocols), load scrapes, and a
//! client certificate for endpoints that require one. Each mock Triton is
//! reachable only through TLS fronts (`common::tls::front`) with certificates
//! of a CA made in the test, so a plain-text client, or one that verified the
//! wrong name or trusted the wrong CA, would fail.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{front, Ca, Leaf};
use common::*;

const HTTP1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

/// The name endpoints' certificates are issued for and verified as: not the
/// address Trident connects to (127.0.0.1), so only `server_name` can match.
const NAME: &str = "triton.test";

/// A mock's HTTP and gRPC ports behind TLS fronts presenting `leaf`, requiring
/// client certificates of `client_ca` if given.
async fn behind_tls(
    mock: &MockTriton,
    leaf: &Leaf,
    client_ca: Option<&Ca>,
) -> (SocketAddr, SocketAddr) {
    (
        front(mock.http_addr, leaf, HTTP1, client_ca).await,
        front(mock.grpc_addr, leaf, H2, client_ca).await,
    )
}

/// `[pools.tls]` trusting `ca` (written into `dir`), verifying endpoints as [`NAME`].
fn pool_tls(ca: &Ca, dir: &Path) -> String {
    format!(
        "[pools.tls]\nca_file = \"{}\"\nserver_name = \"{NAME}\"\n",
        ca.write(dir, "ca").display()
    )
}

/// Checks every 100 ms; one failure takes an endpoint out.
const FAST_CHECKS: &str =
    "[pools.health]\ninterval_ms = 100\ntimeout_ms = 100\nunhealthy_threshold = 1\n";

fn checks(pool: &str, endpoint: SocketAddr, result: &str) -> String {
    format!(
        "trident_health_checks_total{{endpoint=\"{endpoint}\",model=\"_all\",pool=\"{pool}\",result=\"{result}\"}}"
    )
}

/// Waits until endpoint `endpoint` of `pool` has passed (or failed) three
/// checks in a row and its readiness says so.
async fn checked(trident: &Trident, pool: &str, endpoint: SocketAddr, ready: bool) -> bool {
    let (result, other) = if ready {
        ("passed", "failed")
    } else {
        ("failed", "passed")
    };
    let ready_series =
        format!("trident_endpoint_ready{{pool=\"{pool}\",endpoint=\"{endpoint}\",model=\"_all\"}}");
    let first = std::cell::Cell::new(None);
    eventually(Duration::from_secs(10), || async {
        let metrics = trident.metrics().await;
        let count = metric(&metrics, &checks(pool, endpoint, result));
        let others = metric(&metrics, &checks(pool, endpoint, other));
        // Three more than when first looked, and none of the other kind since.
        let (first_count, first_others) = first.get().unwrap_or((count, others));
        first.set(Some((first_count, first_others)));
        count >= first_count + 3.0
            && others == first_others
            && metric(&metrics, &ready_series) == f64::from(u8::from(ready))
    })
    .await
}

/// A pool of two Tritons reachable only over TLS, one whose certificate the
/// pool's CA issued and one whose certificate another CA issued, written with
/// both their ports or (`grpc_only`) gRPC's: the first passes its checks (over
/// HTTP, or gRPC for a gRPC-only endpoint), the second fails them, and
/// requests go to the first.
async fn checks_over_tls(grpc_only: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (ca, rogue_ca) = (Ca::new("pool CA"), Ca::new("another CA"));
    let good = mock("good", &["m"]).await;
    let rogue = mock("rogue", &["m"]).await;
    let good_tls = behind_tls(&good, &ca.issue(&[NAME]), None).await;
    let rogue_tls = behind_tls(&rogue, &rogue_ca.issue(&[NAME]), None).await;
    let endpoint = |(http, grpc): (SocketAddr, SocketAddr)| match grpc_only {
        false => format!("{{ http = \"{http}\", grpc = \"{grpc}\" }}"),
        true => format!("{{ grpc = \"{grpc}\" }}"),
    };
    // Endpoints are labelled by their first address.
    let label = |(http, grpc)| if grpc_only { grpc } else { http };
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {}, {} ]\n{}{FAST_CHECKS}\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoint(good_tls),
        endpoint(rogue_tls),
        pool_tls(&ca, dir.path()),
    ))
    .await;
    assert!(
        checked(&trident, "p", label(good_tls), true).await,
        "checks over TLS pass: {}",
        trident.metrics().await
    );
    assert!(
        checked(&trident, "p", label(rogue_tls), false).await,
        "a certificate of another CA fails them: {}",
        trident.metrics().await
    );
    assert_eq!(trident.readiness().await.0, 200);
    let mut grpc = client(trident.grpc_url()).await;
    for i in 0..4 {
        let response = grpc
            .model_infer(infer_request("m", &i.to_string(), Bytes::from_static(b"x")))
            .await
            .expect("the ready endpoint answers");
        assert_eq!(backend(&response), "good");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_speak_tls_and_verify_the_pools_name() {
    checks_over_tls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_speak_tls_and_verify_the_pools_name() {
    checks_over_tls(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_present_the_pools_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, client_ca) = (Ca::new("pool CA"), Ca::new("client CA"));
    // Issued for the address itself: without `server_name`, the endpoint's IP is verified.
    let leaf = ca.issue(&["127.0.0.1"]);
    let with_cert = mock("with_cert", &["m"]).await;
    let without_cert = mock("without_cert", &["m"]).await;
    let with_tls = behind_tls(&with_cert, &leaf, Some(&client_ca)).await;
    let without_tls = behind_tls(&without_cert, &leaf, Some(&client_ca)).await;
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = client_ca
        .issue_client("spiffe://trident.test/proxy", "trident")
        .write(dir.path(), "trident");
    let pool = |name: &str, (http, grpc): (SocketAddr, SocketAddr), client: &str| {
        format!(
            "[[pools]]\nname = \"{name}\"\nendpoints = [ {{ http = \"{http}\", grpc = \"{grpc}\" }} ]\n\
             [pools.tls]\nca_file = \"{}\"\n{client}{FAST_CHECKS}",
            ca_file.display()
        )
    };
    let client_keys = format!(
        "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    // The pool without a certificate is a route's own: `/ready` fails with it.
    let trident = Trident::start_live(&format!(
        "{}{}[[routes]]\nmodel = \"*\"\npool = \"mtls\"\n\
         [[routes]]\nmodel = \"other\"\npool = \"anonymous\"\n",
        pool("mtls", with_tls, &client_keys),
        pool("anonymous", without_tls, ""),
    ))
    .await;
    assert!(
        checked(&trident, "mtls", with_tls.0, true).await,
        "an endpoint requiring a client certificate accepts Trident's: {}",
        trident.metrics().await
    );
    assert!(
        checked(&trident, "anonymous", without_tls.0, false).await,
        "and refuses checks without one: {}",
        trident.metrics().await
    );
}

fn mirrored(route: &str, pool: &str, result: &str) -> String {
    format!(
        "trident_mirror_requests_total{{pool=\"{pool}\",result=\"{result}\",route=\"{route}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_speak_tls_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, rogue_ca) = (Ca::new("pool CA"), Ca::new("another CA"));
    let primary = mock("primary", &["m", "r"]).await;
    let canary = mock("canary", &["m", "r"]).await;
    let rogue = mock("rogue", &["m", "r"]).await;
    let canary_tls = behind_tls(&canary, &ca.issue(&[NAME]), None).await;
    let rogue_tls = behind_tls(&rogue, &rogue_ca.issue(&[NAME]), None).await;
    let tls = pool_tls(&ca, dir.path());
    // Route `m` is copied to a pool that verifies; route `r` to one whose
    // endpoint's certificate is another CA's.
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"prod\"\nendpoints = [ {} ]\n\
         [[pools]]\nname = \"canary\"\nendpoints = [ {{ http = \"{}\", grpc = \"{}\" }} ]\n{tls}\
         [[pools]]\nname = \"rogue\"\nendpoints = [ {{ http = \"{}\", grpc = \"{}\" }} ]\n{tls}\
         [[routes]]\nmodel = \"m\"\npool = \"prod\"\n[routes.mirror]\npool = \"canary\"\n\
         [[routes]]\nmodel = \"r\"\npool = \"prod\"\n[routes.mirror]\npool = \"rogue\"\n\
         [[routes]]\nmodel = \"*\"\npool = \"prod\"\n",
        endpoint(&primary),
        canary_tls.0,
        canary_tls.1,
        rogue_tls.0,
        rogue_tls.1,
    ))
    .await;
    let http = http1_client();
    let mut grpc = client(trident.grpc_url()).await;
    let json = r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1.0]}]}"#;
    for model in ["m", "r"] {
        let url = trident.http_url(&format!("/v2/models/{model}/infer"));
        let (status, _, body) =
            post(&http, &url, &[("content-type", "application/json")], json).await;
        assert_eq!(status, 200, "{body:?}");
        let response = grpc
            .model_infer(infer_request(model, "1", Bytes::from_static(b"x")))
            .await
            .expect("the primary answers");
        assert_eq!(backend(&response), "primary");
    }
    assert!(
        wait_metric(&trident, &mirrored("m", "canary", "answered"), 2.0).await,
        "copies over TLS are answered: {}",
        trident.metrics().await
    );
    assert_eq!(canary.control().infer_calls(), 2, "one copy per protocol");
    assert!(
        wait_metric(&trident, &mirrored("r", "rogue", "error"), 2.0).await,
        "copies to an endpoint of another CA fail: {}",
        trident.metrics().await
    );
    assert_eq!(rogue.control().infer_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_scrapes_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("pool CA");
    let leaf = ca.issue(&[NAME]);
    let a = mock("a1", &["m"]).await;
    let b = mock("b1", &["m"]).await;
    let mut endpoints = Vec::new();
    for mock in [&a, &b] {
        // The mock serves Triton-style metrics on its HTTP port: here only through TLS.
        let metrics = front(mock.http_addr, &leaf, HTTP1, None).await;
        endpoints.push(format!(
            "{{ http = \"{}\", grpc = \"{}\", metrics = \"{metrics}\" }}",
            mock.http_addr, mock.grpc_addr
        ));
    }
    let trident = Trident::start(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [ {} ]\n{}protocols = [\"metrics\"]\n\
         [pools.load_metrics]\ninterval_ms = 100\n\
         [[routes]]\nmodel = \"*\"\npool = \"p\"\n",
        endpoints.join(", "),
        pool_tls(&ca, dir.path()),
    ))
    .await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m/infer");
    let json = r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[1.0]}]}"#;
    // Requests of 20 that go to a1, once the next scrapes have been read.
    let on_a = || async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut on_a = 0;
        for _ in 0..20 {
            let (status, headers, _) =
                post(&http, &url, &[("content-type", "application/json")], json).await;
            assert_eq!(status, 200);
            on_a += usize::from(header(&headers, "x-mock-backend") == "a1");
        }
        on_a
    };
    // The model is known to the pool once it has been asked for.
    on_a().await;
    // Busy with other clients' requests: Trident knows only from the scrape,
    // and the busy one is avoided whichever it is.
    a.control().set_pending(50);
    let busy_a = on_a().await;
    assert!(
        busy_a <= 2,
        "a1's scraped queue is long: {busy_a} of 20 on a1"
    );
    a.control().set_pending(0);
    b.control().set_pending(50);
    let busy_b = on_a().await;
    assert!(
        busy_b >= 18,
        "b1's scraped queue is long: {busy_b} of 20 on a1"
    );
}
