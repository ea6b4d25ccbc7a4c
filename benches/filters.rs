//! Micro-benchmarks of the filters' hot paths: JWT verification (cached and
//! not), token-bucket takes under two threads, API-key lookup.
//!
//! `cargo bench --bench filters`; the closing notes of the issues quote these.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use filters::api_key::{digest, KeyTable};
use filters::jwt::{Algorithm, KeySet, ValidationSettings, Verifier};
use filters::rate_limit::gcra::Quota;
use filters::rate_limit::keyed::KeyedBuckets;
use jsonwebtoken::{encode, EncodingKey, Header};

/// `iterations` takes split over two threads started together; keys from `key_of`.
fn two_thread_takes(
    buckets: &KeyedBuckets,
    iterations: u64,
    key_of: fn(u64, u64) -> u64,
) -> Duration {
    let epoch = Instant::now();
    common::on_two_threads(iterations.div_ceil(2), |thread, i| {
        let now = epoch.elapsed().as_nanos() as u64;
        black_box(buckets.take(key_of(thread, i), now, 1));
    })
}

fn rate_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit");
    let quota = Quota::new(1e9, 1_000_000).expect("quota");
    let shared = KeyedBuckets::new(quota, 100_000);
    group.bench_function("take_one_key_two_threads", |b| {
        b.iter_custom(|n| two_thread_takes(&shared, n, |_, _| 42))
    });
    let spread = KeyedBuckets::new(quota, 100_000);
    group.bench_function("take_10k_keys_two_threads", |b| {
        b.iter_custom(|n| {
            two_thread_takes(&spread, n, |thread, i| {
                (thread * 5_000 + i % 5_000).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            })
        })
    });
    group.finish();
}

fn api_key(c: &mut Criterion) {
    let table = KeyTable::new(
        (0..10_000).map(|i| (digest(format!("key-{i}").as_bytes()), format!("tenant-{i}"))),
    );
    c.bench_function("api_key/lookup_10k_keys", |b| {
        b.iter(|| black_box(table.tenant(black_box(b"key-5000"))))
    });
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/filters/testdata/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture key")
}

fn jwt(c: &mut Criterion) {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({ "sub": "alice", "aud": "triton", "exp": exp,
                                     "models": ["resnet50"], "scope": "infer" });
    let jwks = String::from_utf8(fixture("jwks.json")).expect("utf-8");
    let cases = [
        (
            Algorithm::RS256,
            "rsa-1",
            EncodingKey::from_rsa_pem(&fixture("rsa.pem")),
        ),
        (
            Algorithm::ES256,
            "ec-256",
            EncodingKey::from_ec_pem(&fixture("ec256.pem")),
        ),
        (
            Algorithm::EdDSA,
            "ed-1",
            EncodingKey::from_ed_pem(&fixture("ed25519.pem")),
        ),
    ];
    let settings = |cache_capacity| ValidationSettings {
        audiences: vec!["triton".into()],
        required_claims: vec!["exp".into()],
        cache_capacity,
        ..ValidationSettings::default()
    };
    let mut group = c.benchmark_group("jwt_verify");
    for (alg, kid, key) in cases {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let token = encode(&header, &claims, &key.expect("fixture key")).expect("sign");
        let uncached = Verifier::new(settings(0), KeySet::from_jwks(&jwks).expect("jwks"));
        group.bench_function(format!("{alg:?}_uncached"), |b| {
            b.iter(|| uncached.verify(black_box(&token), exp - 60).expect("valid"))
        });
        let cached = Verifier::new(settings(10_000), KeySet::from_jwks(&jwks).expect("jwks"));
        group.bench_function(format!("{alg:?}_cached"), |b| {
            b.iter(|| cached.verify(black_box(&token), exp - 60).expect("valid"))
        });
    }
    let secret = b"0123456789abcdef0123456789abcdef";
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign");
    let hmac = Verifier::new(settings(0), KeySet::hmac(secret));
    group.bench_function("HS256_uncached", |b| {
        b.iter(|| hmac.verify(black_box(&token), exp - 60).expect("valid"))
    });
    group.finish();
}

criterion_group!(benches, jwt, rate_limit, api_key);
criterion_main!(benches);
