//! Shared test helpers: fixture keys, token signing, a request to run filters on.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const JWKS: &str = include_str!("../../testdata/jwt/jwks.json");
pub const JWKS_ROTATED: &str = include_str!("../../testdata/jwt/jwks-rotated.json");
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
pub const NOW: u64 = 1_700_000_000;

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/testdata/jwt/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture key")
}

/// The fixture key and kid that sign `alg` tokens.
pub fn signing_key(alg: Algorithm) -> (EncodingKey, Option<&'static str>) {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => (EncodingKey::from_secret(SECRET), None),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => (
            EncodingKey::from_rsa_pem(&pem("rsa")).unwrap(),
            Some("rsa-1"),
        ),
        ES256 => (
            EncodingKey::from_ec_pem(&pem("ec256")).unwrap(),
            Some("ec-256"),
        ),
        ES384 => (
            EncodingKey::from_ec_pem(&pem("ec384")).unwrap(),
            Some("ec-384"),
        ),
        EdDSA => (
            EncodingKey::from_ed_pem(&pem("ed25519")).unwrap(),
            Some("ed-1"),
        ),
        other => panic!("no fixture key for {other:?}"),
    }
}

pub fn sign(alg: Algorithm, claims: &Value) -> String {
    let (key, kid) = signing_key(alg);
    sign_with(alg, kid, &key, claims)
}

pub fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

pub fn rotated_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&pem("rsa2")).unwrap()
}

pub fn claims(exp: u64) -> Value {
    json!({ "sub": "alice", "iss": "https://issuer.test", "aud": ["triton", "other"],
            "exp": exp, "nbf": NOW - 10, "tenant": "acme", "models": ["resnet50", "bert"],
            "scope": "infer metadata" })
}
