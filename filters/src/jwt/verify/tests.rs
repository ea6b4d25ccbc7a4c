use jsonwebtoken::EncodingKey;
use serde_json::json;

use super::*;
use crate::jwt::tests::*;

fn settings() -> ValidationSettings {
    ValidationSettings {
        algorithms: Vec::new(),
        issuers: vec!["https://issuer.test".into()],
        audiences: vec!["triton".into()],
        leeway_secs: 30,
        required_claims: vec!["exp".into(), "sub".into()],
        cache_capacity: 100,
    }
}

fn jwks_verifier() -> Verifier {
    Verifier::new(settings(), KeySet::from_jwks(JWKS).unwrap())
}

#[test]
fn every_algorithm_verifies() {
    use Algorithm::*;
    let asymmetric = jwks_verifier();
    let symmetric = Verifier::new(settings(), KeySet::hmac(SECRET));
    for alg in [
        HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ] {
        let verifier = if matches!(alg, HS256 | HS384 | HS512) {
            &symmetric
        } else {
            &asymmetric
        };
        let token = sign(alg, &claims(NOW + 600));
        let verified = verifier
            .verify(&token, NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(verified.get("sub"), Some(&json!("alice")));
        assert_eq!(verified.exp(), Some(NOW + 600));
    }
}

#[test]
fn time_claims_use_the_injected_clock_and_leeway() {
    let verifier = Verifier::new(
        ValidationSettings {
            cache_capacity: 0,
            ..settings()
        },
        KeySet::hmac(SECRET),
    );
    let token = sign(Algorithm::HS256, &claims(NOW + 100));
    assert!(verifier.verify(&token, NOW + 130).is_ok(), "within leeway");
    assert_eq!(verifier.verify(&token, NOW + 131), Err(JwtError::Expired));
    // nbf is NOW - 10: valid from NOW - 40 with 30 s of leeway.
    assert!(verifier.verify(&token, NOW - 40).is_ok());
    assert_eq!(
        verifier.verify(&token, NOW - 41),
        Err(JwtError::NotYetValid)
    );
}

#[test]
fn issuer_audience_and_required_claims_are_checked() {
    let verifier = Verifier::new(settings(), KeySet::hmac(SECRET));
    let check = |claims: serde_json::Value| verifier.verify(&sign(Algorithm::HS256, &claims), NOW);
    let mut c = claims(NOW + 600);
    c["iss"] = json!("https://evil.test");
    assert_eq!(check(c), Err(JwtError::WrongIssuer));
    let mut c = claims(NOW + 600);
    c["aud"] = json!("other");
    assert_eq!(check(c), Err(JwtError::WrongAudience));
    let mut c = claims(NOW + 600);
    c["aud"] = json!("triton");
    assert!(check(c).is_ok(), "a string audience");
    let mut c = claims(NOW + 600);
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(check(c), Err(JwtError::MissingClaim("sub".into())));
    let mut c = claims(NOW + 600);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(c), Err(JwtError::MissingClaim("exp".into())));
    let mut c = claims(NOW + 600);
    c["exp"] = json!("tomorrow");
    assert!(matches!(check(c), Err(JwtError::Malformed(_))));
}

#[test]
fn forged_and_confused_tokens_are_refused() {
    let verifier = jwks_verifier();
    // Signed by another key under rsa-1's kid.
    let forged = sign_with(
        Algorithm::RS256,
        Some("rsa-1"),
        &rotated_key(),
        &claims(NOW + 600),
    );
    assert_eq!(verifier.verify(&forged, NOW), Err(JwtError::BadSignature));
    // A valid token with its payload swapped.
    let good = sign(Algorithm::ES256, &claims(NOW + 600));
    let other = sign(Algorithm::ES256, &json!({"sub": "root", "exp": NOW + 600}));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(verifier.verify(&tampered, NOW), Err(JwtError::BadSignature));
    // HS256 "signed" with the RSA public key: no key of the set does HMAC.
    let public = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/jwt/jwks.json"
    ))
    .unwrap();
    let confused = sign_with(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(public.as_bytes()),
        &claims(NOW + 600),
    );
    assert_eq!(
        verifier.verify(&confused, NOW),
        Err(JwtError::DisallowedAlgorithm(Algorithm::HS256))
    );
    // `alg: none`.
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims(NOW + 600).to_string())
    );
    assert!(matches!(
        verifier.verify(&none, NOW),
        Err(JwtError::Malformed(_))
    ));
    // Unknown kid, and an algorithm the operator did not allow.
    let unknown = sign_with(
        Algorithm::RS256,
        Some("rsa-2"),
        &rotated_key(),
        &claims(NOW + 600),
    );
    assert_eq!(
        verifier.verify(&unknown, NOW),
        Err(JwtError::UnknownKey {
            kid: Some("rsa-2".into())
        })
    );
    let strict = Verifier::new(
        ValidationSettings {
            algorithms: vec![Algorithm::RS256],
            ..settings()
        },
        KeySet::from_jwks(JWKS).unwrap(),
    );
    assert_eq!(
        strict.verify(&sign(Algorithm::ES256, &claims(NOW + 600)), NOW),
        Err(JwtError::DisallowedAlgorithm(Algorithm::ES256))
    );
    assert!(strict
        .verify(&sign(Algorithm::RS256, &claims(NOW + 600)), NOW)
        .is_ok());
}

