//! Filters through the real binary, both protocols: JWT authentication and
//! claims authorisation, API keys, and rate limits, answered in protocol shape.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use tonic::Code;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(audience: &str, exp: u64, models: &[&str]) -> serde_json::Value {
    json!({ "sub": "alice", "tenant": "acme", "aud": audience, "iss": "https://issuer.test",
            "exp": exp, "models": models })
}

/// A JSON infer body for the mock's echo models, batch size `batch`.
fn infer_json(batch: usize) -> String {
    json!({ "inputs": [{ "name": "INPUT0", "shape": [batch, 1], "datatype": "FP32",
                         "data": vec![1.0; batch] }] })
    .to_string()
}

/// A mock `a1` serving `models`, behind a Trident whose `*` route runs `route_filters`
/// (a TOML array of names); `sections` declares the filters (and may start with
/// `[server]` keys, which land in the harness's `[server]` section).
async fn behind_filters(
    models: &[&str],
    sections: &str,
    route_filters: &str,
) -> (MockTriton, Trident) {
    let a = mock("a1", models).await;
    let trident = Trident::start(&format!(
        "{sections}\n[[pools]]\nname = \"a\"\nendpoints = [ {} ]\n[[routes]]\nmodel = \"*\"\npool = \"a\"\nfilters = {route_filters}\n",
        endpoint(&a)
    ))
    .await;
    (a, trident)
}

fn error_message(body: &Bytes) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    value["error"].as_str().expect("error string").to_owned()
}

