//! The request-phase adapter of the JWT verifier.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};

use super::jwks::{JwksRefresher, JwksUrlSettings};
use super::keys::KeySet;
use super::verify::{JwtError, ValidationSettings, Verifier};
use crate::chain::{Denial, DenyReason, Filter, Request, Verdict};

/// Where the token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Bearer <token>` (scheme case-insensitive), usually in `Authorization`.
    Bearer(HeaderName),
    /// The raw token; a leading `Bearer ` is accepted too.
    Header(HeaderName),
}

impl TokenSource {
    fn header(&self) -> &HeaderName {
        match self {
            TokenSource::Bearer(name) | TokenSource::Header(name) => name,
        }
    }

    fn token<'a>(&self, value: &'a [u8]) -> Option<&'a str> {
        let value = std::str::from_utf8(value).ok()?.trim();
        let stripped = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| value[7..].trim_start());
        let token = match self {
            TokenSource::Bearer(_) => stripped?,
            TokenSource::Header(_) => stripped.unwrap_or(value),
        };
        (!token.is_empty()).then_some(token)
    }
}

/// Where the keys come from.
pub enum KeySource {
    Static(KeySet),
    Url(JwksUrlSettings),
}

pub struct JwtSettings {
    pub keys: KeySource,
    pub validation: ValidationSettings,
    pub token: TokenSource,
    /// Send the token upstream (default: removed).
    pub forward_token: bool,
    /// Claim → upstream header. Client-sent copies of these headers are always removed.
    pub claims_to_headers: Vec<(String, HeaderName)>,
    /// A string claim naming the tenant.
    pub tenant_claim: Option<String>,
}

pub struct JwtFilter {
    verifier: Arc<Verifier>,
    refresher: Option<Arc<JwksRefresher>>,
    token: TokenSource,
    forward_token: bool,
    claims_to_headers: Vec<(String, HeaderName)>,
    tenant_claim: Option<String>,
}

impl JwtFilter {
    /// Builds the filter; with a JWKS URL, starts its refresher and waits for the first fetch.
    pub fn start(settings: JwtSettings, on_fetch: Box<dyn Fn(bool) + Send + Sync>) -> JwtFilter {
        let (verifier, refresher) = match settings.keys {
            KeySource::Static(keys) => (Arc::new(Verifier::new(settings.validation, keys)), None),
            KeySource::Url(url) => {
                let verifier = Arc::new(Verifier::new(settings.validation, KeySet::default()));
                let refresher = JwksRefresher::start(verifier.clone(), url, on_fetch);
                (verifier, Some(refresher))
            }
        };
        JwtFilter {
            verifier,
            refresher,
            token: settings.token,
            forward_token: settings.forward_token,
            claims_to_headers: settings.claims_to_headers,
            tenant_claim: settings.tenant_claim,
        }
    }
}

/// A filter a config reload replaced or removed stops fetching its JWKS.
impl Drop for JwtFilter {
    fn drop(&mut self) {
        if let Some(refresher) = &self.refresher {
            refresher.stop();
        }
    }
}

const WWW_AUTHENTICATE: HeaderName = http::header::WWW_AUTHENTICATE;

fn unauthenticated(request: &mut Request<'_>, challenge: &'static str, message: String) -> Verdict {
    request
        .response_headers
        .push((WWW_AUTHENTICATE, HeaderValue::from_static(challenge)));
    Verdict::Deny(Denial::new(DenyReason::Unauthenticated, message))
}