fn b64(text: &str) -> String {
    use base64_url::encode;
    encode(text)
}

mod base64_url {
    /// Unpadded base64url, enough to hand-craft test tokens.
    pub fn encode(text: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn tokens_without_kid_try_the_keys_for_their_algorithm() {
    let verifier = jwks_verifier();
    let (key, _) = signing_key(Algorithm::EdDSA);
    let token = sign_with(Algorithm::EdDSA, None, &key, &claims(NOW + 600));
    assert!(verifier.verify(&token, NOW).is_ok());
}

#[test]
fn garbage_never_panics() {
    let verifier = jwks_verifier();
    let valid = sign(Algorithm::RS256, &claims(NOW + 600));
    let mut seed = 0x853c_49e6_748f_ea9bu64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for fixed in [
        "",
        ".",
        "..",
        "a.b.c",
        "a.b",
        "🦀.🦀.🦀",
        &"x".repeat(20_000),
    ] {
        assert!(verifier.verify(fixed, NOW).is_err(), "{fixed:.20}");
    }
    for _ in 0..3_000 {
        let mut bytes = valid.clone().into_bytes();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, b'.'),
            }
            if bytes.is_empty() {
                break;
            }
        }
        let token = String::from_utf8_lossy(&bytes);
        let _ = verifier.verify(&token, NOW);
    }
}

#[test]
fn cache_hits_skip_the_signature_and_expire_with_the_token() {
    let verifier = jwks_verifier();
    let token = sign(Algorithm::RS256, &claims(NOW + 100));
    let first = verifier.verify(&token, NOW).unwrap();
    let checks = verifier.signature_checks();
    let second = verifier.verify(&token, NOW + 1).unwrap();
    assert!(Arc::ptr_eq(&first, &second), "the cached claims");
    assert_eq!(
        verifier.signature_checks(),
        checks,
        "no signature work on a hit"
    );
    // Past exp + leeway the cached entry is not used, and the token is refused.
    assert_eq!(verifier.verify(&token, NOW + 131), Err(JwtError::Expired));
    // A new key set invalidates what the old one verified.
    verifier.verify(&token, NOW).unwrap();
    let checks = verifier.signature_checks();
    verifier.replace_keys(KeySet::from_jwks(JWKS_ROTATED).unwrap());
    assert!(verifier.verify(&token, NOW).is_err());
    assert!(verifier.signature_checks() >= checks);
}

#[test]
fn cache_stays_within_capacity() {
    let verifier = Verifier::new(
        ValidationSettings {
            cache_capacity: 16,
            ..settings()
        },
        KeySet::hmac(SECRET),
    );
    for i in 0..200 {
        let mut c = claims(NOW + 600);
        c["jti"] = json!(i);
        verifier.verify(&sign(Algorithm::HS256, &c), NOW).unwrap();
        assert!(verifier.cache.len() <= 16);
    }
}

#[test]
fn concurrent_verification_agrees() {
    let verifier = jwks_verifier();
    let tokens: Vec<String> = (0..8)
        .map(|i| {
            let mut c = claims(NOW + 600);
            c["jti"] = json!(i);
            sign(Algorithm::ES256, &c)
        })
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..20 {
                    for token in &tokens {
                        assert!(verifier.verify(token, NOW).is_ok());
                    }
                }
            });
        }
    });
}

#[test]
fn claim_helpers() {
    let verifier = Verifier::new(settings(), KeySet::hmac(SECRET));
    let mut c = claims(NOW + 600);
    c["n"] = json!(7);
    c["obj"] = json!({"a": 1});
    let claims = verifier.verify(&sign(Algorithm::HS256, &c), NOW).unwrap();
    assert_eq!(claims.as_header_value("sub").as_deref(), Some("alice"));
    assert_eq!(
        claims.as_header_value("models").as_deref(),
        Some("resnet50,bert")
    );
    assert_eq!(claims.as_header_value("n").as_deref(), Some("7"));
    assert_eq!(claims.as_header_value("obj"), None);
    assert!(claims.allows("scope", "infer") && claims.allows("scope", "metadata"));
    assert!(!claims.allows("scope", "inf"));
    assert!(claims.allows("models", "bert") && !claims.allows("models", "gpt"));
    assert!(!claims.allows("missing", "x"));
}