fn with_metadata<T>(message: T, headers: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        request
            .metadata_mut()
            .insert(*name, value.parse().expect("ascii metadata"));
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_authenticates_and_claims_authorise_on_both_protocols() {
    let (_a, trident) = behind_filters(
        &["m_a", "m_secret"],
        &format!(
            r#"
[filters.auth]
kind = "jwt"
hmac_secret = "{SECRET}"
audiences = ["triton"]
issuers = ["https://issuer.test"]
claims_to_headers = {{ sub = "x-user" }}
tenant_claim = "tenant"

[filters.models]
kind = "claims"
model_claim = "models"
"#
        ),
        r#"["auth", "models"]"#,
    )
    .await;
    let valid = hs256(claims("triton", now() + 600, &["m_a"]), SECRET);
    let cases = [
        (
            "expired",
            hs256(claims("triton", now() - 600, &["m_a"]), SECRET),
            "expired",
        ),
        (
            "wrong signature",
            hs256(
                claims("triton", now() + 600, &["m_a"]),
                "another secret, also 32 bytes long",
            ),
            "signature",
        ),
        (
            "wrong audience",
            hs256(claims("someone-else", now() + 600, &["m_a"]), SECRET),
            "audience",
        ),
    ];

    let http = http1_client();
    let url = trident.http_url("/v2/models/m_a/infer");
    let bearer = format!("Bearer {valid}");
    let (status, headers, body) = post(
        &http,
        &url,
        &[
            ("authorization", &bearer),
            ("x-user", "mallory"),
            ("x-mock-echo", "authorization, x-user"),
        ],
        infer_json(1),
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(
        header(&headers, "x-mock-echo-x-user"),
        "alice",
        "claim header replaces the client's"
    );
    assert_eq!(
        header(&headers, "x-mock-echo-authorization"),
        "",
        "token stripped"
    );

    for (case, token, reason) in &cases {
        let bearer = format!("Bearer {token}");
        let (status, headers, body) =
            post(&http, &url, &[("authorization", &bearer)], infer_json(1)).await;
        assert_eq!(status, 401, "{case}");
        assert!(error_message(&body).contains(reason), "{case}: {body:?}");
        assert!(
            header(&headers, "www-authenticate").starts_with("Bearer"),
            "{case}"
        );
    }
    let (status, _, body) = post(&http, &url, &[], infer_json(1)).await;
    assert_eq!(status, 401);
    assert!(
        error_message(&body).contains("missing bearer token"),
        "{body:?}"
    );
    let (status, _, body) = post(
        &http,
        &trident.http_url("/v2/models/m_secret/infer"),
        &[("authorization", &bearer)],
        infer_json(1),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        error_message(&body),
        "token does not allow model 'm_secret'"
    );

    let mut grpc = client(trident.grpc_url()).await;
    let ok = grpc
        .model_infer(with_metadata(
            infer_request("m_a", "1", Bytes::from_static(b"abcd")),
            &[("authorization", &bearer), ("x-mock-echo", "x-user")],
        ))
        .await
        .expect("valid token");
    assert_eq!(ok.metadata().get("x-mock-echo-x-user").unwrap(), "alice");
    for (case, token, reason) in &cases {
        let bearer = format!("Bearer {token}");
        let status = grpc
            .model_infer(with_metadata(
                infer_request("m_a", "1", Bytes::new()),
                &[("authorization", &bearer)],
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
        assert!(status.message().contains(reason), "{case}: {status:?}");
    }
    let status = grpc
        .model_infer(infer_request("m_a", "1", Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = grpc
        .model_infer(with_metadata(
            infer_request("m_secret", "1", Bytes::new()),
            &[("authorization", &bearer)],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "token does not allow model 'm_secret'"
        )
    );

    let metrics = trident.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"trident_filter_denials_total{filter="auth",reason="unauthenticated"}"#
        ),
        8.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trident_filter_denials_total{filter="models",reason="permission_denied"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"trident_requests_total{model="*",protocol="grpc",status="UNAUTHENTICATED"}"#
        ),
        4.0
    );
    let line = trident
        .access_log_line("\"status\":200,\"grpc_status\":null")
        .await;
    assert_eq!(line["tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_map_to_tenants_on_both_protocols() {
    let (_a, trident) = behind_filters(
        &["m_a"],
        // The first lines land in the `[server]` section the harness writes.
        &format!(
            r#"
filters = ["keys"]
[filters.keys]
kind = "api_key"
tenant_header = "x-tenant"
keys = [
  {{ tenant = "acme", key = "acme-key" }},
  {{ tenant = "globex", sha256 = "{}" }},
]
"#,
            hex_sha256(b"globex-key"),
        ),
        "[]",
    )
    .await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m_a/infer");
    for (key, tenant) in [("acme-key", "acme"), ("globex-key", "globex")] {
        let (status, headers, _) = post(
            &http,
            &url,
            &[
                ("x-api-key", key),
                ("x-tenant", "spoofed"),
                ("x-mock-echo", "x-tenant, x-api-key"),
            ],
            infer_json(1),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-mock-echo-x-tenant"), tenant);
        assert_eq!(
            header(&headers, "x-mock-echo-x-api-key"),
            "",
            "key not forwarded"
        );
    }
    let (status, _, body) = post(&http, &url, &[("x-api-key", "wrong")], infer_json(1)).await;
    assert_eq!(
        (status.as_u16(), error_message(&body).as_str()),
        (401, "invalid API key")
    );
    // Server-level calls run the server's filters too.
    let (status, _, _) = get(&http, &trident.http_url("/v2/health/ready")).await;
    assert_eq!(status, 401);

    let mut grpc = client(trident.grpc_url()).await;
    let ok = grpc
        .model_infer(with_metadata(
            infer_request("m_a", "1", Bytes::new()),
            &[("x-api-key", "acme-key"), ("x-mock-echo", "x-tenant")],
        ))
        .await
        .expect("valid key");
    assert_eq!(ok.metadata().get("x-mock-echo-x-tenant").unwrap(), "acme");
    let status = grpc
        .model_infer(with_metadata(
            infer_request("m_a", "1", Bytes::new()),
            &[("x-api-key", "wrong")],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "invalid API key")
    );
    trident.access_log_line("\"tenant\":\"globex\"").await;
}

fn hex_sha256(key: &[u8]) -> String {
    filters::api_key::digest(key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_resource_exhausted_on_time() {
    let (_a, trident) = behind_filters(
        &["m_a"],
        r#"
[filters.limit]
kind = "rate_limit"
rate_per_second = 2
burst = 2
key = ["header:x-user"]
headers = true
"#,
        r#"["limit"]"#,
    )
    .await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m_a/infer");
    let call = |user: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move { post(&http, &url, &[("x-user", user)], infer_json(1)).await }
    };
    let (status, headers, _) = call("alice").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-remaining"), "1");
    assert_eq!(call("alice").await.0, 200);
    let (status, headers, body) = call("alice").await;
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "retry-after"), "1");
    assert!(
        error_message(&body).starts_with("rate limit exceeded"),
        "{body:?}"
    );
    // Other keys have their own bucket; this one refills one token per 500 ms.
    assert_eq!(call("bob").await.0, 200);
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(call("alice").await.0, 200);
    assert_eq!(call("alice").await.0, 429);

    let mut grpc = client(trident.grpc_url()).await;
    let infer = || {
        with_metadata(
            infer_request("m_a", "1", Bytes::new()),
            &[("x-user", "carol")],
        )
    };
    grpc.model_infer(infer()).await.expect("first");
    grpc.model_infer(infer()).await.expect("second");
    let status = grpc.model_infer(infer()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    tokio::time::sleep(Duration::from_millis(550)).await;
    grpc.model_infer(infer()).await.expect("refilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_is_the_cost_on_both_protocols() {
    let (_a, trident) = behind_filters(
        &["m_a"],
        r#"
[filters.images]
kind = "rate_limit"
rate_per_second = 0.001
burst = 10
cost = "batch_size"
key = ["header:x-user"]
headers = true
"#,
        r#"["images"]"#,
    )
    .await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m_a/infer");
    let (status, headers, _) = post(&http, &url, &[("x-user", "json")], infer_json(8)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-remaining"), "2");
    assert_eq!(
        post(&http, &url, &[("x-user", "json")], infer_json(3))
            .await
            .0,
        429
    );
    let (status, _, body) = post(&http, &url, &[("x-user", "json")], infer_json(11)).await;
    assert_eq!(status, 429);
    assert!(error_message(&body).contains("more than the rate limit's burst of 10"));

    // Binary tensors: the batch size is in the JSON header before them.
    let json = json!({ "inputs": [{ "name": "INPUT0", "shape": [6, 1], "datatype": "FP32",
                                    "parameters": { "binary_data_size": 24 } }] })
    .to_string();
    let mut body = json.clone().into_bytes();
    body.extend_from_slice(&[0u8; 24]);
    let length = json.len().to_string();
    let binary = [
        ("x-user", "binary"),
        ("inference-header-content-length", length.as_str()),
        ("content-type", "application/octet-stream"),
    ];
    let (status, headers, _) = post(&http, &url, &binary, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-remaining"), "4");
    assert_eq!(post(&http, &url, &binary, body).await.0, 429);

    let mut grpc = client(trident.grpc_url()).await;
    let batch = |n: i64| {
        let mut request = infer_request("m_a", "1", Bytes::from(vec![0u8; n as usize]));
        request.inputs[0].shape = vec![n, 1];
        with_metadata(request, &[("x-user", "grpc")])
    };
    let ok = grpc.model_infer(batch(7)).await.expect("7 of 10");
    assert_eq!(ok.metadata().get("x-ratelimit-remaining").unwrap(), "3");
    let status = grpc.model_infer(batch(4)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    grpc.model_infer(batch(3)).await.expect("3 of the last 3");
}

/// Serves a JWKS document the test can swap, and counts the fetches.
struct JwksServer {
    url: String,
    document: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
}

impl JwksServer {
    async fn start(document: &str) -> JwksServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::Mutex::new((200, document.to_owned())));
        let current = served.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (status, body) = current.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        JwksServer {
            url,
            document: served,
        }
    }

    fn serve(&self, status: u16, document: &str) {
        *self.document.lock().unwrap() = (status, document.to_owned());
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/filters/testdata/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn rs256(kid: &str, pem: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_rsa_pem(fixture(pem).as_bytes()).unwrap();
    encode(&header, &claims("triton", now() + 600, &["*"]), &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_on_an_unknown_kid() {
    let jwks = JwksServer::start(&fixture("jwks.json")).await;
    let (_a, trident) = behind_filters(
        &["m_a"],
        &format!(
            r#"
[filters.sso]
kind = "jwt"
jwks_url = "{}"
jwks_min_refresh_secs = 0
audiences = ["triton"]
"#,
            jwks.url,
        ),
        r#"["sso"]"#,
    )
    .await;
    let http = http1_client();
    let url = trident.http_url("/v2/models/m_a/infer");
    let call = |token: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let bearer = format!("Bearer {token}");
            post(&http, &url, &[("authorization", &bearer)], infer_json(1)).await
        }
    };
    let old = rs256("rsa-1", "rsa.pem");
    let new = rs256("rsa-2", "rsa2.pem");
    assert_eq!(
        call(old.clone()).await.0,
        200,
        "the key set fetched at start"
    );

    // The provider rotates: the new kid is unknown, so Trident refetches and accepts it.
    jwks.serve(200, &fixture("jwks-rotated.json"));
    assert_eq!(
        call(new.clone()).await.0,
        200,
        "refreshed on the unknown kid"
    );
    let mut grpc = client(trident.grpc_url()).await;
    let bearer = format!("Bearer {new}");
    grpc.model_infer(with_metadata(
        infer_request("m_a", "1", Bytes::new()),
        &[("authorization", &bearer)],
    ))
    .await
    .expect("gRPC with the rotated key");
    // The old key is gone: its tokens are refused although they were cached.
    let (status, _, body) = call(old.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(
        error_message(&body),
        "invalid token: unknown key id \"rsa-1\""
    );

    // A failing provider: the last good set stays in use.
    jwks.serve(500, "down");
    assert_eq!(call(old).await.0, 401, "unknown kid, refresh fails");
    assert_eq!(
        call(new).await.0,
        200,
        "still verified with the last good set"
    );
    let metrics = trident.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"trident_jwks_fetches_total{filter="sso",result="ok"}"#
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"trident_jwks_fetches_total{filter="sso",result="error"}"#
        ) >= 1.0,
        "{metrics}"
    );
}