#[async_trait]
impl Filter for JwtFilter {
    async fn request(&self, request: &mut Request<'_>) -> Verdict {
        let name = self.token.header();
        let token = request
            .header
            .headers
            .get(name)
            .and_then(|value| self.token.token(value.as_bytes()));
        let Some(token) = token else {
            let message = format!("missing bearer token in header '{name}'");
            return unauthenticated(request, "Bearer", message);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut verified = self.verifier.verify(token, now);
        if let (Err(JwtError::UnknownKey { .. }), Some(refresher)) = (&verified, &self.refresher) {
            // Verified again even when this refresh was rate-limited: another request's
            // refresh may just have brought the key.
            refresher.refresh_for_unknown_kid().await;
            verified = self.verifier.verify(token, now);
        }
        let claims = match verified {
            Ok(claims) => claims,
            Err(e) => {
                return unauthenticated(
                    request,
                    "Bearer error=\"invalid_token\"",
                    format!("invalid token: {e}"),
                )
            }
        };
        for (claim, header) in &self.claims_to_headers {
            request.header.remove_header(header);
            if let Some(value) = claims.as_header_value(claim) {
                // A claim that is not a valid header value is left out, not forwarded mangled.
                if let Ok(value) = HeaderValue::from_str(&value) {
                    let _ = request.header.insert_header(header.clone(), value);
                }
            }
        }
        if !self.forward_token {
            request.header.remove_header(name);
        }
        if let Some(tenant) = &self.tenant_claim {
            if let Some(serde_json::Value::String(name)) = claims.get(tenant) {
                request.identity.tenant = Some(Arc::from(name.as_str()));
            }
        }
        request.identity.claims = Some(claims);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_bearer_or_raw_headers() {
        let bearer = TokenSource::Bearer(http::header::AUTHORIZATION);
        let raw = TokenSource::Header(HeaderName::from_static("x-token"));
        assert_eq!(bearer.token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer.token(b"bearer   abc "), Some("abc"));
        assert_eq!(bearer.token(b"Basic abc"), None);
        assert_eq!(bearer.token(b"Bearer "), None);
        assert_eq!(bearer.token(b"abc"), None);
        assert_eq!(bearer.token(b"Bearer \xff"), None);
        assert_eq!(raw.token(b"abc"), Some("abc"));
        assert_eq!(raw.token(b"Bearer abc"), Some("abc"));
        assert_eq!(raw.token(b""), None);
    }
}

#[cfg(test)]
mod filter_tests {
    use jsonwebtoken::Algorithm;

    use super::*;
    use crate::chain::{DenyReason, Identity};
    use crate::jwt::tests::*;
    use crate::testing::run;

    fn filter(token: TokenSource, forward_token: bool) -> JwtFilter {
        JwtFilter::start(
            JwtSettings {
                keys: KeySource::Static(KeySet::from_jwks(JWKS).unwrap()),
                validation: ValidationSettings {
                    audiences: vec!["triton".into()],
                    cache_capacity: 10,
                    ..ValidationSettings::default()
                },
                token,
                forward_token,
                claims_to_headers: vec![
                    ("sub".into(), HeaderName::from_static("x-user")),
                    ("missing".into(), HeaderName::from_static("x-missing")),
                ],
                tenant_claim: Some("tenant".into()),
            },
            Box::new(|_| {}),
        )
    }

    fn live_token() -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        sign(Algorithm::RS256, &claims(exp))
    }

    #[test]
    fn valid_token_sets_identity_and_headers_and_is_stripped() {
        let filter = filter(TokenSource::Bearer(http::header::AUTHORIZATION), false);
        let bearer = format!("Bearer {}", live_token());
        let ran = run(
            &filter,
            &[
                ("authorization", &bearer),
                ("x-user", "mallory"),
                ("x-missing", "spoof"),
            ],
            Some("m"),
            Identity::default(),
        );
        assert_eq!(ran.verdict, Verdict::Continue);
        let users: Vec<_> = ran.header.headers.get_all("x-user").iter().collect();
        assert_eq!(users, ["alice"], "the claim replaces the client's header");
        assert!(
            ran.header.headers.get("x-missing").is_none(),
            "spoofed header removed"
        );
        assert!(
            ran.header.headers.get("authorization").is_none(),
            "token stripped"
        );
        assert_eq!(ran.identity.tenant.as_deref(), Some("acme"));
        assert_eq!(ran.identity.claims.unwrap().get("sub").unwrap(), "alice");
    }

    #[test]
    fn token_from_a_named_header_can_be_forwarded() {
        let filter = filter(
            TokenSource::Header(HeaderName::from_static("x-token")),
            true,
        );
        let token = live_token();
        let ran = run(
            &filter,
            &[("x-token", &token)],
            Some("m"),
            Identity::default(),
        );
        assert_eq!(ran.verdict, Verdict::Continue);
        assert_eq!(ran.header.headers.get("x-token").unwrap(), token.as_str());
    }

    #[test]
    fn missing_and_invalid_tokens_are_unauthenticated_with_a_challenge() {
        let filter = filter(TokenSource::Bearer(http::header::AUTHORIZATION), false);
        let expired = format!(
            "Bearer {}",
            sign(Algorithm::RS256, &claims(NOW - 100_000_000))
        );
        for (headers, message, challenge) in [
            (
                vec![],
                "missing bearer token in header 'authorization'",
                "Bearer",
            ),
            (
                vec![("authorization", "Basic abc")],
                "missing bearer token in header 'authorization'",
                "Bearer",
            ),
            (
                vec![("authorization", "Bearer not.a.jwt")],
                "invalid token: malformed token: bad base64",
                "Bearer error=\"invalid_token\"",
            ),
            (
                vec![("authorization", expired.as_str())],
                "invalid token: expired",
                "Bearer error=\"invalid_token\"",
            ),
        ] {
            let ran = run(&filter, &headers, Some("m"), Identity::default());
            let Verdict::Deny(denial) = ran.verdict else {
                panic!("{headers:?} admitted")
            };
            assert_eq!(
                (denial.reason, denial.message.as_str()),
                (DenyReason::Unauthenticated, message)
            );
            assert_eq!(
                ran.response_headers,
                [(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))]
            );
        }
    }
}
