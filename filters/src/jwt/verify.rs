//! Token verification: signature by `jsonwebtoken`, claims checked here on an
//! injected clock, verified tokens remembered in the [`TokenCache`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::cache::TokenCache;
use super::keys::KeySet;

/// Longer tokens are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How long a token without `exp` stays cached.
const NO_EXP_CACHE_SECS: u64 = 60;

/// What a valid token must satisfy besides its signature.
#[derive(Debug, Clone, Default)]
pub struct ValidationSettings {
    /// Accepted `alg`s; empty: every algorithm a configured key supports.
    pub algorithms: Vec<Algorithm>,
    /// Empty: any `iss`; else `iss` must be one of these.
    pub issuers: Vec<String>,
    /// Empty: any `aud`; else `aud` (a string or an array) must name one of these.
    pub audiences: Vec<String>,
    /// Allowed clock skew on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Verified tokens remembered; 0 disables the cache.
    pub cache_capacity: usize,
}

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    map: Map<String, Value>,
    exp: Option<u64>,
}

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    pub fn exp(&self) -> Option<u64> {
        self.exp
    }

    /// The claim as a header value: strings as they are, numbers and booleans
    /// written out, arrays of those comma-joined; objects and null: `None`.
    pub fn as_header_value(&self, name: &str) -> Option<String> {
        fn scalar(value: &Value) -> Option<String> {
            match value {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }
        match self.get(name)? {
            Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            value => scalar(value),
        }
    }

    /// Whether the claim is `wanted`, or lists it: an array containing it, or a
    /// space- or comma-separated string (like OAuth `scope`) with it as a word.
    pub fn allows(&self, name: &str, wanted: &str) -> bool {
        match self.get(name) {
            Some(Value::String(s)) => s.split([' ', ',']).any(|word| word == wanted),
            Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(wanted)),
            Some(Value::Number(n)) => n.to_string() == wanted,
            Some(Value::Bool(b)) => b.to_string() == wanted,
            _ => false,
        }
    }
}

/// Why a token was refused; the text is safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed(String),
    DisallowedAlgorithm(Algorithm),
    UnknownKey { kid: Option<String> },
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim(String),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::DisallowedAlgorithm(alg) => write!(f, "algorithm {alg:?} is not accepted"),
            JwtError::UnknownKey { kid: Some(kid) } => write!(f, "unknown key id {kid:?}"),
            JwtError::UnknownKey { kid: None } => f.write_str("no key for the token's algorithm"),
            JwtError::BadSignature => f.write_str("bad signature"),
            JwtError::Expired => f.write_str("expired"),
            JwtError::NotYetValid => f.write_str("not valid yet (nbf)"),
            JwtError::WrongIssuer => f.write_str("issuer not accepted"),
            JwtError::WrongAudience => f.write_str("audience not accepted"),
            JwtError::MissingClaim(name) => write!(f, "missing claim {name:?}"),
        }
    }
}

/// Verifies tokens against a key set that can be swapped while requests run.
pub struct Verifier {
    settings: ValidationSettings,
    keys: ArcSwap<KeySet>,
    /// Bumped on every key-set swap: cached verdicts of older sets are not trusted.
    generation: AtomicU64,
    cache: TokenCache,
    signature_checks: AtomicU64,
}

impl Verifier {
    pub fn new(settings: ValidationSettings, keys: KeySet) -> Self {
        let cache = TokenCache::new(settings.cache_capacity);
        Verifier {
            settings,
            keys: ArcSwap::from_pointee(keys),
            generation: AtomicU64::new(0),
            cache,
            signature_checks: AtomicU64::new(0),
        }
    }

    /// Installs a new key set; tokens verified with the old one are verified again.
    pub fn replace_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// How many key-set swaps there have been.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Signature verifications done so far (cache hits do none).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Verifies `token` at `now_secs` (Unix time).
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Arc<Claims>, JwtError> {
        let generation = self.generation();
        if let Some(claims) = self.cache.get(token, now_secs, generation) {
            return Ok(claims);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("too long".to_owned()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| malformed(&e))?;
        let alg = header.alg;
        let keys = self.keys.load();
        if keys.is_empty() {
            // A JWKS URL whose first fetch failed: a refresh may bring the key.
            return Err(JwtError::UnknownKey { kid: header.kid });
        }
        let allowed = if self.settings.algorithms.is_empty() {
            keys.algorithms().any(|a| a == alg)
        } else {
            self.settings.algorithms.contains(&alg)
        };
        if !allowed {
            return Err(JwtError::DisallowedAlgorithm(alg));
        }
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut outcome = Err(JwtError::UnknownKey {
            kid: header.kid.clone(),
        });
        for key in keys.candidates(header.kid.as_deref(), alg) {
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            match jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding(), &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    outcome = Err(JwtError::BadSignature)
                }
                Err(e) => {
                    outcome = Err(match e.kind() {
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                            JwtError::DisallowedAlgorithm(alg)
                        }
                        ErrorKind::InvalidKeyFormat
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidEcdsaKey => JwtError::BadSignature,
                        _ => malformed(&e),
                    });
                    break;
                }
            }
        }
        let map = outcome?;
        let claims = self.check_claims(map, now_secs)?;
        let valid_until = claims.exp.map_or(now_secs + NO_EXP_CACHE_SECS, |exp| {
            exp.saturating_add(self.settings.leeway_secs)
        });
        let claims = Arc::new(claims);
        self.cache
            .insert(token, claims.clone(), valid_until, generation, now_secs);
        Ok(claims)
    }

    fn check_claims(&self, map: Map<String, Value>, now: u64) -> Result<Claims, JwtError> {
        let settings = &self.settings;
        let time = |name: &str| -> Result<Option<u64>, JwtError> {
            match map.get(name) {
                None => Ok(None),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| JwtError::Malformed(format!("{name} is not a time"))),
                Some(_) => Err(JwtError::Malformed(format!("{name} is not a number"))),
            }
        };
        let exp = time("exp")?;
        if exp.is_some_and(|exp| now > exp.saturating_add(settings.leeway_secs)) {
            return Err(JwtError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| now.saturating_add(settings.leeway_secs) < nbf) {
            return Err(JwtError::NotYetValid);
        }
        if !settings.issuers.is_empty() {
            let issuer = map.get("iss").and_then(Value::as_str);
            if !issuer.is_some_and(|iss| settings.issuers.iter().any(|i| i == iss)) {
                return Err(JwtError::WrongIssuer);
            }
        }
        if !settings.audiences.is_empty() {
            let accepted = |aud: &str| settings.audiences.iter().any(|a| a == aud);
            let ok = match map.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        if let Some(missing) = settings
            .required_claims
            .iter()
            .find(|name| !map.contains_key(name.as_str()))
        {
            return Err(JwtError::MissingClaim(missing.clone()));
        }
        Ok(Claims { map, exp })
    }
}

fn malformed(e: &jsonwebtoken::errors::Error) -> JwtError {
    let why = match e.kind() {
        ErrorKind::Base64(_) => "bad base64".to_owned(),
        ErrorKind::Json(_) => "bad JSON".to_owned(),
        ErrorKind::Utf8(_) => "bad UTF-8".to_owned(),
        ErrorKind::InvalidToken => "not a JWT".to_owned(),
        other => format!("{other:?}"),
    };
    JwtError::Malformed(why)
}

#[cfg(test)]
mod tests;
