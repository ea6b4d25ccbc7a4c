//! Verification keys, as a JWKS document or an HMAC secret describes them.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC_ALGORITHMS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// One verification key and the algorithms it may verify.
pub struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
}

impl Key {
    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// The keys tokens are verified with.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot sign (`"use": "enc"`), of an
    /// unsupported type or curve, or malformed are skipped; a set with no usable
    /// key is an error.
    pub fn from_jwks(json: &str) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut skipped = Vec::new();
        let mut keys = Vec::new();
        for (i, value) in document.keys.into_iter().enumerate() {
            match key_from_jwk(value) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(reason) => skipped.push(format!("keys[{i}]: {reason}")),
            }
        }
        if keys.is_empty() {
            let why = if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", skipped.join("; "))
            };
            return Err(format!("no usable signing key{why}"));
        }
        Ok(KeySet { keys })
    }

    /// One shared secret for HS256/384/512 tokens.
    pub fn hmac(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![Key {
                kid: None,
                algorithms: HMAC_ALGORITHMS.to_vec(),
                decoding: DecodingKey::from_secret(secret),
            }],
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every algorithm some key supports.
    pub fn algorithms(&self) -> impl Iterator<Item = Algorithm> + '_ {
        self.keys.iter().flat_map(|k| k.algorithms.iter().copied())
    }

    /// Whether a key has this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may verify a token with this `kid` and `alg`: the key with
    /// that id, or for tokens without one every key supporting the algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |key| {
            key.algorithms.contains(&alg) && (kid.is_none() || key.kid.as_deref() == kid)
        })
    }
}

fn key_from_jwk(value: serde_json::Value) -> Result<Option<Key>, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Ok(None);
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        // Base64url of a 2048-bit modulus is 342 characters; shorter keys are forgeable.
        AlgorithmParameters::RSA(rsa) if rsa.n.trim_end_matches('=').len() < 342 => {
            return Err("RSA key shorter than 2048 bits".to_owned())
        }
        AlgorithmParameters::RSA(_) => RSA_ALGORITHMS,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported elliptic curve".to_owned()),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err("unsupported OKP curve".to_owned()),
        },
        AlgorithmParameters::OctetKey(_) => HMAC_ALGORITHMS,
        _ => return Err("unsupported key type".to_owned()),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(declared) => match Algorithm::try_from(declared) {
            Ok(alg) if family.contains(&alg) => vec![alg],
            _ => return Err(format!("algorithm {declared} does not fit the key")),
        },
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Some(Key {
        kid: jwk.common.key_id,
        algorithms,
        decoding,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const JWKS: &str = include_str!("../../testdata/jwt/jwks.json");

    #[test]
    fn fixture_jwks_has_four_signing_keys() {
        let keys = KeySet::from_jwks(JWKS).unwrap();
        assert_eq!(keys.len(), 4, "the `enc` key is skipped");
        assert!(keys.has_kid("rsa-1") && keys.has_kid("ed-1") && !keys.has_kid("enc-1"));
        assert_eq!(keys.candidates(Some("rsa-1"), Algorithm::PS384).count(), 1);
        assert_eq!(keys.candidates(Some("rsa-1"), Algorithm::ES256).count(), 0);
        assert_eq!(keys.candidates(None, Algorithm::ES384).count(), 1);
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "RSA"}]}"#,
            r#"{"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}"#,
            r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "ES256"}]}"#,
            r#"{"keys": [{"kty": "weird"}]}"#,
            r#"{"keys": [7]}"#,
        ] {
            assert!(KeySet::from_jwks(bad).is_err(), "{bad}");
        }
    }
}
